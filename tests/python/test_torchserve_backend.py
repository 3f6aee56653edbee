"""`kind: torchserve` backends (docs/torchserve-backend.md) against a real
TorchServe (tests/python/torchserve_server.py: its Java front end and Python
worker, the handler tests/torchserve/handler.py as `adder` 1.0 and 2.0 and
`slow`), one server and one Switchyard for the module; the tests run in file
order, TorchServe killed last.

The clients are TorchServe's: `curl` and `requests` on Switchyard's
TorchServe REST front end (`/predictions`, `/explanations`), TorchServe's gRPC
stubs (generated from runtime/proto/torchserve) on its gRPC front end, and
plain HTTP on `listeners.torchserve_management`; one test sends the same
body as a KServe V2 client would (a BYTES input `data`).

Run: .venv/bin/python -m pytest tests/python/test_torchserve_backend.py -q
(after `scripts/setup.sh`, which creates .switchyard/venvs/torchserve, and `cargo build`).
"""

from harness import start_switchyard  # first: sets XDG_CACHE_HOME

import hashlib  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
import requests  # noqa: E402

from torchserve_server import TorchServe  # noqa: E402
from harness import free_port  # noqa: E402
from test_torchserve_front import stubs  # noqa: E402,F401 - the gRPC stubs fixture

PATIENCE_S = 60.0
POLL_S = 0.05


def wait_for(what, check, patience_s=PATIENCE_S):
    deadline = time.monotonic() + patience_s
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() >= deadline:
            pytest.fail(f"not within {patience_s}s: {what}")
        time.sleep(POLL_S)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torchserve")
    procs = []
    try:
        ts = TorchServe(tmp, procs)
        ts.archive("slow", "1.0")
        ts.start()
        # 1.0 batches up to 4 requests (waiting up to 2 s for them); 2.0 takes them one by one.
        ts.register("adder-1.0", batch_size=4, max_batch_delay_ms=2000)
        ts.register("adder-2.0")
        ts.register("slow-1.0")
        mgmt_port = free_port()
        p = ts.ports
        rest = f"endpoints: ['http://127.0.0.1:{p['inference']}']"
        ports = start_switchyard(
            tmp,
            f"""  torchserve_management:
    address: 127.0.0.1:{mgmt_port}
    backend: ts
backends:
  ts:
    kind: torchserve
    {rest}
    management: http://127.0.0.1:{p['management']}
    timeout: 10s
    health_check: {{interval: 500ms, timeout: 500ms}}
  ts-grpc:
    kind: torchserve
    protocol: grpc
    endpoints: ['127.0.0.1:{p['grpc']}']
    management: http://127.0.0.1:{p['management']}
  ts-short:
    kind: torchserve
    {rest}
    timeout: 1s
models:
  adder:
    variants:
      - {{name: v1, backend: ts, version: "1.0"}}
  adder-v2:
    variants:
      - {{name: v2, backend: ts, model: adder, version: "2.0"}}
  adder-ab:
    variants:
      - {{name: one, backend: ts, model: adder, version: "1.0", weight: 50}}
      - {{name: two, backend: ts, model: adder, version: "2.0", weight: 50}}
  adder-batched:
    variants:
      - name: v1
        backend: ts
        model: adder
        version: "1.0"
        batching: {{max_batch_size: 4, max_queue_delay: 1s}}
  adder-grpc:
    variants:
      - {{name: g, backend: ts-grpc, model: adder, version: "2.0"}}
  slow:
    variants:
      - {{name: s, backend: ts-short}}
""",
            procs,
            grpc_max_message_bytes=1024 * 1024,
        )
        # The listener config above is spliced after start_switchyard's own listeners.
        yield {
            "ts": ts,
            "url": f"http://127.0.0.1:{ports['http']}",
            "grpc": f"127.0.0.1:{ports['grpc']}",
            "mgmt": f"http://127.0.0.1:{mgmt_port}",
            "metrics": f"http://127.0.0.1:{ports['metrics']}/metrics",
        }
    finally:
        for proc in reversed(procs):
            proc.stop()


def infer(world, model, body, version=None, explain=False, headers=None):
    """A TorchServe client's call on Switchyard's REST front end; returns (status, answer, response)."""
    api = "explanations" if explain else "predictions"
    path = f"{model}/{version}" if version else model
    h = {"Content-Type": "application/json", **(headers or {})}
    r = requests.post(f"{world['url']}/{api}/{path}", data=json.dumps(body), headers=h, timeout=30)
    if r.status_code != 200:
        return r.status_code, r.text, r
    return 200, r.json(), r


