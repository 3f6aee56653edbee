"""The MLflow registry as a model source (docs/mlflow.md), against a real MLflow
tracking server (SQLite backend store, local artifact root served through
`--serve-artifacts`) started here, with models registered here by MLflow's own
client (tests/python/mlflow_registry.py, run in the MLflow venv).

One server and one Switchyard for the module; the tests run in file order:
pinned version and stage, the alias followed (a version that fails its
checksum or its load is refused while the old one keeps serving; a good one
replaces it with no failed request), Triton's unload/load, then the registry killed.

Run: .venv/bin/python -m pytest tests/python/test_mlflow.py -q
(after `scripts/setup.sh`, which creates .switchyard/venvs/mlflow, and `cargo build`).
"""

from harness import REPO, Proc, free_port, mlp_reference, batch, start_switchyard  # first: sets XDG_CACHE_HOME

import base64  # noqa: E402
import hashlib  # noqa: E402
import hmac  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402

MLFLOW_VENV = REPO / ".switchyard" / "venvs" / "mlflow" / "bin"
REGISTRY_HELPER = REPO / "tests" / "python" / "mlflow_registry.py"
MLP = REPO / "examples" / "models" / "mlp"
MLFLOW_PATIENCE_S = 180.0
PATIENCE_S = 60.0
POLL_S = 0.05
WEBHOOK_SECRET = "whsec-switchyard-test"


def wait_for(what, check, patience_s=PATIENCE_S):
    """Polls `check` until it returns a true value, which is returned."""
    deadline = time.monotonic() + patience_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() >= deadline:
            pytest.fail(f"not within {patience_s}s: {what}")
        time.sleep(POLL_S)


class Registry:
    """`mlflow server` on a free port with its own SQLite store and artifact root."""

    def __init__(self, tmp, procs):
        if not (MLFLOW_VENV / "mlflow").exists():
            pytest.fail(f"no MLflow at {MLFLOW_VENV}: run scripts/setup.sh")
        self.tmp, self.procs = tmp, procs
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        env = dict(
            os.environ, XDG_CACHE_HOME=str(self.tmp / "xdg"), TMPDIR=str(self.tmp),
            # Webhooks to Switchyard on loopback over plain HTTP: MLflow's SSRF guard refuses
            # both unless told; and the webhook list is re-read each second, not each minute.
            MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https", MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
            MLFLOW_WEBHOOK_CACHE_TTL="1",
        )
        self.proc = Proc(
            "mlflow",
            [
                str(MLFLOW_VENV / "mlflow"), "server",
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{self.tmp / 'mlflow.db'}",
                "--artifacts-destination", str(self.tmp / "artifacts"),
                "--serve-artifacts",
            ],
            self.tmp / "mlflow.log",
            env=env,
            cwd=str(self.tmp),
        )
        self.procs.append(self.proc)
        self.proc.wait_until_ok(f"{self.uri}/health", MLFLOW_PATIENCE_S)

    def kill(self):
        self.proc.stop()

    def client(self, *commands):
        """Runs registry commands (lists of words) with MLflow's client; returns the versions it registered."""
        argv = [str(MLFLOW_VENV / "python"), str(REGISTRY_HELPER), self.uri]
        for c in commands:
            argv += [*c, "--"]
        env = dict(os.environ, XDG_CACHE_HOME=str(self.tmp / "xdg"), MLFLOW_ENABLE_ASYNC_LOGGING="false")
        done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, f"registry client failed:\n{done.stdout}\n{done.stderr}"
        # MLflow's client prints run links too: only the helper's own lines count.
        return [line.split()[1] for line in done.stdout.splitlines() if line.startswith("registered-version ")]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """MLflow with `fraud` versions 1 (mlp v1, @champion) and 2 (mlp v2, Production),
    3 (mlp v1 with a wrong `sha256` tag) and 4 (not ONNX); Switchyard with three
    backends on it: @champion, version 1 pinned, stage Production."""
    tmp = tmp_path_factory.mktemp("mlflow")
    procs = []
    try:
        reg = Registry(tmp, procs)
        reg.start()
        garbage = tmp / "garbage.onnx"
        garbage.write_bytes(b"this is not an ONNX model" * 10)
        versions = reg.client(
            ["register", "fraud", str(MLP / "1" / "model.onnx")],
            ["register", "fraud", str(MLP / "2" / "model.onnx")],
            ["register", "fraud", str(MLP / "1" / "model.onnx")],
            ["register", "fraud", str(garbage)],
            ["alias", "fraud", "champion", "1"],
            ["alias", "fraud", "hooked", "1"],
            ["stage", "fraud", "2", "Production"],
            ["tag", "fraud", "2", "sha256", hashlib.sha256((MLP / "2" / "model.onnx").read_bytes()).hexdigest()],
            ["tag", "fraud", "3", "sha256", "0" * 64],
        )
        assert versions == ["1", "2", "3", "4"]
        cache = tmp / "cache"
        ports = start_switchyard(
            tmp,
            f"""
backends:
  champion:
    kind: onnx
    repository: mlflow://127.0.0.1:{reg.port}/fraud@champion
    warmup: 1
    mlflow: {{cache_dir: {cache}/champion, poll_interval: 200ms, timeout: 5s}}
  pinned:
    kind: onnx
    repository: mlflow://127.0.0.1:{reg.port}/fraud/1
    warmup: 1
    mlflow: {{cache_dir: {cache}/pinned, poll_interval: 10m}}
  production:
    kind: onnx
    repository: mlflow://127.0.0.1:{reg.port}/fraud/Production
    warmup: 1
    mlflow: {{cache_dir: {cache}/production, poll_interval: 10m}}
  hooked:
    kind: onnx
    repository: mlflow://127.0.0.1:{reg.port}/fraud@hooked
    warmup: 1
    mlflow: {{cache_dir: {cache}/hooked, poll_interval: 1h, webhook_secret: {WEBHOOK_SECRET}}}
models:
  fraud:
    variants:
      - {{name: champion, backend: champion}}
  fraud-pinned:
    variants:
      - {{name: pinned, backend: pinned, model: fraud}}
  fraud-production:
    variants:
      - {{name: production, backend: production, model: fraud}}
  fraud-hooked:
    variants:
      - {{name: hooked, backend: hooked, model: fraud}}
""",
            procs,
        )
        yield {"reg": reg, "url": f"http://127.0.0.1:{ports['http']}",
               "metrics": f"http://127.0.0.1:{ports['metrics']}/metrics", "cache": cache,
               "hook": f"http://127.0.0.1:{ports['control']}/sources/mlflow/webhook"}
    finally:
        for p in reversed(procs):
            p.stop()


