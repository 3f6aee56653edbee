"""Triton drop-in: Triton's own client programs (`tritonclient.http`,
`tritonclient.http.aio`, `tritonclient.grpc`) against Switchyard's embedded
runtime, on models built after Triton's standard test models
(`triton_models.py`: simple, simple_string, simple_identity) in a temporary
repository. Answers are compared field by field with Triton's protocol
(extension_statistics, extension_model_configuration,
extension_model_repository, the gRPC service).

`tritonclient.grpc` is imported here; MLServer never runs in this process.

Run: .venv/bin/python -m pytest tests/python/test_triton_compat.py -q
(after `cargo build`; set SWITCHYARD_BIN to test another binary).
"""

from harness import free_port, start_switchyard, switchyard_bin  # first: sets XDG_CACHE_HOME before onnxruntime loads

import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
import tritonclient.http.aio as aiohttpclient  # noqa: E402
import tritonclient.utils.shared_memory as shm  # noqa: E402
from tritonclient.utils import InferenceServerException, np_to_triton_dtype  # noqa: E402

from triton_models import build_repository, simple_string  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Switchyard serving the Triton-style repository; yields (http, grpc, repository)."""
    tmp = tmp_path_factory.mktemp("triton")
    repo = build_repository(tmp / "models")
    # A warm-up sample (V2 JSON, as Triton's model_warmup sample files).
    (repo / "simple_string" / "warmup").mkdir()
    (repo / "simple_string" / "warmup" / "numbers.json").write_text(
        json.dumps(
            {
                "inputs": [
                    {"name": n, "datatype": "BYTES", "shape": [1, 16], "data": [str(i) for i in range(16)]}
                    for n in ("INPUT0", "INPUT1")
                ]
            }
        )
    )
    procs = []
    try:
        ports = start_switchyard(
            tmp,
            f"""
server: {{name: triton-front, version: "2.99.0", system_shared_memory: true}}
backends:
  local:
    kind: onnx
    repository: {repo}
    instances: 1
    warmup_requests: 2
models:
  simple:
    variants:
      - name: main
        backend: local
        batching: {{max_batch_size: 8, max_queue_delay: 1ms, preferred_batch_sizes: [4, 8]}}
  simple_string:
    variants: [{{name: main, backend: local}}]
  simple_identity:
    variants: [{{name: main, backend: local}}]
""",
            procs,
            grpc_max_message_bytes=64 << 20,
        )
        yield f"127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}", repo
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.fixture
def http(server):
    c = httpclient.InferenceServerClient(url=server[0])
    yield c
    c.close()


@pytest.fixture
def grpc(server):
    c = grpcclient.InferenceServerClient(url=server[1])
    yield c
    c.close()


def simple_inputs(mod, rows=1, binary=True):
    a = np.arange(16 * rows, dtype=np.int32).reshape(rows, 16)
    b = np.ones((rows, 16), dtype=np.int32)
    ins = [mod.InferInput("INPUT0", [rows, 16], "INT32"), mod.InferInput("INPUT1", [rows, 16], "INT32")]
    if mod is grpcclient:
        ins[0].set_data_from_numpy(a)
        ins[1].set_data_from_numpy(b)
    else:
        ins[0].set_data_from_numpy(a, binary_data=binary)
        ins[1].set_data_from_numpy(b, binary_data=binary)
    return a, b, ins


# ---------------------------------------------------------------- inference


@pytest.mark.parametrize("binary", [False, True])
def test_simple_http_json_and_binary(http, binary):
    a, b, ins = simple_inputs(httpclient, rows=2, binary=binary)
    outs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
    r = http.infer("simple", ins, outputs=outs)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)
    assert r.get_response()["model_name"] == "simple"
    assert r.get_response()["model_version"] == "1"


def test_simple_grpc_raw_contents(grpc):
    a, b, ins = simple_inputs(grpcclient)
    r = grpc.infer("simple", ins)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), a - b)
    # Outputs always come in raw_output_contents, as Triton sends them.
    assert len(r.get_response().raw_output_contents) == 2


def test_typed_contents_get_raw_answers(server):
    """A request in typed `contents` (not what tritonclient sends) still gets raw outputs, as from Triton."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc
    import grpc as grpcio

    with grpcio.insecure_channel(server[1]) as ch:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
        req = service_pb2.ModelInferRequest(model_name="simple")
        for name, vals in (("INPUT0", list(range(16))), ("INPUT1", [2] * 16)):
            t = req.inputs.add(name=name, datatype="INT32", shape=[1, 16])
            t.contents.int_contents.extend(vals)
        resp = stub.ModelInfer(req)
        assert len(resp.raw_output_contents) == 2
        assert not resp.outputs[0].HasField("contents")
        np.testing.assert_array_equal(
            np.frombuffer(resp.raw_output_contents[0], dtype=np.int32), np.arange(16) + 2
        )
        # Typed contents mixed with raw contents: Triton's message, INVALID_ARGUMENT.
        req.raw_input_contents.extend([np.zeros(16, np.int32).tobytes()] * 2)
        with pytest.raises(grpcio.RpcError) as e:
            stub.ModelInfer(req)
        assert e.value.code() == grpcio.StatusCode.INVALID_ARGUMENT
        assert e.value.details().startswith(
            "contents field must not be specified when using raw_input_contents for 'INPUT0' for model 'simple'"
        ), e.value.details()


