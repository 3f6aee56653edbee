"""Drift detection against scipy and numpy on the same samples.

`switchyard profile` builds a reference profile of the `mlp` model from a
reference sample (inputs uniform in [0, 2), outputs from the model itself);
`switchyard serve` then summarises live requests against it. The scores it
reports are checked against the exact statistics of the same samples:
PSI against a numpy PSI over the profile's decile edges (equal to rounding),
KS against `scipy.stats.ks_2samp` (the exact statistic lies within the
reported bracket [ks, ks_upper]). Then a drift is injected at a known row
and must be flagged within one window of rows.

Run: .venv/bin/python -m pytest tests/python/test_drift.py -q (after `cargo build`).
"""

from harness import REPO, POLL_S, Proc, start_switchyard, switchyard_bin  # first: sets XDG_CACHE_HOME

import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from scipy.stats import ks_2samp  # noqa: E402

MODELS = REPO / "examples" / "models"
WINDOW = 1000
THRESHOLD = 0.2
PSI_EPSILON = 1e-4  # switchyard_stats::drift::PSI_EPSILON
PATIENCE_S = 30.0


def numpy_psi(edges, reference, live):
    """PSI over bins `edges[i-1] < x <= edges[i]` (open ends), proportions floored at PSI_EPSILON."""
    bins = len(edges) + 1
    e = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=bins) / len(reference)
    a = np.bincount(np.searchsorted(edges, live, side="left"), minlength=bins) / len(live)
    e, a = np.maximum(e, PSI_EPSILON), np.maximum(a, PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def infer(port, x):
    """The live traffic comes from the real Triton client (binary tensor extension)."""
    client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
    t = httpclient.InferInput("input", list(x.shape), "FP32")
    t.set_data_from_numpy(x, binary_data=True)
    client.infer("mlp", [t])


def drift_report(control_port, summarised):
    """The variant's report once the summariser has taken in `summarised` requests."""
    deadline = time.monotonic() + PATIENCE_S
    while True:
        r = requests.get(f"http://127.0.0.1:{control_port}/ml/models/mlp/drift", timeout=5)
        assert r.status_code == 200, r.text
        v = r.json()["variants"][0]
        if v.get("samples", {}).get("summarised") == summarised:
            return v
        assert time.monotonic() < deadline, f"summariser never reached {summarised} samples: {v}"
        time.sleep(POLL_S)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("drift")
    rng = np.random.default_rng(13)
    reference = rng.uniform(0.0, 2.0, size=(4000, 16)).astype(np.float32)
    np.save(tmp / "reference.npy", reference)
    profile_config = tmp / "profile.yaml"
    profile_config.write_text(
        f"""
backends:
  local: {{kind: onnx, repository: {MODELS}, version_policy: {{all: true}}}}
models:
  mlp:
    variants: [{{name: v1, backend: local, version: 1}}]
"""
    )
    out = subprocess.run(
        [switchyard_bin(), "profile", "--inputs", str(tmp / "reference.npy"), "--config", str(profile_config),
         "--model", "mlp", "--output", str(tmp / "mlp.profile.json")],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    profile = json.loads((tmp / "mlp.profile.json").read_text())
    assert len(profile["inputs"]) == 16 and len(profile["outputs"]) == 4
    procs = []
    try:
        ports = start_switchyard(
            tmp,
            f"""
backends:
  local: {{kind: onnx, repository: {MODELS}, version_policy: {{all: true}}}}
models:
  mlp:
    monitoring:
      drift: {{reference: mlp.profile.json, sample_rate: 1.0, window: {WINDOW}, min_samples: 100, threshold: {THRESHOLD}}}
    variants: [{{name: v1, backend: local, version: 1}}]
""",
            procs,
        )
        yield ports, reference, profile
    finally:
        for p in reversed(procs):
            p.stop()


def test_scores_match_scipy_and_numpy_on_the_same_samples(setup):
    ports, reference, profile = setup
    rng = np.random.default_rng(29)
    live = rng.uniform(0.0, 2.0, size=(WINDOW, 16)).astype(np.float32)
    # Three features drift by different amounts; the rest do not.
    live[:, 3] = rng.uniform(0.5, 2.5, size=WINDOW)
    live[:, 7] = rng.normal(1.0, 0.2, size=WINDOW)
    live[:, 11] = rng.uniform(0.0, 1.0, size=WINDOW)
    for chunk in np.split(live, 10):
        infer(ports["http"], chunk)
    v = drift_report(ports["control"], 10)
    assert v["window_rows"]["inputs"] == WINDOW
    scores = {f["feature"]: f for f in v["inputs"]}
    edges = {f["name"]: f["psi_edges"] for f in profile["inputs"]}
    for j in range(16):
        name = f"input[{j}]"
        s = scores[name]
        ref, cur = reference[:, j].astype(np.float64), live[:, j].astype(np.float32).astype(np.float64)
        assert s["psi"] == pytest.approx(numpy_psi(np.array(edges[name]), ref, cur), abs=1e-9), name
        exact = ks_2samp(ref, cur).statistic
        assert s["ks"] - 1e-9 <= exact <= s["ks_upper"] + 1e-9, (name, s, exact)
        # The bracket is narrow: the stated error of 100 reference-percentile bins.
        assert s["ks_upper"] - s["ks"] <= 0.05, (name, s)
    # Worst first: the offending features lead, and the overall score is the worst PSI.
    assert {f["feature"] for f in v["inputs"][:3]} == {"input[3]", "input[7]", "input[11]"}
    assert v["data_drift_score"] == pytest.approx(v["inputs"][0]["psi"])
    assert v["drifted"] is True and v["model_drift_score"] is not None
    metrics = requests.get(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5).text
    line = next(
        l for l in metrics.splitlines()
        if l.startswith("switchyard_drift_score{") and 'feature="input[7]"' in l and 'stat="psi"' in l
    )
    assert float(line.rsplit(" ", 1)[1]) == pytest.approx(scores["input[7]"]["psi"], rel=1e-9)
    m = requests.get(f"http://127.0.0.1:{ports['control']}/ml/models/mlp/metrics", timeout=5).json()
    assert m["variants"][0]["data_drift_score"] == pytest.approx(v["data_drift_score"])


def test_injected_drift_is_flagged_within_one_window(setup):
    ports, _, _ = setup
    rng = np.random.default_rng(31)
    sent = 10  # requests of the first test
    # A clean window first: the reference's own distribution, scored below the threshold.
    for _ in range(10):
        infer(ports["http"], rng.uniform(0.0, 2.0, size=(100, 16)).astype(np.float32))
    sent += 10
    v = drift_report(ports["control"], sent)
    assert v["data_drift_score"] < THRESHOLD and v["model_drift_score"] < THRESHOLD and not v["drifted"], v
    # The drift starts here: every feature shifts by +1. Rows of 10 per request.
    rows_after, flagged = 0, {}
    while len(flagged) < 2:
        infer(ports["http"], rng.uniform(1.0, 3.0, size=(10, 16)).astype(np.float32))
        sent += 1
        rows_after += 10
        v = drift_report(ports["control"], sent)
        for side in ("data_drift_score", "model_drift_score"):
            if v[side] > THRESHOLD:
                flagged.setdefault(side, rows_after)
        assert rows_after <= WINDOW, f"drift not flagged within {WINDOW} rows: {v}"
    print(f"injected drift flagged after {flagged} rows (window {WINDOW})")
    assert v["drifted"] is True
