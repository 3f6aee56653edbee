"""TLS from Switchyard's pass-through (`listeners.http.default_upstream:
https://...`) to the upstream, against a real TLS peer: a Python `ssl`-wrapped
HTTP server (a stand-in for the transport only: it echoes the path it was
asked for and the client certificate it saw) that requires a client
certificate. Certificates are made by the test with the openssl CLI, with
test_backend_tls.py's helpers. Covers: a path Switchyard does not decode
forwarded over TLS with the configured CA and client certificate (mutual
TLS); a wrong CA answered 502 naming the upstream; a CA rotated on disk used
by new connections without a restart.

Run: .venv/bin/python -m pytest tests/python/test_passthrough_tls.py -q (after `cargo build`).
"""
import json
from http.server import BaseHTTPRequestHandler

from harness import start_switchyard  # first: sets XDG_CACHE_HOME

import pytest  # noqa: E402
import requests  # noqa: E402
from test_backend_tls import Https, eventually, make_ca, make_leaf, replace  # noqa: E402


class Echo(BaseHTTPRequestHandler):
    """HTTP/1.0 (a connection per request, so each is a fresh handshake):
    answers any GET with the path and the client certificate's CN."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        peer = self.connection.getpeercert()
        cn = dict(x[0] for x in peer["subject"])["commonName"] if peer else None
        data = json.dumps({"path": self.path, "client": cn}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    t = tmp_path_factory.mktemp("passthrough-tls")
    for ca in ("srv", "srv2", "cli", "other"):
        make_ca(t, ca)
    make_leaf(t, "srv", "upstream", server=True)
    make_leaf(t, "srv2", "upstream2", server=True)
    make_leaf(t, "cli", "switchyard", server=False)
    # The CA file the first Switchyard reads; rewritten by the rotation test.
    (t / "up-ca.pem").write_bytes((t / "srv-ca.pem").read_bytes())
    server = Https(Echo, t / "upstream.pem", t / "upstream.key", client_ca=t / "cli-ca.pem")
    upstream = f"https://127.0.0.1:{server.port}"
    ident = f"cert: {t / 'switchyard.pem'}, key: {t / 'switchyard.key'}"
    procs, ports = [], {}
    try:
        for name, ca in (("good", "up-ca.pem"), ("wrongca", "other-ca.pem")):
            d = t / name
            d.mkdir()
            tls = f"{{ca: {t / ca}, {ident}}}"
            ports[name] = start_switchyard(d, "", procs, default_upstream=upstream, default_upstream_tls=tls)["http"]
        yield ports, server, t, upstream
    finally:
        for p in procs:
            p.stop()
        server.stop()


def get(port, path):
    return requests.get(f"http://127.0.0.1:{port}{path}", timeout=20)


def test_a_passthrough_request_is_served_over_mutual_tls(stack):
    ports, _, _, _ = stack
    r = get(ports["good"], "/custom/route?x=1")
    assert r.status_code == 200, r.text
    # Forwarded unchanged, and the upstream saw Switchyard's client certificate.
    assert r.json() == {"path": "/custom/route?x=1", "client": "switchyard"}


def test_a_wrong_ca_is_a_502_naming_the_upstream(stack):
    ports, _, _, upstream = stack
    r = get(ports["wrongca"], "/custom/route")
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert upstream in error and "certificate" in error.lower(), error


def test_a_ca_rotated_on_disk_is_used_by_new_connections(stack):
    ports, server, t, _ = stack
    assert get(ports["good"], "/before").status_code == 200
    # The upstream now serves a certificate from another CA: refused while the old CA is configured.
    server.ctx.load_cert_chain(t / "upstream2.pem", t / "upstream2.key")
    eventually(lambda: (get(ports["good"], "/swapped").status_code == 502, None), "the new certificate is refused")
    replace(t / "up-ca.pem", t / "srv2-ca.pem")
    r = eventually(lambda: ((r := get(ports["good"], "/rotated")).status_code == 200, r), "the rotated CA is used")
    assert r.json() == {"path": "/rotated", "client": "switchyard"}