@pytest.mark.parametrize("binary", [False, True])
def test_simple_string_parses_numbers(http, grpc, binary):
    """BYTES holding numbers, parsed by the graph (loads only because warm-up sends parseable strings)."""
    a = np.array([[str(i) for i in range(16)]], dtype=np.object_)
    b = np.array([["1"] * 16], dtype=np.object_)
    for mod, client in ((httpclient, http), (grpcclient, grpc)):
        ins = [mod.InferInput("INPUT0", [1, 16], "BYTES"), mod.InferInput("INPUT1", [1, 16], "BYTES")]
        for i, x in zip(ins, (a, b)):
            if mod is httpclient:
                i.set_data_from_numpy(x, binary_data=binary)
            else:
                i.set_data_from_numpy(x)
        r = client.infer("simple_string", ins)
        got = [int(v) for v in r.as_numpy("OUTPUT0").reshape(-1)]
        assert got == [i + 1 for i in range(16)]
        got = [int(v) for v in r.as_numpy("OUTPUT1").reshape(-1)]
        assert got == [i - 1 for i in range(16)]


def test_identity_http_grpc_aio(http, grpc, server):
    x = np.random.default_rng(3).standard_normal((3, 5)).astype(np.float32)
    for mod, client in ((httpclient, http), (grpcclient, grpc)):
        i = mod.InferInput("INPUT0", list(x.shape), np_to_triton_dtype(x.dtype))
        i.set_data_from_numpy(x)
        np.testing.assert_array_equal(client.infer("simple_identity", [i]).as_numpy("OUTPUT0"), x)

    async def aio():
        c = aiohttpclient.InferenceServerClient(url=server[0])
        try:
            assert await c.is_server_ready()
            i = aiohttpclient.InferInput("INPUT0", list(x.shape), "FP32")
            i.set_data_from_numpy(x)
            r = await c.infer("simple_identity", [i])
            np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), x)
            cfg = await c.get_model_config("simple_identity")
            assert cfg["name"] == "simple_identity"
            stats = await c.get_inference_statistics("simple_identity")
            assert stats["model_stats"][0]["inference_stats"]["success"]["count"] >= 1
        finally:
            await c.close()

    asyncio.run(aio())


def test_bytes_with_nul_are_refused_clearly_by_onnx(http):
    """ONNX Runtime string tensors are C strings: a NUL byte is a 400 naming the element, never a truncation."""
    x = np.array([[b"1\x002"] + [b"0"] * 15], dtype=np.object_)
    ins = [httpclient.InferInput(n, [1, 16], "BYTES") for n in ("INPUT0", "INPUT1")]
    for i in ins:
        i.set_data_from_numpy(x, binary_data=True)
    with pytest.raises(InferenceServerException) as e:
        http.infer("simple_string", ins)
    assert "BYTES element 0 contains a NUL byte" in e.value.message()


