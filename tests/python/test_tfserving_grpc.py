"""Switchyard's TF Serving gRPC front end (`tensorflow.serving.PredictionService`,
`ModelService` on the gRPC port) driven by the real `ovmsclient` gRPC client and
by raw grpcio stubs, served by the embedded ONNX Runtime: answers must equal
onnxruntime's own on the same files, for `TensorProto`s in typed `*_val`
fields and in `tensor_content`; version labels pick variants, versions the
pinned variant, unlabelled requests get the A/B split and stickiness (from
metadata); every bad-input class gets TF Serving's status code; a TF gRPC
request and a V2 request share cache entries and batches; a V2 backend that
is down is UNAVAILABLE, one slower than its timeout DEADLINE_EXCEEDED.

The stubs are the generated `tensorflow_serving` modules `ovmsclient` bundles
(`ovmsclient.tfs_compat.protos`): PyPI's `tensorflow-serving-api` requires the
whole of `tensorflow`, far too heavy for CI. The bundled ones are the
published protos as OpenVINO generated them (same service paths, field
numbers and wire format; only the Python message package is renamed), so
they also witness that Switchyard's trimmed rewrites are wire-compatible.

Run: .venv/bin/python -m pytest tests/python/test_tfserving_grpc.py -q
(after `cargo build`; set SWITCHYARD_BIN to test another binary).
"""

from harness import REPO, free_port, mlp_reference, start_switchyard  # first: sets XDG_CACHE_HOME

import hashlib  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
from ovmsclient import make_grpc_client  # noqa: E402
from ovmsclient.tfs_compat.protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402
from ovmsclient.tfs_compat.protos.tensorflow_serving.apis import (  # noqa: E402
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

MODELS = REPO / "examples" / "models"
TEST_MODELS = REPO / "tests" / "models"
TOLERANCE = 1e-6
MLP_META = {
    "name": "slow", "versions": ["1"], "platform": "onnxruntime_onnx",
    "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}],
    "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}],
}


class SlowV2(BaseHTTPRequestHandler):
    """A V2 HTTP backend that is ready and has `mlp`'s signature but never answers an inference
    before the test ends (`release` is set at teardown)."""

    release = threading.Event()

    def log_message(self, *args):
        pass

    def _json(self, doc):
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.endswith("/ready") or self.path.endswith("/live"):
            self._json({})
        else:
            self._json(MLP_META)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.release.wait(60)
        self.send_response(503)
        self.end_headers()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Switchyard as in test_tfserving.py (mlp split 50/50 stable = v1, canary = v2 also
    labelled `beta`; cached and batching routes on the same files; the all-dtypes model;
    a route whose V2 backend is down) plus a route on a V2 backend that never answers.
    Yields (http host:port, grpc host:port)."""
    tmp = tmp_path_factory.mktemp("tfserving_grpc")
    procs = []
    dead = free_port()
    slow = ThreadingHTTPServer(("127.0.0.1", 0), SlowV2)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
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
  tests:
    kind: onnx
    repository: {TEST_MODELS}
  down:
    kind: v2-http
    endpoints: ["http://127.0.0.1:{dead}"]
    timeout: 2s
  slow:
    kind: v2-http
    endpoints: ["http://127.0.0.1:{slow.server_address[1]}"]
    timeout: 1s
models:
  mlp:
    variants:
      - {{name: stable, backend: local, version: 1, weight: 50}}
      - {{name: canary, backend: local, version: 2, weight: 50, labels: [beta]}}
  mlp_cached:
    cache: {{ttl: 60s}}
    variants:
      - {{name: main, backend: local, model: mlp, version: 1}}
  mlp_batched:
    variants:
      - name: main
        backend: local
        model: mlp
        version: 2
        batching: {{max_batch_size: 16, max_queue_delay: 300ms}}
  dtypes:
    variants:
      - {{name: main, backend: tests}}
  remote:
    variants:
      - {{name: main, backend: down}}
  slow:
    variants:
      - {{name: main, backend: slow}}
""",
            procs,
            grpc_max_message_bytes=16 * 1024 * 1024,
        )
        yield f"127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}"
    finally:
        SlowV2.release.set()
        for p in reversed(procs):
            p.stop()
        slow.shutdown()


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server[1])
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


