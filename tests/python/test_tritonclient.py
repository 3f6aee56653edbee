"""The real Triton HTTP client (`tritonclient.http`) through Switchyard in front
of a real MLServer, with onnxruntime on the shipped ONNX files as the reference.

Run: .venv/bin/python -m pytest tests/python -q
(after `cargo build`; set SWITCHYARD_BIN to test another binary).
"""

from harness import batch, mlp_reference, start_mlserver, start_switchyard  # first: sets XDG_CACHE_HOME before onnxruntime loads

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """MLServer (mlp v1+v2) and Switchyard in front of it; yields Switchyard's host:port."""
    tmp = tmp_path_factory.mktemp("stack")
    procs = []
    try:
        ml_port, _ = start_mlserver(tmp, procs)
        ports = start_switchyard(
            tmp,
            f"""
routing:
  sticky_header: x-user-id
backends:
  ml:
    kind: v2-http
    endpoints: ["http://127.0.0.1:{ml_port}"]
models:
  mlp:
    variants:
      - {{name: stable, backend: ml, version: 1, weight: 90}}
      - {{name: canary, backend: ml, version: 2, weight: 10}}
""",
            procs,
        )
        yield f"127.0.0.1:{ports['http']}"
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.fixture
def client(stack):
    c = httpclient.InferenceServerClient(url=stack, concurrency=4)
    yield c
    c.close()


@pytest.fixture(scope="session")
def reference():
    return mlp_reference()


def infer(client, x, *, binary_in, binary_out, version="", headers=None):
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    out = httpclient.InferRequestedOutput("probabilities", binary_data=binary_out)
    return client.infer("mlp", [inp], model_version=version, outputs=[out], headers=headers)


def test_server_and_model_endpoints(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert client.is_model_ready("mlp", "2")
    assert not client.is_model_ready("no-such-model")

    meta = client.get_server_metadata()
    assert "binary_tensor_data" in meta["extensions"], meta

    for version in ("1", "2"):
        m = client.get_model_metadata("mlp", version)
        assert m["name"] == "mlp"
        assert m["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
        assert m["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}]


@pytest.mark.parametrize("binary_in", [True, False], ids=["bin-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["bin-out", "json-out"])
def test_infer_matches_onnxruntime(client, reference, binary_in, binary_out):
    x = batch(5, seed=1)
    for version in ("1", "2"):
        res = infer(client, x, binary_in=binary_in, binary_out=binary_out, version=version)
        got = res.as_numpy("probabilities")
        assert got.dtype == np.float32 and got.shape == (5, 4)
        assert res.get_response()["model_version"] == version
        diff = np.max(np.abs(got - reference(version, x)))
        assert diff <= 1e-6, f"v{version}: max abs diff {diff}"


def test_versions_give_different_outputs(client, reference):
    x = batch(3, seed=2)
    v1 = infer(client, x, binary_in=True, binary_out=True, version="1").as_numpy("probabilities")
    v2 = infer(client, x, binary_in=True, binary_out=True, version="2").as_numpy("probabilities")
    assert np.max(np.abs(v1 - v2)) > 1e-3, "versions 1 and 2 should be different models"
    assert np.max(np.abs(v2 - reference("2", x))) <= 1e-6


def test_async_infer(client, reference):
    xs = [batch(2, seed=10 + i) for i in range(8)]
    pending = []
    for x in xs:
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        out = httpclient.InferRequestedOutput("probabilities", binary_data=True)
        pending.append(client.async_infer("mlp", [inp], model_version="2", outputs=[out], request_id=f"a{len(pending)}"))
    for i, (x, req) in enumerate(zip(xs, pending)):
        res = req.get_result()
        assert res.get_response()["id"] == f"a{i}"
        assert np.max(np.abs(res.as_numpy("probabilities") - reference("2", x))) <= 1e-6


@pytest.mark.parametrize("binary_in", [True, False], ids=["bin-in", "json-in"])
def test_bad_shape_is_a_400(client, binary_in):
    x = batch(1, seed=3)
    inp = httpclient.InferInput("input", [1, 16], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    inp.set_shape([1, 15])  # 16 values no longer fit the declared shape
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [inp])
    assert e.value.status() == "400", e.value
    assert "input" in e.value.message(), e.value


def test_sticky_and_override_headers(client, reference):
    x = batch(1, seed=4)
    versions = {}
    for user in range(40):
        seen = {
            infer(client, x, binary_in=True, binary_out=True, headers={"x-user-id": f"user-{user}"})
            .get_response()["model_version"]
            for _ in range(3)
        }
        assert len(seen) == 1, f"user-{user} moved between versions {seen}"
        versions[user] = seen.pop()
    assert set(versions.values()) <= {"1", "2"}

    for _ in range(5):
        res = infer(client, x, binary_in=False, binary_out=True, headers={"x-switchyard-variant": "canary"})
        assert res.get_response()["model_version"] == "2"
        assert np.max(np.abs(res.as_numpy("probabilities") - reference("2", x))) <= 1e-6
    with pytest.raises(InferenceServerException) as e:
        infer(client, x, binary_in=False, binary_out=False, headers={"x-switchyard-variant": "nope"})
    assert e.value.status() == "400"
    assert "nope" in e.value.message()
