"""Switchyard's TorchServe front end (`/predictions`, `/explanations`, `/ping`,
and gRPC `org.pytorch.serve.grpc.inference.InferenceAPIsService`) in front of
the embedded ONNX Runtime, driven by `curl`, `requests` and gRPC stubs
generated now (grpcio-tools) from runtime/proto/torchserve: JSON bodies
translate to the model's one input as each variant declares
(`variants[].torchserve`), answers equal onnxruntime's own on the same files,
versions pin variants, the A/B split is sticky, identical bodies hit the
cache, concurrent TorchServe requests batch, every bad input is a 4xx in
TorchServe's `{"code", "type", "message"}` form, and a backend that is down
or slow is a 502/504 in that form too.

Run: .venv/bin/python -m pytest tests/python/test_torchserve_front.py -q
(after `cargo build`; set SWITCHYARD_BIN to test another binary).
"""

from harness import REPO, Proc, free_port, mlp_reference, start_switchyard  # first: sets XDG_CACHE_HOME

import http.server  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

MODELS = REPO / "examples" / "models"
TEST_MODELS = REPO / "tests" / "models"
PROTOS = REPO / "runtime" / "proto" / "torchserve"
TOLERANCE = 1e-6
MAX_BODY = 65536


def int_model(repo):
    """`ints`: y = x, INT32 [batch, 2] (an integer model to translate to)."""
    x = helper.make_tensor_value_info("x", TensorProto.INT32, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.INT32, ["batch", 2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "ints", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    (repo / "ints" / "1").mkdir(parents=True)
    onnx.save(model, str(repo / "ints" / "1" / "model.onnx"))


class Slow(http.server.BaseHTTPRequestHandler):
    """A V2 server that is ready but never answers in time."""

    def do_GET(self):  # noqa: N802
        if self.path == "/v2/health/ready":
            self.send_response(200)
            self.end_headers()
            return
        time.sleep(3)

    do_POST = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Switchyard with gRPC on, serving mlp (50/50 split, one row per body),
    a cached, a batched and a multi-row route on the same files, an INT32
    model, the multi-input dtypes model, a variant without a translation, and
    routes whose backends are down or slow. Yields the ports."""
    tmp = tmp_path_factory.mktemp("torchserve")
    int_model(tmp / "repo")
    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    procs = []
    dead = free_port()
    try:
        ports = start_switchyard(
            tmp,
            f"""
limits:
  max_body_bytes: {MAX_BODY}
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
  ints:
    kind: onnx
    repository: {tmp / "repo"}
  down:
    kind: v2-http
    endpoints: ["http://127.0.0.1:{dead}"]
    timeout: 2s
  slow:
    kind: v2-http
    endpoints: ["http://127.0.0.1:{slow.server_address[1]}"]
    timeout: 300ms
models:
  mlp:
    variants:
      - {{name: stable, backend: local, version: 1, weight: 50, torchserve: {{body: row}}}}
      - {{name: canary, backend: local, version: 2, weight: 50, torchserve: {{body: row}}}}
  mlp_cached:
    cache: {{ttl: 60s}}
    variants:
      - {{name: main, backend: local, model: mlp, version: 1, torchserve: {{body: row}}}}
  mlp_batched:
    variants:
      - name: main
        backend: local
        model: mlp
        version: 2
        torchserve: {{body: row}}
        batching: {{max_batch_size: 8, max_queue_delay: 300ms}}
  mlp_rows:
    variants:
      - {{name: main, backend: local, model: mlp, version: 1, torchserve: {{input: /instances, output: predictions}}}}
  ints:
    variants:
      - {{name: main, backend: ints, torchserve: {{}}}}
  dtypes:
    variants:
      - {{name: main, backend: tests, torchserve: {{}}}}
  badout:
    variants:
      - {{name: main, backend: local, model: mlp, version: 1, torchserve: {{body: row, output_tensor: nosuch}}}}
  plain:
    variants:
      - {{name: main, backend: local, model: mlp, version: 1}}
  remote:
    variants:
      - {{name: main, backend: down, torchserve: {{}}}}
  slow:
    variants:
      - {{name: main, backend: slow, torchserve: {{}}}}
""",
            procs,
            grpc_max_message_bytes=4 * 1024 * 1024,
        )
        yield ports
    finally:
        for p in reversed(procs):
            p.stop()
        slow.shutdown()


@pytest.fixture(scope="module")
def base(server):
    return f"http://127.0.0.1:{server['http']}"


@pytest.fixture(scope="module")
def reference():
    return mlp_reference()


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    """TorchServe's inference stubs, generated from Switchyard's copy of its protos."""
    out = tmp_path_factory.mktemp("ts_stubs")
    import grpc_tools
    from grpc_tools import protoc

    well_known = str(__import__("pathlib").Path(grpc_tools.__file__).parent / "_proto")
    protos = ["inference.proto"]
    try:
        import google.rpc.status_pb2  # noqa: F401
    except ImportError:
        protos.append("google/rpc/status.proto")
    args = ["protoc", f"-I{well_known}", f"-I{PROTOS}", f"--python_out={out}", f"--grpc_python_out={out}"]
    assert protoc.main(args + [str(PROTOS / p) for p in protos]) == 0
    sys.path.insert(0, str(out))
    import inference_pb2
    import inference_pb2_grpc

    return inference_pb2, inference_pb2_grpc


def rows(n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def post(base, path, body, headers=None):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{base}{path}", data=data, headers=headers or {}, timeout=30)


def ts_error(r, code, type_, words):
    """`r` is TorchServe's error answer: that status, type, and a message saying `words`."""
    assert r.status_code == code, r.text
    body = r.json()
    assert set(body) == {"code", "type", "message"}, body
    assert body["code"] == code and body["type"] == type_, body
    assert words in body["message"], body


def test_curl_prediction_matches_onnxruntime(base, reference):
    x = rows(1)
    out = subprocess.run(
        ["curl", "-sS", "-H", "Expect:", "-H", "content-type: application/json", "-D", "-",
         f"{base}/predictions/mlp/1", "-d", json.dumps(x[0].tolist())],
        capture_output=True, check=True, text=True,
    ).stdout
    head, _, payload = out.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 200"), out
    assert "x-switchyard-variant: stable" in head
    assert "content-type: application/json" in head.lower()
    np.testing.assert_allclose(json.loads(payload), reference("1", x)[0], atol=TOLERANCE)


def test_curl_upload_is_a_put(base, reference, tmp_path):
    # TorchServe's own examples send a file with `curl -T` (PUT).
    x = rows(1, seed=10)
    f = tmp_path / "row.json"
    f.write_text(json.dumps(x[0].tolist()))
    out = subprocess.run(["curl", "-sS", "-f", f"{base}/predictions/mlp/2", "-T", str(f)],
                         capture_output=True, check=True, text=True).stdout
    np.testing.assert_allclose(json.loads(out), reference("2", x)[0], atol=TOLERANCE)


def test_query_parameters(base, reference):
    # Inputs of their own (a handler's options); a translated body is still `data`.
    x = rows(1, seed=11)
    r = post(base, "/predictions/mlp/1?topk=3", x[0].tolist())
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json(), reference("1", x)[0], atol=TOLERANCE)
    ts_error(post(base, "/predictions/mlp?data=1", x[0].tolist()), 400, "BadRequestException", "would shadow the body")


def test_versions_pin_variants(base, reference):
    x = rows(1, seed=2)
    for version, variant in (("1", "stable"), ("2", "canary")):
        r = post(base, f"/predictions/mlp/{version}", x[0].tolist())
        assert r.status_code == 200, r.text
        assert r.headers["x-switchyard-variant"] == variant
        np.testing.assert_allclose(r.json(), reference(version, x)[0], atol=TOLERANCE)


def test_split_is_sticky_and_answers_match_the_chosen_version(base, reference):
    x = rows(1, seed=3)
    seen = set()
    for user in range(40):
        h = {"x-user-id": f"user-{user}"}
        first = post(base, "/predictions/mlp", x[0].tolist(), h)
        again = post(base, "/predictions/mlp", x[0].tolist(), h)
        assert first.status_code == again.status_code == 200, first.text
        variant = first.headers["x-switchyard-variant"]
        assert again.headers["x-switchyard-variant"] == variant
        version = {"stable": "1", "canary": "2"}[variant]
        np.testing.assert_allclose(first.json(), reference(version, x)[0], atol=TOLERANCE)
        seen.add(variant)
    assert seen == {"stable", "canary"}


def test_multi_row_bodies_and_keyed_answers(base, reference):
    x = rows(3, seed=4)
    r = post(base, "/predictions/mlp_rows", {"instances": x.tolist()})
    assert r.status_code == 200, r.text
    assert list(r.json()) == ["predictions"]
    np.testing.assert_allclose(r.json()["predictions"], reference("1", x), atol=TOLERANCE)


def test_integer_models_take_integers_in_range_only(base):
    r = post(base, "/predictions/ints", [[1, -2], [2**31 - 1, 0]])
    assert r.status_code == 200, r.text
    assert r.json() == [[1, -2], [2**31 - 1, 0]]
    ts_error(post(base, "/predictions/ints", [[1, 2**40]]), 400, "BadRequestException", "is not of expected type: int32")
    ts_error(post(base, "/predictions/ints", [[1.5, 2]]), 400, "BadRequestException", "is not of expected type: int32")


def test_identical_bodies_hit_the_cache(base, reference):
    x = rows(1, seed=5)
    body = json.dumps(x[0].tolist())
    first = post(base, "/predictions/mlp_cached", body)
    second = post(base, "/predictions/mlp_cached", body)
    assert (first.headers["x-switchyard-cache"], second.headers["x-switchyard-cache"]) == ("miss", "hit-l1")
    assert first.content == second.content
    np.testing.assert_allclose(second.json(), reference("1", x)[0], atol=TOLERANCE)
    # The key is the tensor: other spacing is the same request, other numbers are not.
    assert post(base, "/predictions/mlp_cached", body.replace(", ", ",")).headers["x-switchyard-cache"] == "hit-l1"
    other = rows(1, seed=6)
    assert post(base, "/predictions/mlp_cached", other[0].tolist()).headers["x-switchyard-cache"] == "miss"
    # An explanation of the same body is not the cached prediction.
    r = post(base, "/explanations/mlp_cached", body)
    ts_error(r, 501, "NotImplementedException", "explanations need a `kind: torchserve` backend")
    assert "x-switchyard-cache" not in r.headers


def test_concurrent_requests_batch(base, server, reference):
    x = rows(8, seed=7)

    def one(i):
        r = post(base, "/predictions/mlp_batched", x[i].tolist())
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json(), reference("2", x[i : i + 1])[0], atol=TOLERANCE)
        return int(r.headers["x-switchyard-batch-size"])

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(one, range(8)))
    assert max(sizes) > 1, sizes
    metrics = requests.get(f"http://127.0.0.1:{server['metrics']}/metrics", timeout=5).text
    assert any(line.startswith("switchyard_batch_size") and 'model="mlp"' in line for line in metrics.splitlines())


