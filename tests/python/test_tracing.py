"""Tracing against a real OTLP receiver: a gRPC `TraceService` built from the
published opentelemetry-proto definitions (the `opentelemetry-proto`
package's generated stubs, served by grpcio) receives Switchyard's spans; a
stub V2 HTTP backend records the trace context it is sent.

Checked: a client's sampled `traceparent` yields a trace with its trace id,
the request's span a child of the client's span, the phase spans children of
the request's span with model/variant/version (and batch size) attributes;
the backend receives `traceparent` naming the exported backend span as its
parent even when `forward_headers` allows nothing of the kind; an unsampled
parent (with `sampling_ratio: 0`) exports nothing but still propagates the
client's context. The same holds over gRPC: `tritonclient.grpc` sends the
context as metadata.

Run: .venv/bin/python -m pytest tests/python/test_tracing.py -q (after `cargo build`).
"""

from harness import POLL_S, REPO, free_port, start_switchyard  # first: sets XDG_CACHE_HOME

import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent import futures  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import requests  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc  # noqa: E402

MODELS = REPO / "examples" / "models"
PATIENCE_S = 30.0
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.spans = []
        self.resources = []
        self.lock = threading.Lock()

    def Export(self, request, context):
        with self.lock:
            for rs in request.resource_spans:
                self.resources.append({a.key: a.value.string_value for a in rs.resource.attributes})
                for ss in rs.scope_spans:
                    self.spans.extend(ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id_hex, count):
        deadline = time.monotonic() + PATIENCE_S
        while True:
            with self.lock:
                got = [s for s in self.spans if s.trace_id.hex() == trace_id_hex]
            if len(got) >= count:
                return got
            assert time.monotonic() < deadline, f"{len(got)} of {count} spans of {trace_id_hex}: {got}"
            time.sleep(POLL_S)


class Backend(BaseHTTPRequestHandler):
    """A V2 server stub: answers every infer with its input, remembers the trace headers."""
    seen = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(404)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        Backend.seen.append({k.lower(): v for k, v in self.headers.items()})
        out = {"model_name": "remote", "outputs": [dict(body["inputs"][0], name="y")]}
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tracing")
    receiver = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    otlp_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    backend = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    procs = []
    try:
        ports = start_switchyard(
            tmp,
            f"""
tracing:
  otlp_endpoint: http://127.0.0.1:{otlp_port}
  sampling_ratio: 0
  service_name: switchyard-test
  export_interval: 100ms
backends:
  local: {{kind: onnx, repository: {MODELS}, version_policy: {{all: true}}}}
  stub:
    kind: v2-http
    endpoints: ["http://127.0.0.1:{backend.server_address[1]}"]
    forward_headers: {{allow: [x-tenant]}}
models:
  mlp:
    variants:
      - name: v2
        backend: local
        version: 2
        batching: {{max_batch_size: 4, max_queue_delay: 1ms}}
  remote:
    variants: [{{name: main, backend: stub}}]
""",
            procs,
            grpc_max_message_bytes=4 * 1024 * 1024,
        )
        yield ports, receiver
    finally:
        for p in reversed(procs):
            p.stop()
        backend.shutdown()
        server.stop(0)


def infer(ports, model, traceparent, trace_state=None):
    headers = {"traceparent": traceparent}
    if trace_state:
        headers["tracestate"] = trace_state
    body = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.1] * 16}]}
    r = requests.post(f"http://127.0.0.1:{ports['http']}/v2/models/{model}/infer", json=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text


def attrs(span):
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else v.int_value
    return out


def test_sampled_parent_yields_linked_spans_with_attributes(stack):
    ports, receiver = stack
    infer(ports, "mlp", f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "vendor=x")
    spans = receiver.trace(CLIENT_TRACE, 6)
    by_name = {s.name: s for s in spans}
    assert set(by_name) >= {"infer", "route", "receive", "queue", "backend", "encode"}, list(by_name)
    root = by_name["infer"]
    assert root.parent_span_id.hex() == CLIENT_SPAN and root.kind == 2  # SERVER
    assert root.trace_state == "vendor=x"
    for s in spans:
        if s.name != "infer":
            assert s.parent_span_id == root.span_id, s.name
            assert root.start_time_unix_nano <= s.start_time_unix_nano <= s.end_time_unix_nano <= root.end_time_unix_nano, s.name
        a = attrs(s)
        assert (a["switchyard.model"], a["switchyard.variant"], a["switchyard.version"]) == ("mlp", "v2", "2"), s.name
    assert attrs(by_name["queue"])["switchyard.batch_size"] == 1
    assert attrs(by_name["backend"])["switchyard.backend"] == "local" and by_name["backend"].kind == 3  # CLIENT
    assert attrs(root)["http.response.status_code"] == 200
    assert {"service.name": "switchyard-test"} in receiver.resources


def test_backend_receives_context_with_the_backend_span_as_parent(stack):
    ports, receiver = stack
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    Backend.seen.clear()
    infer(ports, "remote", f"00-{trace_id}-b7ad6b7169203331-01")
    spans = receiver.trace(trace_id, 5)
    backend_span = next(s for s in spans if s.name == "backend")
    sent = Backend.seen[-1]["traceparent"]
    # forward_headers allows only x-tenant; the trace context goes regardless.
    assert sent == f"00-{trace_id}-{backend_span.span_id.hex()}-01", sent


def test_unsampled_parent_is_propagated_but_not_exported(stack):
    ports, receiver = stack
    trace_id = "11111111111111111111111111111111"
    Backend.seen.clear()
    parent = f"00-{trace_id}-2222222222222222-00"
    infer(ports, "remote", parent)
    assert Backend.seen[-1]["traceparent"] == parent
    # A later sampled trace is exported; the unsampled one never is.
    infer(ports, "mlp", f"00-{'3' * 32}-{'4' * 16}-01")
    receiver.trace("3" * 32, 6)
    assert not [s for s in receiver.spans if s.trace_id.hex() == trace_id]


def test_grpc_metadata_carries_the_context_both_ways(stack):
    """tritonclient.grpc sends traceparent as gRPC metadata; the spans and the backend's header follow it."""
    ports, receiver = stack
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports['grpc']}")
    x = grpcclient.InferInput("input", [1, 16], "FP32")
    x.set_data_from_numpy(np.full((1, 16), 0.1, dtype=np.float32))
    trace_id = "5" * 32
    client.infer("mlp", [x], headers={"traceparent": f"00-{trace_id}-{'6' * 16}-01"})
    spans = receiver.trace(trace_id, 6)
    root = next(s for s in spans if s.name == "infer")
    assert root.parent_span_id.hex() == "6" * 16
    trace_id = "7" * 32
    Backend.seen.clear()
    client.infer("remote", [x], headers={"traceparent": f"00-{trace_id}-{'8' * 16}-01"})
    backend_span = next(s for s in receiver.trace(trace_id, 5) if s.name == "backend")
    assert Backend.seen[-1]["traceparent"] == f"00-{trace_id}-{backend_span.span_id.hex()}-01"
