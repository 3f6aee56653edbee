"""Prediction quality from feedback, and the seed ticket's predict API.

Switchyard serves the example `mlp` (v1 and v2, 50/50, sticky on the user)
with quality monitoring on (classification: the argmax class of
`probabilities`). Clients call the seed ticket's `POST /ml/models/mlp/predict`
and V2 infer; the answers are checked against onnxruntime on the same ONNX
files. Labels sent to `POST /ml/models/mlp/feedback` are joined to those
answers, and the per-variant accuracy, precision, recall and F1 Switchyard
reports (control API and Prometheus) are checked against the same metrics
computed here with numpy from the same (prediction, label) pairs.

Run: .venv/bin/python -m pytest tests/python/test_quality.py -q (after `cargo build`).
"""

from harness import REPO, mlp_reference, start_switchyard  # first: sets XDG_CACHE_HOME

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402

MODELS = REPO / "examples" / "models"
CLASSES = 4


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quality")
    procs = []
    try:
        ports = start_switchyard(
            tmp,
            f"""
routing:
  sticky_header: x-user-id
backends:
  local: {{kind: onnx, repository: {MODELS}, version_policy: {{all: true}}}}
models:
  mlp:
    monitoring:
      quality: {{task: classification, output: probabilities, window: 1000}}
    variants:
      - {{name: v1, backend: local, version: 1, weight: 50}}
      - {{name: v2, backend: local, version: 2, weight: 50}}
""",
            procs,
        )
        yield ports
    finally:
        for p in reversed(procs):
            p.stop()


def macro(pred, label):
    """(accuracy, precision, recall, f1) with macro averages over the classes seen."""
    classes = sorted(set(pred) | set(label))
    p, r, f = [], [], []
    for c in classes:
        tp = sum(1 for a, b in zip(pred, label) if a == c and b == c)
        fp = sum(1 for a, b in zip(pred, label) if a == c and b != c)
        fn = sum(1 for a, b in zip(pred, label) if a != c and b == c)
        pc = tp / (tp + fp) if tp + fp else 0.0
        rc = tp / (tp + fn) if tp + fn else 0.0
        p.append(pc)
        r.append(rc)
        f.append(2 * pc * rc / (pc + rc) if pc + rc else 0.0)
    acc = sum(1 for a, b in zip(pred, label) if a == b) / len(pred)
    return acc, float(np.mean(p)), float(np.mean(r)), float(np.mean(f))


