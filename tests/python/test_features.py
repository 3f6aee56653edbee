"""Online-feature enrichment (docs/features.md) against a real Feast feature
store: a Feast repository with a Redis online store (this test's own
redis-server), features materialised by tests/python/feast_repo.py (run in the
Feast venv), served by `feast serve`; Switchyard fetches them per request and
runs the example `mlp` model (version 2) on them. Answers are compared with
onnxruntime on the same feature values computed here.

Run: .venv/bin/python -m pytest tests/python/test_features.py -q
(after `scripts/setup.sh`, which creates .switchyard/venvs/feast, and `cargo build`).
"""

from harness import REPO, Proc, free_port, mlp_reference, start_switchyard  # first: sets XDG_CACHE_HOME

import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402

FEAST_VENV = REPO / ".switchyard" / "venvs" / "feast" / "bin"
REPO_HELPER = REPO / "tests" / "python" / "feast_repo.py"
FEAST_PATIENCE_S = 120.0
WIDTH = 16
FEATURES = ", ".join(f"user_stats:f{j:02d}" for j in range(WIDTH))


def features_of(user):
    """What feast_repo.py materialised for `user` (FP32, as Feast stores it)."""
    return np.array([((user * 31 + j * 7) % 97) / 97 - 0.5 for j in range(WIDTH)], dtype=np.float32)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    if not (FEAST_VENV / "feast").exists():
        pytest.fail(f"no Feast at {FEAST_VENV}: run scripts/setup.sh")
    tmp = tmp_path_factory.mktemp("features")
    procs = []
    # A port that accepts connections and never answers: the timeout's test.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        redis_port = free_port()
        redis = Proc(
            "redis",
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            tmp / "redis.log",
        )
        procs.append(redis)
        env = dict(os.environ, FEAST_USAGE="False", XDG_CACHE_HOME=str(tmp / "xdg"))
        done = subprocess.run(
            [str(FEAST_VENV / "python"), str(REPO_HELPER), str(tmp / "repo"), f"127.0.0.1:{redis_port}"],
            capture_output=True, text=True, env=env, timeout=300,
        )
        assert done.returncode == 0, f"feast repo setup failed:\n{done.stdout}\n{done.stderr}"
        feast_port = free_port()
        feast = Proc(
            "feast",
            [str(FEAST_VENV / "feast"), "-c", str(tmp / "repo"), "serve", "-h", "127.0.0.1", "-p", str(feast_port)],
            tmp / "feast.log",
            env=env,
        )
        procs.append(feast)
        feast.wait_until_ok(f"http://127.0.0.1:{feast_port}/health", FEAST_PATIENCE_S)
        feast_url = f"http://127.0.0.1:{feast_port}"
        common = f"entity: user_id, input: input, features: [{FEATURES}]"
        ports = start_switchyard(
            tmp,
            f"""
backends:
  local:
    kind: onnx
    repository: {REPO / "examples" / "models"}
    models: [mlp]
    warmup: 1
  tests:
    kind: onnx
    repository: {REPO / "tests" / "models"}
    models: [dtypes]
    warmup: 1
models:
  by-tensor:
    variants:
      - name: main
        backend: local
        model: mlp
        features: {{feast: {feast_url}, entity_input: user_id, timeout: 5s, {common}}}
  by-parameter:
    variants:
      - name: main
        backend: tests
        model: dtypes
        features:
          feast: {feast_url}
          entity: user_id
          entity_parameter: user
          input: f64
          datatype: FP64
          features: [user_stats:f01, user_stats:f00]
          defaults: [0.25, -1]
          timeout: 5s
  cached:
    variants:
      - name: main
        backend: local
        model: mlp
        features: {{feast: {feast_url}, entity_input: user_id, timeout: 5s, cache_ttl: 10m, {common}}}
  silent-store:
    variants:
      - name: main
        backend: local
        model: mlp
        features: {{feast: "http://127.0.0.1:{silent.getsockname()[1]}", entity_input: user_id, timeout: 300ms, {common}}}
""",
            procs,
        )
        yield {"url": f"http://127.0.0.1:{ports['http']}", "metrics": f"http://127.0.0.1:{ports['metrics']}/metrics",
               "feast": feast}
    finally:
        for p in reversed(procs):
            p.stop()
        silent.close()


def infer(world, model, inputs, parameters=None):
    body = {"inputs": inputs}
    if parameters:
        body["parameters"] = parameters
    return requests.post(f"{world['url']}/v2/models/{model}/infer", json=body, timeout=10)


def users(ids, datatype="INT64"):
    return [{"name": "user_id", "datatype": datatype, "shape": [len(ids)], "data": ids}]


def probabilities(r):
    out = next(o for o in r.json()["outputs"] if o["name"] == "probabilities")
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


