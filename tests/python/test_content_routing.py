"""Content routing (`models.M.rules`, docs/routing.md) with real clients:
TF Serving REST through `requests` and `ovmsclient`, KServe V2 through
`tritonclient` (HTTP and gRPC), all served by the embedded ONNX Runtime.
One rule set routes every protocol: a header rule to a dedicated variant,
TF Serving's `signature_name` and a V2 request parameter to another model,
a path rule; requests no rule matches get the split; the access log names
the rule.

Which variant answered is read from `x-switchyard-variant` where the client
shows headers, else from the answer itself: the variants serve `mlp`
version 1 or 2, whose outputs differ (compared with onnxruntime's own).

Run: .venv/bin/python -m pytest tests/python/test_content_routing.py -q
(after `cargo build`; set SWITCHYARD_BIN to test another binary).
"""

from harness import REPO, mlp_reference, start_switchyard  # first: sets XDG_CACHE_HOME

import json  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from ovmsclient import make_http_client  # noqa: E402

MODELS = REPO / "examples" / "models"
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`mlp`: every request no rule takes goes to `stable` (v1); `gold` and
    `fast` (v2) only by rule; `mlp_v2` (v2) by a parameter rule."""
    tmp = tmp_path_factory.mktemp("content_routing")
    procs = []
    try:
        ports = start_switchyard(
            tmp,
            f"""
access_log: {{enabled: true, path: {tmp / "access.log"}}}
backends:
  local:
    kind: onnx
    repository: {MODELS}
    version_policy: {{all: true}}
models:
  mlp:
    rules:
      - name: gold
        match: {{headers: {{x-tenant: gold}}}}
        variant: gold
      - name: classify
        match: {{protocol: tfserving-rest, parameters: {{signature_name: classify}}}}
        model: mlp_v2
      - name: experiment
        match: {{protocol: [v2-http, v2-grpc], parameters: {{experiment: new}}}}
        model: mlp_v2
      - name: tf-versioned
        match: {{path: "/v1/models/mlp/versions/*", headers: {{x-lane: fast}}}}
        variant: fast
    variants:
      - {{name: stable, backend: local, version: 1, weight: 100}}
      - {{name: gold, backend: local, version: 2, weight: 0}}
      - {{name: fast, backend: local, version: 2, weight: 0}}
  mlp_v2:
    variants:
      - {{name: v2-main, backend: local, model: mlp, version: 2}}
""",
            procs,
            grpc_max_message_bytes=64 << 20,
        )
        yield {"http": f"127.0.0.1:{ports['http']}", "grpc": f"127.0.0.1:{ports['grpc']}", "log": tmp / "access.log"}
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.fixture(scope="module")
def reference():
    return mlp_reference()


def rows(n=3, seed=1):
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def tf_predict(server, path, body, headers=None):
    r = requests.post(f"http://{server['http']}{path}", data=json.dumps(body), headers=headers or {}, timeout=30)
    assert r.status_code == 200, r.text
    return r.headers["x-switchyard-variant"], np.array(r.json()["predictions"], dtype=np.float32)


def test_tfserving_rest_header_signature_and_path_rules(server, reference):
    x = rows()
    # Header rule → the dedicated variant (v2).
    variant, out = tf_predict(server, "/v1/models/mlp:predict", {"instances": x.tolist()}, {"x-tenant": "gold"})
    assert variant == "gold"
    np.testing.assert_allclose(out, reference("2", x), atol=TOLERANCE)
    # `signature_name` names another model, whose one signature types the body.
    body = {"signature_name": "classify", "instances": x.tolist()}
    variant, out = tf_predict(server, "/v1/models/mlp:predict", body)
    assert variant == "v2-main"
    np.testing.assert_allclose(out, reference("2", x), atol=TOLERANCE)
    # No rule: the split (all on stable, v1); the default signature as before.
    for sig in (None, "serving_default"):
        body = {"instances": x.tolist()} | ({"signature_name": sig} if sig else {})
        variant, out = tf_predict(server, "/v1/models/mlp:predict", body)
        assert variant == "stable"
        np.testing.assert_allclose(out, reference("1", x), atol=TOLERANCE)
    # A signature no rule takes is still TF Serving's 400.
    r = requests.post(
        f"http://{server['http']}/v1/models/mlp:predict",
        data=json.dumps({"signature_name": "regress", "instances": x.tolist()}),
        timeout=30,
    )
    assert r.status_code == 400 and 'Serving signature name: "regress" not found' in r.json()["error"], r.text
    # Path rule: versioned TF paths with the header go to `fast` (the client's version is kept).
    variant, out = tf_predict(server, "/v1/models/mlp/versions/1:predict", {"instances": x.tolist()}, {"x-lane": "fast"})
    assert variant == "fast"
    variant, _ = tf_predict(server, "/v1/models/mlp:predict", {"instances": x.tolist()}, {"x-lane": "fast"})
    assert variant == "stable"


def test_ovmsclient_is_routed_by_the_split_when_no_rule_matches(server, reference):
    client = make_http_client(server["http"])
    x = rows(2, seed=5)
    np.testing.assert_allclose(client.predict({"input": x}, "mlp"), reference("1", x), atol=TOLERANCE)


def v2_infer(client, module, x, headers=None, parameters=None):
    inp = module.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    out = client.infer("mlp", [inp], headers=headers, parameters=parameters)
    return out.as_numpy("probabilities")


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritonclient_header_and_parameter_rules(server, reference, protocol):
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(url=server[protocol])
    x = rows(2, seed=9)
    # Header rule → gold (v2); a parameter rule → mlp_v2 (v2); neither → stable (v1).
    np.testing.assert_allclose(v2_infer(client, module, x, {"x-tenant": "gold"}), reference("2", x), atol=TOLERANCE)
    got = v2_infer(client, module, x, parameters={"experiment": "new"})
    np.testing.assert_allclose(got, reference("2", x), atol=TOLERANCE)
    got = v2_infer(client, module, x, parameters={"experiment": "old"})
    np.testing.assert_allclose(got, reference("1", x), atol=TOLERANCE)
    np.testing.assert_allclose(v2_infer(client, module, x), reference("1", x), atol=TOLERANCE)


def test_access_log_names_the_rule(server):
    x = rows(1, seed=2)
    tf_predict(server, "/v1/models/mlp:predict", {"instances": x.tolist()}, {"x-tenant": "gold", "x-request-id": "rule-gold-1"})
    tf_predict(server, "/v1/models/mlp:predict", {"instances": x.tolist()}, {"x-request-id": "rule-none-1"})
    lines = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(lines) < 2:
        text = server["log"].read_text() if server["log"].exists() else ""
        for line in text.splitlines():
            rec = json.loads(line)
            if rec.get("request_id") in ("rule-gold-1", "rule-none-1"):
                lines[rec["request_id"]] = rec
        time.sleep(0.1)
    assert lines["rule-gold-1"]["rule"] == "gold" and lines["rule-gold-1"]["variant"] == "gold", lines
    assert "rule" not in lines["rule-none-1"] and lines["rule-none-1"]["variant"] == "stable", lines
