"""deploy/autoscaling/prometheus-adapter-rules.yaml against a real Prometheus
scraping a real Switchyard under load: every rule's seriesQuery discovers
series the way prometheus-adapter does, and every metricsQuery, with its
template placeholders filled in as the adapter fills them for an HPA's
request, returns data (requests per second above zero for the model under
load).

Prometheus (Debian's `prometheus` package, with `promtool`) scrapes
Switchyard every second and labels the target with `namespace` and `pod`, as
Kubernetes service discovery relabelling does in a cluster.

Run: .venv/bin/python -m pytest tests/python/test_autoscaling.py -q
(after `cargo build`; set SWITCHYARD_BIN to test another binary).
"""

from harness import POLL_S, REPO, Proc, free_port, start_switchyard  # first: sets XDG_CACHE_HOME

import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
import requests  # noqa: E402
import yaml  # noqa: E402

RULES = REPO / "deploy" / "autoscaling" / "prometheus-adapter-rules.yaml"
MODELS = REPO / "examples" / "models"
NAMESPACE, POD, MODEL = "models", "model-server-0", "mlp"
PROMETHEUS_PATIENCE_S = 60.0
# rate() needs two scrapes of a moving counter inside its window.
DATA_PATIENCE_S = 60.0
LOAD_THREADS = 2

INFER = {
    "inputs": [
        {
            "name": "input",
            "shape": [1, 16],
            "datatype": "FP32",
            "data": [0.1 * i for i in range(16)],
        }
    ]
}


def binary(name):
    path = shutil.which(name) or (f"/usr/bin/{name}" if shutil.os.access(f"/usr/bin/{name}", shutil.os.X_OK) else None)
    if not path:
        pytest.fail(f"{name} not found: scripts/setup.sh installs Debian's prometheus package")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Switchyard (embedded mlp, v2 batched) under load, and Prometheus scraping it."""
    tmp = tmp_path_factory.mktemp("autoscaling")
    procs, stop, threads = [], threading.Event(), []
    try:
        ports = start_switchyard(
            tmp,
            f"""
backends:
  local:
    kind: onnx
    repository: {MODELS}
    version_policy: {{all: true}}
models:
  {MODEL}:
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
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {
                            "job_name": "switchyard",
                            "metrics_path": "/metrics",
                            "static_configs": [
                                {
                                    "targets": [f"127.0.0.1:{ports['metrics']}"],
                                    "labels": {"namespace": NAMESPACE, "pod": POD},
                                }
                            ],
                        }
                    ],
                }
            )
        )
        check = subprocess.run([binary("promtool"), "check", "config", str(config)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr

        prom = Proc(
            "prometheus",
            [
                binary("prometheus"),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--log.level=warn",
            ],
            tmp / "prometheus.log",
            cwd=str(tmp),
        )
        procs.append(prom)
        prom.wait_until_ok(f"http://127.0.0.1:{prom_port}/-/ready", PROMETHEUS_PATIENCE_S)

        url = f"http://127.0.0.1:{ports['http']}/v2/models/{MODEL}/infer"

        def load(worker):
            with requests.Session() as s:
                n = 0
                while not stop.is_set():
                    n += 1
                    r = s.post(url, json=INFER, headers={"x-user-id": f"user-{worker}-{n}"}, timeout=10)
                    assert r.status_code == 200, r.text

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


def prom_get(base, path, **params):
    r = requests.get(f"{base}{path}", params=params, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]


def until(what, fn):
    """fn() until it returns something truthy, at most DATA_PATIENCE_S."""
    deadline = time.monotonic() + DATA_PATIENCE_S
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() >= deadline:
            pytest.fail(f"no data for {what} within {DATA_PATIENCE_S}s")
        time.sleep(POLL_S * 10)


def series_name(rule):
    """The metric a rule's seriesQuery names (`name{...}`)."""
    m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"])
    assert m, f"seriesQuery should name its metric: {rule['seriesQuery']}"
    return m.group(1)


def render(query, series, matchers, group_by):
    """prometheus-adapter's metricsQuery template, filled as for an HPA's request."""
    out = query.replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", group_by)
    assert "<<" not in out, f"placeholder left in {out}"
    return out


def rules():
    return yaml.safe_load(RULES.read_text())


@pytest.mark.parametrize("index", range(len(rules()["rules"])), ids=[r["name"]["as"] for r in rules()["rules"]])
def test_pods_rule(stack, index):
    rule = rules()["rules"][index]
    series = series_name(rule)
    # Discovery: the seriesQuery finds Switchyard's series, each associated
    # with a namespace and a pod through the rule's overrides.
    found = until(rule["seriesQuery"], lambda: prom_get(stack, "/api/v1/series", **{"match[]": rule["seriesQuery"]}))
    for s in found:
        assert re.search(rule["name"]["matches"], s["__name__"])
        for label in rule["resources"]["overrides"]:
            assert s.get(label), f"{s} lacks {label}"
        assert s["model"], "every series names its model"
    # Querying: the adapter asks for the pods of an HPA's target, with the
    # HPA's metric selector (one model) added to the label matchers.
    query = render(rule["metricsQuery"], series, f'namespace="{NAMESPACE}",pod=~"{POD}",model="{MODEL}"', "pod")

    def evaluate():
        result = prom_get(stack, "/api/v1/query", query=query)["result"]
        if rule["name"]["as"] == "switchyard_requests_per_second":
            # Under load: a rate above zero, once two scrapes are in the window.
            result = [r for r in result if float(r["value"][1]) > 0]
        return result

    result = until(query, evaluate)
    assert [r["metric"] for r in result] == [{"pod": POD}]
    assert float(result[0]["value"][1]) >= 0


@pytest.mark.parametrize(
    "index", range(len(rules()["externalRules"])), ids=[r["name"]["as"] for r in rules()["externalRules"]]
)
def test_external_rule(stack, index):
    rule = rules()["externalRules"][index]
    assert rule["resources"] == {"namespaced": False}, "a gateway in one namespace drives HPAs in another"
    series = series_name(rule)
    found = until(rule["seriesQuery"], lambda: prom_get(stack, "/api/v1/series", **{"match[]": rule["seriesQuery"]}))
    assert all(re.search(rule["name"]["matches"], s["__name__"]) for s in found)
    # Not namespaced: the label matchers are the HPA's metric selector only.
    query = render(rule["metricsQuery"], series, f'model="{MODEL}"', "")

    def evaluate():
        result = prom_get(stack, "/api/v1/query", query=query)["result"]
        if rule["name"]["as"] == "switchyard_model_requests_per_second":
            result = [r for r in result if float(r["value"][1]) > 0]
        return result

    result = until(query, evaluate)
    assert [r["metric"] for r in result] == [{"model": MODEL}]
    assert float(result[0]["value"][1]) >= 0
