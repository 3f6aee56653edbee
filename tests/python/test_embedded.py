"""Switchyard's embedded ONNX Runtime against the `onnxruntime` Python package:
the real Triton HTTP client (`tritonclient.http`) asks Switchyard, serving the
committed example models with `kind: onnx`, over V2 JSON and the binary tensor
extension; the answers must match onnxruntime's own on the same files within
1e-6 (FP32).

Run: .venv/bin/python -m pytest tests/python/test_embedded.py -q
(after `cargo build`; set SWITCHYARD_BIN to test another binary).
"""

from harness import REPO, start_switchyard  # first: sets XDG_CACHE_HOME before onnxruntime loads

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

MODELS = REPO / "examples" / "models"
TOLERANCE = 1e-6

# (model, version, input width, output name)
CASES = [
    ("mlp", "1", 16, "probabilities"),
    ("mlp", "2", 16, "probabilities"),
    ("mlp_heavy", "1", 256, "logits"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`switchyard serve` with the example models on the embedded runtime; yields host:port."""
    tmp = tmp_path_factory.mktemp("embedded")
    procs = []
    try:
        ports = start_switchyard(
            tmp,
            f"""
backends:
  local:
    kind: onnx
    repository: {MODELS}
    version_policy: {{all: true}}
models:
  mlp:
    variants:
      - {{name: main, backend: local}}
  mlp_heavy:
    variants:
      - {{name: main, backend: local}}
""",
            procs,
        )
        yield f"127.0.0.1:{ports['http']}"
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(url=server)
    yield c
    c.close()


@pytest.fixture(scope="module")
def reference():
    """onnxruntime sessions on the very files Switchyard serves."""
    sessions = {}
    for model, version, _, _ in CASES:
        path = MODELS / model / version / "model.onnx"
        sessions[(model, version)] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(model, version, output, x):
        return sessions[(model, version)].run([output], {"input": x})[0]

    return run


def inputs(rows, width, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((rows, width)).astype(np.float32)


@pytest.mark.parametrize("rows", [1, 7])
@pytest.mark.parametrize("binary_in", [True, False], ids=["bin-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["bin-out", "json-out"])
@pytest.mark.parametrize("model,version,width,output", CASES, ids=["mlp-v1", "mlp-v2", "mlp_heavy"])
def test_outputs_match_onnxruntime(client, reference, model, version, width, output, rows, binary_in, binary_out):
    x = inputs(rows, width, seed=rows * 100 + width)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    out = httpclient.InferRequestedOutput(output, binary_data=binary_out)
    res = client.infer(model, [inp], model_version=version, outputs=[out], request_id=f"{model}-{version}-{rows}")
    got = res.as_numpy(output)
    want = reference(model, version, output, x)
    resp = res.get_response()
    assert resp["model_name"] == model
    assert resp["model_version"] == version
    assert resp["id"] == f"{model}-{version}-{rows}"
    assert got.dtype == np.float32 and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    diff = float(np.max(np.abs(got - want)))
    assert diff <= TOLERANCE, f"{model} v{version} batch {rows}: max abs diff {diff}"


def test_versions_differ_and_default_is_the_latest(client, reference):
    x = inputs(3, 16, seed=5)
    answers = {}
    for version in ("", "1", "2"):
        inp = httpclient.InferInput("input", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        res = client.infer("mlp", [inp], model_version=version)
        answers[version] = (res.get_response()["model_version"], res.as_numpy("probabilities"))
    assert answers[""][0] == "2", "a request without a version gets the highest loaded one"
    assert np.array_equal(answers[""][1], answers["2"][1])
    assert float(np.max(np.abs(answers["1"][1] - answers["2"][1]))) > 1e-3, "v1 and v2 should differ"
    assert float(np.max(np.abs(answers["1"][1] - reference("mlp", "1", "probabilities", x)))) <= TOLERANCE


def test_metadata_is_the_session_signature(client):
    assert client.is_server_ready()
    for model, version, width, output in CASES:
        assert client.is_model_ready(model, version)
        meta = client.get_model_metadata(model, version)
        assert meta["name"] == model
        assert meta["platform"] == "onnxruntime_onnx"
        assert version in meta["versions"]
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, width]}]
        n_out = 4 if model == "mlp" else 10
        assert meta["outputs"] == [{"name": output, "datatype": "FP32", "shape": [-1, n_out]}]


def test_bad_input_is_a_400_naming_the_tensor(client):
    x = inputs(2, 15, seed=1)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [inp])
    assert e.value.status() == "400", e.value
    assert "'input'" in e.value.message() and "16" in e.value.message(), e.value

    x64 = inputs(2, 16, seed=1).astype(np.float64)
    inp = httpclient.InferInput("input", list(x64.shape), "FP64")
    inp.set_data_from_numpy(x64, binary_data=False)
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlp", [inp])
    assert e.value.status() == "400", e.value
    assert "FP32" in e.value.message() and "FP64" in e.value.message(), e.value
