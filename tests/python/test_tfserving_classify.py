"""TF Serving's Classify and Regress through Switchyard to a `kind: tfserving`
backend: REST `:classify`/`:regress` relayed to a REST backend and gRPC
`Classify`/`Regress` to a gRPC one, answers equal to the backend's own
direct answer; labels and versions pick the variant (and so the model
version the backend runs); the backend's own 4xx relayed with its words;
authentication and the `infer` permission enforced; a backend down is a
502/UNAVAILABLE and a slow one a 504/DEADLINE_EXCEEDED; a model on the
embedded runtime keeps TF Serving's refusal of a predict-only signature; and
a call on the other transport than the backend's is a 400/INVALID_ARGUMENT
that says why.

TF Serving itself cannot be installed here: `tfserving_standin.py` stands in
(its `classification` and `regression` signatures over each ONNX model).
gRPC clients use the real TF Serving protos `ovmsclient` bundles.

Run: .venv/bin/python -m pytest tests/python/test_tfserving_classify.py -q
(after `cargo build`; set SWITCHYARD_BIN to test another binary).
"""

from harness import REPO, Proc, free_port, start_switchyard  # first: sets XDG_CACHE_HOME

import hashlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
from ovmsclient.tfs_compat.protos.tensorflow.core.example import example_pb2, feature_pb2  # noqa: E402
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

MODELS = REPO / "examples" / "models"
PATIENCE_S = 20.0
ALICE = [("x-api-key", "alice-key")]
BOB = [("x-api-key", "bob-key")]


def sha(key):
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """The stand-in with `mlp` (versions 1 and 2) and `slow` (every call held 5 s).
    Yields (rest host:port, grpc host:port)."""
    tmp = tmp_path_factory.mktemp("tf-classify-standin")
    rest, grpc_port = free_port(), free_port()
    p = Proc(
        "tfserving-standin",
        [sys.executable, str(REPO / "tests" / "python" / "tfserving_standin.py"), str(rest),
         f"mlp={MODELS / 'mlp'}", f"slow={MODELS / 'mlp'}", "--delay", "slow=5",
         "--grpc-port", str(grpc_port), "--stubs-dir", str(tmp / "stubs")],
        tmp / "standin.log",
    )
    try:
        p.wait_until_ok(f"http://127.0.0.1:{rest}/v1/models/mlp", PATIENCE_S)
        deadline = time.monotonic() + PATIENCE_S
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            while True:
                try:
                    grpc.channel_ready_future(ch).result(timeout=0.5)
                    break
                except grpc.FutureTimeoutError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"stand-in gRPC not serving:\n{p.log()}")
        yield f"127.0.0.1:{rest}", f"127.0.0.1:{grpc_port}"
    finally:
        p.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, standin):
    """Switchyard with auth on (alice may infer, bob may only read metadata),
    per transport a route of two variants on the stand-in (stable: version 1,
    canary: version 2, label `beta`; a content-routing rule sends
    `signature_name: regression` to canary), one on a dead port and one on `slow`;
    and `local_mlp` on the embedded runtime. Yields (ports, grpc channel)."""
    tmp = tmp_path_factory.mktemp("tf-classify")
    rest, grpc_ep = standin
    dead = f"127.0.0.1:{free_port()}"
    procs = []
    routes = ""
    for t in ("rest", "grpc"):
        routes += (
            f"  cls_{t}:\n    rules:\n"
            "      - {name: regressions, match: {parameters: {signature_name: regression}}, variant: canary}\n"
            f"    variants:\n"
            f"      - {{name: stable, backend: tf_{t}, model: mlp, version: 1, weight: 100}}\n"
            f"      - {{name: canary, backend: tf_{t}, model: mlp, version: 2, weight: 0, labels: [beta]}}\n"
            f"  down_{t}:\n    variants: [{{name: main, backend: down_{t}, model: mlp}}]\n"
            f"  slow_{t}:\n    variants: [{{name: main, backend: tf_{t}, model: slow}}]\n"
        )
    try:
        ports = start_switchyard(
            tmp,
            f"""
auth:
  api_keys:
    - {{principal: alice, sha256: "sha256:{sha('alice-key')}", permissions: ["model:*:infer", "model:*:metadata"]}}
    - {{principal: bob, sha256: "sha256:{sha('bob-key')}", permissions: ["model:*:metadata"]}}
backends:
  local:
    kind: onnx
    repository: {MODELS}
  tf_rest:
    kind: tfserving
    endpoints: ["http://{rest}"]
    timeout: 1s
  tf_grpc:
    kind: tfserving
    protocol: grpc
    endpoints: ["{grpc_ep}"]
    timeout: 1s
  down_rest:
    kind: tfserving
    endpoints: ["http://{dead}"]
  down_grpc:
    kind: tfserving
    protocol: grpc
    endpoints: ["{dead}"]
models:
{routes}  local_mlp:
    variants: [{{name: main, backend: local, model: mlp}}]
""",
            procs,
            grpc_max_message_bytes=4 * 1024 * 1024,
        )
        channel = grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}")
        yield ports, channel
        channel.close()
    finally:
        for p in reversed(procs):
            p.stop()