def infer(url, model, x):
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.flatten().tolist()}]}
    r = requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=10)
    return r


def probabilities(r):
    out = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def source(world, backend):
    ready = requests.get(f"{world['url']}/ready", timeout=5).json()
    return next(s for s in ready["sources"] if s["backend"] == backend)


def gauge(world, name, backend):
    text = requests.get(world["metrics"], timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + "{") and f'backend="{backend}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


def test_each_selector_serves_its_version(world):
    ref = mlp_reference()
    x = batch(rows=3, seed=7)
    for model, version in (("fraud", "1"), ("fraud-pinned", "1"), ("fraud-production", "2")):
        r = infer(world["url"], model, x)
        assert r.status_code == 200, r.text
        assert r.json()["model_version"] == version, (model, r.json())
        np.testing.assert_allclose(probabilities(r), ref(version, x), atol=1e-6)
    s = source(world, "champion")
    assert (s["reachable"], s["serving_version"], s["selector"], s["error"]) == (True, 1, "@champion", None)
    assert source(world, "production")["serving_version"] == 2
    assert gauge(world, "switchyard_model_source_up", "champion") == 1
    assert gauge(world, "switchyard_model_source_version", "production") == 2
    # The fetched file sits in the cache as a repository version, byte for byte.
    cached = world["cache"] / "champion" / "fraud" / "1" / "model.onnx"
    assert cached.read_bytes() == (MLP / "1" / "model.onnx").read_bytes()


def test_a_version_that_fails_verification_or_loading_never_replaces_the_served_one(world):
    reg, url = world["reg"], world["url"]
    x = batch(rows=1, seed=1)
    reg.client(["alias", "fraud", "champion", "3"])
    err = wait_for("the checksum refusal", lambda: source(world, "champion")["error"])
    assert "SHA-256" in err and "does not match" in err and source(world, "champion")["selected_version"] == 3, err
    assert infer(url, "fraud", x).json()["model_version"] == "1"
    reg.client(["alias", "fraud", "champion", "4"])
    err = wait_for("the load failure", lambda: (e := source(world, "champion")["error"]) and "version 4" in e and e)
    assert "failed to load" in err, err
    assert infer(url, "fraud", x).json()["model_version"] == "1"
    assert source(world, "champion")["reachable"] is True
    assert not (world["cache"] / "champion" / "fraud" / "4").exists()


