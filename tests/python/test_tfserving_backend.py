"""Switchyard's `tfserving` backend (Switchyard calling TensorFlow Serving) over
REST and over gRPC: V2 clients (tritonclient HTTP and gRPC) and a TF Serving
client (`ovmsclient`, `requests`) through Switchyard to TF Serving, with
answers equal to onnxruntime run directly on the same files; the batch
dimension kept; every datatype and BYTES (b64) carried; a TF type KServe V2
has no datatype for refused with a 400 that names it; a model that is not
AVAILABLE not ready; a backend down, slow, or with a dead endpoint; and an A/B
split between a `tfserving` variant and an `onnx` one.

TF Serving itself cannot be installed here: `tfserving_standin.py` stands in
(TF Serving's REST and gRPC APIs over onnxruntime, from the repo's protos),
and its gRPC side is checked against the real `ovmsclient` gRPC client first
(its REST side is in test_tfserving.py). KServe's Python model server was
considered as a second, real server for the REST transport and not used: its
V1 protocol has no `GetModelMetadata` signature (its `/v1/models/{m}` answers
`{"name", "ready"}`), which this backend types every answer by, and no
columnar `inputs` form.

Run: .venv/bin/python -m pytest tests/python/test_tfserving_backend.py -q
(after `cargo build`; set SWITCHYARD_BIN to test another binary).
"""

from harness import REPO, Proc, free_port, mlp_reference, start_switchyard  # first: sets XDG_CACHE_HOME

import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from ovmsclient import make_grpc_client, make_http_client  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

MODELS = REPO / "examples" / "models"
TEST_MODELS = REPO / "tests" / "models"
TOLERANCE = 1e-6
PROTOCOLS = ["rest", "grpc"]
PATIENCE_S = 20.0


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """The TF Serving stand-in, REST and gRPC, with `mlp`, `dtypes` and three
    copies of `mlp` carrying one fault each. Yields (rest host:port, grpc host:port)."""
    tmp = tmp_path_factory.mktemp("tf-standin")
    rest, grpc_port = free_port(), free_port()
    mlp = MODELS / "mlp"
    p = Proc(
        "tfserving-standin",
        [sys.executable, str(REPO / "tests" / "python" / "tfserving_standin.py"), str(rest),
         f"mlp={mlp}", f"dtypes={TEST_MODELS / 'dtypes'}", f"slow={mlp}", f"loading={mlp}", f"complex={mlp}",
         "--delay", "slow=5", "--loading", "loading", "--complex-output", "complex",
         "--grpc-port", str(grpc_port), "--stubs-dir", str(tmp / "stubs")],
        tmp / "standin.log",
    )
    try:
        p.wait_until_ok(f"http://127.0.0.1:{rest}/v1/models/mlp", PATIENCE_S)
        # The gRPC port opens after the REST one is asked for: wait on an answer there too.
        deadline = time.monotonic() + PATIENCE_S
        while True:
            try:
                make_grpc_client(f"127.0.0.1:{grpc_port}").get_model_status("mlp")
                break
            except Exception:
                if time.monotonic() > deadline:
                    pytest.fail(f"stand-in gRPC not serving:\n{p.log()}")
                time.sleep(0.05)
        yield f"127.0.0.1:{rest}", f"127.0.0.1:{grpc_port}"
    finally:
        p.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin):
    """Switchyard with, per protocol, a `tfserving` backend on the stand-in, one
    with a dead second endpoint, one on a dead port, and an A/B route between
    a `tfserving` variant and an `onnx` one. Yields (ports, process, dead endpoint)."""
    tmp = tmp_path_factory.mktemp("tf-backend")
    rest, grpc_ep = standin
    dead = f"127.0.0.1:{free_port()}"
    procs = []
    routes = []
    for p in PROTOCOLS:
        routes += [
            f"  mlp_{p}:\n    variants: [{{name: main, backend: tf_{p}, model: mlp}}]\n",
            f"  mlp_v1_{p}:\n    variants: [{{name: main, backend: tf_{p}, model: mlp, version: 1}}]\n",
            f"  dtypes_{p}:\n    variants: [{{name: main, backend: tf_{p}, model: dtypes}}]\n",
            f"  slow_{p}:\n    variants: [{{name: main, backend: tf_{p}, model: slow}}]\n",
            f"  loading_{p}:\n    variants: [{{name: main, backend: tf_{p}, model: loading}}]\n",
            f"  complex_{p}:\n    variants: [{{name: main, backend: tf_{p}, model: complex}}]\n",
            f"  pair_{p}:\n    variants: [{{name: main, backend: pair_{p}, model: mlp}}]\n",
            f"  down_{p}:\n    variants: [{{name: main, backend: down_{p}, model: mlp}}]\n",
            f"  probed_{p}:\n    variants: [{{name: main, backend: probed_{p}, model: mlp}}]\n",
        ]
    try:
        ports = start_switchyard(
            tmp,
            f"""
routing:
  sticky_header: x-user-id
backends:
  local:
    kind: onnx
    repository: {MODELS}
    version_policy: {{all: true}}
  tf_rest:
    kind: tfserving
    endpoints: ["http://{rest}"]
    timeout: 1s
  tf_grpc:
    kind: tfserving
    protocol: grpc
    endpoints: ["{grpc_ep}"]
    timeout: 1s
    max_message_bytes: 8388608
  pair_rest:
    kind: tfserving
    endpoints: ["http://{rest}", "http://{dead}"]
    eject_after_failures: 1
    eject_for: 60s
  pair_grpc:
    kind: tfserving
    protocol: grpc
    endpoints: ["{grpc_ep}", "{dead}"]
    eject_after_failures: 1
    eject_for: 60s
  probed_rest:
    kind: tfserving
    endpoints: ["http://{rest}", "http://{dead}"]
    health_check: {{interval: 500ms, timeout: 500ms, unhealthy_after: 1, healthy_after: 1}}
  probed_grpc:
    kind: tfserving
    protocol: grpc
    endpoints: ["{grpc_ep}", "{dead}"]
    health_check: {{interval: 500ms, timeout: 500ms, unhealthy_after: 1, healthy_after: 1}}
  down_rest:
    kind: tfserving
    endpoints: ["http://{dead}"]
  down_grpc:
    kind: tfserving
    protocol: grpc
    endpoints: ["{dead}"]
models:
{''.join(routes)}  ab:
    variants:
      - {{name: tf, backend: tf_rest, model: mlp, version: 2, weight: 50}}
      - {{name: onnx, backend: local, model: mlp, version: 2, weight: 50}}
""",
            procs,
            grpc_max_message_bytes=8388608,
        )
        yield ports, procs[-1], dead
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.fixture(scope="module")
def reference():
    return mlp_reference()


