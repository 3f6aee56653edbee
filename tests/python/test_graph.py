"""Inference graphs (docs/ensembles.md) on the embedded ONNX Runtime, asked
through the real Triton clients: V2 JSON, the binary tensor extension and
gRPC ModelInfer (blocking and asyncio). Every answer is checked against the
same computation done here with numpy and onnxruntime on the very files
Switchyard serves: a three-model weighted vote, a weighted average, a
sequence with tensor renames, conditions on a parameter and on a tensor, a
failing step (named in the error), optional members and steps, per-step
metrics, the shipped examples/ensemble.yaml, and 1,000
concurrent graph requests.

Two of the members are ONNX models this test builds (`onnx` package): `scale`
(y = 2x) and `lin3` (softmax(x·W), a third classifier beside mlp v1 and v2).

Run: .venv/bin/python -m pytest tests/python/test_graph.py -q
(after `cargo build`; set SWITCHYARD_BIN to test another binary).
"""

from harness import REPO, free_port, mlp_reference, start_switchyard  # first: sets XDG_CACHE_HOME

import asyncio  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.grpc.aio as grpcaio  # noqa: E402
import tritonclient.http as httpclient  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

MODELS = REPO / "examples" / "models"
TOLERANCE = 1e-5
WEIGHTS = [0.45, 0.35, 0.2]
LIN3_W = np.random.default_rng(42).standard_normal((16, 4)).astype(np.float32)


