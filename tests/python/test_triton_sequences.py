"""Triton sequence affinity through Switchyard, with the real `tritonclient`
(HTTP, gRPC and the gRPC stream; `sequence_id=`, `sequence_start=`,
`sequence_end=` of `infer`).

The backends are a V2 STAND-IN, not Triton: three replicas of a stateful
model `acc_backend` (each replica one process-local state reached over both
V2 HTTP and V2 gRPC, built on tritonclient's own generated gRPC stubs) that
add INPUT to a running sum per `sequence_id`, reset it on `sequence_start`,
refuse a sequence they do not know without it (Triton's message), and
answer which replica and protocol served the request. Triton's own sequence
batcher does the same per instance; starting three Tritons here would add
minutes of start-up for no additional check of Switchyard.

The route `acc` splits its traffic 50/50 between a `v2-http` and a `v2-grpc`
variant over the same replicas, so a request routed on its own would change
variant and replica: every answer being the right running sum, and every
request of a sequence naming the same replica and protocol, is the affinity.

Run: .venv/bin/python -m pytest tests/python/test_triton_sequences.py -q
"""

from harness import free_port, start_switchyard  # first: sets XDG_CACHE_HOME before onnxruntime loads

import json  # noqa: E402
import queue  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent import futures  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.grpc import service_pb2, service_pb2_grpc  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

PATIENCE_S = 30
START_MESSAGE = "must specify the START flag on the first request of the sequence"


class Replica:
    """One stateful replica: running sums by sequence id, shared by its HTTP and gRPC faces."""

    def __init__(self, index):
        self.index = index
        self.sums = {}
        self.requests = 0
        self.ready = True
        self.ready_probes = 0  # ready answers given to Switchyard's health checks
        self.lock = threading.Lock()

    def infer(self, seq_id, start, end, value, proto):
        """(sum, served_by) or raises ValueError with Triton's message."""
        with self.lock:
            self.requests += 1
            if seq_id is None:
                raise ValueError("acc_backend needs a sequence_id")
            if start:
                self.sums[seq_id] = 0
            elif seq_id not in self.sums:
                raise ValueError(
                    f"inference request for sequence {seq_id} to model 'acc_backend' {START_MESSAGE}"
                )
            self.sums[seq_id] += value
            total = self.sums[seq_id]
            if end:
                del self.sums[seq_id]
        return total, self.index * 10 + proto


def outputs(total, served_by):
    return [("OUTPUT", total), ("SERVED_BY", served_by)]


def http_face(replica):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            if self.path == "/v2/health/ready":
                ready = replica.ready
                self.reply(200 if ready else 503, {})
                replica.ready_probes += ready
            elif self.path == "/v2":
                # No binary extension: Switchyard sends JSON, and its parameters as they came.
                self.reply(200, {"name": "acc-stand-in", "version": "0", "extensions": []})
            elif self.path.startswith("/v2/models/acc_backend"):
                self.reply(200, {"name": "acc_backend", "platform": "stand-in", "inputs": [], "outputs": []})
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            if self.path != "/v2/models/acc_backend/infer":
                self.reply(404, {"error": f"unknown path {self.path}"})
                return
            p = body.get("parameters", {})
            value = int(body["inputs"][0]["data"][0])
            try:
                total, by = replica.infer(
                    p.get("sequence_id"), p.get("sequence_start", False), p.get("sequence_end", False), value, 0
                )
            except ValueError as e:
                self.reply(400, {"error": str(e)})
                return
            self.reply(
                200,
                {
                    "model_name": "acc_backend",
                    "outputs": [
                        {"name": n, "datatype": "INT32", "shape": [1], "data": [v]} for n, v in outputs(total, by)
                    ],
                },
            )

    class Server(ThreadingHTTPServer):
        # The default backlog (5) drops connects under the concurrent test's load.
        request_queue_size = 256
        daemon_threads = True

    server = Server(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class GrpcFace(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, replica):
        self.replica = replica

    def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=self.replica.ready)

    def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name="acc-stand-in", version="0", extensions=[])

    def ModelReady(self, request, context):
        return service_pb2.ModelReadyResponse(ready=request.name == "acc_backend")

    def ModelInfer(self, request, context):
        p = request.parameters
        seq = None
        if "sequence_id" in p:
            which = p["sequence_id"].WhichOneof("parameter_choice")
            seq = getattr(p["sequence_id"], which)
        flag = lambda k: p[k].bool_param if k in p else False  # noqa: E731
        value = int(np.frombuffer(request.raw_input_contents[0], dtype=np.int32)[0])
        try:
            total, by = self.replica.infer(seq, flag("sequence_start"), flag("sequence_end"), value, 1)
        except ValueError as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        r = service_pb2.ModelInferResponse(model_name="acc_backend", id=request.id)
        for name, v in outputs(total, by):
            r.outputs.add(name=name, datatype="INT32", shape=[1])
            r.raw_output_contents.append(np.array([v], dtype=np.int32).tobytes())
        return r


