"""The real Triton clients over TLS with mutual authentication: Switchyard
serves the data HTTP and gRPC listeners with the shipped example server
certificate (examples/tls, for 127.0.0.1) and asks clients for a certificate
from a CA made here; `tritonclient.grpc` (ssl=True) and `tritonclient.http`
(an SSL context) infer on the embedded runtime, with onnxruntime on the
shipped ONNX files as the reference, and a client without a certificate is
refused at the handshake.

Run: .venv/bin/python -m pytest tests/python/test_tls.py -q (after `cargo build`).
"""
import ssl
import subprocess
import time

from harness import REPO, Proc, batch, free_port, mlp_reference, switchyard_bin  # first: sets XDG_CACHE_HOME

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

TLS = REPO / "examples" / "tls"
CA = str(TLS / "ca.pem")


def openssl(tmp, *args):
    subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    openssl(tmp, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "client-ca.key", "-out", "client-ca.pem", "-days", "2", "-subj", "/CN=test client CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (tmp / "client.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    openssl(tmp, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=alice")
    openssl(tmp, "x509", "-req", "-in", "client.csr", "-CA", "client-ca.pem", "-CAkey", "client-ca.key",
            "-CAcreateserial", "-out", "client.pem", "-days", "2", "-extfile", "client.ext")
    http, grpc = free_port(), free_port()
    tls = f"{{cert: {TLS / 'server.pem'}, key: {TLS / 'server-key.pem'}, client_ca: {tmp / 'client-ca.pem'}}}"
    config = tmp / "switchyard.yaml"
    config.write_text(f"""
listeners:
  http: {{address: "127.0.0.1:{http}", tls: {tls}}}
  grpc: {{address: "127.0.0.1:{grpc}", tls: {tls}}}
  metrics: {{enabled: false}}
  control: {{enabled: false}}
backends:
  local:
    kind: onnx
    repository: {REPO / "examples" / "models"}
    version_policy: {{all: true}}
    warmup: 1
models:
  mlp:
    variants:
      - {{name: v1, backend: local, version: 1}}
""")
    sy = Proc("switchyard", [switchyard_bin(), "serve", "--config", str(config)], tmp / "switchyard.log")
    cert = (str(tmp / "client.pem"), str(tmp / "client.key"))
    deadline = time.monotonic() + 30
    while True:
        if sy.p.poll() is not None:
            pytest.fail(f"switchyard exited:\n{sy.log()}")
        try:
            if requests.get(f"https://127.0.0.1:{http}/startup", verify=CA, cert=cert, timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"not ready over HTTPS:\n{sy.log()}")
        time.sleep(0.05)
    try:
        yield {"http": http, "grpc": grpc, "cert": cert}
    finally:
        sy.stop()


def test_grpc_with_ssl_and_a_client_certificate(stack):
    client = grpcclient.InferenceServerClient(
        f"127.0.0.1:{stack['grpc']}", ssl=True, root_certificates=CA,
        certificate_chain=stack["cert"][0], private_key=stack["cert"][1],
    )
    assert client.is_server_ready()
    x = batch(3, seed=1)
    inp = grpcclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer("mlp", [inp])
    np.testing.assert_allclose(r.as_numpy("probabilities"), mlp_reference()("1", x), rtol=1e-5, atol=1e-6)


def test_grpc_without_a_client_certificate_is_refused(stack):
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{stack['grpc']}", ssl=True, root_certificates=CA)
    with pytest.raises(InferenceServerException):
        client.is_server_live(client_timeout=10)


def test_http_with_an_ssl_context(stack):
    def context():
        ctx = ssl.create_default_context(cafile=CA)
        ctx.load_cert_chain(*stack["cert"])
        return ctx

    client = httpclient.InferenceServerClient(f"127.0.0.1:{stack['http']}", ssl=True, ssl_context_factory=context)
    assert client.is_server_ready()
    x = batch(2, seed=2)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    r = client.infer("mlp", [inp])
    np.testing.assert_allclose(r.as_numpy("probabilities"), mlp_reference()("1", x), rtol=1e-5, atol=1e-6)
    # Without a client certificate the handshake fails.
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://127.0.0.1:{stack['http']}/v2/health/ready", verify=CA, timeout=5)
