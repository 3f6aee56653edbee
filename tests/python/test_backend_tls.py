"""TLS from Switchyard to its backends, to a JWKS URL, and on its control
listener, against real TLS peers made here with Python's `ssl` and grpcio
(MLServer has no TLS of its own, so these stand-ins serve the transport
only: a V2 HTTP server that doubles its input and a V2 gRPC server that does
the same, both requiring a client certificate). Certificates are made with
the openssl CLI. Covers: https:// and gRPC over TLS with mutual TLS; a
wrong CA and a missing client certificate answered 502 naming the backend;
a CA rotated on disk picked up without a restart; JWKS fetched over HTTPS,
rotated mid-test (an unknown `kid` refetches), kept when the URL fails, and
readiness until the first fetch; the control API over HTTPS and the rule
that it needs a token beyond loopback.

Run: .venv/bin/python -m pytest tests/python/test_backend_tls.py -q (after `cargo build`).
"""
import json
import os
import ssl
import subprocess
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import Proc, free_port, start_switchyard, switchyard_bin  # first: sets XDG_CACHE_HOME

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
from tritonclient.grpc import service_pb2 as pb  # noqa: E402
from tritonclient.grpc import service_pb2_grpc as pb_grpc  # noqa: E402

PATIENCE_S = 40.0


def openssl(tmp, *args):
    subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)


def make_ca(tmp, name):
    openssl(tmp, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}-ca.key", "-out", f"{name}-ca.pem", "-days", "2", "-subj", f"/CN={name} test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return tmp / f"{name}-ca.pem"


def make_leaf(tmp, ca, name, server):
    ext = ("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
           if server else "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    (tmp / f"{name}.ext").write_text(ext)
    openssl(tmp, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
    openssl(tmp, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}-ca.pem", "-CAkey", f"{ca}-ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    return tmp / f"{name}.pem", tmp / f"{name}.key"


def replace(path, content_from):
    """Atomically puts `content_from`'s bytes at `path` (as a Secret volume update does)."""
    tmp = path.with_suffix(".new")
    tmp.write_bytes(content_from.read_bytes())
    os.replace(tmp, path)


def eventually(check, what, patience_s=PATIENCE_S):
    deadline = time.monotonic() + patience_s
    last = None
    while time.monotonic() < deadline:
        try:
            ok, last = check()
            if ok:
                return last
        except requests.RequestException as e:
            last = e
        time.sleep(0.1)
    pytest.fail(f"{what}: not within {patience_s}s (last: {last})")


class Https:
    """A threaded HTTPS server on 127.0.0.1: `handler` is a BaseHTTPRequestHandler
    class; `client_ca` set: a client certificate chaining to it is required."""

    def __init__(self, handler, cert, key, client_ca=None):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        # No session tickets: every connection is a full handshake, so a
        # certificate swapped in below is presented (a restarted server would
        # not resume old sessions either).
        self.ctx.num_tickets = 0
        self.ctx.options |= ssl.OP_NO_TICKET
        if client_ca:
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(client_ca)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.server.socket = self.ctx.wrap_socket(self.server.socket, server_side=True, do_handshake_on_connect=False)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class V2Handler(BaseHTTPRequestHandler):
    """KServe V2 over HTTP/1.0 (one request per connection, so every request is a
    fresh handshake): ready, server metadata, and infer that doubles FP32 input."""
    peers = []

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
        peer = self.connection.getpeercert()
        V2Handler.peers.append(dict(x[0] for x in peer["subject"])["commonName"] if peer else None)
        if self.path in ("/v2/health/ready", "/v2/health/live") or self.path.startswith("/v2/models/"):
            return self.reply(200, {"name": "standin", "versions": ["1"], "platform": "standin",
                                    "inputs": [], "outputs": []} if "models" in self.path else {})
        if self.path == "/v2":
            return self.reply(200, {"name": "tls-standin", "version": "1", "extensions": []})
        self.reply(404, {"error": "not found"})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["content-length"])))
        x = req["inputs"][0]
        out = [2 * v for v in x["data"]]
        model = self.path.split("/")[3]
        self.reply(200, {"model_name": model, "outputs": [
            {"name": "y", "datatype": "FP32", "shape": x["shape"], "data": out}]})