# ------------------------------------------------------- Triton's error words


def test_error_messages_start_as_tritons(http, grpc):
    for client in (http, grpc):
        with pytest.raises(InferenceServerException) as e:
            client.get_model_metadata("foo")
        assert e.value.message().startswith("Request for unknown model: 'foo' is not found"), e.value.message()
        with pytest.raises(InferenceServerException) as e:
            client.get_model_metadata("simple", model_version="99")
        assert e.value.message().startswith("Request for unknown model: 'simple' version 99 is not found")
        with pytest.raises(InferenceServerException) as e:
            client.get_model_metadata("simple", model_version="abc")
        assert e.value.message().startswith("failed to get model version from specified version string 'abc'")

    a, b, ins = simple_inputs(httpclient)
    with pytest.raises(InferenceServerException) as e:
        http.infer("simple", ins[:1])
    assert e.value.message().startswith("expected 2 inputs but got 1 inputs for model 'simple'"), e.value.message()

    bad = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 16), np.float32))
    with pytest.raises(InferenceServerException) as e:
        http.infer("simple", [bad, ins[1]])
    assert e.value.message().startswith(
        "inference input 'INPUT0' data-type is 'FP32', but model 'simple' expects 'INT32'"
    ), e.value.message()

    wrong = grpcclient.InferInput("INPUT0", [1, 15], "INT32")
    wrong.set_data_from_numpy(np.zeros((1, 15), np.int32))
    other = grpcclient.InferInput("INPUT1", [1, 16], "INT32")
    other.set_data_from_numpy(np.zeros((1, 16), np.int32))
    with pytest.raises(InferenceServerException) as e:
        grpc.infer("simple", [wrong, other])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert e.value.message().startswith("unexpected shape for input 'INPUT0' for model 'simple'"), e.value.message()

    named = grpcclient.InferInput("INPUT7", [1, 16], "INT32")
    named.set_data_from_numpy(np.zeros((1, 16), np.int32))
    with pytest.raises(InferenceServerException) as e:
        grpc.infer("simple", [named, other])
    assert e.value.message().startswith("unexpected inference input 'INPUT7' for model 'simple'"), e.value.message()


# ------------------------------------------------------------ server identity


def test_server_metadata(http, grpc):
    m = http.get_server_metadata()
    assert (m["name"], m["version"]) == ("triton-front", "2.99.0")
    for ext in ("binary_tensor_data", "model_configuration", "model_repository", "statistics", "system_shared_memory"):
        assert ext in m["extensions"]
    g = grpc.get_server_metadata()
    assert (g.name, g.version) == ("triton-front", "2.99.0")
    assert list(g.extensions) == m["extensions"]


# -------------------------------------------------------------- model config