CONFIG = """
backends:
  acc_http:
    kind: v2-http
    endpoints: [{http_endpoints}]
    connect_timeout: 5s
    # Two late probes in a row eject: under the concurrent test a busy stand-in answers
    # one late, and only the not-ready test (prompt 503s) is meant to eject a replica.
    health_check: {{interval: 500ms, timeout: 500ms, unhealthy_after: 2, healthy_after: 1}}
  acc_grpc:
    kind: v2-grpc
    endpoints: [{grpc_endpoints}]
models:
  acc:
    variants:
      - {{name: over-http, backend: acc_http, model: acc_backend, weight: 1}}
      - {{name: over-grpc, backend: acc_grpc, model: acc_backend, weight: 1}}
  acc_idle:
    sequences: {{idle_timeout: 300ms, max_active: 2}}
    variants:
      - {{name: only, backend: acc_http, model: acc_backend}}
"""


class Stack:
    def __init__(self, tmp, replicas, http_servers, grpc_servers, ports):
        self.tmp, self.replicas, self.ports = tmp, replicas, ports
        self.http_servers, self.grpc_servers = http_servers, grpc_servers
        self.http_endpoints = [f"127.0.0.1:{s.server_address[1]}" for s in http_servers]
        self.grpc_endpoints = [f"127.0.0.1:{p}" for p in grpc_servers.ports]
        self.http = f"127.0.0.1:{ports['http']}"
        self.grpc = f"127.0.0.1:{ports['grpc']}"

    def config(self, keep=None):
        keep = range(len(self.replicas)) if keep is None else keep
        return CONFIG.format(
            http_endpoints=", ".join(f"http://{self.http_endpoints[i]}" for i in keep),
            grpc_endpoints=", ".join(f'"{self.grpc_endpoints[i]}"' for i in keep),
        )

    def active(self, model):
        text = requests.get(f"http://127.0.0.1:{self.ports['metrics']}/metrics", timeout=5).text
        m = re.search(r'^switchyard_sequences_active\{model="' + model + r'"\} (\d+)', text, re.M)
        return int(m.group(1)) if m else None


class GrpcServers:
    def __init__(self, replicas):
        self.servers, self.ports = [], []
        for r in replicas:
            s = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
            service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(GrpcFace(r), s)
            port = free_port()
            s.add_insecure_port(f"127.0.0.1:{port}")
            s.start()
            self.servers.append(s)
            self.ports.append(port)

    def stop(self):
        for s in self.servers:
            s.stop(None)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sequences")
    replicas = [Replica(i) for i in range(3)]
    http_servers = [http_face(r) for r in replicas]
    grpc_servers = GrpcServers(replicas)
    procs = []
    try:
        probe = Stack(tmp, replicas, http_servers, grpc_servers, {"http": 0, "grpc": 0})
        ports = start_switchyard(tmp, probe.config(), procs, grpc_max_message_bytes=4 << 20)
        yield Stack(tmp, replicas, http_servers, grpc_servers, ports)
    finally:
        for p in reversed(procs):
            p.stop()
        grpc_servers.stop()
        for s in http_servers:
            s.shutdown()