def rows(n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def rest_body(x, signature="classification"):
    return {"signature_name": signature, "examples": [{"input": r.tolist()} for r in x]}


def post(host, path, body, headers=()):
    return requests.post(f"http://{host}{path}", json=body, headers=dict(headers), timeout=30)


def sy(server):
    return f"127.0.0.1:{server[0]['http']}"


def grpc_request(cls, model, x, signature, version=None, label=None):
    req = cls()
    req.model_spec.name = model
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    for r in x:
        ex = req.input.example_list.examples.add()
        ex.features.feature["input"].CopyFrom(feature_pb2.Feature(float_list=feature_pb2.FloatList(value=r.tolist())))
    return req


def call(fn, req, metadata=ALICE):
    resp, c = fn.with_call(req, metadata=list(metadata), timeout=30)
    return resp, dict(c.initial_metadata())


def error(fn, req, metadata=ALICE):
    with pytest.raises(grpc.RpcError) as e:
        fn(req, metadata=list(metadata), timeout=30)
    return e.value.code(), e.value.details()


@pytest.mark.parametrize("verb,signature", [("classify", "classification"), ("regress", "regression")])
def test_rest_relay_equals_the_backend_and_routes(server, standin, verb, signature):
    x = rows()
    # The rule on `signature_name` sends regressions to canary.
    default = ("stable", 1) if verb == "classify" else ("canary", 2)
    for path, variant, version in [
        ("cls_rest", *default),
        ("cls_rest/labels/beta", "canary", 2),
        ("cls_rest/versions/2", "canary", 2),
    ]:
        direct = post(standin[0], f"/v1/models/mlp/versions/{version}:{verb}", rest_body(x, signature))
        assert direct.status_code == 200, direct.text
        r = post(sy(server), f"/v1/models/{path}:{verb}", rest_body(x, signature), ALICE)
        assert r.status_code == 200, r.text
        assert r.json() == direct.json()
        assert r.headers["x-switchyard-variant"] == variant
    # The two versions answer differently: the route really chose.
    v1 = post(sy(server), f"/v1/models/cls_rest/labels/stable:{verb}", rest_body(x, signature), ALICE).json()
    v2 = post(sy(server), f"/v1/models/cls_rest/labels/beta:{verb}", rest_body(x, signature), ALICE).json()
    assert v1 != v2
    shape = {"classify": (3, 4, 2), "regress": (3,)}[verb]
    assert np.array(v1["results"], dtype=object).shape == shape


def test_rest_backend_4xx_is_relayed_with_its_words(server, standin):
    x = rows(1)
    body = rest_body(x, signature="")
    direct = post(standin[0], "/v1/models/mlp/versions/1:classify", body)
    r = post(sy(server), "/v1/models/cls_rest:classify", body, ALICE)
    assert r.status_code == direct.status_code == 400
    assert r.json() == direct.json()
    assert "Switchyard" not in r.text


@pytest.mark.parametrize("method,cls,signature", [
    ("Classify", classification_pb2.ClassificationRequest, "classification"),
    ("Regress", regression_pb2.RegressionRequest, "regression"),
])
def test_grpc_relay_equals_the_backend_and_routes(server, standin, method, cls, signature):
    x = rows()
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server[1])
    with grpc.insecure_channel(standin[1]) as ch:
        direct_stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        # The rule on `signature_name` sends regressions to canary.
        default = ("stable", 1) if method == "Classify" else ("canary", 2)
        for kw, variant, version in [({}, *default), ({"label": "beta"}, "canary", 2), ({"version": 2}, "canary", 2)]:
            direct = getattr(direct_stub, method)(grpc_request(cls, "mlp", x, signature, version=version), timeout=30)
            resp, md = call(getattr(stub, method), grpc_request(cls, "cls_grpc", x, signature, **kw))
            assert resp.result == direct.result
            assert md["x-switchyard-variant"] == variant
            # The answer names the client's model; the version is the backend's.
            assert resp.model_spec.name == "cls_grpc" and resp.model_spec.version.value == version
    n = len(resp.result.classifications) if method == "Classify" else len(resp.result.regressions)
    assert n == 3
    # The backend's own refusal (no such signature) with its code and words.
    code, details = error(getattr(stub, method), grpc_request(cls, "cls_grpc", x, "nope"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and 'Serving signature name: "nope" not found' in details


def test_auth_is_enforced(server):
    x = rows(1)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server[1])
    req = grpc_request(classification_pb2.ClassificationRequest, "cls_grpc", x, "classification")
    assert error(stub.Classify, req, metadata=())[0] == grpc.StatusCode.UNAUTHENTICATED
    assert error(stub.Classify, req, metadata=BOB)[0] == grpc.StatusCode.PERMISSION_DENIED
    assert post(sy(server), "/v1/models/cls_rest:classify", rest_body(x)).status_code == 401
    assert post(sy(server), "/v1/models/cls_rest:regress", rest_body(x, "regression"), BOB).status_code == 403


def test_backend_down_and_slow(server):
    x = rows(1)
    r = post(sy(server), "/v1/models/down_rest:classify", rest_body(x), ALICE)
    assert r.status_code == 502 and "error" in r.json(), r.text
    r = post(sy(server), "/v1/models/slow_rest:regress", rest_body(x, "regression"), ALICE)
    assert r.status_code == 504, r.text
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server[1])
    req = grpc_request(classification_pb2.ClassificationRequest, "down_grpc", x, "classification")
    assert error(stub.Classify, req)[0] == grpc.StatusCode.UNAVAILABLE
    req = grpc_request(regression_pb2.RegressionRequest, "slow_grpc", x, "regression")
    assert error(stub.Regress, req)[0] == grpc.StatusCode.DEADLINE_EXCEEDED


