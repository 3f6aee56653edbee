"""Decoupled streaming through Switchyard: `tritonclient.grpc`'s stream API
against a `v2-grpc` backend that answers like a decoupled Triton model —
zero, one or many responses per request, then an empty final response
flagged `triton_final_response` — relayed in order under the public model
name. The backend is a small gRPC server in this process built on Triton's
own service definition (tritonclient's generated stubs).

Run: .venv/bin/python -m pytest tests/python/test_triton_stream.py -q
"""

from harness import free_port, start_switchyard, switchyard_bin  # first: sets XDG_CACHE_HOME before onnxruntime loads

import queue  # noqa: E402
import subprocess  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent import futures  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

PATIENCE_S = 30


class Decoupled(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Model `repeat_backend`: input N (INT32 [1]) -> N responses OUT = 0..N-1, then a final flag.
    N = 99 answers once `gate` is set (a request that holds its slot while the test looks)."""

    def __init__(self):
        self.gate = threading.Event()
        self.gate.set()

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=True)

    def ServerMetadata(self, request, context):
        # Triton's name: Switchyard relays streams to Triton (whose stream messages it knows).
        return service_pb2.ServerMetadataResponse(
            name="triton", version="2.99.0", extensions=["binary_tensor_data", "sequence"]
        )

    def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=request.name == "repeat_backend")

    def ModelStreamInfer(self, request_iterator, context):
        for req in request_iterator:
            if req.model_name != "repeat_backend":
                yield service_pb2.ModelStreamInferResponse(error_message=f"unknown model '{req.model_name}'")
                continue
            n = int(np.frombuffer(req.raw_input_contents[0], dtype=np.int32)[0])
            if n == 99:
                self.gate.wait(PATIENCE_S)
                n = 1
            for i in range(n):
                r = service_pb2.ModelInferResponse(model_name=req.model_name, id=req.id)
                r.outputs.add(name="OUT", datatype="INT32", shape=[1])
                r.raw_output_contents.append(np.array([i], dtype=np.int32).tobytes())
                r.parameters["triton_final_response"].bool_param = False
                yield service_pb2.ModelStreamInferResponse(infer_response=r)
            final = service_pb2.ModelInferResponse(model_name=req.model_name, id=req.id)
            final.parameters["triton_final_response"].bool_param = True
            yield service_pb2.ModelStreamInferResponse(infer_response=final)


class Addr(str):
    """Switchyard's gRPC host:port, with its HTTP one as `.http`."""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("decoupled")
    backend = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Decoupled(), backend)
    port = free_port()
    backend.add_insecure_port(f"127.0.0.1:{port}")
    backend.start()
    procs = []
    try:
        ports = start_switchyard(
            tmp,
            f"""
server: {{metadata_from: triton}}
backends:
  triton:
    kind: v2-grpc
    endpoints: ["127.0.0.1:{port}"]
models:
  repeat:
    variants: [{{name: main, backend: triton, model: repeat_backend}}]
""",
            procs,
            grpc_max_message_bytes=4 << 20,
        )
        addr = Addr(f"127.0.0.1:{ports['grpc']}")
        addr.http = f"127.0.0.1:{ports['http']}"
        yield addr
    finally:
        for p in reversed(procs):
            p.stop()
        backend.stop(None)


def request(n, rid):
    i = grpcclient.InferInput("N", [1], "INT32")
    i.set_data_from_numpy(np.array([n], dtype=np.int32))
    return dict(model_name="repeat", inputs=[i], request_id=rid)


def test_every_response_of_a_decoupled_model_arrives_in_order(server):
    got = queue.Queue()
    c = grpcclient.InferenceServerClient(url=server)
    c.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        plan = [("a", 3), ("b", 0), ("c", 1), ("d", 5)]
        for rid, n in plan:
            c.async_stream_infer(**request(n, rid), enable_empty_final_response=True)
        seen = []
        for _ in range(sum(n + 1 for _, n in plan)):
            result, error = got.get(timeout=PATIENCE_S)
            assert error is None, error
            r = result.get_response()
            assert r.model_name == "repeat"  # the public name, not the backend's
            final = r.parameters["triton_final_response"].bool_param
            out = None if final else int(result.as_numpy("OUT")[0])
            seen.append((r.id, out, final))
    finally:
        c.stop_stream()
        c.close()
    want = []
    for rid, n in plan:
        want += [(rid, i, False) for i in range(n)] + [(rid, None, True)]
    assert seen == want


def test_unknown_model_fails_inline_and_the_stream_goes_on(server):
    got = queue.Queue()
    c = grpcclient.InferenceServerClient(url=server)
    c.start_stream(callback=lambda result, error: got.put((result, error)))
    try:
        bad = request(1, "x")
        bad["model_name"] = "nope"
        c.async_stream_infer(**bad)
        c.async_stream_infer(**request(1, "y"), enable_empty_final_response=True)
        result, error = got.get(timeout=PATIENCE_S)
        assert result is None and "Request for unknown model: 'nope' is not found" in str(error), error
        ids = [got.get(timeout=PATIENCE_S)[0].get_response().id for _ in range(2)]
        assert ids == ["y", "y"]
    finally:
        c.stop_stream()
        c.close()