def test_curl_predictions_equal_torchserve_s_own_answer(world):
    direct = world["ts"].predict("adder", json.dumps([1, 2, 3.5]), "1.0")
    out = subprocess.run(
        ["curl", "-sS", "-H", "Expect:", "-H", "content-type: application/json", "-D", "-",
         f"{world['url']}/predictions/adder", "-d", "[1, 2, 3.5]"],
        capture_output=True, check=True, text=True, timeout=30,
    ).stdout
    head, _, payload = out.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 200"), out
    assert "x-switchyard-variant: v1" in head
    # The handler's answer, byte for byte.
    assert payload == direct.text
    assert json.loads(payload) == {"sum": 6.5, "batch_size": 1, "version": "1.0", "explain": False}
    # Counted like any backend's call.
    text = requests.get(world["metrics"], timeout=5).text
    line = 'switchyard_backend_request_duration_seconds_count{model="adder",variant="v1"} '
    assert any(l.startswith(line) and float(l.rsplit(" ", 1)[1]) >= 1 for l in text.splitlines()), text[:2000]


def test_a_variant_s_version_reaches_that_version(world):
    status, got, _ = infer(world, "adder-v2", [5])
    assert (status, got["version"], got["sum"]) == (200, "2.0", 5)
    # A version in the path with no variant pinned to it: the backend is asked for it.
    status, got, _ = infer(world, "adder-v2", [5], version="1.0")
    assert (status, got["version"]) == (200, "1.0"), got