# Every input of tests/models/dtypes but f64 (which the features fill), one row.
DTYPES_INPUTS = [
    {"name": "f32", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.5]},
    {"name": "f16", "datatype": "FP16", "shape": [1, 2], "data": [0.5, 1.0]},
    {"name": "i8", "datatype": "INT8", "shape": [1, 2], "data": [1, -1]},
    {"name": "i16", "datatype": "INT16", "shape": [1, 2], "data": [2, -2]},
    {"name": "i32", "datatype": "INT32", "shape": [1, 2], "data": [3, -4]},
    {"name": "i64", "datatype": "INT64", "shape": [1, 2], "data": [5, -6]},
    {"name": "u8", "datatype": "UINT8", "shape": [1, 2], "data": [7, 8]},
    {"name": "b", "datatype": "BOOL", "shape": [1, 2], "data": [True, False]},
    {"name": "s", "datatype": "BYTES", "shape": [1, 1], "data": ["x"]},
]


def output(r, name):
    return next(o for o in r.json()["outputs"] if o["name"] == name)["data"]


def lookups(world, model, result):
    text = requests.get(world["metrics"], timeout=5).text
    for line in text.splitlines():
        if line.startswith("switchyard_feature_lookups_total{") and f'model="{model}"' in line \
                and f'result="{result}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_entity_keys_from_a_tensor_become_the_declared_feature_rows(world):
    ref = mlp_reference()
    ids = [1, 2, 7, 2]  # a repeated key is fetched once and fills both rows
    r = infer(world, "by-tensor", users(ids))
    assert r.status_code == 200, r.text
    x = np.stack([features_of(u) for u in ids])
    np.testing.assert_allclose(probabilities(r), ref("2", x), atol=1e-6)
    # INT32 keys are the same entities.
    r32 = infer(world, "by-tensor", users([7], "INT32"))
    assert r32.status_code == 200, r32.text
    np.testing.assert_allclose(probabilities(r32), ref("2", features_of(7)[None, :]), atol=1e-6)


def test_a_missing_entity_is_refused_by_name(world):
    r = infer(world, "by-tensor", users([3, 1000]))
    assert r.status_code == 400, r.text
    assert "user_id=1000" in r.text and "user_stats:f00" in r.text, r.text
    assert lookups(world, "by-tensor", "missing") >= 1


def test_a_parameter_keys_one_row_and_defaults_fill_unknown_entities(world):
    # The `dtypes` model passes every input through: f64_out is exactly what was fetched (FP64,
    # in the declared order: f01 then f00), the client sending the other inputs itself.
    r = infer(world, "by-parameter", DTYPES_INPUTS, parameters={"user": 5})
    assert r.status_code == 200, r.text
    assert output(r, "f64_out") == [float(features_of(5)[1]), float(features_of(5)[0])]
    assert output(r, "i32_out") == [3, -4]
    r = infer(world, "by-parameter", DTYPES_INPUTS, parameters={"user": 1000})
    assert r.status_code == 200, r.text
    assert output(r, "f64_out") == [0.25, -1.0]
    assert lookups(world, "by-parameter", "defaulted") == 1


def test_bad_requests_name_the_problem(world):
    r = infer(world, "by-parameter", DTYPES_INPUTS)
    assert r.status_code == 400 and "parameter `user`" in r.text, r.text
    r = infer(world, "by-parameter", DTYPES_INPUTS, parameters={"user": 1.5})
    assert r.status_code == 400 and "integer or a string" in r.text, r.text
    r = infer(world, "by-tensor", users([1.5], "FP32"))
    assert r.status_code == 400 and "must be integers" in r.text, r.text
    r = infer(world, "by-tensor", users([1]) + [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0] * 16}])
    assert r.status_code == 400 and "filled from the feature store" in r.text, r.text


def test_a_silent_feature_store_times_out_within_its_bound(world):
    r = infer(world, "silent-store", users([1]))
    assert r.status_code == 504, r.text
    assert "feature store" in r.text and "300ms" in r.text, r.text


def test_cached_rows_are_served_while_the_store_is_down(world):
    ref = mlp_reference()
    r = infer(world, "cached", users([4, 9]))
    assert r.status_code == 200, r.text
    assert lookups(world, "cached", "fetched") == 2
    world["feast"].stop()
    # Still answered: both rows are within cache_ttl.
    r = infer(world, "cached", users([9, 4]))
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(probabilities(r), ref("2", np.stack([features_of(9), features_of(4)])), atol=1e-6)
    assert lookups(world, "cached", "cache_hit") == 2
    # An entity not cached needs the store, which is gone: a clear 502.
    r = infer(world, "cached", users([11]))
    assert r.status_code == 502 and "feature store" in r.text, r.text