def test_moving_the_alias_hot_swaps_with_no_failed_request(world):
    reg, url = world["reg"], world["url"]
    ref = mlp_reference()
    x = batch(rows=2, seed=3)
    seen, failures, stop = [], [], threading.Event()

    def load():
        with requests.Session() as s:
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 16], "data": x.flatten().tolist()}]}
            while not stop.is_set():
                r = s.post(f"{url}/v2/models/fraud/infer", json=body, timeout=10)
                if r.status_code != 200:
                    failures.append(r.text)
                else:
                    v = r.json()["model_version"]
                    np.testing.assert_allclose(probabilities(r), ref(v, x), atol=1e-6)
                    seen.append(v)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        wait_for("requests on version 1", lambda: "1" in seen)
        reg.client(["alias", "fraud", "champion", "2"])
        wait_for("requests on version 2", lambda: seen[-8:] == ["2"] * 8 if len(seen) >= 8 else False)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == [], failures[:3]
    # Version 1 retired: gone from the cache and from the served versions.
    wait_for("version 1 retired", lambda: not (world["cache"] / "champion" / "fraud" / "1").exists())
    meta = requests.get(f"{url}/v2/models/fraud", timeout=5).json()
    assert meta["versions"] == ["2"], meta
    s = source(world, "champion")
    assert (s["serving_version"], s["error"]) == (2, None), s


def test_triton_repository_unload_and_load_work_on_the_cache(world):
    url = world["url"]
    r = requests.post(f"{url}/v2/repository/models/fraud/unload", timeout=10)
    assert r.status_code == 200, r.text
    assert infer(url, "fraud", batch(rows=1, seed=2)).status_code in (400, 404)
    # Polls go on while unloaded (a later success time) and must neither fetch nor retire anything.
    before = source(world, "champion")["last_success_unix"]
    wait_for("polls while unloaded", lambda: source(world, "champion")["last_success_unix"] > before + 1)
    assert (world["cache"] / "champion" / "fraud" / "2" / "model.onnx").exists()
    r = requests.post(f"{url}/v2/repository/models/fraud/load", timeout=30)
    assert r.status_code == 200, r.text
    assert infer(url, "fraud", batch(rows=1, seed=2)).json()["model_version"] == "2"


def deliveries(world, result):
    text = requests.get(world["metrics"], timeout=5).text
    line = f'switchyard_mlflow_webhook_deliveries_total{{result="{result}"}} '
    return next((float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(line)), 0.0)


def test_a_webhook_applies_an_alias_move_at_once(world):
    """`hooked` polls hourly: only MLflow's signed webhook can make it serve version 2 within the wait."""
    reg, url = world["reg"], world["url"]
    x = batch(rows=1, seed=4)
    assert infer(url, "fraud-hooked", x).json()["model_version"] == "1"
    reg.client(["webhook", world["hook"], WEBHOOK_SECRET, "model_version_alias.created"])
    reg.client(["alias", "fraud", "hooked", "2"])
    wait_for("the webhook's sync", lambda: infer(url, "fraud-hooked", x).json()["model_version"] == "2")
    np.testing.assert_allclose(probabilities(infer(url, "fraud-hooked", x)), mlp_reference()("2", x), atol=1e-6)
    assert deliveries(world, "accepted") >= 1
    # Unsigned, wrongly signed, and not an event.
    body = b'{"entity":"model_version_alias","action":"created","data":{"name":"fraud","alias":"hooked","version":"1"}}'
    ts = str(int(time.time()))
    r = requests.post(world["hook"], data=body, timeout=5)
    assert r.status_code == 401, r.text
    r = requests.post(world["hook"], data=body, timeout=5, headers={
        "X-MLflow-Delivery-Id": "d1", "X-MLflow-Timestamp": ts, "X-MLflow-Signature": "v1,AAAA"})
    assert r.status_code == 401 and "does not verify" in r.json()["error"], r.text
    assert deliveries(world, "unauthorized") >= 2
    junk = b"not json"
    sig = base64.b64encode(hmac.new(WEBHOOK_SECRET.encode(), b"d2." + ts.encode() + b"." + junk, hashlib.sha256).digest())
    r = requests.post(world["hook"], data=junk, timeout=5, headers={
        "X-MLflow-Delivery-Id": "d2", "X-MLflow-Timestamp": ts, "X-MLflow-Signature": "v1," + sig.decode()})
    assert r.status_code == 400, r.text
    assert source(world, "hooked")["serving_version"] == 2


def test_an_unreachable_registry_keeps_the_loaded_version_serving(world):
    url = world["url"]
    world["reg"].kill()
    wait_for("the registry reported unreachable", lambda: source(world, "champion")["reachable"] is False)
    s = source(world, "champion")
    assert s["serving_version"] == 2 and s["error"], s
    assert gauge(world, "switchyard_model_source_up", "champion") == 0
    assert (gauge(world, "switchyard_model_source_sync_failures_total", "champion") or 0) >= 1
    r = infer(url, "fraud", batch(rows=1, seed=9))
    assert r.status_code == 200 and r.json()["model_version"] == "2", r.text
    # Still ready: what is loaded serves.
    assert requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 200
