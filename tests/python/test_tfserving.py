"""Switchyard's TF Serving REST front end (`/v1/models/...`) driven by the real
`ovmsclient` (its TF-Serving-compatible HTTP client) and `curl`, served by the
embedded ONNX Runtime: answers must equal onnxruntime's own on the same files;
version labels pick variants, unlabelled requests get the A/B split and
stickiness, every bad-input class is a 400 in TF Serving's `{"error": ...}`
form, a TF request and a V2 request share cache entries and batches.

TF Serving itself cannot be installed here: `tfserving_standin.py` stands in
for it (TF Serving's REST protocol over onnxruntime), checked against
`ovmsclient` first; it is the default upstream that `/v1` paths of models
Switchyard does not route pass through to, and the "direct" side of the
comparisons.

Run: .venv/bin/python -m pytest tests/python/test_tfserving.py -q
(after `cargo build`; set SWITCHYARD_BIN to test another binary).
"""

from harness import REPO, Proc, free_port, mlp_reference, start_switchyard  # first: sets XDG_CACHE_HOME

import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
from ovmsclient import make_http_client  # noqa: E402

MODELS = REPO / "examples" / "models"
TEST_MODELS = REPO / "tests" / "models"
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Switchyard with `mlp` split 50/50 (stable = v1, canary = v2 also labelled
    `beta`), a cached and a batching route on the same files, the all-dtypes
    test model, and a route whose V2 backend is down. Yields host:port."""
    tmp = tmp_path_factory.mktemp("tfserving")
    procs = []
    dead = free_port()
    try:
        ports = start_switchyard(
            tmp,
            f"""
routing:
  sticky_header: x-user-id
backends:
  local:
    kind: onnx
    repository: {MODELS}
    version_policy: {{all: true}}
  tests:
    kind: onnx
    repository: {TEST_MODELS}
  down:
    kind: v2-http
    endpoints: ["http://127.0.0.1:{dead}"]
    timeout: 2s
models:
  mlp:
    variants:
      - {{name: stable, backend: local, version: 1, weight: 50}}
      - {{name: canary, backend: local, version: 2, weight: 50, labels: [beta]}}
  mlp_cached:
    cache: {{ttl: 60s}}
    variants:
      - {{name: main, backend: local, model: mlp, version: 1}}
  mlp_batched:
    variants:
      - name: main
        backend: local
        model: mlp
        version: 2
        batching: {{max_batch_size: 16, max_queue_delay: 300ms}}
  dtypes:
    variants:
      - {{name: main, backend: tests}}
  remote:
    variants:
      - {{name: main, backend: down}}