def test_predict_feedback_and_quality_per_variant(server):
    base = f"http://127.0.0.1:{server['http']}"
    ref = mlp_reference()
    rng = np.random.default_rng(5)
    served = {}  # request id -> (variant, predicted class)
    for i in range(120):
        x = rng.uniform(0.0, 2.0, size=(1, 16)).astype(np.float32)
        body = {"request_id": f"p{i}", "model_id": "mlp", "input_data": {"input": x[0].tolist()},
                "parameters": {}, "timestamp": "2026-11-30T06:00:00Z", "user_id": f"user-{i % 17}"}
        r = requests.post(f"{base}/ml/models/mlp/predict", json=body, timeout=10)
        assert r.status_code == 200, r.text
        a = r.json()
        assert set(a) == {"request_id", "predictions", "confidence_scores", "processing_time", "model_version", "metadata"}
        variant = a["metadata"]["variant"]
        probs = ref(variant[1:], x)[0]
        assert a["request_id"] == f"p{i}" and a["model_version"] == variant[1:]
        assert a["predictions"] == [int(np.argmax(probs))]
        assert a["confidence_scores"][0] == pytest.approx(float(np.max(probs)), abs=1e-6)
        assert a["processing_time"] > 0
        served[a["request_id"]] = (variant, a["predictions"][0])
    # user_id is the sticky key: the same user always lands on the same variant.
    by_user = {}
    for i in range(120):
        by_user.setdefault(i % 17, set()).add(served[f"p{i}"][0])
    assert all(len(v) == 1 for v in by_user.values()), by_user
    # V2 infer answers are remembered under the client's `id` too.
    for i in range(40):
        x = rng.uniform(0.0, 2.0, size=(1, 16)).astype(np.float32)
        body = {"id": f"v{i}", "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": x.ravel().tolist()}]}
        r = requests.post(f"{base}/v2/models/mlp/infer", json=body, headers={"x-user-id": f"user-{i}"}, timeout=10)
        assert r.status_code == 200, r.text
        variant = r.headers["x-switchyard-variant"]
        served[r.json()["id"]] = (variant, int(np.argmax(ref(variant[1:], x)[0])))

    # Labels: right for two thirds, a deterministic wrong class otherwise.
    labels = {rid: (p if k % 3 else (p + 1 + k % 3) % CLASSES) for k, (rid, (_, p)) in enumerate(sorted(served.items()))}
    items = [{"request_id": rid, "label": lab} for rid, lab in labels.items()]
    items += [{"request_id": "never-served", "label": 1}]
    r = requests.post(f"{base}/ml/models/mlp/feedback", json={"feedback": items}, timeout=10)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["joined"] == len(served) and out["unknown"] == ["never-served"] and out["rejected"] == []
    # Each answer takes feedback once.
    again = requests.post(f"{base}/ml/models/mlp/feedback", json={"feedback": items[:1]}, timeout=10).json()
    assert again["joined"] == 0 and again["unknown"] == [items[0]["request_id"]]

    metrics = requests.get(f"http://127.0.0.1:{server['control']}/ml/models/mlp/metrics", timeout=5).json()
    prom = requests.get(f"http://127.0.0.1:{server['metrics']}/metrics", timeout=5).text
    for v in metrics["variants"]:
        pairs = [(served[rid][1], labels[rid]) for rid in served if served[rid][0] == v["name"]]
        assert pairs, v
        acc, p, rc, f1 = macro([a for a, _ in pairs], [b for _, b in pairs])
        assert v["accuracy"] == pytest.approx(acc) and v["precision"] == pytest.approx(p)
        assert v["recall"] == pytest.approx(rc) and v["f1_score"] == pytest.approx(f1)
        assert v["quality"]["labelled"] == len(pairs)
        for key in ("prediction_latency", "throughput", "error_rate", "data_drift_score", "model_drift_score"):
            assert key in v
        line = next(l for l in prom.splitlines()
                    if l.startswith("switchyard_quality{") and 'metric="accuracy"' in l and f'variant="{v["name"]}"' in l)
        assert float(line.rsplit(" ", 1)[1]) == pytest.approx(acc)


def test_bad_requests_name_the_problem(server):
    base = f"http://127.0.0.1:{server['http']}"
    r = requests.post(f"{base}/ml/models/mlp/predict", json={"input_data": {"nope": [1.0]}}, timeout=5)
    assert r.status_code == 400 and "no input 'nope'" in r.json()["error"]
    r = requests.post(f"{base}/ml/models/mlp/predict", json={"model_id": "other", "input_data": {}}, timeout=5)
    assert r.status_code == 400 and "model_id" in r.json()["error"]
    r = requests.post(f"{base}/ml/models/mlp/feedback", json={"items": []}, timeout=5)
    assert r.status_code == 400 and "feedback" in r.json()["error"]
    r = requests.post(f"{base}/ml/models/mlp/feedback", json={"feedback": [{"request_id": "x", "label": "cat"}]}, timeout=5)
    # A label that is not a number is rejected whatever its id (it never reaches the answer store).
    assert r.status_code == 200 and r.json()["unknown"] == [], r.text
    assert r.json()["rejected"][0]["request_id"] == "x" and "must be a number" in r.json()["rejected"][0]["error"]
    r = requests.post(f"{base}/ml/models/nope/feedback", json={"feedback": []}, timeout=5)
    assert r.status_code == 404