@pytest.fixture(scope="module")
def reference():
    return mlp_reference()


def rows(n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def shape(dims):
    return tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims])


def content(x, dtype=types_pb2.DT_FLOAT):
    """A TensorProto with the array's bytes in tensor_content."""
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape(x.shape), tensor_content=x.tobytes())


def typed(x):
    """A FP32 TensorProto with the values in float_val."""
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape(x.shape), float_val=x.flatten().tolist())


def request(model, inputs, version=None, label=None, signature="", output_filter=()):
    req = predict_pb2.PredictRequest(output_filter=list(output_filter))
    req.model_spec.name = model
    req.model_spec.signature_name = signature
    if version is not None:
        req.model_spec.version.value = version
    if label is not None:
        req.model_spec.version_label = label
    for name, t in inputs.items():
        req.inputs[name].CopyFrom(t)
    return req


def array(t):
    """A TensorProto answer as numpy (Switchyard writes numeric outputs in tensor_content)."""
    dims = [d.size for d in t.tensor_shape.dim]
    if t.dtype == types_pb2.DT_STRING:
        return np.array(list(t.string_val), dtype=object).reshape(dims)
    dt = {types_pb2.DT_FLOAT: np.float32, types_pb2.DT_DOUBLE: np.float64, types_pb2.DT_HALF: np.float16,
          types_pb2.DT_INT8: np.int8, types_pb2.DT_INT16: np.int16, types_pb2.DT_INT32: np.int32,
          types_pb2.DT_INT64: np.int64, types_pb2.DT_UINT8: np.uint8, types_pb2.DT_BOOL: np.bool_}[t.dtype]
    assert t.tensor_content, "numeric outputs come in tensor_content"
    return np.frombuffer(t.tensor_content, dtype=dt).reshape(dims)


def predict(stub, req, metadata=()):
    """(response, initial metadata as a dict)."""
    resp, call = stub.Predict.with_call(req, metadata=list(metadata), timeout=30)
    return resp, dict(call.initial_metadata())


def error(fn, req, **kw):
    with pytest.raises(grpc.RpcError) as e:
        fn(req, timeout=30, **kw)
    return e.value.code(), e.value.details()


def test_ovmsclient_grpc_predict_status_metadata(server, reference):
    client = make_grpc_client(server[1])
    x = rows()
    for version in (1, 2):
        out = client.predict({"input": x}, "mlp", model_version=version)
        np.testing.assert_allclose(out, reference(str(version), x), atol=TOLERANCE)
    status = client.get_model_status("mlp")
    assert {v: s["state"] for v, s in status.items()} == {1: "AVAILABLE", 2: "AVAILABLE"}
    meta = client.get_model_metadata("mlp", model_version=2)
    assert meta["model_version"] == 2
    assert meta["inputs"] == {"input": {"dtype": "DT_FLOAT", "shape": [-1, 16]}}
    assert meta["outputs"] == {"probabilities": {"dtype": "DT_FLOAT", "shape": [-1, 4]}}
    # ovmsclient's own list input goes as typed values.
    out = client.predict({"input": x.tolist()}, "mlp", model_version=1)
    np.testing.assert_allclose(out, reference("1", x), atol=TOLERANCE)


def test_typed_fields_and_tensor_content_match_onnxruntime(stubs, reference):
    x = rows(4, seed=2)
    for label, version in [("stable", 1), ("canary", 2)]:
        want = reference(str(version), x)
        for t in (typed(x), content(x)):
            resp, md = predict(stubs[0], request("mlp", {"input": t}, label=label))
            np.testing.assert_allclose(array(resp.outputs["probabilities"]), want, atol=TOLERANCE)
            assert md["x-switchyard-variant"] == label
            assert resp.model_spec.name == "mlp"
            assert resp.model_spec.version.value == version
            assert resp.model_spec.signature_name == "serving_default"
    # One typed value fills the shape (TF's rule).
    one = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape([2, 16]), float_val=[0.25])
    resp, _ = predict(stubs[0], request("mlp", {"input": one}, version=1, signature="serving_default"))
    np.testing.assert_allclose(array(resp.outputs["probabilities"]),
                               reference("1", np.full((2, 16), 0.25, np.float32)), atol=TOLERANCE)