def test_a_v2_client_s_bytes_body_reaches_torchserve_too(world):
    req = {
        "inputs": [{"name": "data", "datatype": "BYTES", "shape": [1], "data": ["[4, 5]"]}],
        "parameters": {"content_type": "application/json"},
    }
    r = requests.post(f"{world['url']}/v2/models/adder-v2/infer", json=req, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert (out["name"], out["datatype"], out["shape"]) == ("data", "BYTES", [1])
    assert json.loads(out["data"][0])["sum"] == 9


def test_an_ab_split_reaches_both_versions(world):
    seen = {infer(world, "adder-ab", [1])[1]["version"] for _ in range(40)}
    assert seen == {"1.0", "2.0"}


def test_switchyard_s_batch_reaches_the_handler_as_one_torchserve_batch(world):
    results, errors = [], []

    def one(i):
        try:
            status, got, r = infer(world, "adder-batched", [i, i])
            assert status == 200, got
            results.append((got, r.headers.get("x-switchyard-batch-size")))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # Each answer is its own request's, and all four rode one Switchyard batch,
    # which TorchServe's worker saw as one batch of four.
    assert sorted(g["sum"] for g, _ in results) == [0, 2, 4, 6]
    assert {h for _, h in results} == {"4"}, results
    assert {g["batch_size"] for g, _ in results} == {4}, results


def test_an_explanation_goes_to_the_explanations_api(world):
    status, got, _ = infer(world, "adder-v2", [1], explain=True)
    assert (status, got["explain"]) == (200, True), got
    # The explanations API of the gRPC transport does not exist: said, not faked.
    status, text, _ = infer(world, "adder-grpc", [1], explain=True)
    assert status == 400 and "no explanations" in text, text


def test_torchserve_s_4xx_reaches_the_client_with_its_message(world):
    status, text, r = infer(world, "adder-v2", {"fail": 422})
    assert status == 422, text
    assert "asked to fail with 422" in text
    status, text, _ = infer(world, "adder-v2", {"values": "not a list"})
    assert status == 400 and "JSON list of numbers" in text, text
    # A handler that crashes is TorchServe's 503 "Prediction failed": the backend failed (502).
    status, text, _ = infer(world, "adder-v2", {"values": [1], "crash": True})
    assert status == 502 and "Prediction failed" in text, text


def test_grpc_transport_gives_the_same_answers(world):
    direct = world["ts"].predict("adder", json.dumps([2, 3]), "2.0").json()
    status, got, _ = infer(world, "adder-grpc", [2, 3])
    assert status == 200 and got == direct, got
    # TorchServe's gRPC errors keep their meaning.
    status, text, _ = infer(world, "adder-grpc", {"fail": 400})
    assert status == 400 and "asked to fail" in text, text


def test_torchserve_s_grpc_stubs_through_switchyard(world, stubs):
    """TorchServe's own gRPC client on Switchyard's gRPC port, to both transports."""
    import grpc

    pb, pb_grpc = stubs
    direct = world["ts"].predict("adder", json.dumps([3, 4]), "2.0").json()
    with grpc.insecure_channel(world["grpc"]) as ch:
        stub = pb_grpc.InferenceAPIsServiceStub(ch)
        for model in ("adder-v2", "adder-grpc"):
            got = stub.Predictions(pb.PredictionsRequest(model_name=model, input={"data": b"[3, 4]"}), timeout=30)
            assert json.loads(got.prediction) == direct, model
        with pytest.raises(grpc.RpcError) as e:
            stub.Predictions(pb.PredictionsRequest(model_name="adder-grpc", input={"data": b'{"fail": 400}'}),
                             timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "asked to fail" in e.value.details()


def test_metadata_lists_torchserve_s_versions(world):
    meta = requests.get(f"{world['url']}/v2/models/adder-v2", timeout=5).json()
    assert meta["platform"] == "torchserve" and sorted(meta["versions"]) == ["1.0", "2.0"], meta
    assert meta["inputs"] == [{"name": "data", "datatype": "BYTES", "shape": [-1]}]


def test_a_slow_handler_answers_504(world):
    status, text, _ = infer(world, "slow", {"values": [1], "sleep": 3})
    assert status == 504, text


def test_management_pass_through_lists_describes_and_scales(world):
    m = world["mgmt"]
    listed = requests.get(f"{m}/models", timeout=10).json()
    assert {x["modelName"] for x in listed["models"]} == {"adder", "slow"}, listed
    described = requests.get(f"{m}/models/adder/2.0", timeout=10).json()
    assert described[0]["modelVersion"] == "2.0" and len(described[0]["workers"]) == 1
    # Unknown model: TorchServe's own 404, relayed.
    r = requests.get(f"{m}/models/nope", timeout=10)
    assert r.status_code == 404 and r.json()["type"] == "ModelNotFoundException", r.text
    ready = f"{world['url']}/v2/models/adder-v2/ready"
    assert requests.get(ready, timeout=5).status_code == 200
    # No workers: the model is not ready through Switchyard.
    r = requests.put(f"{m}/models/adder/2.0", params={"min_worker": 0, "max_worker": 0, "synchronous": "true"},
                     timeout=60)
    assert r.status_code == 200, r.text
    wait_for("adder 2.0 not ready", lambda: requests.get(ready, timeout=5).status_code != 200)
    # TorchServe's "no worker" 503 is unavailability, not a backend failure.
    status, text, _ = infer(world, "adder-v2", [1])
    assert status == 503 and "no worker" in text, text
    r = requests.put(f"{m}/models/adder/2.0", params={"min_worker": 1, "synchronous": "true"}, timeout=60)
    assert r.status_code == 200, r.text
    wait_for("adder 2.0 ready again", lambda: requests.get(ready, timeout=5).status_code == 200)
    assert infer(world, "adder-v2", [7])[1]["sum"] == 7


def test_management_calls_need_their_permissions_when_auth_is_on(world, tmp_path):
    """A second Switchyard with `auth:` relaying to the same TorchServe."""
    sha = lambda k: hashlib.sha256(k.encode()).hexdigest()  # noqa: E731
    mgmt_port, procs = free_port(), []
    try:
        start_switchyard(
            tmp_path,
            f"""  torchserve_management: {{address: '127.0.0.1:{mgmt_port}', backend: ts}}
auth:
  api_keys:
    - {{principal: reader, sha256: "sha256:{sha('reader-key')}", permissions: ["model:adder:metadata"]}}
    - {{principal: admin, sha256: "sha256:{sha('admin-key')}", permissions: ["model:adder:admin", "torchserve-management"]}}
backends:
  ts:
    kind: torchserve
    endpoints: ['http://127.0.0.1:{world["ts"].ports["inference"]}']
    management: http://127.0.0.1:{world["ts"].ports["management"]}
""",
            procs,
        )
        m = f"http://127.0.0.1:{mgmt_port}"

        def call(method, path, key=None, **params):
            headers = {"x-api-key": key} if key else {}
            return requests.request(method, f"{m}{path}", params=params, headers=headers, timeout=60)

        r = call("GET", "/models/adder")
        assert r.status_code == 401 and r.json()["type"] == "UnauthorizedException", r.text
        assert call("GET", "/models/adder", "reader-key").status_code == 200
        r = call("PUT", "/models/adder/2.0", "reader-key", min_worker=1)
        assert r.status_code == 403 and "model:adder/2.0:admin" in r.json()["message"], r.text
        r = call("GET", "/models", "reader-key")
        assert r.status_code == 403 and "torchserve-management" in r.json()["message"], r.text
        assert call("GET", "/models", "admin-key").status_code == 200
        r = call("PUT", "/models/adder/2.0", "admin-key", min_worker=1, synchronous="true")
        assert r.status_code == 200, r.text
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_torchserve_killed_answers_unavailable(world):
    world["ts"].kill()
    status, text, _ = infer(world, "adder-v2", [1])
    assert status in (502, 503), text
    wait_for("not ready", lambda: requests.get(f"{world['url']}/v2/models/adder-v2/ready", timeout=5).status_code != 200)
    r = requests.get(f"{world['mgmt']}/models", timeout=10)
    assert r.status_code == 502 and r.json()["type"] == "BadGatewayException", r.text
