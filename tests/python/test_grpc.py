"""The real Triton gRPC client (`tritonclient.grpc`: sync, `async_infer` and
streaming) through Switchyard's gRPC listener, to a real MLServer over its
gRPC port (backend kind v2-grpc) and to the embedded ONNX Runtime, with
onnxruntime on the shipped ONNX files as the reference.

MLServer runs as a subprocess only: `mlserver` and `tritonclient.grpc`
register the same `inference.*` protobuf symbols and cannot share a process.

Run: .venv/bin/python -m pytest tests/python/test_grpc.py -q
(after `cargo build`; set SWITCHYARD_BIN to test another binary).
"""
import queue

from harness import REPO, batch, free_port, mlp_reference, start_mlserver, start_switchyard  # first: sets XDG_CACHE_HOME before onnxruntime loads

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

# Small enough to test the limit without shipping 64 MiB around.
GRPC_MAX_MESSAGE_BYTES = 1 << 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """MLServer (gRPC + HTTP) and Switchyard in front of it and of its embedded runtime.

    Routes: `mlp` 90/10 over MLServer gRPC (v1/v2), `mlp_http` MLServer over
    HTTP, `mlp_local` 50/50 on the embedded runtime, `down` a dead gRPC backend.
    Yields (switchyard grpc host:port, switchyard http host:port).
    """
    tmp = tmp_path_factory.mktemp("grpc-stack")
    procs = []
    try:
        ml_http, ml_grpc = start_mlserver(tmp, procs)
        dead = free_port()
        ports = start_switchyard(
            tmp,
            f"""
routing:
  sticky_header: x-user-id
backends:
  ml_grpc:
    kind: v2-grpc
    endpoints: ["127.0.0.1:{ml_grpc}"]
  ml_http:
    kind: v2-http
    endpoints: ["http://127.0.0.1:{ml_http}"]
  local:
    kind: onnx
    repository: {REPO / "examples" / "models"}
    version_policy: {{all: true}}
    warmup: 1
  gone:
    kind: v2-grpc
    endpoints: ["127.0.0.1:{dead}"]
    connect_timeout: 200ms
models:
  mlp:
    variants:
      - {{name: stable, backend: ml_grpc, version: 1, weight: 90}}
      - {{name: canary, backend: ml_grpc, version: 2, weight: 10}}
  mlp_http:
    variants:
      - {{name: http, backend: ml_http, model: mlp}}
  mlp_local:
    variants:
      - {{name: v1, backend: local, model: mlp, version: 1, weight: 50}}
      - {{name: v2, backend: local, model: mlp, version: 2, weight: 50}}
  down:
    variants:
      - {{name: d, backend: gone, model: mlp}}
""",
            procs,
            grpc_max_message_bytes=GRPC_MAX_MESSAGE_BYTES,
        )
        yield f"127.0.0.1:{ports['grpc']}", f"127.0.0.1:{ports['http']}"
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.fixture
def client(stack):
    c = grpcclient.InferenceServerClient(url=stack[0])
    yield c
    c.close()


@pytest.fixture
def http(stack):
    c = httpclient.InferenceServerClient(url=stack[1])
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference():
    return mlp_reference()


def grpc_input(x):
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def infer(client, model, x, version="", headers=None, request_id=""):
    out = grpcclient.InferRequestedOutput("probabilities")
    return client.infer(
        model, [grpc_input(x)], model_version=version, outputs=[out], headers=headers, request_id=request_id
    )


def code(e: InferenceServerException) -> str:
    return str(e.status())


def test_server_and_model_endpoints(client):
    assert client.is_server_live()
    # Route `down` has no ready backend, so the server as a whole is not ready (as over HTTP).
    assert not client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "switchyard"
    for model in ("mlp", "mlp_http", "mlp_local"):
        for version in ("1", "2"):
            assert client.is_model_ready(model, version), (model, version)
            m = client.get_model_metadata(model, version, as_json=True)
            assert m["name"] == model
            assert m["inputs"] == [{"name": "input", "datatype": "FP32", "shape": ["-1", "16"]}], m
            assert m["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": ["-1", "4"]}], m
    assert not client.is_model_ready("no-such-model")