""",
            procs,
        )
        yield f"127.0.0.1:{ports['http']}"
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.fixture(scope="module")
def reference():
    return mlp_reference()


def rows(n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def post(server, path, body, headers=None):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"http://{server}{path}", data=data, headers=headers or {}, timeout=30)


def test_ovmsclient_predict_status_metadata(server, reference):
    client = make_http_client(server)
    x = rows()
    for version in (1, 2):
        out = client.predict({"input": x}, "mlp", model_version=version)
        np.testing.assert_allclose(out, reference(str(version), x), atol=TOLERANCE)
    status = client.get_model_status("mlp")
    assert {v: s["state"] for v, s in status.items()} == {1: "AVAILABLE", 2: "AVAILABLE"}
    meta = client.get_model_metadata("mlp", model_version=2)
    assert meta["model_version"] == 2
    assert meta["inputs"] == {"input": {"dtype": "DT_FLOAT", "shape": [-1, 16]}}
    assert meta["outputs"] == {"probabilities": {"dtype": "DT_FLOAT", "shape": [-1, 4]}}


def test_curl_row_and_columnar_match_onnxruntime(server, reference):
    x = rows(4)
    body = json.dumps({"signature_name": "serving_default", "instances": x.tolist()})
    out = subprocess.run(
        ["curl", "-sS", "-H", "Expect:", "-D", "-", f"http://{server}/v1/models/mlp/labels/stable:predict", "-d", body],
        capture_output=True, check=True, text=True,
    ).stdout
    head, _, payload = out.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 200")
    assert "x-switchyard-variant: stable" in head
    np.testing.assert_allclose(json.loads(payload)["predictions"], reference("1", x), atol=TOLERANCE)
    r = post(server, "/v1/models/mlp/labels/canary:predict", {"inputs": {"input": x.tolist()}})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["outputs"], reference("2", x), atol=TOLERANCE)


def test_nan_and_infinity_literals(server):
    body = '{"instances": [[NaN, Infinity, -Infinity, 1.5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]]}'
    r = post(server, "/v1/models/mlp/labels/stable:predict", body)
    assert r.status_code == 200, r.text
    # Python's json reads TF Serving's bare NaN literals; a NaN input gives NaN scores.
    assert np.isnan(np.array(json.loads(r.text)["predictions"])).all()


def test_named_rows_b64_and_dtypes(server):
    ref = ort.InferenceSession(str(TEST_MODELS / "dtypes" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    row = {
        "f32": [1.5, -2.0], "f64": [0.25, 1e100], "f16": [0.5, 2.0], "i8": [-5, 7], "i16": [300, -300],
        "i32": [70000, -1], "i64": [2**40, -(2**40)], "u8": [0, 255], "b": [True, False], "s": [{"b64": "aGVsbG8="}],
    }
    row2 = dict(row, s=["plain"])
    r = post(server, "/v1/models/dtypes:predict", {"instances": [row, row2]})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert len(preds) == 2 and set(preds[0]) == {f"{k}_out" for k in row}
    feeds = {
        "f32": np.array([row["f32"]] * 2, np.float32), "f64": np.array([row["f64"]] * 2),
        "f16": np.array([row["f16"]] * 2, np.float16), "i8": np.array([row["i8"]] * 2, np.int8),
        "i16": np.array([row["i16"]] * 2, np.int16), "i32": np.array([row["i32"]] * 2, np.int32),
        "i64": np.array([row["i64"]] * 2, np.int64), "u8": np.array([row["u8"]] * 2, np.uint8),
        "b": np.array([row["b"]] * 2), "s": np.array([["hello"], ["plain"]], dtype=object),
    }
    want = dict(zip([o.name for o in ref.get_outputs()], ref.run(None, feeds)))
    for name, value in want.items():
        got = np.array([p[name] for p in preds])
        if value.dtype == object:
            assert got.tolist() == value.tolist()
        else:
            np.testing.assert_allclose(got.astype(value.dtype), value, rtol=1e-3 if value.dtype == np.float16 else 0)


BAD = [
    # (body, TF Serving's words)
    ('{"instances": [[1, 2], [3]]}', "Expecting tensor size: 2 but got: 1"),  # ragged rows
    ('{"inputs": [[1, 2], [3]]}', "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    ('{"signature_name": "classify_x", "instances": [[1]]}', 'Serving signature name: "classify_x" not found'),
    ('{"inputs": [["a"]]}', "is not of expected type: float"),  # wrong dtype
    ('{"inputs": [[{"b64": "aGk="}]]}', "Type: Object is not of expected type: float"),
    ('{"instances": [], "inputs": []}', "expecting only one of 'inputs' or 'instances' keys"),
    ('{"instances": []}', "No values in 'instances' array"),
    ("{}", "Missing 'inputs' or 'instances' key"),
    ("{", "JSON Parse error"),
    ('{"inputs": [[1, 2, 3]]}', "input"),  # the model's own check: 3 is not its width 16
]


@pytest.mark.parametrize("body,words", BAD)
def test_bad_inputs_are_400_in_tf_form(server, body, words):
    r = post(server, "/v1/models/mlp:predict", body)
    assert r.status_code == 400, r.text
    assert list(r.json()) == ["error"] and words in r.json()["error"], r.text


def test_bad_b64_and_mismatched_columns(server):
    base = {"f32": [[1, 2]], "f64": [[1, 2]], "f16": [[1, 2]], "i8": [[1, 2]], "i16": [[1, 2]], "i32": [[1, 2]],
            "i64": [[1, 2]], "u8": [[1, 2]], "b": [[True, True]], "s": [["x"]]}
    r = post(server, "/v1/models/dtypes:predict", {"inputs": dict(base, s=[[{"b64": "%%%"}]])})
    assert r.status_code == 400 and "Unable to base64 decode" in r.json()["error"], r.text
    r = post(server, "/v1/models/dtypes:predict", {"inputs": dict(base, i8=[[1, 300]])})
    assert r.status_code == 400 and "is not of expected type: int8" in r.json()["error"], r.text
    # Row form: a column whose length differs between rows.
    row = {k: v[0] for k, v in base.items()}
    r = post(server, "/v1/models/dtypes:predict", {"instances": [row, dict(row, f32=[1, 2, 3])]})
    assert r.status_code == 400, r.text
    assert "Failed to process element: 1 key: f32 of 'instances' list" in r.json()["error"]
    assert "Expecting tensor size: 2 but got: 3" in r.json()["error"]
    # Columnar form: TF Serving documents that inputs may differ in their 0-th dimension, so
    # they pass as sent (this model takes them: each output follows its own input).
    r = post(server, "/v1/models/dtypes:predict", {"inputs": dict(base, f32=[[1, 2], [3, 4]])})
    assert r.status_code == 200 and r.json()["outputs"]["f32_out"] == [[1.0, 2.0], [3.0, 4.0]], r.text
    r = post(server, "/v1/models/dtypes:predict", {"instances": [{"f32": [1, 2]}]})
    assert r.status_code == 400 and "keys must be equal to" in r.json()["error"], r.text


def test_unknown_model_label_and_method(server):
    r = post(server, "/v1/models/nope:predict", {"instances": [1]})
    assert r.status_code == 404 and r.json() == {"error": "Servable not found for request: Latest(nope)"}
    r = post(server, "/v1/models/mlp/labels/gamma:predict", {"instances": [[0.0] * 16]})
    assert r.status_code == 400 and "Unrecognized servable version label: gamma" in r.json()["error"]
    r = post(server, "/v1/models/mlp:classify", {"examples": [{"x": 1}]})
    assert r.status_code == 400
    assert "Expected classification signature method_name to be tensorflow/serving/classify" in r.json()["error"]
    r = post(server, "/v1/models/mlp:regress", {"examples": [{"x": 1}]})
    assert r.status_code == 400 and "regression signature" in r.json()["error"]
    r = requests.get(f"http://{server}/v1/models/mlp/labels/beta", timeout=10)
    assert r.status_code == 200 and r.json()["model_version_status"][0]["version"] == "2"


def test_labels_pick_variants(server):
    body = {"instances": rows(1).tolist()}
    for label, variant in [("stable", "stable"), ("canary", "canary"), ("beta", "canary")]:
        r = post(server, f"/v1/models/mlp/labels/{label}:predict", body)
        assert r.status_code == 200 and r.headers["x-switchyard-variant"] == variant, (label, r.text)
    r = post(server, "/v1/models/mlp/versions/2:predict", body)
    assert r.headers["x-switchyard-variant"] == "canary"


def test_ab_split_and_stickiness_over_v1(server):
    body = json.dumps({"instances": rows(1).tolist()})
    seen = {"stable": 0, "canary": 0}
    for _ in range(200):
        seen[post(server, "/v1/models/mlp:predict", body).headers["x-switchyard-variant"]] += 1
    assert 80 <= seen["stable"] <= 120 and seen["stable"] + seen["canary"] == 200, seen
    users = {}
    for user in range(40):
        got = {post(server, "/v1/models/mlp:predict", body, {"x-user-id": f"u{user}"}).headers["x-switchyard-variant"]
               for _ in range(5)}
        assert len(got) == 1, (user, got)  # sticky
        users[user] = got.pop()
    assert set(users.values()) == {"stable", "canary"}


def test_tf_and_v2_requests_share_cache_entries(server, reference):
    x = rows(1, seed=7)
    v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": x.flatten().tolist()}]}
    r = post(server, "/v2/models/mlp_cached/infer", v2)
    assert r.status_code == 200 and r.headers["x-switchyard-cache"] == "miss", r.text
    r = post(server, "/v1/models/mlp_cached:predict", {"instances": x.tolist()})
    assert r.status_code == 200 and r.headers["x-switchyard-cache"].startswith("hit"), (r.headers, r.text)
    np.testing.assert_allclose(r.json()["predictions"], reference("1", x), atol=TOLERANCE)
    # And the other way round, on another tensor.
    y = rows(1, seed=8)
    assert post(server, "/v1/models/mlp_cached:predict", {"inputs": y.tolist()}).headers["x-switchyard-cache"] == "miss"
    v2["inputs"][0]["data"] = y.flatten().tolist()
    assert post(server, "/v2/models/mlp_cached/infer", v2).headers["x-switchyard-cache"].startswith("hit")


def test_batcher_merges_tf_and_v2_requests(server, reference):
    xs = [rows(1 + i % 2, seed=100 + i) for i in range(8)]

    def call(i):
        x = xs[i]
        if i % 2:
            r = post(server, "/v1/models/mlp_batched:predict", {"instances": x.tolist()})
            out = r.json()["predictions"]
        else:
            v2 = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                              "data": x.flatten().tolist()}]}
            r = post(server, "/v2/models/mlp_batched/infer", v2)
            out = np.array(r.json()["outputs"][0]["data"]).reshape(x.shape[0], 4)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(out, reference("2", x), atol=TOLERANCE)
        return int(r.headers["x-switchyard-batch-size"])

    with ThreadPoolExecutor(8) as pool:
        sizes = list(pool.map(call, range(8)))
    # Eight concurrent requests inside one 300 ms window: merged, TF rows beside V2 rows.
    assert max(sizes) > 2, sizes


def test_backend_down_is_an_error_in_tf_form(server):
    r = post(server, "/v1/models/remote:predict", {"instances": [[1.0]]})
    assert r.status_code in (502, 503), r.text
    assert list(r.json()) == ["error"]
    r = requests.get(f"http://{server}/v1/models/remote", timeout=10)
    assert r.status_code == 200
    status = r.json()["model_version_status"][0]
    assert status["state"] != "AVAILABLE" and status["status"]["error_code"] == "UNAVAILABLE"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """The TF Serving stand-in serving `mlp` (versions 1 and 2) and `other` (= mlp); yields host:port."""
    tmp = tmp_path_factory.mktemp("standin")
    port = free_port()
    p = Proc(
        "tfserving-standin",
        [sys.executable, str(REPO / "tests" / "python" / "tfserving_standin.py"), str(port),
         f"mlp={MODELS / 'mlp'}", f"other={MODELS / 'mlp'}"],
        tmp / "standin.log",
    )
    try:
        p.wait_until_ok(f"http://127.0.0.1:{port}/v1/models/mlp", 30)
        yield f"127.0.0.1:{port}"
    finally:
        p.stop()


def test_standin_agrees_with_ovmsclient(standin, reference):
    """The stand-in is only a witness if the real client reads it as TF Serving."""
    client = make_http_client(standin)
    x = rows()
    for version in (1, 2):
        np.testing.assert_allclose(client.predict({"input": x}, "mlp", model_version=version),
                                   reference(str(version), x), atol=TOLERANCE)
    assert {v: s["state"] for v, s in client.get_model_status("mlp").items()} == {1: "AVAILABLE", 2: "AVAILABLE"}
    meta = client.get_model_metadata("mlp", model_version=1)
    assert meta["model_version"] == 1 and meta["inputs"]["input"]["dtype"] == "DT_FLOAT"
    r = post(standin, "/v1/models/mlp:predict", {"instances": [[1, 2], [3]]})
    assert r.status_code == 400 and "error" in r.json()


def test_switchyard_and_standin_answer_alike(server, standin):
    """The same TF requests, to Switchyard and straight to the stand-in: the same documents."""
    x = rows(2, seed=3)
    for path, body in [
        ("/v1/models/mlp/versions/1:predict", {"instances": x.tolist()}),
        ("/v1/models/mlp/versions/2:predict", {"inputs": {"input": x.tolist()}}),
        ("/v1/models/mlp/versions/2:predict", {"signature_name": "serving_default", "inputs": x.tolist()}),
    ]:
        a, b = post(server, path, body).json(), post(standin, path, body).json()
        key = "predictions" if "predictions" in b else "outputs"
        np.testing.assert_allclose(a[key], b[key], atol=TOLERANCE)
    for path in ["/v1/models/mlp/versions/2/metadata"]:
        a = requests.get(f"http://{server}{path}", timeout=10).json()
        b = requests.get(f"http://{standin}{path}", timeout=10).json()
        assert a["modelSpec"] == b["modelSpec"]
        sa = a["metadata"]["signature_def"]["signatureDef"]["serving_default"]
        sb = b["metadata"]["signature_def"]["signatureDef"]["serving_default"]
        assert sa["inputs"]["input"]["dtype"] == sb["inputs"]["input"]["dtype"] == "DT_FLOAT"
        assert sa["methodName"] == sb["methodName"]


def test_unrouted_models_pass_through_to_the_default_upstream(tmp_path, standin):
    procs = []
    try:
        ports = start_switchyard(
            tmp_path,
            f"""
backends:
  local:
    kind: onnx
    repository: {MODELS}
models:
  mlp:
    variants:
      - {{name: main, backend: local}}
""",
            procs,
            default_upstream=f"http://{standin}",
        )
        sy = f"127.0.0.1:{ports['http']}"
        body = {"instances": rows(1, seed=5).tolist()}
        # `other` has no route: TF Serving (the stand-in) answers it, through Switchyard.
        r = post(sy, "/v1/models/other:predict", body)
        assert r.status_code == 200 and "x-switchyard-variant" not in r.headers
        assert r.json() == post(standin, "/v1/models/other:predict", body).json()
        assert requests.get(f"http://{sy}/v1/models/other", timeout=10).json() == \
            requests.get(f"http://{standin}/v1/models/other", timeout=10).json()
        # `mlp` has one: Switchyard serves it itself.
        r = post(sy, "/v1/models/mlp:predict", body)
        assert r.status_code == 200 and r.headers["x-switchyard-variant"] == "main"
    finally:
        for p in reversed(procs):
            p.stop()