BAD = [
    # (model, body, status, type, words)
    ("mlp", "hello", 400, "BadRequestException", "the body is not JSON"),
    ("mlp", "[[1, 2], [3]]", 400, "BadRequestException", "Encountered list at unexpected size"),
    ("mlp", '["a", "b"]', 400, "BadRequestException", "is not of expected type: float"),
    ("mlp", "[1, 2, 3]", 400, "BadRequestException", "input"),  # the model's own check: width 16
    ("mlp_rows", "[1, 2]", 400, "BadRequestException", "nothing at JSON pointer '/instances'"),
    ("mlp", '{"a": 1}', 400, "BadRequestException", "is an object"),
    ("dtypes", "[[1, 2]]", 501, "NotImplementedException", "has 10 inputs"),
    ("plain", "[1]", 501, "NotImplementedException", "declares no TorchServe translation"),
    ("badout", "[1]", 501, "NotImplementedException", "output_tensor 'nosuch', which the model does not have"),
    ("nosuch", "[1]", 404, "ModelNotFoundException", "Model not found: nosuch"),
]


@pytest.mark.parametrize("model,body,code,type_,words", BAD)
def test_bad_inputs_in_torchserve_form(base, model, body, code, type_, words):
    ts_error(post(base, f"/predictions/{model}", body), code, type_, words)