def http_step(client, model, seq, value, start=False, end=False, headers=None):
    i = httpclient.InferInput("INPUT", [1], "INT32")
    i.set_data_from_numpy(np.array([value], dtype=np.int32))
    r = client.infer(model, [i], sequence_id=seq, sequence_start=start, sequence_end=end, headers=headers)
    return int(r.as_numpy("OUTPUT")[0]), int(r.as_numpy("SERVED_BY")[0])


def grpc_input(value):
    i = grpcclient.InferInput("INPUT", [1], "INT32")
    i.set_data_from_numpy(np.array([value], dtype=np.int32))
    return [i]


def grpc_step(client, model, seq, value, start=False, end=False):
    r = client.infer(model, grpc_input(value), sequence_id=seq, sequence_start=start, sequence_end=end)
    return int(r.as_numpy("OUTPUT")[0]), int(r.as_numpy("SERVED_BY")[0])


def interleaved_plan(ids, steps, seed):
    """Every sequence's values, and a random interleaving of their steps (each sequence in order)."""
    rng = random.Random(seed)
    values = {s: [rng.randint(-50, 50) for _ in range(steps)] for s in ids}
    order = [s for s in ids for _ in range(steps)]
    rng.shuffle(order)
    return values, order


def run_plan(step, ids, steps, seed):
    values, order = interleaved_plan(ids, steps, seed)
    done = {s: 0 for s in ids}
    served = {s: set() for s in ids}
    for s in order:
        k = done[s]
        total, by = step(s, values[s][k], start=k == 0, end=k == steps - 1)
        assert total == sum(values[s][: k + 1]), f"sequence {s} step {k}"
        served[s].add(by)
        done[s] += 1
    return served