def test_every_dtype_typed_and_output_filter(stubs):
    ref = ort.InferenceSession(str(TEST_MODELS / "dtypes" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {
        "f32": np.array([[1.5, -2.0]], np.float32), "f64": np.array([[0.25, 1e100]]),
        "f16": np.array([[0.5, 2.0]], np.float16), "i8": np.array([[-5, 7]], np.int8),
        "i16": np.array([[300, -300]], np.int16), "i32": np.array([[70000, -1]], np.int32),
        "i64": np.array([[2**40, -(2**40)]], np.int64), "u8": np.array([[0, 255]], np.uint8),
        "b": np.array([[True, False]]), "s": np.array([["hello"]], dtype=object),
    }
    dts = {"f32": types_pb2.DT_FLOAT, "f64": types_pb2.DT_DOUBLE, "f16": types_pb2.DT_HALF, "i8": types_pb2.DT_INT8,
           "i16": types_pb2.DT_INT16, "i32": types_pb2.DT_INT32, "i64": types_pb2.DT_INT64, "u8": types_pb2.DT_UINT8,
           "b": types_pb2.DT_BOOL, "s": types_pb2.DT_STRING}
    inputs = {}
    for name, v in feeds.items():
        t = tensor_pb2.TensorProto(dtype=dts[name], tensor_shape=shape(v.shape))
        flat = v.flatten()
        if name == "f32":
            t.float_val.extend(flat.tolist())
        elif name == "f64":
            t.double_val.extend(flat.tolist())
        elif name == "f16":
            t.half_val.extend(flat.view(np.uint16).tolist())  # TF keeps FP16 bits in half_val
        elif name == "i64":
            t.int64_val.extend(flat.tolist())
        elif name == "b":
            t.bool_val.extend(flat.tolist())
        elif name == "s":
            t.string_val.extend([s.encode() for s in flat])
        else:
            t.int_val.extend(flat.tolist())
        inputs[name] = t
    resp, _ = predict(stubs[0], request("dtypes", inputs))
    want = dict(zip([o.name for o in ref.get_outputs()], ref.run(None, feeds)))
    assert set(resp.outputs) == set(want)
    for name, value in want.items():
        got = array(resp.outputs[name])
        if value.dtype == object:
            assert [s.decode() for s in got.flatten()] == value.flatten().tolist()
        else:
            np.testing.assert_array_equal(got, value)
    resp, _ = predict(stubs[0], request("dtypes", inputs, output_filter=["i8_out", "s_out"]))
    assert set(resp.outputs) == {"i8_out", "s_out"}


def test_labels_and_versions_pick_variants(stubs):
    x = {"input": content(rows(1))}
    for label, variant in [("stable", "stable"), ("canary", "canary"), ("beta", "canary")]:
        _, md = predict(stubs[0], request("mlp", x, label=label))
        assert md["x-switchyard-variant"] == variant, label
    for version, variant in [(1, "stable"), (2, "canary")]:
        resp, md = predict(stubs[0], request("mlp", x, version=version))
        assert md["x-switchyard-variant"] == variant and resp.model_spec.version.value == version
    code, details = error(stubs[0].Predict, request("mlp", x, label="gamma"))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "Unrecognized servable version label: gamma" in details


def test_ab_split_and_stickiness_from_metadata(stubs):
    req = request("mlp", {"input": content(rows(1))})
    seen = {"stable": 0, "canary": 0}
    for _ in range(200):
        seen[predict(stubs[0], req)[1]["x-switchyard-variant"]] += 1
    assert 60 <= seen["stable"] <= 140 and seen["stable"] + seen["canary"] == 200, seen
    users = {}
    for user in range(30):
        got = {predict(stubs[0], req, [("x-user-id", f"u{user}")])[1]["x-switchyard-variant"] for _ in range(4)}
        assert len(got) == 1, (user, got)  # sticky
        users[user] = got.pop()
    assert set(users.values()) == {"stable", "canary"}


def bad_requests():
    x = rows(1)
    inv = grpc.StatusCode.INVALID_ARGUMENT
    short = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape([1, 16]), tensor_content=x.tobytes()[:60])
    few = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape([1, 16]), float_val=[1.0, 2.0])
    resource = tensor_pb2.TensorProto(dtype=types_pb2.DT_RESOURCE, tensor_shape=shape([1]))
    return [
        ("wrong dtype", request("mlp", {"input": content(x.astype(np.float64), types_pb2.DT_DOUBLE)}), inv,
         "Expects arg[0] to be float but double is provided"),
        ("content size", request("mlp", {"input": short}), inv,
         "tensor parsing error: input: tensor_content holds 60 bytes, but shape [1, 16] of DT_FLOAT needs 64"),
        ("typed count", request("mlp", {"input": few}), inv, "2 values in float_val, but shape [1, 16] holds 16"),
        ("unsupported dtype", request("mlp", {"input": resource}), inv, "dtype DT_RESOURCE is not supported"),
        ("model's own shape check", request("mlp", {"input": content(np.zeros((1, 3), np.float32))}), inv, ""),
        ("unknown signature", request("mlp", {"input": content(x)}, signature="classify_x"), inv,
         'Serving signature name: "classify_x" not found in signature def'),
        ("unknown input", request("mlp", {"x": content(x)}), inv,
         "input tensor alias not found in signature: x. Inputs expected to be in the set {input}."),
        ("extra input", request("mlp", {"input": content(x), "x": content(x)}), inv,
         "input size does not match signature: 2!=1 len({input,x}) != len({input}). Sent extra: {x}. "
         "Missing but required: {}."),
        ("unknown output", request("mlp", {"input": content(x)}, output_filter=["nope"]), inv,
         "output tensor alias not found in signature: nope Outputs expected to be in the set {probabilities}."),
        ("unknown model", request("nope", {"input": content(x)}), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Latest(nope)"),
        ("unknown version", request("nope", {"input": content(x)}, version=3), grpc.StatusCode.NOT_FOUND,
         "Servable not found for request: Specific(nope, 3)"),
        ("no model spec", predict_pb2.PredictRequest(), inv, "Missing ModelSpec"),
    ]


@pytest.mark.parametrize("case", bad_requests(), ids=lambda c: c[0])
def test_bad_inputs_get_tf_status_codes(stubs, case):
    _, req, want_code, words = case
    code, details = error(stubs[0].Predict, req)
    assert code == want_code and words in details, (code, details)


def test_classify_regress_multiinference_reload_refused(stubs):
    predict_stub, model_stub = stubs
    spec = {"name": "mlp"}
    code, details = error(predict_stub.Classify, classification_pb2.ClassificationRequest(model_spec=spec))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("Expected classification signature method_name to be tensorflow/serving/classify. "
                              "Was: tensorflow/serving/predict")
    code, details = error(predict_stub.Regress, regression_pb2.RegressionRequest(model_spec=spec))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "regression signature" in details
    code, details = error(predict_stub.Classify, classification_pb2.ClassificationRequest(model_spec={"name": "nope"}))
    assert code == grpc.StatusCode.NOT_FOUND
    multi = inference_pb2.MultiInferenceRequest(
        tasks=[inference_pb2.InferenceTask(model_spec=spec, method_name="tensorflow/serving/regress")])
    code, details = error(predict_stub.MultiInference, multi)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "regression signature" in details
    code, details = error(predict_stub.MultiInference, inference_pb2.MultiInferenceRequest())
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == "Tasks field is empty."
    code, details = error(model_stub.HandleReloadConfigRequest, model_management_pb2.ReloadConfigRequest())
    assert code == grpc.StatusCode.UNIMPLEMENTED and "POST /reload" in details


def test_status_and_metadata(stubs):
    predict_stub, model_stub = stubs
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "mlp"
    resp = model_stub.GetModelStatus(req, timeout=30)
    assert sorted((s.version, s.state) for s in resp.model_version_status) == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE), (2, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    req.model_spec.version_label = "beta"
    assert [s.version for s in model_stub.GetModelStatus(req, timeout=30).model_version_status] == [2]
    req = get_model_status_pb2.GetModelStatusRequest()
    req.model_spec.name = "remote"
    (entry,) = model_stub.GetModelStatus(req, timeout=30).model_version_status
    assert entry.state != get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert entry.status.error_code == 14 and entry.status.error_message  # UNAVAILABLE, and why
    req.model_spec.name = "nope"
    assert error(model_stub.GetModelStatus, req)[0] == grpc.StatusCode.NOT_FOUND

    req = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    req.model_spec.name = "mlp"
    req.model_spec.version.value = 1
    resp, call = predict_stub.GetModelMetadata.with_call(req, timeout=30)
    assert dict(call.initial_metadata())["x-switchyard-variant"] == "stable"
    assert resp.model_spec.name == "mlp" and resp.model_spec.version.value == 1
    any_ = resp.metadata["signature_def"]
    assert any_.type_url == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    # ovmsclient's bundle renames the message package (`ovmsclient.serving`), so `Any.Unpack`
    # would refuse TF's type URL: parsed by hand, as ovmsclient itself does.
    sigs = get_model_metadata_pb2.SignatureDefMap()
    sigs.ParseFromString(any_.value)
    sig = sigs.signature_def["serving_default"]
    assert sig.method_name == "tensorflow/serving/predict"
    assert sig.inputs["input"].dtype == types_pb2.DT_FLOAT and sig.inputs["input"].name == "input"
    assert [d.size for d in sig.inputs["input"].tensor_shape.dim] == [-1, 16]
    assert [d.size for d in sig.outputs["probabilities"].tensor_shape.dim] == [-1, 4]
    req.metadata_field[:] = ["other"]
    code, details = error(predict_stub.GetModelMetadata, req)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details == "Metadata field other is not supported"


def test_tf_grpc_and_v2_share_cache_entries(server, stubs, reference):
    x = rows(1, seed=17)
    resp, md = predict(stubs[0], request("mlp_cached", {"input": typed(x)}))
    assert md["x-switchyard-cache"] == "miss"
    v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": x.flatten().tolist()}]}
    r = requests.post(f"http://{server[0]}/v2/models/mlp_cached/infer", json=v2, timeout=30)
    assert r.status_code == 200 and r.headers["x-switchyard-cache"].startswith("hit"), (r.headers, r.text)
    np.testing.assert_allclose(np.array(r.json()["outputs"][0]["data"]).reshape(1, 4),
                               array(resp.outputs["probabilities"]), atol=TOLERANCE)
    # And the other way round, the TF request in tensor_content this time.
    y = rows(1, seed=18)
    v2["inputs"][0]["data"] = y.flatten().tolist()
    r = requests.post(f"http://{server[0]}/v2/models/mlp_cached/infer", json=v2, timeout=30)
    assert r.headers["x-switchyard-cache"] == "miss"
    resp, md = predict(stubs[0], request("mlp_cached", {"input": content(y)}))
    assert md["x-switchyard-cache"].startswith("hit")
    np.testing.assert_allclose(array(resp.outputs["probabilities"]), reference("1", y), atol=TOLERANCE)


def test_batcher_merges_tf_grpc_and_v2_requests(server, stubs, reference):
    xs = [rows(1 + i % 2, seed=200 + i) for i in range(8)]

    def call(i):
        x = xs[i]
        if i % 2:
            resp, md = predict(stubs[0], request("mlp_batched", {"input": content(x)}))
            out, size = array(resp.outputs["probabilities"]), md["x-switchyard-batch-size"]
        else:
            v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                              "data": x.flatten().tolist()}]}
            r = requests.post(f"http://{server[0]}/v2/models/mlp_batched/infer", json=v2, timeout=30)
            assert r.status_code == 200, r.text
            out = np.array(r.json()["outputs"][0]["data"]).reshape(x.shape[0], 4)
            size = r.headers["x-switchyard-batch-size"]
        np.testing.assert_allclose(out, reference("2", x), atol=TOLERANCE)
        return i % 2, int(size)

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(call, range(8)))
    # Eight concurrent requests inside one 300 ms window: merged, TF rows beside V2 rows.
    # Every request was in a batch of more rows than its own: a TF one beside V2 ones.
    assert max(s for tf, s in sizes if tf) > 2, sizes