def test_oversized_wrong_method_and_unknown_paths(base):
    ts_error(post(base, "/predictions/mlp", b"[" + b"1," * MAX_BODY + b"1]"), 413, "RequestEntityTooLargeException",
             "limits.max_body_bytes")
    ts_error(requests.get(f"{base}/predictions/mlp", timeout=5), 405, "MethodNotAllowedException", "use POST")
    ts_error(post(base, "/predictions/mlp/1/extra", "[1]"), 404, "ResourceNotFoundException",
             "Requested resource is not found")


def test_backend_down_and_slow(base):
    ts_error(post(base, "/predictions/remote", "[[1]]"), 502, "InternalServerException", "")
    ts_error(post(base, "/predictions/slow", "[[1]]"), 504, "RequestTimeoutException", "")


def test_ping_reports_unhealthy_routes(base):
    # `remote`'s backend is down: TorchServe's answer for a model without workers.
    r = requests.get(f"{base}/ping", timeout=10)
    assert (r.status_code, r.json()) == (500, {"status": "Unhealthy"})


def test_ping_healthy_and_grpc(tmp_path, stubs, reference):
    pb, pb_grpc = stubs
    procs = []
    try:
        ports = start_switchyard(
            tmp_path,
            f"""
backends:
  local: {{kind: onnx, repository: {MODELS}, version_policy: {{all: true}}}}
models:
  mlp:
    variants:
      - {{name: stable, backend: local, version: 1, torchserve: {{body: row}}}}
      - {{name: canary, backend: local, version: 2, weight: 0, torchserve: {{body: row}}}}
""",
            procs,
            grpc_max_message_bytes=1024 * 1024,
        )
        r = requests.get(f"http://127.0.0.1:{ports['http']}/ping", timeout=10)
        assert (r.status_code, r.json()) == (200, {"status": "Healthy"})
        with grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}") as ch:
            stub = pb_grpc.InferenceAPIsServiceStub(ch)
            from google.protobuf import empty_pb2

            assert json.loads(stub.Ping(empty_pb2.Empty()).health) == {"status": "Healthy"}
            x = rows(1, seed=8)
            req = pb.PredictionsRequest(model_name="mlp", input={"data": json.dumps(x[0].tolist()).encode()})
            resp, call = stub.Predictions.with_call(req)
            np.testing.assert_allclose(json.loads(resp.prediction), reference("1", x)[0], atol=TOLERANCE)
            assert dict(call.initial_metadata())["x-switchyard-variant"] == "stable"
            pinned = pb.PredictionsRequest(model_name="mlp", model_version="2", input={"body": req.input["data"]})
            streamed = list(stub.StreamPredictions(pinned))
            assert len(streamed) == 1
            np.testing.assert_allclose(json.loads(streamed[0].prediction), reference("2", x)[0], atol=TOLERANCE)
            # A sequence: each request answered in order; a failure is the message's status.
            answers = list(stub.StreamPredictions2(iter([req, pb.PredictionsRequest(model_name="mlp", input={"data": b"x"})])))
            assert len(answers) == 2 and not answers[0].HasField("status")
            assert answers[1].status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert "the body is not JSON" in answers[1].status.message
            for bad, code, words in [
                (pb.PredictionsRequest(model_name="nosuch", input={"data": b"[1]"}), grpc.StatusCode.INTERNAL,
                 "Model not found: nosuch"),
                (pb.PredictionsRequest(input={"data": b"[1]"}), grpc.StatusCode.INTERNAL,
                 "Parameter model_name is required."),
                (pb.PredictionsRequest(model_name="mlp", input={"data": b"[[1], [2, 3]]"}),
                 grpc.StatusCode.INVALID_ARGUMENT, "Encountered list at unexpected size"),
                (pb.PredictionsRequest(model_name="mlp", input={"a": b"[1]", "b": b"[2]"}),
                 grpc.StatusCode.INVALID_ARGUMENT, "carries its JSON body under 'data'"),
            ]:
                with pytest.raises(grpc.RpcError) as e:
                    stub.Predictions(bad)
                assert e.value.code() == code and words in e.value.details(), e.value
    finally:
        for p in reversed(procs):
            p.stop()