@pytest.mark.parametrize("model", ["mlp", "mlp_local", "mlp_http"])
def test_infer_matches_onnxruntime(client, reference, model):
    x = batch(5, seed=1)
    for version in ("1", "2"):
        res = infer(client, model, x, version=version, request_id=f"{model}-{version}")
        got = res.as_numpy("probabilities")
        assert got.dtype == np.float32 and got.shape == (5, 4)
        r = res.get_response()
        assert r.model_name == model
        assert r.model_version == version
        assert r.id == f"{model}-{version}"
        # tritonclient sends raw_input_contents: the answer comes raw, as Triton's does.
        assert len(r.raw_output_contents) == 1
        diff = np.max(np.abs(got - reference(version, x)))
        assert diff <= 1e-6, f"{model} v{version}: max abs diff {diff}"


def test_async_infer(client, reference):
    done = queue.Queue()
    xs = [batch(2, seed=10 + i) for i in range(12)]
    for i, x in enumerate(xs):
        client.async_infer(
            "mlp_local" if i % 2 else "mlp",
            [grpc_input(x)],
            callback=lambda result, error, i=i: done.put((i, result, error)),
            model_version="2",
            request_id=f"a{i}",
        )
    seen = set()
    for _ in xs:
        i, result, error = done.get(timeout=30)
        assert error is None, error
        assert result.get_response().id == f"a{i}"
        assert np.max(np.abs(result.as_numpy("probabilities") - reference("2", xs[i]))) <= 1e-6
        seen.add(i)
    assert seen == set(range(len(xs)))


@pytest.mark.parametrize("model", ["mlp", "mlp_local"])
def test_stream_answers_in_order_with_errors_inline(client, reference, model):
    answers = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)), headers={"x-user-id": "bob"})
    xs = [batch(1 + i % 3, seed=20 + i) for i in range(16)]
    try:
        for i, x in enumerate(xs):
            inp = grpc_input(x)
            if i == 7:
                inp.set_shape([9, 16])  # more rows than the data holds
            client.async_stream_infer(model, [inp], model_version="1", request_id=f"s{i}")
        for i, x in enumerate(xs):
            result, error = answers.get(timeout=30)
            if i == 7:
                assert result is None and error is not None
                assert "input" in error.message(), error
            else:
                assert error is None, f"s{i}: {error}"
                assert result.get_response().id == f"s{i}", "answers come in request order"
                assert np.max(np.abs(result.as_numpy("probabilities") - reference("1", x))) <= 1e-6
    finally:
        client.stop_stream()


@pytest.mark.parametrize("model,arms", [("mlp", {"1", "2"}), ("mlp_local", {"1", "2"})])
def test_sticky_and_override_via_metadata(client, reference, model, arms):
    x = batch(1, seed=4)
    versions = {}
    for user in range(60):
        seen = {
            infer(client, model, x, headers={"x-user-id": f"user-{user}"}).get_response().model_version for _ in range(3)
        }
        assert len(seen) == 1, f"user-{user} moved between versions {seen}"
        versions[user] = seen.pop()
    assert set(versions.values()) == arms, versions
    override = "canary" if model == "mlp" else "v2"
    for _ in range(5):
        res = infer(client, model, x, headers={"x-switchyard-variant": override})
        assert res.get_response().model_version == "2"
        assert np.max(np.abs(res.as_numpy("probabilities") - reference("2", x))) <= 1e-6
    with pytest.raises(InferenceServerException) as e:
        infer(client, model, x, headers={"x-switchyard-variant": "nope"})
    assert code(e.value) == "StatusCode.INVALID_ARGUMENT"
    assert "nope" in e.value.message()