def test_model_config_http_and_grpc(http, grpc):
    c = http.get_model_config("simple")
    assert c["name"] == "simple"
    assert c["platform"] == "onnxruntime_onnx"
    assert c["backend"] == "onnxruntime"
    assert c["max_batch_size"] == 8
    assert [(i["name"], i["data_type"], i["dims"]) for i in c["input"]] == [
        ("INPUT0", "TYPE_INT32", [16]),
        ("INPUT1", "TYPE_INT32", [16]),
    ]
    assert [(o["name"], o["data_type"], o["dims"]) for o in c["output"]] == [
        ("OUTPUT0", "TYPE_INT32", [16]),
        ("OUTPUT1", "TYPE_INT32", [16]),
    ]
    assert c["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert c["dynamic_batching"]["max_queue_delay_microseconds"] == 1000
    assert c["instance_group"] == [{"name": "simple", "kind": "KIND_CPU", "count": 1, "gpus": []}]
    assert c["version_policy"] == {"latest": {"num_versions": 1}}

    g = grpc.get_model_config("simple", as_json=True)["config"]
    assert g["name"] == "simple"
    assert g["max_batch_size"] == 8
    assert g["input"][0]["data_type"] == "TYPE_INT32"
    # protobuf's JSON writes int64 as strings; the numbers are the same.
    assert [int(d) for d in g["input"][0]["dims"]] == [16]
    assert g["instance_group"][0]["kind"] == "KIND_CPU"
    assert g["dynamic_batching"]["preferred_batch_size"] == [4, 8]

    # Without batching, dims keep the batch dimension and max_batch_size is 0.
    s = http.get_model_config("simple_string")
    assert s["max_batch_size"] == 0
    assert s["input"][0]["data_type"] == "TYPE_STRING"
    assert s["input"][0]["dims"] == [-1, 16]
    assert "dynamic_batching" not in s
    # Warmed up with the repository's sample (MODEL/warmup/numbers.json), `warmup_requests` times.
    assert s["model_warmup"] == [{"name": "numbers.json", "batch_size": 0, "count": 2, "inputs": {}}]
    assert c["model_warmup"] == []
    with pytest.raises(InferenceServerException) as e:
        grpc.get_model_config("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"


def test_failed_warm_up_names_model_version_input_and_cause(tmp_path):
    """A sample the graph cannot parse fails the load with everything needed to fix it."""
    repo = tmp_path / "models"
    simple_string(repo / "simple_string" / "3" / "model.onnx")
    (repo / "simple_string" / "warmup").mkdir()
    (repo / "simple_string" / "warmup" / "words.json").write_text(
        json.dumps(
            {
                "inputs": [
                    {"name": n, "datatype": "BYTES", "shape": [1, 16], "data": ["abc"] * 16}
                    for n in ("INPUT0", "INPUT1")
                ]
            }
        )
    )
    cfg = tmp_path / "sy.yaml"
    cfg.write_text(
        f"""
listeners:
  http: {{address: 127.0.0.1:{free_port()}}}
  grpc: {{enabled: false}}
  metrics: {{address: 127.0.0.1:{free_port()}}}
  control: {{address: 127.0.0.1:{free_port()}}}
backends:
  local: {{kind: onnx, repository: {repo}, models: [simple_string]}}
models:
  simple_string:
    variants: [{{name: main, backend: local}}]
"""
    )
    out = subprocess.run(
        [switchyard_bin(), "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, SWITCHYARD_LOG_FORMAT="text"),
    )
    assert out.returncode != 0
    log = out.stdout + out.stderr
    for words in (
        "warm-up of model 'simple_string' version 3 failed on sample warmup/words.json",
        "'INPUT0' BYTES [1, 16]",
    ):
        assert words in log, log
    # ONNX Runtime's own message follows (its Cast cannot parse "abc").
    assert "running Cast node" in log.split("warmup/words.json", 1)[1], log


# ---------------------------------------------------------------- statistics


def test_statistics_count_real_work(http, grpc):
    before = http.get_inference_statistics("simple_identity", "1")["model_stats"][0]
    x = np.ones((2, 3), np.float32)
    for _ in range(3):
        i = httpclient.InferInput("INPUT0", [2, 3], "FP32")
        i.set_data_from_numpy(x)
        http.infer("simple_identity", [i])
    bad = httpclient.InferInput("INPUT0", [2, 3], "INT32")
    bad.set_data_from_numpy(np.ones((2, 3), np.int32))
    with pytest.raises(InferenceServerException):
        http.infer("simple_identity", [bad])

    s = http.get_inference_statistics("simple_identity", "1")["model_stats"]
    assert len(s) == 1
    s = s[0]
    assert (s["name"], s["version"]) == ("simple_identity", "1")
    st, bs = s["inference_stats"], before["inference_stats"]
    assert st["success"]["count"] - bs["success"]["count"] == 3
    assert st["fail"]["count"] - bs["fail"]["count"] == 1
    assert s["execution_count"] - before["execution_count"] == 3
    assert s["inference_count"] - before["inference_count"] == 6  # 3 requests x 2 rows
    for k in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert st[k]["count"] - bs[k]["count"] == 3, k
        assert st[k]["ns"] > bs[k]["ns"], k
    assert st["success"]["ns"] >= st["compute_infer"]["ns"]
    assert s["last_inference"] > 0
    by_size = {b["batch_size"]: b for b in s["batch_stats"]}
    assert by_size[2]["compute_infer"]["count"] >= 3

    g = grpc.get_inference_statistics("simple_identity", "1").model_stats
    assert len(g) == 1
    assert g[0].name == "simple_identity"
    assert g[0].inference_stats.success.count == st["success"]["count"]
    assert g[0].execution_count == s["execution_count"]
    assert any(b.batch_size == 2 for b in g[0].batch_stats)

    every = {(m["name"], m["version"]) for m in http.get_inference_statistics()["model_stats"]}
    assert {("simple", "1"), ("simple_string", "1"), ("simple_identity", "1")} <= every
    assert len(grpc.get_inference_statistics().model_stats) == len(every)


# ------------------------------------------------------- repository API


def test_repository_index_load_unload_while_serving(http, grpc, server):
    repo = server[2]
    idx = {(m["name"], m.get("version")): m for m in http.get_model_repository_index()}
    assert idx[("simple", "1")]["state"] == "READY"

    # A second version of `simple` copied in and loaded: version 1 answers until 2 is ready.
    v2 = repo / "simple" / "2"
    shutil.copytree(repo / "simple" / "1", v2)
    stop, first = threading.Event(), threading.Event()
    errors, served = [], set()

    def hammer():
        c = httpclient.InferenceServerClient(url=server[0])
        try:
            while not stop.is_set():
                a, b, ins = simple_inputs(httpclient)
                try:
                    r = c.infer("simple", ins)
                    served.add(r.get_response()["model_version"])
                    np.testing.assert_array_equal(r.as_numpy("OUTPUT0"), a + b)
                    first.set()
                except InferenceServerException as e:
                    if "unloaded" not in e.message():
                        errors.append(e.message())
        finally:
            c.close()

    t = threading.Thread(target=hammer)
    t.start()
    try:
        assert first.wait(30), "the serving thread got no answer"
        http.load_model("simple")
        assert http.is_model_ready("simple", "2")
        # latest: 1 — version 2 replaced version 1, with no failed request on the way.
        idx = {(m["name"], m.get("version")): m for m in http.get_model_repository_index()}
        assert idx[("simple", "2")]["state"] == "READY"
        assert ("simple", "1") not in idx
        # Unload returns once requests in flight are done; afterwards the model is unavailable.
        grpc.unload_model("simple")
    finally:
        stop.set()
        t.join()
    assert not errors, errors
    assert served, "no request was served"
    assert not http.is_model_ready("simple")
    assert not grpc.is_model_ready("simple")
    a, b, ins = simple_inputs(httpclient)
    with pytest.raises(InferenceServerException) as e:
        http.infer("simple", ins)
    assert e.value.message().startswith("Request for unknown model: 'simple' has no available versions")
    entry = [m for m in grpc.get_model_repository_index().models if m.name == "simple"]
    assert [(m.state, m.reason) for m in entry] == [("UNAVAILABLE", "unloaded")]
    # The server stays ready: the model was unloaded on purpose.
    assert http.is_server_ready()

    grpc.load_model("simple")
    assert http.is_model_ready("simple")
    assert http.infer("simple", ins).get_response()["model_version"] == "2"
    ready = http.get_model_repository_index()
    assert all(m.get("state") == "READY" for m in ready if m["name"] != "simple" or m.get("version") == "2")

    with pytest.raises(InferenceServerException) as e:
        http.load_model("simple", config='{"max_batch_size": 4}')
    assert "not supported" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        http.load_model("nope")
    assert e.value.message().startswith("Request for unknown model: 'nope' is not found")
    shutil.rmtree(v2)
    http.load_model("simple")
    assert http.infer("simple", ins).get_response()["model_version"] == "1"


def test_broken_version_is_reported_in_the_index(http, server):
    repo = server[2]
    bad = repo / "simple_identity" / "5"
    bad.mkdir()
    (bad / "model.onnx").write_bytes(b"not a model")
    try:
        # latest: 1 falls back to the version that loads; the index says why 5 is unavailable.
        http.load_model("simple_identity")
        idx = {(m["name"], m.get("version")): m for m in http.get_model_repository_index()}
        assert idx[("simple_identity", "5")]["state"] == "UNAVAILABLE"
        assert idx[("simple_identity", "5")]["reason"]
        assert idx[("simple_identity", "1")]["state"] == "READY"
        body = requests.post(f"http://{server[0]}/v2/repository/index", json={"ready": True}).json()
        ready = {(m["name"], m.get("version")) for m in body}
        assert ("simple_identity", "5") not in ready and ("simple_identity", "1") in ready
    finally:
        shutil.rmtree(bad)


# ------------------------------------------------------- system shared memory


def test_system_shared_memory_http_and_grpc(http, grpc):
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    b = np.full((1, 16), 3, dtype=np.int32)
    n = a.nbytes
    keys = (f"/sy_in_{os.getpid()}", f"/sy_out_{os.getpid()}")
    h_in = shm.create_shared_memory_region("in", keys[0], 2 * n)
    h_out = shm.create_shared_memory_region("out", keys[1], 2 * n)
    try:
        shm.set_shared_memory_region(h_in, [a, b])
        for mod, client in ((httpclient, http), (grpcclient, grpc)):
            client.unregister_system_shared_memory()
            client.register_system_shared_memory("in", keys[0], 2 * n)
            client.register_system_shared_memory("out", keys[1], 2 * n)
            status = client.get_system_shared_memory_status()
            if mod is httpclient:
                got = {(r["name"], r["key"], int(r["byte_size"])) for r in status}
            else:
                got = {(r.name, r.key, r.byte_size) for r in status.regions.values()}
            assert got == {("in", keys[0], 2 * n), ("out", keys[1], 2 * n)}

            ins = [mod.InferInput("INPUT0", [1, 16], "INT32"), mod.InferInput("INPUT1", [1, 16], "INT32")]
            ins[0].set_shared_memory("in", n)
            ins[1].set_shared_memory("in", n, offset=n)
            outs = [mod.InferRequestedOutput("OUTPUT0"), mod.InferRequestedOutput("OUTPUT1")]
            outs[0].set_shared_memory("out", n)
            outs[1].set_shared_memory("out", n, offset=n)
            r = client.infer("simple", ins, outputs=outs)
            np.testing.assert_array_equal(shm.get_contents_as_numpy(h_out, np.int32, [1, 16]), a + b)
            np.testing.assert_array_equal(shm.get_contents_as_numpy(h_out, np.int32, [1, 16], offset=n), a - b)
            out = r.get_output("OUTPUT0")
            params = out["parameters"] if mod is httpclient else {k: v.string_param or v.int64_param for k, v in out.parameters.items()}
            assert params["shared_memory_region"] == "out" and int(params["shared_memory_byte_size"]) == n

            # Bounds are checked: a 400 / INVALID_ARGUMENT naming the tensor, never a crash.
            bad = mod.InferInput("INPUT1", [1, 16], "INT32")
            bad.set_shared_memory("in", n, offset=n + 4)
            with pytest.raises(InferenceServerException) as e:
                client.infer("simple", [ins[0], bad])
            assert "outside region 'in'" in e.value.message() and "INPUT1" in e.value.message()
            small = mod.InferRequestedOutput("OUTPUT0")
            small.set_shared_memory("out", n // 2)
            with pytest.raises(InferenceServerException) as e:
                client.infer("simple", ins, outputs=[small])
            assert "should be at least 64 bytes" in e.value.message(), e.value.message()
            with pytest.raises(InferenceServerException) as e:
                client.register_system_shared_memory("huge", keys[0], 4 * n)
            assert "exceeds" in e.value.message()
            with pytest.raises(InferenceServerException) as e:
                client.register_system_shared_memory("in", keys[0], n)
            assert "already in manager" in e.value.message()

            client.unregister_system_shared_memory("in")
            with pytest.raises(InferenceServerException) as e:
                client.infer("simple", ins, outputs=outs)
            assert "Unable to find shared memory region: 'in'" in e.value.message()
            client.unregister_system_shared_memory()
            empty = client.get_system_shared_memory_status()
            assert (len(empty) if mod is httpclient else len(empty.regions)) == 0
    finally:
        shm.destroy_shared_memory_region(h_in)
        shm.destroy_shared_memory_region(h_out)