class V2Grpc(pb_grpc.GRPCInferenceServiceServicer):
    """KServe V2 gRPC: ready, metadata, and ModelInfer doubling FP32 input."""

    def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=True)

    def ServerMetadata(self, request, context):
        return pb.ServerMetadataResponse(name="tls-standin", version="1")

    def ModelMetadata(self, request, context):
        return pb.ModelMetadataResponse(name=request.name, versions=["1"], platform="standin")

    def ModelInfer(self, request, context):
        i = request.inputs[0]
        if request.raw_input_contents:
            x = np.frombuffer(request.raw_input_contents[0], dtype="<f4")
        else:
            x = np.array(i.contents.fp32_contents, dtype="<f4")
        out = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
        o = out.outputs.add()
        o.name, o.datatype = "y", "FP32"
        o.shape.extend(i.shape)
        out.raw_output_contents.append((2 * x).astype("<f4").tobytes())
        return out


def infer(port, model, values=(1.0, 2.0, 3.0, 4.0)):
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, len(values)], "data": list(values)}]}
    return requests.post(f"http://127.0.0.1:{port}/v2/models/{model}/infer", json=body, timeout=20)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("backend-tls")
    make_ca(tmp, "srv")
    make_ca(tmp, "srv2")
    make_ca(tmp, "cli")
    make_ca(tmp, "other")
    make_leaf(tmp, "srv", "backend", server=True)
    make_leaf(tmp, "srv2", "backend2", server=True)
    make_leaf(tmp, "cli", "switchyard", server=False)
    # The CA file Switchyard reads for backend `h`; rewritten by the rotation test.
    (tmp / "h-ca.pem").write_bytes((tmp / "srv-ca.pem").read_bytes())
    return tmp


@pytest.fixture(scope="module")
def stack(certs):
    t = certs
    procs, servers = [], []
    http = Https(V2Handler, t / "backend.pem", t / "backend.key", client_ca=t / "cli-ca.pem")
    servers.append(http)
    gserver = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(V2Grpc(), gserver)
    creds = grpc.ssl_server_credentials([((t / "backend.key").read_bytes(), (t / "backend.pem").read_bytes())],
                                        root_certificates=(t / "cli-ca.pem").read_bytes(),
                                        require_client_auth=True)
    gport = gserver.add_secure_port("127.0.0.1:0", creds)
    gserver.start()
    ident = f"cert: {t / 'switchyard.pem'}, key: {t / 'switchyard.key'}"
    body = f"""
backends:
  h:
    kind: v2-http
    endpoints: ["https://127.0.0.1:{http.port}"]
    tls: {{ca: {t / 'h-ca.pem'}, {ident}}}
  g:
    kind: v2-grpc
    endpoints: ["127.0.0.1:{gport}"]
    tls: {{ca: {t / 'srv-ca.pem'}, {ident}, server_name: localhost}}
    health_check: {{interval: 1s, timeout: 1s}}
  wrongca:
    kind: v2-http
    endpoints: ["https://127.0.0.1:{http.port}"]
    tls: {{ca: {t / 'other-ca.pem'}, {ident}}}
  nocert:
    kind: v2-grpc
    endpoints: ["https://127.0.0.1:{gport}"]
    tls: {{ca: {t / 'srv-ca.pem'}}}
    timeout: 5s
models:
  mh: {{variants: [{{name: v1, backend: h}}]}}
  mg: {{variants: [{{name: v1, backend: g}}]}}
  mwrongca: {{variants: [{{name: v1, backend: wrongca}}]}}
  mnocert: {{variants: [{{name: v1, backend: nocert}}]}}
"""
    ports = start_switchyard(t, body, procs)
    yield ports, http, t
    for p in procs:
        p.stop()
    for s in servers:
        s.stop()
    gserver.stop(0)


def test_https_and_grpc_tls_backends_with_client_certificates(stack):
    ports, _, _ = stack
    V2Handler.peers.clear()
    r = infer(ports["http"], "mh")
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
    # The backend saw Switchyard's client certificate.
    assert "switchyard" in V2Handler.peers, V2Handler.peers
    r = infer(ports["http"], "mg")
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]