def assert_pinned_and_spread(served):
    for s, by in served.items():
        assert len(by) == 1, f"sequence {s} moved between replicas/protocols: {by}"
    placed = {next(iter(b)) for b in served.values()}
    # 50/50 variants and three replicas: a router without affinity spreads a sequence over them.
    assert len({p % 10 for p in placed}) == 2, f"both variants serve sequences: {placed}"
    assert len({p // 10 for p in placed}) > 1, f"sequences spread over replicas: {placed}"


def test_interleaved_sequences_over_http_stay_on_one_variant_and_replica(stack):
    c = httpclient.InferenceServerClient(url=stack.http)
    ids = list(range(101, 113)) + [f"user-{i}" for i in range(12)]
    served = run_plan(lambda s, v, **kw: http_step(c, "acc", s, v, **kw), ids, steps=6, seed=1)
    assert_pinned_and_spread(served)
    assert stack.active("acc") == 0, "every sequence ended"


def test_interleaved_sequences_over_grpc_stay_on_one_variant_and_replica(stack):
    c = grpcclient.InferenceServerClient(url=stack.grpc)
    ids = list(range(201, 213)) + [f"grpc-{i}" for i in range(12)]
    served = run_plan(lambda s, v, **kw: grpc_step(c, "acc", s, v, **kw), ids, steps=6, seed=2)
    assert_pinned_and_spread(served)


def test_sequences_on_one_grpc_stream_run_in_order_on_their_replica(stack):
    """`async_stream_infer` sends a sequence's requests back to back; Switchyard runs them in order."""
    got = queue.Queue()
    c = grpcclient.InferenceServerClient(url=stack.grpc)
    c.start_stream(callback=lambda result, error: got.put((result, error)))
    ids = list(range(301, 311))
    values, order = interleaved_plan(ids, 8, seed=3)
    done = {s: 0 for s in ids}
    try:
        for n, s in enumerate(order):
            k = done[s]
            c.async_stream_infer(
                "acc",
                grpc_input(values[s][k]),
                request_id=f"{s}:{k}",
                sequence_id=s,
                sequence_start=k == 0,
                sequence_end=k == 7,
            )
            done[s] += 1
        results = {}
        for _ in order:
            result, error = got.get(timeout=PATIENCE_S)
            assert error is None, error
            s, k = map(int, result.get_response().id.split(":"))
            results[(s, k)] = (int(result.as_numpy("OUTPUT")[0]), int(result.as_numpy("SERVED_BY")[0]))
    finally:
        c.stop_stream()
        c.close()
    for s in ids:
        assert [results[(s, k)][0] for k in range(8)] == list(np.cumsum(values[s])), f"sequence {s}"
        assert len({results[(s, k)][1] for k in range(8)}) == 1, f"sequence {s} moved"


def test_many_concurrent_sequences_keep_their_state(stack):
    def one(seq):
        c = httpclient.InferenceServerClient(url=stack.http)
        rng = random.Random(seq)
        total, by = 0, set()
        for k in range(10):
            v = rng.randint(0, 9)
            got, b = http_step(c, "acc", seq, v, start=k == 0, end=k == 9)
            total += v
            assert got == total
            by.add(b)
        return by

    with futures.ThreadPoolExecutor(max_workers=32) as pool:
        served = dict(zip(range(1000, 1064), pool.map(one, range(1000, 1064))))
    assert all(len(b) == 1 for b in served.values()), served


def test_a_sequence_that_was_never_started_gets_tritons_error(stack):
    c = httpclient.InferenceServerClient(url=stack.http)
    with pytest.raises(InferenceServerException) as e:
        http_step(c, "acc", 999_999, 1)
    assert e.value.status() == "400"
    assert e.value.message().startswith(
        f"inference request for sequence 999999 to model 'acc' {START_MESSAGE}"
    ), e.value.message()
    g = grpcclient.InferenceServerClient(url=stack.grpc)
    with pytest.raises(InferenceServerException) as e:
        grpc_step(g, "acc", "never-started", 1)
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert e.value.message().startswith(
        f"inference request for sequence never-started to model 'acc' {START_MESSAGE}"
    ), e.value.message()
    # No replica was asked: Switchyard answered.
    assert all("never-started" not in r.sums for r in stack.replicas)


def test_idle_sequences_expire_and_the_table_is_bounded(stack):
    c = httpclient.InferenceServerClient(url=stack.http)
    g = grpcclient.InferenceServerClient(url=stack.grpc)
    assert http_step(c, "acc_idle", 7001, 5, start=True)[0] == 5
    assert http_step(c, "acc_idle", 7002, 6, start=True)[0] == 6
    assert stack.active("acc_idle") == 2
    with pytest.raises(InferenceServerException) as e:
        http_step(c, "acc_idle", 7003, 1, start=True)
    assert e.value.status() == "503"
    assert "max_active" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        grpc_step(g, "acc_idle", 7004, 1, start=True)
    assert e.value.status() == "StatusCode.UNAVAILABLE"
    # Nothing more is sent: both are released after 300 ms without a request.
    deadline = time.monotonic() + PATIENCE_S
    while stack.active("acc_idle") != 0:
        assert time.monotonic() < deadline, "idle sequences were not released"
        time.sleep(0.05)
    with pytest.raises(InferenceServerException) as e:
        http_step(c, "acc_idle", 7001, 1)
    assert e.value.status() == "400"
    assert START_MESSAGE in e.value.message()
    assert http_step(c, "acc_idle", 7003, 4, start=True, end=True)[0] == 4


def start_on(stack, client, seq, variant="over-http"):
    """Starts `seq` on the given variant; returns the replica index it landed on."""
    _, by = http_step(client, "acc", seq, 0, start=True, headers={"x-switchyard-variant": variant})
    return by // 10


def test_a_sequence_whose_replica_is_ejected_fails_clearly_and_never_moves(stack):
    c = httpclient.InferenceServerClient(url=stack.http)
    placed = {}
    seq = 5000
    while len(set(placed.values())) < 2:
        placed[seq] = start_on(stack, c, seq)
        seq += 1
    victim_seq, victim = next(iter(placed.items()))
    other_seq = next(s for s, r in placed.items() if r != victim)
    replica = stack.replicas[victim]
    replica.ready = False
    try:
        # Adding 0 leaves the sum as it is: wait until the probes eject the replica.
        deadline = time.monotonic() + PATIENCE_S
        while True:
            assert time.monotonic() < deadline, "the replica was never ejected"
            try:
                assert http_step(c, "acc", victim_seq, 0)[1] // 10 == victim
            except InferenceServerException as e:
                err = e
                break
            time.sleep(0.05)
        assert err.status() == "503", err
        msg = err.message()
        assert f"sequence {victim_seq} of model 'acc'" in msg, msg
        assert stack.http_endpoints[victim] in msg and "ejected" in msg, msg
        before = replica.requests
        with pytest.raises(InferenceServerException):
            http_step(c, "acc", victim_seq, 1)
        assert replica.requests == before, "no request of the sequence went anywhere"
        assert all(victim_seq not in r.sums for i, r in enumerate(stack.replicas) if i != victim), "never moved"
        # Other sequences go on where they are.
        assert http_step(c, "acc", other_seq, 3, end=True) == (3, placed[other_seq] * 10)
    finally:
        seen = replica.ready_probes
        replica.ready = True
        # Back in rotation once a ready probe has been answered (healthy_after: 1), and
        # another one after it, before the next test counts on every replica.
        deadline = time.monotonic() + PATIENCE_S
        while replica.ready_probes < seen + 2 and time.monotonic() < deadline:
            time.sleep(0.05)


def test_pins_survive_a_reload_and_a_removed_replica_fails_its_sequences(stack):
    c = httpclient.InferenceServerClient(url=stack.http)
    placed = {}
    seq = 6000
    while len(set(placed.values())) < 3:
        placed[seq] = start_on(stack, c, seq)
        seq += 1
        assert seq < 6200, f"sequences never reached every replica: {placed}"
    removed = 2
    keep = [0, 1]
    cfg = stack.tmp / "switchyard.yaml"
    text = cfg.read_text()
    cfg.write_text(text[: text.index("\nbackends:")] + stack.config(keep))
    r = requests.post(f"http://127.0.0.1:{stack.ports['control']}/reload", timeout=PATIENCE_S)
    assert r.status_code == 200, r.text
    for s, rep in placed.items():
        if rep == removed:
            with pytest.raises(InferenceServerException) as e:
                http_step(c, "acc", s, 1)
            assert e.value.status() == "503"
            msg = e.value.message()
            assert f"sequence {s}" in msg and stack.http_endpoints[removed] in msg and "no longer" in msg, msg
        else:
            assert http_step(c, "acc", s, 2, end=True) == (2, rep * 10), f"sequence {s} kept its replica"


def test_a_sequence_whose_variant_is_removed_by_a_reload_fails_clearly(stack):
    c = httpclient.InferenceServerClient(url=stack.http)
    on_http = 6900
    start_on(stack, c, on_http, variant="over-http")
    on_grpc = 6901
    assert http_step(c, "acc", on_grpc, 4, start=True, headers={"x-switchyard-variant": "over-grpc"})[1] % 10 == 1
    cfg = stack.tmp / "switchyard.yaml"
    text = cfg.read_text()
    gone = "      - {name: over-http, backend: acc_http, model: acc_backend, weight: 1}\n"
    assert gone in text
    cfg.write_text(text.replace(gone, ""))
    r = requests.post(f"http://127.0.0.1:{stack.ports['control']}/reload", timeout=PATIENCE_S)
    assert r.status_code == 200, r.text
    with pytest.raises(InferenceServerException) as e:
        http_step(c, "acc", on_http, 1)
    assert e.value.status() == "503"
    msg = e.value.message()
    assert f"sequence {on_http} of model 'acc'" in msg and "variant 'over-http'" in msg, msg
    # The sequence on the variant that stays goes on, state and all.
    assert http_step(c, "acc", on_grpc, 5, end=True)[0] == 9