def save(model_dir, graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    (model_dir / "1").mkdir(parents=True)
    onnx.save(model, str(model_dir / "1" / "model.onnx"))


def build_models(repo):
    f32 = TensorProto.FLOAT
    save(
        repo / "scale",
        helper.make_graph(
            [helper.make_node("Mul", ["x", "two"], ["y"])],
            "scale",
            [helper.make_tensor_value_info("x", f32, ["N", 16])],
            [helper.make_tensor_value_info("y", f32, ["N", 16])],
            [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
        ),
    )
    save(
        repo / "lin3",
        helper.make_graph(
            [
                helper.make_node("MatMul", ["input", "w"], ["logits"]),
                helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            ],
            "lin3",
            [helper.make_tensor_value_info("input", f32, ["N", 16])],
            [helper.make_tensor_value_info("probabilities", f32, ["N", 4])],
            [numpy_helper.from_array(LIN3_W, "w")],
        ),
    )


def lin3(x):
    z = x.astype(np.float64) @ LIN3_W.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def weighted_vote(probs, weights):
    """Per row: each model votes its argmax with its weight; most weight wins, ties to the lowest class."""
    out = []
    for r in range(probs[0].shape[0]):
        tally = {}
        for p, w in zip(probs, weights):
            c = int(np.argmax(p[r]))
            tally[c] = tally.get(c, 0.0) + w
        out.append(max(sorted(tally), key=lambda c: tally[c]))
    return np.array(out, dtype=np.int64)


def rows(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Switchyard with both repositories and the graphs; yields the http, grpc and metrics host:port."""
    tmp = tmp_path_factory.mktemp("graph")
    extra = tmp / "extra"
    build_models(extra)
    dead = free_port()  # nothing listens: the `broken` route always fails
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
  extra:
    kind: onnx
    repository: {extra}
  dead:
    kind: v2-http
    endpoints: ["http://127.0.0.1:{dead}"]
models:
  mlp_v1:
    variants:
      - {{name: v1, backend: local, model: mlp, version: 1, batching: {{max_batch_size: 64, max_queue_delay: 1ms}}}}
  mlp_v2:
    variants:
      - {{name: v2, backend: local, model: mlp, version: 2}}
  lin3:
    variants: [{{name: main, backend: extra}}]
  scale:
    variants: [{{name: main, backend: extra}}]
  broken:
    variants: [{{name: main, backend: dead}}]
graphs:
  vote:
    steps:
      - name: vote
        fan_out: [{{model: mlp_v1}}, {{model: mlp_v2}}, {{model: lin3}}]
        combine: {{op: weighted_vote, tensor: probabilities, output: class, weights: {WEIGHTS}}}
  average:
    steps:
      - name: avg
        fan_out: [{{model: mlp_v1}}, {{model: mlp_v2}}, {{model: lin3}}]
        combine: {{op: average, tensor: probabilities, weights: [3, 1, 1]}}
  scaled:
    steps:
      - name: scale
        model: scale
        inputs: {{x: features}}
        outputs: {{y: input}}
      - name: classify
        model: mlp_v1
        outputs: {{probabilities: scores}}
    outputs: [scores, input]
  by_tier:
    steps:
      - name: route
        condition:
          parameter: tier
          cases: [{{equals: premium, model: mlp_v2}}, {{above: 10, model: lin3}}]
          default: mlp_v1
  gated:
    steps:
      - name: gate
        inputs: {{input: input}}
        condition:
          tensor: gate
          cases: [{{above: 0.5, model: mlp_v2}}]
    outputs: [probabilities]
  fails:
    steps:
      - {{name: first, model: mlp_v1}}
      - {{name: explode, model: broken, inputs: {{input: input}}}}
  tolerant:
    steps:
      - name: avg
        fan_out: [{{model: mlp_v1}}, {{model: mlp_v2}}, {{model: broken, optional: true}}]
        combine: {{op: average, tensor: probabilities}}
  skips:
    steps:
      - {{name: main, model: mlp_v1}}
      - {{name: extra, model: broken, optional: true}}
  none_left:
    steps:
      - name: both
        fan_out: [{{model: broken, optional: true}}, {{model: broken, optional: true}}]
        combine: {{op: max, tensor: probabilities}}
""",
            procs,
            grpc_max_message_bytes=16 << 20,
        )
        yield f"127.0.0.1:{ports['http']}", f"127.0.0.1:{ports['grpc']}", f"127.0.0.1:{ports['metrics']}"
    finally:
        for p in reversed(procs):
            p.stop()


@pytest.fixture(scope="module")
def ref():
    return mlp_reference()


@pytest.fixture
def http(server):
    c = httpclient.InferenceServerClient(url=server[0])
    yield c
    c.close()


@pytest.fixture
def grpc(server):
    c = grpcclient.InferenceServerClient(url=server[1])
    yield c
    c.close()


def http_infer(client, model, tensors, binary, outputs=(), parameters=None):
    inputs = []
    for name, x in tensors.items():
        i = httpclient.InferInput(name, list(x.shape), "FP32")
        i.set_data_from_numpy(x, binary_data=binary)
        inputs.append(i)
    outs = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs] or None
    return client.infer(model, inputs, outputs=outs, parameters=parameters)


def grpc_infer(client, model, tensors, parameters=None):
    inputs = []
    for name, x in tensors.items():
        i = grpcclient.InferInput(name, list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        inputs.append(i)
    return client.infer(model, inputs, parameters=parameters)


@pytest.mark.parametrize("path", ["json", "binary", "grpc"])
def test_three_model_weighted_vote_equals_numpy(http, grpc, ref, path):
    x = rows(64, seed=1)
    want = weighted_vote([ref("1", x), ref("2", x), lin3(x)], WEIGHTS)
    if path == "grpc":
        res = grpc_infer(grpc, "vote", {"input": x})
    else:
        res = http_infer(http, "vote", {"input": x}, binary=path == "binary")
    got = res.as_numpy("class")
    assert got.dtype == np.int64 and got.shape == (64,), (got.dtype, got.shape)
    np.testing.assert_array_equal(got, want)
    # The vote is not just one member's answer: the weights decide some rows.
    assert not np.array_equal(want, np.argmax(ref("1", x), axis=1)) or not np.array_equal(
        want, np.argmax(ref("2", x), axis=1)
    )


def test_weighted_average_equals_numpy(http, ref):
    x = rows(8, seed=2)
    want = (3 * ref("1", x) + ref("2", x) + lin3(x)) / 5
    got = http_infer(http, "average", {"input": x}, binary=True).as_numpy("probabilities")
    assert got.dtype == np.float32 and got.shape == (8, 4)
    assert float(np.max(np.abs(got - want))) <= TOLERANCE


@pytest.mark.parametrize("path", ["json", "grpc"])
def test_sequence_feeds_renamed_outputs_on(http, grpc, ref, path):
    x = rows(5, seed=3)
    if path == "grpc":
        res = grpc_infer(grpc, "scaled", {"features": x})
    else:
        res = http_infer(http, "scaled", {"features": x}, binary=False)
    np.testing.assert_allclose(res.as_numpy("input"), 2 * x, rtol=0, atol=0)
    got = res.as_numpy("scores")
    assert float(np.max(np.abs(got - ref("1", 2 * x)))) <= TOLERANCE
    assert float(np.max(np.abs(got - ref("1", x)))) > 1e-3, "the second step must see the scaled input"
    # A requested output narrows the answer to it.
    only = http_infer(http, "scaled", {"features": x}, binary=True, outputs=["scores"])
    assert [o["name"] for o in only.get_response()["outputs"]] == ["scores"]


def test_condition_on_a_parameter(http, grpc, ref):
    x = rows(3, seed=4)
    for tier, want in [("premium", ref("2", x)), ("basic", ref("1", x)), (None, ref("1", x)), (20, lin3(x))]:
        params = None if tier is None else {"tier": tier}
        for res in (http_infer(http, "by_tier", {"input": x}, binary=True, parameters=params),
                    grpc_infer(grpc, "by_tier", {"input": x}, parameters=params)):
            assert float(np.max(np.abs(res.as_numpy("probabilities") - want))) <= TOLERANCE, tier


def test_condition_on_a_tensor(http, ref):
    x = rows(3, seed=5)
    for gate, want in [(0.9, ref("2", x))]:
        res = http_infer(http, "gated", {"input": x, "gate": np.array([gate], dtype=np.float32)}, binary=False)
        assert float(np.max(np.abs(res.as_numpy("probabilities") - want))) <= TOLERANCE
    # No case holds and there is no default: a 400 naming the step and the value.
    with pytest.raises(InferenceServerException) as e:
        http_infer(http, "gated", {"input": x, "gate": np.array([0.1], dtype=np.float32)}, binary=False)
    assert e.value.status() == "400", e.value
    assert "step `gate`" in str(e.value) and "0.1" in str(e.value), e.value
    with pytest.raises(InferenceServerException) as e:
        http_infer(http, "gated", {"input": x, "gate": np.array([0.1, 0.9], dtype=np.float32)}, binary=False)
    assert "holds 2 values" in str(e.value), e.value


def test_a_failing_step_fails_the_request_naming_it(server, grpc):
    x = rows(2, seed=6)
    body = {"inputs": [{"name": "input", "shape": [2, 16], "datatype": "FP32", "data": x.flatten().tolist()}]}
    r = requests.post(f"http://{server[0]}/v2/models/fails/infer", json=body, timeout=30)
    assert r.status_code in (502, 503), (r.status_code, r.text)
    assert "graph `fails` step `explode` (model `broken`)" in r.json()["error"], r.text
    with pytest.raises(InferenceServerException) as e:
        grpc_infer(grpc, "fails", {"input": x})
    assert e.value.status() == "StatusCode.UNAVAILABLE", e.value
    assert "step `explode`" in e.value.message(), e.value


def test_a_sequence_request_to_a_graph_is_refused(http):
    inp = httpclient.InferInput("input", [1, 16], "FP32")
    inp.set_data_from_numpy(rows(1, seed=11), binary_data=True)
    with pytest.raises(InferenceServerException) as e:
        http.infer("vote", [inp], sequence_id=7, sequence_start=True)
    assert e.value.status() == "400", e.value
    assert "graph `vote` keeps no sequence state" in str(e.value), e.value


def test_optional_members_and_steps_are_skipped(http, grpc, ref):
    x = rows(4, seed=7)
    got = http_infer(http, "tolerant", {"input": x}, binary=True).as_numpy("probabilities")
    assert float(np.max(np.abs(got - (ref("1", x) + ref("2", x)) / 2))) <= TOLERANCE
    got = grpc_infer(grpc, "skips", {"input": x}).as_numpy("probabilities")
    assert float(np.max(np.abs(got - ref("1", x)))) <= TOLERANCE
    # Nothing left to combine: the step fails, saying every member failed.
    with pytest.raises(InferenceServerException) as e:
        http_infer(http, "none_left", {"input": x}, binary=True)
    assert "step `both`: no member answered" in str(e.value), e.value


def requests_total(server, model, variant, code="200"):
    text = requests.get(f"http://{server[2]}/metrics", timeout=10).text
    line = f'switchyard_requests_total{{code="{code}",model="{model}",variant="{variant}"}} '
    found = [ln for ln in text.splitlines() if ln.startswith(line)]
    return int(float(found[0].split()[-1])) if found else 0


def test_every_step_is_counted_as_a_request_of_its_route(server, http):
    before = {m: requests_total(server, m, v) for m, v in [("vote", "graph"), ("lin3", "main"), ("mlp_v2", "v2")]}
    x = rows(2, seed=10)
    for _ in range(3):
        http_infer(http, "vote", {"input": x}, binary=True)
    after = {m: requests_total(server, m, v) for m, v in [("vote", "graph"), ("lin3", "main"), ("mlp_v2", "v2")]}
    assert {m: after[m] - before[m] for m in after} == {"vote": 3, "lin3": 3, "mlp_v2": 3}
    # A failed step is counted against its own route too.
    with pytest.raises(InferenceServerException):
        http_infer(http, "fails", {"input": x}, binary=True)
    assert requests_total(server, "broken", "main", "503") + requests_total(server, "broken", "main", "502") > 0


def test_metadata_and_readiness(http):
    meta = http.get_model_metadata("vote")
    assert meta["platform"] == "switchyard_graph"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"] == [{"name": "class", "datatype": "INT64", "shape": [-1]}]
    meta = http.get_model_metadata("scaled")
    assert [i["name"] for i in meta["inputs"]] == ["features"]
    assert [o["name"] for o in meta["outputs"]] == ["scores"]
    assert http.is_model_ready("vote")


def test_a_thousand_concurrent_graph_requests_all_answer_right(server, ref):
    n = 1000
    x = rows(n, seed=8)
    want = weighted_vote([ref("1", x), ref("2", x), lin3(x)], WEIGHTS)

    async def main():
        client = grpcaio.InferenceServerClient(url=server[1])
        try:
            async def one(i):
                inp = grpcaio.InferInput("input", [1, 16], "FP32")
                inp.set_data_from_numpy(x[i : i + 1])
                res = await client.infer("vote", [inp], request_id=str(i))
                return int(res.get_response().id), res.as_numpy("class")

            return await asyncio.gather(*(one(i) for i in range(n)))
        finally:
            await client.close()

    answers = asyncio.run(main())
    assert len(answers) == n
    wrong = [(i, got.tolist(), int(want[i])) for i, got in answers if got.tolist() != [int(want[i])]]
    assert not wrong, f"{len(wrong)} wrong answers, e.g. {wrong[:5]}"
    assert sorted(i for i, _ in answers) == list(range(n))


def test_the_shipped_example_answers_like_numpy(tmp_path, ref):
    """examples/ensemble.yaml as shipped, with only its addresses and model directory made local."""
    from harness import Proc, switchyard_bin

    http_port, metrics_port, control_port, grpc_port = (free_port() for _ in range(4))
    text = (REPO / "examples" / "ensemble.yaml").read_text()
    for old, new in [
        ("0.0.0.0:8000", f"127.0.0.1:{http_port}"),
        ("0.0.0.0:8002", f"127.0.0.1:{metrics_port}"),
        ("127.0.0.1:9901", f"127.0.0.1:{control_port}"),
        ("repository: models", f"repository: {MODELS}"),
    ]:
        assert old in text, old
        text = text.replace(old, new)
    config = tmp_path / "ensemble.yaml"
    config.write_text(text)
    sy = Proc(
        "switchyard",
        [switchyard_bin(), "serve", "--config", str(config), "--grpc-address", f"127.0.0.1:{grpc_port}"],
        tmp_path / "switchyard.log",
        cwd=str(tmp_path),
    )
    try:
        sy.wait_until_ok(f"http://127.0.0.1:{http_port}/ready", 30)
        client = httpclient.InferenceServerClient(url=f"127.0.0.1:{http_port}")
        x = rows(32, seed=9)
        v1, v2 = ref("1", x), ref("2", x)
        ensemble = 0.7 * v1 + 0.3 * v2
        got = http_infer(client, "mlp_ensemble", {"input": x}, binary=True).as_numpy("probabilities")
        assert float(np.max(np.abs(got - ensemble))) <= TOLERANCE
        got = http_infer(client, "mlp_vote", {"input": x}, binary=False).as_numpy("class")
        np.testing.assert_array_equal(got, weighted_vote([v1, v2, ensemble], [0.45, 0.35, 0.2]))
        for params, want in [({"tier": "premium"}, ensemble), (None, v1)]:
            got = http_infer(client, "mlp_by_tier", {"input": x}, binary=True, parameters=params)
            assert float(np.max(np.abs(got.as_numpy("probabilities") - want))) <= TOLERANCE
        res = http_infer(client, "mlp_scored", {"features": x}, binary=True)
        assert float(np.max(np.abs(res.as_numpy("v1") - v1))) <= TOLERANCE
        assert float(np.max(np.abs(res.as_numpy("side_by_side") - np.concatenate([v1, v2], axis=1)))) <= TOLERANCE
        client.close()
    finally:
        sy.stop()
