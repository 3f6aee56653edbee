"""Drift reference captured from live traffic, end to end.

`switchyard serve` monitors `mlp` against a file profile of inputs uniform in
[0, 2). The traffic's new normal is uniform in [4, 6): against the file it is
all drift. `POST /ml/models/mlp/drift/reference {"capture": {"samples": N}}`
captures a window of that traffic; the captured profile must equal the one
`switchyard profile` builds from the very same rows (same bins, same
shares), become the model's reference (a new generation, the status in
`GET /ml/models/mlp/drift`), score the same traffic as not drifted, flag a
drift injected after it, and survive a restart. Bad requests are refused
naming the field; the capture is audited.

Run: .venv/bin/python -m pytest tests/python/test_reference_capture.py -q (after `cargo build`).
"""

from harness import REPO, POLL_S, start_switchyard, switchyard_bin  # first: sets XDG_CACHE_HOME

import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402

MODELS = REPO / "examples" / "models"
WINDOW = 500
CAPTURE = 600  # rows captured: 60 requests of 10
THRESHOLD = 0.2
PATIENCE_S = 30.0

PROFILE_CONFIG = f"""
backends:
  local: {{kind: onnx, repository: {MODELS}, version_policy: {{all: true}}}}
models:
  mlp:
    variants: [{{name: v1, backend: local, version: 1}}]
"""

SERVE = f"""
access_log: {{enabled: true, path: audit.log}}
backends:
  local: {{kind: onnx, repository: {MODELS}, version_policy: {{all: true}}}}
models:
  mlp:
    monitoring:
      drift: {{reference: mlp.profile.json, sample_rate: 1.0, window: {WINDOW}, min_samples: 100, threshold: {THRESHOLD}}}
    variants: [{{name: v1, backend: local, version: 1}}]
"""