def test_a_failed_handshake_is_a_502_naming_the_backend(stack):
    ports, _, _ = stack
    r = infer(ports["http"], "mwrongca")
    assert r.status_code == 502, r.text
    assert "wrongca" in r.json()["error"] and "certificate" in r.json()["error"].lower(), r.text
    # A server that requires a client certificate refuses a client without one.
    # With TLS 1.3 the client sees the refusal only after its handshake, as an
    # alert on the connection: usually answered at once (503 naming the
    # backend), but the call can also wait out the backend's deadline (504);
    # see the report of issue 17's TLS work.
    r = infer(ports["http"], "mnocert")
    assert r.status_code in (502, 503, 504), r.text
    if r.status_code != 504:
        assert "nocert" in r.json()["error"], r.text


def test_a_ca_rotated_on_disk_is_used_without_a_restart(stack):
    ports, http, t = stack
    assert infer(ports["http"], "mh").status_code == 200
    # The backend now serves a certificate from another CA: Switchyard, trusting the old one, refuses it.
    http.ctx.load_cert_chain(t / "backend2.pem", t / "backend2.key")
    eventually(lambda: (infer(ports["http"], "mh").status_code == 502, None), "the new certificate is refused")
    # The CA bundle is rotated on disk: picked up within the reload interval.
    replace(t / "h-ca.pem", t / "srv2-ca.pem")
    r = eventually(lambda: ((r := infer(ports["http"], "mh")).status_code == 200, r), "the rotated CA is used")
    assert r.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]


def test_a_backend_ca_file_that_is_not_pem_fails_validation(certs, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"""
backends:
  b: {{kind: v2-http, endpoints: ["https://127.0.0.1:1"], tls: {{ca: {bad}}}}}
  c: {{kind: v2-grpc, endpoints: ["127.0.0.1:1"], tls: {{ca: {tmp_path / 'missing.pem'}}}}}
models:
  m: {{variants: [{{name: v1, backend: b}}]}}
""")
    out = subprocess.run([switchyard_bin(), "validate", str(cfg)], capture_output=True, text=True)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "backends.b.tls.ca" in text and "bad.pem" in text, text
    assert "backends.c.tls.ca" in text and "missing.pem" in text, text


# --- JWKS from a URL -------------------------------------------------------------------

class JwksHandler(BaseHTTPRequestHandler):
    jwks = b"{}"
    hits = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        JwksHandler.hits += 1
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("cache-control", "public, max-age=3600")
        self.send_header("content-length", str(len(JwksHandler.jwks)))
        self.end_headers()
        self.wfile.write(JwksHandler.jwks)


def keypair(tmp, name):
    key = tmp / f"{name}.pem"
    openssl(tmp, "genpkey", "-algorithm", "ed25519", "-out", str(key))
    jwks = subprocess.run([switchyard_bin(), "token", "--key", str(key), "--kid", name, "--jwks"],
                          check=True, capture_output=True, text=True).stdout
    return key, json.loads(jwks)


def token(key, kid, allow="model:mlp:infer"):
    return subprocess.run([switchyard_bin(), "token", "--key", str(key), "--kid", kid, "--sub", "alice",
                           "--allow", allow, "--ttl", "10m"], check=True, capture_output=True, text=True).stdout.strip()


