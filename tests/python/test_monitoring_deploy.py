"""deploy/monitoring against real peers: `promtool check rules` and
`promtool test rules` on the shipped rules, then every Grafana dashboard
query and every recording rule evaluated by a real Prometheus scraping a real
Switchyard under load (drift, feedback, batching, cache and a rollout on),
each asserted to return data.

Run: .venv/bin/python -m pytest tests/python/test_monitoring_deploy.py -q
(after `cargo build`; set SWITCHYARD_BIN to test another binary).
"""

from harness import POLL_S, REPO, Proc, free_port, start_switchyard  # first: sets XDG_CACHE_HOME

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
import yaml  # noqa: E402

DEPLOY = REPO / "deploy" / "monitoring"
MODELS = REPO / "examples" / "models"
PROFILE = REPO / "examples" / "mlp.profile.json"
DATA_PATIENCE_S = 90.0
LOAD_THREADS = 2


def binary(name):
    path = shutil.which(name) or (f"/usr/bin/{name}" if shutil.os.access(f"/usr/bin/{name}", shutil.os.X_OK) else None)
    if not path:
        pytest.fail(f"{name} not found: scripts/setup.sh installs Debian's prometheus package")
    return path


def test_promtool_checks_and_unit_tests_the_rules():
    check = subprocess.run(
        [binary("promtool"), "check", "rules", str(DEPLOY / "recording-rules.yaml"), str(DEPLOY / "alerts.yaml")],
        capture_output=True, text=True, timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([binary("promtool"), "test", "rules", "rules-test.yaml"], capture_output=True, text=True,
                          timeout=60, cwd=str(DEPLOY))
    assert unit.returncode == 0, unit.stdout + unit.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitoring")
    procs, stop, threads = [], threading.Event(), []
    try:
        ports = start_switchyard(
            tmp,
            f"""
routing:
  sticky_header: x-user-id
cache:
  l1_max_bytes: 16777216
backends:
  local: {{kind: onnx, repository: {MODELS}, version_policy: {{all: true}}}}
models:
  mlp:
    cache: {{ttl: 60s}}
    monitoring:
      drift: {{reference: {PROFILE}, sample_rate: 1.0, window: 200, min_samples: 20}}
      quality: {{task: classification, output: probabilities}}
    rollout: {{baseline: v1, canary: v2, steps: [50, 100], interval: 1h}}
    variants:
      - {{name: v1, backend: local, version: 1, weight: 50}}
      - name: v2
        backend: local
        version: 2
        weight: 50
        batching: {{max_batch_size: 8, max_queue_delay: 2ms}}
""",
            procs,
        )
        prom_port = free_port()
        config = tmp / "prometheus.yml"
        for f in ("recording-rules.yaml", "alerts.yaml"):
            shutil.copy(DEPLOY / f, tmp / f)
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": ["recording-rules.yaml", "alerts.yaml"],
            "scrape_configs": [{"job_name": "switchyard", "static_configs": [{"targets": [f"127.0.0.1:{ports['metrics']}"]}]}],
        }))
        # Recording rules every second here (30s in the shipped file), so data shows up quickly.
        rules = yaml.safe_load((tmp / "recording-rules.yaml").read_text())
        rules["groups"][0]["interval"] = "1s"
        (tmp / "recording-rules.yaml").write_text(yaml.safe_dump(rules))
        prom = Proc("prometheus", [binary("prometheus"), f"--config.file={config}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                                   f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
                    tmp / "prometheus.log", cwd=str(tmp))
        procs.append(prom)
        prom.wait_until_ok(f"http://127.0.0.1:{prom_port}/-/ready", 60.0)

        base = f"http://127.0.0.1:{ports['http']}"

        def load(worker):
            rng = np.random.default_rng(worker)
            with requests.Session() as s:
                n = 0
                while not stop.is_set():
                    n += 1
                    # A few repeated inputs (cache hits), the rest fresh (drift, batching).
                    x = [0.1 * i for i in range(16)] if n % 4 == 0 else rng.uniform(0.0, 2.0, 16).tolist()
                    body = {"id": f"w{worker}-{n}", "inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": x}]}
                    r = s.post(f"{base}/v2/models/mlp/infer", json=body, headers={"x-user-id": f"u{n % 50}"}, timeout=10)
                    assert r.status_code == 200, r.text
                    if n % 5 == 0:
                        s.post(f"{base}/ml/models/mlp/feedback", json={"feedback": [{"request_id": r.json()["id"], "label": n % 4}]}, timeout=10)

        for w in range(LOAD_THREADS):
            t = threading.Thread(target=load, args=(w,), daemon=True)
            t.start()
            threads.append(t)
        yield f"http://127.0.0.1:{prom_port}"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
        for p in reversed(procs):
            p.stop()


def query_until_data(prom, expr):
    deadline = time.monotonic() + DATA_PATIENCE_S
    while True:
        r = requests.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
        assert r.status_code == 200, (expr, r.text)
        body = r.json()
        assert body["status"] == "success", body
        if body["data"]["result"]:
            return body["data"]["result"]
        if time.monotonic() >= deadline:
            pytest.fail(f"no data within {DATA_PATIENCE_S}s for {expr}")
        time.sleep(POLL_S * 10)


def dashboard_targets():
    dash = json.loads((DEPLOY / "dashboard.json").read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p["targets"]]


@pytest.mark.parametrize("title,expr", dashboard_targets(), ids=[f"{t}:{i}" for i, (t, _) in enumerate(dashboard_targets())])
def test_every_dashboard_query_returns_data(stack, title, expr):
    # Grafana's variables as a dashboard showing every model fills them in.
    q = expr.replace("$__rate_interval", "1m").replace('"$model"', '".+"')
    assert "$" not in q, q
    query_until_data(stack, q)


def test_every_recording_rule_returns_data(stack):
    for rule in yaml.safe_load((DEPLOY / "recording-rules.yaml").read_text())["groups"][0]["rules"]:
        query_until_data(stack, rule["record"])