def test_shared_memory_is_off_unless_enabled(server):
    c = grpcclient.InferenceServerClient(url=server)
    try:
        with pytest.raises(InferenceServerException) as e:
            c.get_system_shared_memory_status()
        assert e.value.status() == "StatusCode.UNIMPLEMENTED"
    finally:
        c.close()


def test_server_metadata_can_be_the_backends_own(server, tmp_path):
    """`server.metadata_from`: GET /v2 and ServerMetadata answer the fronted Triton's identity and extensions."""
    c = grpcclient.InferenceServerClient(url=server)
    try:
        m = c.get_server_metadata()
        assert (m.name, m.version, list(m.extensions)) == ("triton", "2.99.0", ["binary_tensor_data", "sequence"])
    finally:
        c.close()
    http = requests.get(f"http://{server.http}/v2", timeout=10).json()
    assert http == {"name": "triton", "version": "2.99.0", "extensions": ["binary_tensor_data", "sequence"]}

    # It must name a remote backend: anything else is refused with its place in the file.
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("server: {metadata_from: nope}\nbackends:\n  b: {kind: v2-grpc, endpoints: ['127.0.0.1:1']}\n")
    out = subprocess.run([switchyard_bin(), "validate", str(cfg)], capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "server.metadata_from" in out.stdout + out.stderr and "unknown backend `nope`" in out.stdout + out.stderr


def metric(port, name, labels):
    """A sample of Switchyard's /metrics, 0 when absent."""
    for line in requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name}{{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_relayed_stream_requests_pass_admission_and_rate_limits(tmp_path):
    """A request relayed to Triton's own ModelStreamInfer takes a concurrency slot
    for as long as its responses flow and is charged to the rate limits: past
    the limit it fails inline (the stream goes on), as a unary call would."""
    servicer = Decoupled()
    backend = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, backend)
    port = free_port()
    backend.add_insecure_port(f"127.0.0.1:{port}")
    backend.start()
    procs = []
    got = queue.Queue()
    c = c2 = None
    try:
        ports = start_switchyard(
            tmp_path,
            f"""
backends:
  triton:
    kind: v2-grpc
    endpoints: ["127.0.0.1:{port}"]
models:
  repeat:
    variants: [{{name: main, backend: triton, model: repeat_backend}}]
admission:
  models:
    repeat: {{limit: 1, queue: 0}}
rate_limits:
  per_model:
    repeat: {{requests_per_second: 0.001, burst: 4}}
""",
            procs,
            grpc_max_message_bytes=4 << 20,
        )
        # Answers of one stream come in request order: the request held at the
        # backend and the ones that follow are sent on two streams.
        held = queue.Queue()
        c = grpcclient.InferenceServerClient(url=f"127.0.0.1:{ports['grpc']}")
        c.start_stream(callback=lambda result, error: held.put((result, error)))
        c2 = grpcclient.InferenceServerClient(url=f"127.0.0.1:{ports['grpc']}")
        c2.start_stream(callback=lambda result, error: got.put((result, error)))
        in_flight = {"scope": "model", "name": "repeat"}
        servicer.gate.clear()
        c.async_stream_infer(**request(99, "held"), enable_empty_final_response=True)
        deadline = time.monotonic() + PATIENCE_S
        while metric(ports["metrics"], "switchyard_concurrency_in_flight", in_flight) != 1.0:
            assert time.monotonic() < deadline, "the relayed request never took its slot"
            time.sleep(0.05)
        # The slot is held by the relayed request: the next one is refused at once, inline.
        c2.async_stream_infer(**request(1, "refused"), enable_empty_final_response=True)
        result, error = got.get(timeout=PATIENCE_S)
        assert result is None and "concurrency limit" in str(error), error
        refused = {"scope": "model", "name": "repeat", "reason": "full"}
        assert metric(ports["metrics"], "switchyard_admission_refused_total", refused) == 1.0
        servicer.gate.set()
        # Then the held one answers (a response and the final flag), and the slot is free.
        answers = [held.get(timeout=PATIENCE_S) for _ in range(2)]
        assert all(e is None for _, e in answers), answers
        assert [r.get_response().id for r, _ in answers] == ["held", "held"]
        # Two more are served (4 tokens charged in all: the refused one counted too) ...
        for rid in ("ok1", "ok2"):
            c2.async_stream_infer(**request(1, rid), enable_empty_final_response=True)
            ids = [got.get(timeout=PATIENCE_S)[0].get_response().id for _ in range(2)]
            assert ids == [rid, rid]
        # ... and the next one is over the model's rate limit: inline, the stream goes on.
        c2.async_stream_infer(**request(1, "limited"), enable_empty_final_response=True)
        result, error = got.get(timeout=PATIENCE_S)
        assert result is None and "rate limit of model 'repeat'" in str(error), error
        c2.async_stream_infer(**request(1, "after"))
        assert "rate limit" in str(got.get(timeout=PATIENCE_S)[1]), "still limited, and the stream still answers"
        assert metric(ports["metrics"], "switchyard_concurrency_in_flight", in_flight) == 0.0
    finally:
        servicer.gate.set()
        for client in (c, c2):
            if client is not None:
                client.stop_stream()
                client.close()
        for p in reversed(procs):
            p.stop()
        backend.stop(None)