def test_jwks_from_an_https_url_rotates_and_survives_its_outage(certs, tmp_path):
    from harness import REPO
    t = certs
    key1, jwks1 = keypair(tmp_path, "k1")
    key2, jwks2 = keypair(tmp_path, "k2")
    procs = []
    port = free_port()
    body = f"""
auth:
  jwt:
    jwks_url: "https://localhost:{port}/.well-known/jwks.json"
    jwks_tls: {{ca: {t / 'srv-ca.pem'}}}
    jwks_refresh: 10s
backends:
  local: {{kind: onnx, repository: {REPO / 'examples' / 'models'}, warmup: 1}}
models:
  mlp: {{variants: [{{name: v1, backend: local}}]}}
"""
    ports = start_switchyard(tmp_path, body, procs)
    base = f"http://127.0.0.1:{ports['http']}"
    x = {"inputs": [{"name": "input", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}]}

    def call(tok):
        return requests.post(f"{base}/v2/models/mlp/infer", json=x, headers={"authorization": f"Bearer {tok}"},
                             timeout=20)
    server = None
    try:
        # No key set fetched yet (the URL does not answer): not ready, and JWTs are refused.
        r = requests.get(f"{base}/v2/health/ready", timeout=5)
        assert r.status_code == 503, r.text
        assert call(token(key1, "k1")).status_code == 401
        JwksHandler.jwks = json.dumps(jwks1).encode()
        server = HttpsOn(port, t)
        eventually(lambda: (requests.get(f"{base}/v2/health/ready", timeout=5).status_code == 200, None),
                   "ready once the JWKS is fetched")
        assert call(token(key1, "k1")).status_code == 200
        # The issuer rotates to a new key: a token with the unknown kid triggers a refetch.
        JwksHandler.jwks = json.dumps({"keys": jwks1["keys"] + jwks2["keys"]}).encode()
        tok2 = token(key2, "k2")
        eventually(lambda: ((r := call(tok2)).status_code == 200, r.text), "the rotated key is fetched")
        # The URL fails: the last good set stays in force (max-age 3600 is cut to jwks_refresh: 10s).
        server.stop()
        server = None
        metrics = f"http://127.0.0.1:{ports['metrics']}/metrics"
        eventually(lambda: ('switchyard_jwks_fetches_total{result="error"}' in requests.get(metrics, timeout=5).text,
                            None), "a failed fetch is counted")
        assert call(tok2).status_code == 200
        assert call(token(key1, "k1")).status_code == 200
    finally:
        if server:
            server.stop()
        for p in procs:
            p.stop()


def HttpsOn(port, t):
    """The JWKS server on a fixed port (Switchyard's config names it before it starts)."""
    class Bound(Https):
        def __init__(self):
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(t / "backend.pem", t / "backend.key")
            self.server = ThreadingHTTPServer(("127.0.0.1", port), JwksHandler)
            self.server.daemon_threads = True
            self.server.socket = self.ctx.wrap_socket(self.server.socket, server_side=True)
            self.port = port
            self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
            self.thread.start()
    return Bound()


# --- The control listener --------------------------------------------------------------

def test_control_api_over_https_with_a_token(certs, tmp_path):
    t = certs
    http, control = free_port(), free_port()
    cfg = tmp_path / "switchyard.yaml"
    cfg.write_text(f"""
listeners:
  http: {{address: "127.0.0.1:{http}"}}
  grpc: {{enabled: false}}
  metrics: {{enabled: false}}
  control:
    address: "127.0.0.1:{control}"
    token: s3cret
    tls: {{cert: {t / 'backend.pem'}, key: {t / 'backend.key'}}}
""")
    p = Proc("switchyard", [switchyard_bin(), "serve", "--config", str(cfg)], tmp_path / "sy.log",
             env=dict(os.environ, SWITCHYARD_LOG_FORMAT="text"), cwd=str(tmp_path))
    try:
        url = f"https://127.0.0.1:{control}/config"
        ca = str(t / "srv-ca.pem")
        r = eventually(lambda: ((r := requests.get(url, verify=ca, headers={"authorization": "Bearer s3cret"},
                                                   timeout=5)).status_code == 200, r), "control API over HTTPS")
        assert requests.get(url, verify=ca, timeout=5).status_code == 401
        with pytest.raises(requests.RequestException):
            requests.get(f"http://127.0.0.1:{control}/config", timeout=5).raise_for_status()
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url, verify=str(t / "other-ca.pem"), timeout=5)
    finally:
        p.stop()


def test_control_api_beyond_loopback_needs_a_token(certs, tmp_path):
    t = certs
    cfg = tmp_path / "switchyard.yaml"
    cfg.write_text(f"""
listeners:
  http: {{address: "127.0.0.1:{free_port()}"}}
  grpc: {{enabled: false}}
  metrics: {{enabled: false}}
  control:
    address: "0.0.0.0:{free_port()}"
    tls: {{cert: {t / 'backend.pem'}, key: {t / 'backend.key'}, client_ca: {t / 'cli-ca.pem'}}}
""")
    env = {k: v for k, v in os.environ.items() if k != "SWITCHYARD_CONTROL_TOKEN"}
    out = subprocess.run([switchyard_bin(), "serve", "--config", str(cfg)], capture_output=True, text=True,
                         timeout=60, env=env, cwd=str(tmp_path))
    assert out.returncode != 0
    assert "beyond loopback" in out.stdout + out.stderr, out.stdout + out.stderr