def rows(n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def url(server):
    return f"127.0.0.1:{server[0]['http']}"


def v2_infer(server, model, x, outputs=None):
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    if outputs:
        body["outputs"] = [{"name": o} for o in outputs]
    return requests.post(f"http://{url(server)}/v2/models/{model}/infer", json=body, timeout=30)


def test_standin_grpc_agrees_with_ovmsclient(standin, reference):
    client = make_grpc_client(standin[1])
    x = rows()
    for version in (1, 2):
        np.testing.assert_allclose(client.predict({"input": x}, "mlp", model_version=version),
                                   reference(str(version), x), atol=TOLERANCE)
    assert {v: s["state"] for v, s in client.get_model_status("mlp").items()} == {1: "AVAILABLE", 2: "AVAILABLE"}
    assert client.get_model_status("loading")[2]["state"] == "LOADING"
    meta = client.get_model_metadata("mlp", model_version=2)
    assert meta["inputs"] == {"input": {"dtype": "DT_FLOAT", "shape": [-1, 16]}}
    assert meta["outputs"] == {"probabilities": {"dtype": "DT_FLOAT", "shape": [-1, 4]}}
    with pytest.raises(Exception, match=r"Servable not found for request: Latest\(nope\)"):
        client.predict({"input": x}, "nope")


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_v2_clients_match_onnxruntime_and_keep_the_batch(server, reference, protocol):
    ports = server[0]
    x = rows(5)
    http = httpclient.InferenceServerClient(url(server))
    grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}")
    for model, version in ((f"mlp_{protocol}", "2"), (f"mlp_v1_{protocol}", "1")):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = http.infer(model, [inp]).as_numpy("probabilities")
        assert out.shape == (5, 4)
        np.testing.assert_allclose(out, reference(version, x), atol=TOLERANCE)
        ginp = grpcclient.InferInput("input", list(x.shape), "FP32")
        ginp.set_data_from_numpy(x)
        gres = grpc.infer(model, [ginp])
        assert gres.get_response().model_version == version
        np.testing.assert_allclose(gres.as_numpy("probabilities"), reference(version, x), atol=TOLERANCE)
    assert http.is_model_ready(f"mlp_{protocol}")
    meta = http.get_model_metadata(f"mlp_{protocol}")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_tf_client_through_the_tf_backend(server, reference, protocol):
    x = rows(4)
    client = make_http_client(url(server))
    np.testing.assert_allclose(client.predict({"input": x}, f"mlp_{protocol}"), reference("2", x), atol=TOLERANCE)
    base = f"http://{url(server)}/v1/models/mlp_{protocol}"
    r = requests.post(f"{base}:predict", json={"instances": x.tolist()}, timeout=30)
    assert r.status_code == 200, r.text
    preds = np.array(r.json()["predictions"], np.float32)
    assert preds.shape == (4, 4)
    np.testing.assert_allclose(preds, reference("2", x), atol=TOLERANCE)
    status = requests.get(base, timeout=10).json()
    assert status["model_version_status"][0]["state"] == "AVAILABLE"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_datatype_and_bytes(server, protocol):
    ref = ort.InferenceSession(str(TEST_MODELS / "dtypes" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {
        "f32": np.array([[1.5, -2.0], [np.nan, np.inf]], np.float32), "f64": np.array([[0.25, 1e100]] * 2),
        "f16": np.array([[0.5, 2.0]] * 2, np.float16), "i8": np.array([[-5, 7]] * 2, np.int8),
        "i16": np.array([[300, -300]] * 2, np.int16), "i32": np.array([[70000, -1]] * 2, np.int32),
        "i64": np.array([[2**40, -(2**40)]] * 2, np.int64), "u8": np.array([[0, 255]] * 2, np.uint8),
        "b": np.array([[True, False]] * 2), "s": np.array([["hello"], ["wörld"]], dtype=object),
    }
    want = dict(zip([o.name for o in ref.get_outputs()], ref.run(None, feeds)))
    client = httpclient.InferenceServerClient(url(server))
    inputs = []
    for name, value in feeds.items():
        datatype = "BYTES" if value.dtype == object else httpclient.np_to_triton_dtype(value.dtype)
        i = httpclient.InferInput(name, list(value.shape), datatype)
        if value.dtype == object:
            value = np.array([[v.encode() for v in r] for r in value], dtype=object)
        i.set_data_from_numpy(value, binary_data=True)
        inputs.append(i)
    res = client.infer(f"dtypes_{protocol}", inputs)
    for name, value in want.items():
        got = res.as_numpy(name)
        assert got.shape == value.shape, name
        if value.dtype == object:
            assert list(got.reshape(-1)) == [v.encode() for v in value.reshape(-1)], name
        else:
            np.testing.assert_array_equal(got.astype(value.dtype), value, err_msg=name)
    # A TF client's b64 string reaches the model as its bytes.
    row = {k: v[0].tolist() for k, v in feeds.items() if k not in ("s", "f32")}
    row.update(f32=[1.0, 2.0], s=[{"b64": "aGVsbG8="}])
    r = requests.post(f"http://{url(server)}/v1/models/dtypes_{protocol}:predict", json={"instances": [row]}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0]["s_out"] == ["hello"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_dtype_that_cannot_map_is_a_400_naming_it(server, protocol):
    # The signature of `complex` also has an output `c` of DT_COMPLEX64.
    x = rows(2)
    r = v2_infer(server, f"complex_{protocol}", x)
    assert r.status_code == 400, r.text
    assert "output 'c' has TF type DT_COMPLEX64" in r.json()["error"]
    r = requests.get(f"http://{url(server)}/v2/models/complex_{protocol}", timeout=10)
    assert r.status_code == 400 and "DT_COMPLEX64" in r.text, r.text
    r = requests.post(f"http://{url(server)}/v1/models/complex_{protocol}:predict", json={"instances": x.tolist()},
                      timeout=10)
    assert r.status_code == 400 and "DT_COMPLEX64" in r.json()["error"], r.text
    if protocol == "grpc":
        # Asking only for the outputs V2 can carry works where TF can filter outputs (REST answers them all).
        r = v2_infer(server, f"complex_{protocol}", x, outputs=["probabilities"])
        assert r.status_code == 200, r.text
    # A datatype other than the signature's is refused, never cast.
    body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP64", "data": [0.5] * 16}]}
    r = requests.post(f"http://{url(server)}/v2/models/mlp_{protocol}/infer", json=body, timeout=10)
    assert r.status_code == 400, r.text
    assert "input 'input' is FP64 but the model's signature takes FP32 (DT_FLOAT)" in r.json()["error"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_model_not_available_is_not_ready(server, protocol):
    base = f"http://{url(server)}/v2/models/loading_{protocol}"
    r = requests.get(f"{base}/ready", timeout=10)
    assert r.status_code == 503 and "is not ready" in r.json()["error"], r.text
    assert requests.get(f"http://{url(server)}/v2/models/mlp_{protocol}/ready", timeout=10).status_code == 200
    status = requests.get(f"http://{url(server)}/v1/models/loading_{protocol}", timeout=10).json()
    assert status["model_version_status"][0]["state"] == "UNKNOWN", status
    # TF Serving's own answer for a servable that is not loaded: NOT_FOUND, relayed with its words.
    r = v2_infer(server, f"loading_{protocol}", rows(1))
    assert r.status_code == 404, r.text
    assert "Servable not found" in r.json()["error"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_backend_down_is_502_and_not_ready(server, protocol):
    r = v2_infer(server, f"down_{protocol}", rows(1))
    assert r.status_code == 502, r.text
    # Not reachable: the readiness question itself fails, as for the V2 backends.
    assert requests.get(f"http://{url(server)}/v2/models/down_{protocol}/ready", timeout=10).status_code == 502
    r = requests.post(f"http://{url(server)}/v1/models/down_{protocol}:predict", json={"instances": [[0.0] * 16]},
                      timeout=10)
    assert r.status_code == 502 and "error" in r.json(), r.text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_slow_backend_is_504(server, protocol):
    # The stand-in holds every `slow` predict 5 s; the backend's timeout is 1 s.
    r = v2_infer(server, f"slow_{protocol}", rows(1))
    assert r.status_code == 504, r.text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_dead_endpoint_is_ejected(server, reference, protocol):
    _, sy, dead = server
    x = rows(2)
    for _ in range(12):
        r = v2_infer(server, f"pair_{protocol}", x)
        # A refused connection never reached a server: tried on the live endpoint.
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]).reshape(2, 4), reference("2", x),
                                   atol=TOLERANCE)
    ejected = [line for line in sy.log().splitlines() if "endpoint ejected" in line and f"pair_{protocol}" in line]
    assert ejected and all(dead in line for line in ejected), sy.log()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_probes_ask_the_status_api(server, standin, protocol):
    # TF Serving has no server health call: a probe asks its status API about a model no
    # server has, and TF's NOT_FOUND is an endpoint serving; the dead one goes out of rotation.
    _, sy, dead = server
    live = standin[0] if protocol == "rest" else standin[1]

    def out_of_rotation(endpoint):
        return [line for line in sy.log().splitlines()
                if "out of rotation" in line and f"probed_{protocol}" in line and endpoint in line]

    deadline = time.monotonic() + PATIENCE_S
    while not out_of_rotation(dead):
        assert time.monotonic() < deadline, sy.log()
        time.sleep(0.05)
    assert not out_of_rotation(live), sy.log()
    for _ in range(6):
        assert v2_infer(server, f"probed_{protocol}", rows(1)).status_code == 200
    assert requests.get(f"http://{url(server)}/v2/models/probed_{protocol}/ready", timeout=10).status_code == 200


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_client_headers_reach_tf_serving(server, standin, protocol):
    tenant = f"tenant-{protocol}"
    x = rows(1)
    body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    r = requests.post(f"http://{url(server)}/v2/models/mlp_{protocol}/infer", json=body,
                      headers={"x-tenant": tenant}, timeout=10)
    assert r.status_code == 200, r.text
    seen = requests.get(f"http://{standin[0]}/standin/tenants", timeout=10).json()
    assert [protocol, "mlp", tenant] in seen, seen


def test_ab_split_between_tfserving_and_onnx(server, reference):
    x = rows(3)
    seen = {}
    for user in range(40):
        r = requests.post(
            f"http://{url(server)}/v2/models/ab/infer",
            json={"inputs": [{"name": "input", "shape": [3, 16], "datatype": "FP32", "data": x.reshape(-1).tolist()}]},
            headers={"x-user-id": f"user-{user}"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        variant = r.headers["x-switchyard-variant"]
        seen[variant] = seen.get(variant, 0) + 1
        out = np.array(r.json()["outputs"][0]["data"], np.float32).reshape(3, 4)
        np.testing.assert_allclose(out, reference("2", x), atol=TOLERANCE)
    assert set(seen) == {"tf", "onnx"}, seen


def test_metrics_and_control_api_name_the_kind(server):
    ports = server[0]
    for protocol in PROTOCOLS:
        assert v2_infer(server, f"mlp_{protocol}", rows(1)).status_code == 200
    text = requests.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=10).text
    assert any(line.startswith("switchyard_requests_total") and 'model="mlp_rest"' in line and 'code="200"' in line
               for line in text.splitlines()), text[:2000]
    assert any(line.startswith("switchyard_backend_request_duration_seconds_count") and 'model="mlp_grpc"' in line
               for line in text.splitlines())
    config = requests.get(f"http://127.0.0.1:{ports['control']}/config", timeout=10).json()
    assert config["backends"]["tf_rest"] == "tfserving" and config["backends"]["tf_grpc"] == "tfserving"