@pytest.mark.parametrize("model", ["mlp", "mlp_local"])
def test_bad_inputs(client, model):
    x = batch(1, seed=3)
    inp = grpc_input(x)
    inp.set_shape([1, 15])  # 16 values no longer fit the declared shape
    with pytest.raises(InferenceServerException) as e:
        client.infer(model, [inp])
    assert code(e.value) == "StatusCode.INVALID_ARGUMENT", e.value
    assert "input 'input'" in e.value.message(), e.value

    wrong = grpcclient.InferInput("input", [1, 16], "FP64")
    wrong.set_data_from_numpy(x.astype(np.float64))
    with pytest.raises(InferenceServerException) as e:
        client.infer(model, [wrong])
    if model == "mlp_local":
        # The embedded runtime checks requests against the model's signature.
        assert code(e.value) == "StatusCode.INVALID_ARGUMENT", e.value
        assert "FP64" in e.value.message() or "FP32" in e.value.message(), e.value
    else:
        # MLServer fails inside onnxruntime and answers INTERNAL itself: a gRPC
        # backend's status code reaches the gRPC client unchanged.
        assert code(e.value) == "StatusCode.INTERNAL", e.value
        assert e.value.message(), e.value

    with pytest.raises(InferenceServerException) as e:
        client.infer("no-such-model", [grpc_input(x)])
    assert code(e.value) == "StatusCode.NOT_FOUND", e.value
    assert "no-such-model" in e.value.message()


def test_oversized_message_is_resource_exhausted(client):
    rows = GRPC_MAX_MESSAGE_BYTES // 64 + 1  # 64 bytes a row: just over the limit
    with pytest.raises(InferenceServerException) as e:
        infer(client, "mlp_local", batch(rows, seed=5))
    assert code(e.value) == "StatusCode.RESOURCE_EXHAUSTED", e.value
    assert "max_message_bytes" in e.value.message()
    # The listener is fine afterwards.
    infer(client, "mlp_local", batch(2, seed=5))


def test_backend_down_is_unavailable(client):
    with pytest.raises(InferenceServerException) as e:
        infer(client, "down", batch(1, seed=6), version="1")
    assert code(e.value) == "StatusCode.UNAVAILABLE", e.value
    assert "gone" in e.value.message()


def test_http_and_grpc_round_trips_give_identical_outputs(client, http):
    """gRPC in → HTTP backend, HTTP in → gRPC backend, and the direct paths: the same bytes."""
    x = batch(6, seed=8)
    for version in ("1", "2"):
        grpc_to_grpc = infer(client, "mlp", x, version=version).as_numpy("probabilities")
        grpc_to_http = infer(client, "mlp_http", x, version=version).as_numpy("probabilities")
        grpc_to_local = infer(client, "mlp_local", x, version=version).as_numpy("probabilities")
        outs = {}
        for model in ("mlp", "mlp_http", "mlp_local"):
            inp = httpclient.InferInput("input", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=True)
            out = httpclient.InferRequestedOutput("probabilities", binary_data=True)
            outs[model] = http.infer(model, [inp], model_version=version, outputs=[out]).as_numpy("probabilities")
        http_to_grpc, http_to_http = outs["mlp"], outs["mlp_http"]
        np.testing.assert_array_equal(grpc_to_http, http_to_http)
        np.testing.assert_array_equal(http_to_grpc, http_to_http)
        np.testing.assert_array_equal(grpc_to_grpc, http_to_http)
        np.testing.assert_array_equal(grpc_to_local, outs["mlp_local"])


def test_pass_through_rpcs(client):
    # A route uses the embedded runtime: the index is its repository's (docs/triton.md).
    idx = {(m.name, m.version, m.state) for m in client.get_model_repository_index().models}
    assert {("mlp", "1", "READY"), ("mlp", "2", "READY")} <= idx, idx
    # Embedded runtime: Switchyard answers the model configuration itself, under the public name.
    cfg = client.get_model_config("mlp_local").config
    assert (cfg.name, cfg.platform) == ("mlp_local", "onnxruntime_onnx")
    # Statistics cover every loaded version of the model, whichever variant a request would pick.
    for stats in (client.get_inference_statistics("mlp_local"), client.get_inference_statistics()):
        assert {(s.name, s.version) for s in stats.model_stats} >= {("mlp_local", "1"), ("mlp_local", "2")}