def test_backend_down_is_unavailable_and_slow_is_deadline_exceeded(stubs):
    x = {"input": content(rows(1))}
    code, _ = error(stubs[0].Predict, request("remote", x))
    assert code == grpc.StatusCode.UNAVAILABLE
    # The backend's 1 s timeout passes long before the client's own 30 s: Switchyard's answer.
    code, details = error(stubs[0].Predict, request("slow", x))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, details


def test_auth_permissions_and_rate_limits(tmp_path):
    """The same credentials and permissions as V2 gRPC, checked before the routes are told;
    TF calls are charged to the same rate limits."""
    sha = lambda s: hashlib.sha256(s.encode()).hexdigest()  # noqa: E731
    procs = []
    try:
        ports = start_switchyard(
            tmp_path,
            f"""
auth:
  api_keys:
    - {{principal: alice, sha256: "sha256:{sha('alice-key')}", permissions: ["model:mlp:infer"]}}
rate_limits:
  per_principal: {{requests_per_second: 0.001, burst: 3}}
backends:
  local:
    kind: onnx
    repository: {MODELS}
models:
  mlp:
    variants:
      - {{name: main, backend: local}}
""",
            procs,
            grpc_max_message_bytes=4 * 1024 * 1024,
        )
        with grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            models = model_service_pb2_grpc.ModelServiceStub(channel)
            req = request("mlp", {"input": content(rows(1))})
            key = [("x-api-key", "alice-key")]
            assert error(stub.Predict, req)[0] == grpc.StatusCode.UNAUTHENTICATED
            assert error(stub.Predict, req, metadata=[("x-api-key", "wrong")])[0] == grpc.StatusCode.UNAUTHENTICATED
            # Not allowed on `nope` (and not told that it does not exist).
            assert error(stub.Predict, request("nope", {"input": content(rows(1))}), metadata=key)[0] == \
                grpc.StatusCode.PERMISSION_DENIED
            status = get_model_status_pb2.GetModelStatusRequest()
            status.model_spec.name = "mlp"
            assert error(models.GetModelStatus, status, metadata=key)[0] == grpc.StatusCode.PERMISSION_DENIED
            for _ in range(3):
                assert predict(stub, req, key)[1]["x-switchyard-variant"] == "main"
            code, _ = error(stub.Predict, req, metadata=key)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # The access log (stdout) has a line per call, as for V2 gRPC: model, variant, principal, status.
        def lines():
            out = []
            for line in procs[-1].log().splitlines():
                if line.startswith("{") and "/tensorflow.serving." in line:
                    out.append(json.loads(line))
            return out

        deadline = time.monotonic() + 10
        while len(lines()) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        predicts = [d for d in lines() if d["path"] == "/tensorflow.serving.PredictionService/Predict"]
        ok = [d for d in predicts if d["grpc_status"] == 0]
        assert len(ok) == 3 and all(d["model"] == "mlp" and d["variant"] == "main" and d["principal"] == "alice"
                                    and d["bytes_in"] > 64 and d["bytes_out"] > 0 for d in ok), predicts
        assert {d["grpc_status"] for d in predicts} == {0, 7, 8, 16}, predicts
    finally:
        for p in reversed(procs):
            p.stop()