def test_auth_rate_limits_and_access_log(tmp_path, stubs):
    """Authentication, permissions and rate limits apply to TorchServe calls,
    answered in TorchServe's form (REST) and with gRPC's codes; `/ping` and
    gRPC Ping stay open; the access log names the model."""
    import hashlib

    pb, pb_grpc = stubs
    key, other = "ts-secret-key", "other-secret-key"
    sha = lambda k: hashlib.sha256(k.encode()).hexdigest()  # noqa: E731
    procs = []
    try:
        ports = start_switchyard(
            tmp_path,
            f"""
auth:
  api_keys:
    - {{principal: client, sha256: "sha256:{sha(key)}", permissions: ["model:mlp:infer"]}}
    - {{principal: other, sha256: "sha256:{sha(other)}", permissions: ["model:else:infer"]}}
rate_limits:
  per_model:
    mlp: {{requests_per_second: 0.01, burst: 2}}
backends:
  local: {{kind: onnx, repository: {MODELS}, version_policy: {{all: true}}}}
models:
  mlp:
    variants:
      - {{name: stable, backend: local, version: 1, torchserve: {{body: row}}}}
""",
            procs,
            grpc_max_message_bytes=1024 * 1024,
        )
        base = f"http://127.0.0.1:{ports['http']}"
        body = json.dumps(rows(1, seed=9)[0].tolist())
        assert requests.get(f"{base}/ping", timeout=10).status_code == 200
        ts_error(post(base, "/predictions/mlp", body), 401, "InvalidKeyException", "")
        ts_error(post(base, "/predictions/mlp", body, {"x-api-key": other}), 403, "InvalidKeyException",
                 "model:mlp:infer")
        assert post(base, "/predictions/mlp", body, {"x-api-key": key}).status_code == 200
        with grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}") as ch:
            stub = pb_grpc.InferenceAPIsServiceStub(ch)
            from google.protobuf import empty_pb2

            assert json.loads(stub.Ping(empty_pb2.Empty()).health) == {"status": "Healthy"}
            req = pb.PredictionsRequest(model_name="mlp", input={"data": body.encode()})
            with pytest.raises(grpc.RpcError) as e:
                stub.Predictions(req)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # The second of the burst of 2.
            stub.Predictions(req, metadata=[("x-api-key", key)])
            with pytest.raises(grpc.RpcError) as e:
                stub.Predictions(req, metadata=[("x-api-key", key)])
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        r = post(base, "/predictions/mlp", body, {"x-api-key": key})
        ts_error(r, 429, "TooManyRequestsException", "")
        assert int(r.headers["retry-after"]) >= 1

        def logged():
            lines = [json.loads(x) for x in procs[0].log().splitlines() if x.startswith("{")]
            return {(x.get("path"), x.get("model"), x.get("status") or x.get("grpc_status")) for x in lines}

        want = {
            ("/predictions/mlp", "mlp", 200),
            ("/predictions/mlp", "mlp", 429),
            ("/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions", "mlp", 8),
        }
        deadline = time.monotonic() + 10
        while not want <= logged():
            assert time.monotonic() < deadline, (want - logged(), procs[0].log())
            time.sleep(0.05)
    finally:
        for p in reversed(procs):
            p.stop()