def infer(port, x):
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    r = requests.post(f"http://127.0.0.1:{port}/v2/models/mlp/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text


def drift(ports):
    r = requests.get(f"http://127.0.0.1:{ports['control']}/ml/models/mlp/drift", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def post_reference(ports, body):
    return requests.post(f"http://127.0.0.1:{ports['control']}/ml/models/mlp/drift/reference", json=body, timeout=5)


def wait(what, f):
    deadline = time.monotonic() + PATIENCE_S
    while True:
        v = f()
        if v:
            return v
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(POLL_S)


def profile_of(tmp, rows, name):
    np.save(tmp / f"{name}.npy", rows)
    (tmp / "profile.yaml").write_text(PROFILE_CONFIG)
    out = subprocess.run(
        [switchyard_bin(), "profile", "--inputs", str(tmp / f"{name}.npy"), "--config", str(tmp / "profile.yaml"),
         "--model", "mlp", "--output", str(tmp / f"{name}.profile.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return json.loads((tmp / f"{name}.profile.json").read_text())


def assert_same_profile(captured, built):
    assert captured["format"] == built["format"] and captured["rows"] == built["rows"]
    for side in ("inputs", "outputs"):
        assert [f["name"] for f in captured[side]] == [f["name"] for f in built[side]], side
        for c, b in zip(captured[side], built[side]):
            for key in ("psi_edges", "ks_edges", "psi_ref", "ks_ref"):
                # Inputs: the same f32 values, so the same bins exactly. Outputs: the same
                # model on the same rows, batched differently (float rounding at most).
                tol = 0 if side == "inputs" else 1e-5
                assert np.allclose(c[key], b[key], rtol=tol, atol=tol), (side, c["name"], key)


def test_a_captured_reference_replaces_the_file_and_judges_later_traffic(tmp_path):
    rng = np.random.default_rng(7)
    profile_of(tmp_path, rng.uniform(0.0, 2.0, size=(2000, 16)).astype(np.float32), "mlp")
    procs = []
    try:
        ports = start_switchyard(tmp_path, SERVE, procs)
        d = drift(ports)
        assert d["reference"]["source"] == "file", d
        generation = d["generation"]

        # Bad requests name the field; nothing starts.
        for body, field in [
            ({}, "capture"),
            ({"capture": {}}, "samples"),
            ({"capture": {"samples": 0}}, "capture.samples"),
            ({"capture": {"duration": "soon"}}, "capture.duration"),
            ({"capture": {"samples": 10, "variants": ["v9"]}}, "capture.variants"),
            ({"capture": {"samples": 10}, "reset": True}, "either"),
        ]:
            r = post_reference(ports, body)
            assert r.status_code == 400 and field in r.json()["error"], (body, r.text)
        r = post_reference(ports, {"reset": True})
        assert r.status_code == 409, r.text
        r = requests.post(f"http://127.0.0.1:{ports['control']}/ml/models/nope/drift/reference",
                          json={"capture": {"samples": 10}}, timeout=5)
        assert r.status_code == 404, r.text

        # The new normal: U(4, 6). Against the file's U(0, 2) it is all drift.
        normal = rng.uniform(4.0, 6.0, size=(CAPTURE, 16)).astype(np.float32)
        r = post_reference(ports, {"capture": {"samples": CAPTURE}})
        assert r.status_code == 200, r.text
        assert r.json()["capture"]["state"] == "capturing"
        assert post_reference(ports, {"capture": {"samples": 10}}).status_code == 409, "one capture at a time"
        for chunk in np.split(normal, CAPTURE // 10):
            infer(ports["http"], chunk)
        d = wait("the capture to end", lambda: (x := drift(ports))["reference"].get("source") == "captured" and x)
        ref = d["reference"]
        assert ref["rows"] == CAPTURE and ref["window"] == f"{CAPTURE} samples", ref
        assert ref["capture"]["state"] == "done" and ref["capture"]["rows"] == CAPTURE, ref
        assert d["generation"] > generation and ref["capture"]["generation"] == d["generation"]
        path = Path(ref["path"])
        assert path.parent == tmp_path / "switchyard.yaml.state.json.references", path

        # The captured profile is the one `switchyard profile` builds from the same rows.
        assert_same_profile(json.loads(path.read_text()), profile_of(tmp_path, normal, "same"))

        # The same regime scores as no drift against the captured reference...
        for chunk in np.split(rng.uniform(4.0, 6.0, size=(WINDOW, 16)).astype(np.float32), WINDOW // 50):
            infer(ports["http"], chunk)
        v = wait("a scored window", lambda: (x := drift(ports)["variants"][0]).get("window_rows", {}).get("inputs") == WINDOW and x)
        assert v["data_drift_score"] < THRESHOLD and not v["drifted"], v
        # ...and a drift injected after it is flagged within a window.
        rows_after = 0
        while not drift(ports)["variants"][0]["drifted"]:
            infer(ports["http"], rng.uniform(5.0, 7.0, size=(10, 16)).astype(np.float32))
            rows_after += 10
            assert rows_after <= WINDOW + 40, drift(ports)
            # The summariser scores at most every 100 ms.
            time.sleep(0.02)
        print(f"drift against the captured reference flagged after {rows_after} rows")

        # Audited like any control mutation (the log's writer thread flushes on an interval: wait for the lines).
        def audited():
            log = tmp_path / "audit.log"
            text = log.read_text() if log.exists() else ""
            return "drift reference capture of model mlp" in text and "POST /ml/models/mlp/drift/reference" in text

        wait("the capture's audit lines", audited)

        # It survives a restart: the state file names it.
        procs.pop().stop()
        ports = start_switchyard(tmp_path, SERVE, procs)
        ref = drift(ports)["reference"]
        assert ref["source"] == "captured" and Path(ref["path"]) == path, ref

        # Reset: the file's reference again, the captured file gone.
        r = post_reference(ports, {"reset": True})
        assert r.status_code == 200, r.text
        assert r.json()["reference"]["source"] == "file" and not path.exists()
    finally:
        for p in reversed(procs):
            p.stop()


def test_a_window_too_small_fails_and_keeps_the_reference(tmp_path):
    rng = np.random.default_rng(8)
    profile_of(tmp_path, rng.uniform(0.0, 2.0, size=(500, 16)).astype(np.float32), "mlp")
    procs = []
    try:
        ports = start_switchyard(tmp_path, SERVE, procs)
        r = post_reference(ports, {"capture": {"duration": "300ms"}})
        assert r.status_code == 200, r.text
        infer(ports["http"], rng.uniform(0.0, 2.0, size=(10, 16)).astype(np.float32))
        c = wait("the capture to fail", lambda: (x := drift(ports)["reference"]).get("capture", {}).get("state") == "failed" and x)
        assert "at least 100" in c["capture"]["error"] and c["source"] == "file", c
    finally:
        for p in reversed(procs):
            p.stop()