def test_embedded_runtime_keeps_tf_serving_refusal(server):
    x = rows(1)
    r = post(sy(server), "/v1/models/local_mlp:classify", rest_body(x), ALICE)
    assert r.status_code == 400
    assert r.json()["error"].startswith("Expected classification signature method_name to be "
                                        "tensorflow/serving/classify. Was: tensorflow/serving/predict")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server[1])
    req = grpc_request(regression_pb2.RegressionRequest, "local_mlp", x, "regression")
    code, details = error(stub.Regress, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("Expected regression signature method_name to be tensorflow/serving/regress.")


def test_transport_mismatch_is_refused_naming_why(server):
    x = rows(1)
    r = post(sy(server), "/v1/models/cls_grpc:classify", rest_body(x), ALICE)
    assert r.status_code == 400, r.text
    assert "speaks gRPC" in r.json()["error"] and "tf.Example" in r.json()["error"]
    stub = prediction_service_pb2_grpc.PredictionServiceStub(server[1])
    req = grpc_request(regression_pb2.RegressionRequest, "cls_rest", x, "regression")
    code, details = error(stub.Regress, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "speaks REST" in details


def test_relayed_calls_are_counted(server):
    x = rows(1)
    assert post(sy(server), "/v1/models/cls_rest:classify", rest_body(x), ALICE).status_code == 200
    text = requests.get(f"http://127.0.0.1:{server[0]['metrics']}/metrics", timeout=10).text
    lines = [ln for ln in text.splitlines() if ln.startswith("switchyard_requests_total")
             and 'model="cls_rest"' in ln and 'variant="stable"' in ln and 'code="200"' in ln]
    assert lines and float(lines[0].rsplit(" ", 1)[1]) >= 1, text[:2000]
