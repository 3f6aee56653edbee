#!/usr/bin/env python3
"""Build Switchyard's example and test ONNX models (onnx + numpy only, deterministic).

Writes a Triton-style layout (<repo>/<model>/<version>/model.onnx):
  examples/models/mlp/{1,2}/model.onnx        input[N,16] -> 32 -> softmax probabilities[N,4]
  examples/models/mlp_heavy/1/model.onnx      input[N,256] -> 3x1024 -> logits[N,10]  (~10 MB)
  tests/models/dtypes/1/model.onnx            Identity passthrough for many dtypes
  tests/models/fixed/1/model.onnx             x[2,3] -> y = 2*x

Usage: .venv/bin/python examples/models/build_models.py   (add --no-verify to skip the ORT check)
"""
import os
import sys
import tempfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
EXAMPLES = HERE
TESTS = os.path.join(REPO, "tests", "models")


def make_model(graph, doc):
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="switchyard-build_models", doc_string=doc)
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    return m


def save(model, root, name, version):
    d = os.path.join(root, name, str(version))
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.onnx")
    onnx.save(model, path)
    return path


def dense_stack(name, sizes, seed, input_name, output_name, softmax):
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    cur = input_name
    n_layers = len(sizes) - 1
    for i in range(n_layers):
        fan_in, fan_out = sizes[i], sizes[i + 1]
        w = (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"), numpy_helper.from_array(b, f"B{i}")]
        last = i == n_layers - 1
        out = f"h{i}" if not last else (f"logits_raw" if softmax else output_name)
        nodes.append(helper.make_node("Gemm", [cur, f"W{i}", f"B{i}"], [out], name=f"gemm{i}"))
        cur = out
        if not last:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"], name=f"relu{i}"))
            cur = f"r{i}"
    if softmax:
        nodes.append(helper.make_node("Softmax", [cur], [output_name], axis=1, name="softmax"))
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializer=inits)
    return graph


DTYPES = [  # input name, onnx type, numpy dtype
    ("f32", TensorProto.FLOAT, np.float32),
    ("f64", TensorProto.DOUBLE, np.float64),
    ("f16", TensorProto.FLOAT16, np.float16),
    ("i8", TensorProto.INT8, np.int8),
    ("i16", TensorProto.INT16, np.int16),
    ("i32", TensorProto.INT32, np.int32),
    ("i64", TensorProto.INT64, np.int64),
    ("u8", TensorProto.UINT8, np.uint8),
    ("b", TensorProto.BOOL, np.bool_),
    ("s", TensorProto.STRING, object),
]


def dtypes_graph():
    ins, outs, nodes = [], [], []
    for name, t, _ in DTYPES:
        width = 1 if name == "s" else 2
        ins.append(helper.make_tensor_value_info(name, t, ["batch", width]))
        outs.append(helper.make_tensor_value_info(f"{name}_out", t, ["batch", width]))
        nodes.append(helper.make_node("Identity", [name], [f"{name}_out"], name=f"id_{name}"))
    return helper.make_graph(nodes, "dtypes", ins, outs)


def fixed_graph():
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    node = helper.make_node("Mul", ["x", "two"], ["y"], name="mul2")
    return helper.make_graph(
        [node], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[two])


def build():
    paths = {}
    for version, seed in ((1, 1001), (2, 2002)):
        g = dense_stack("mlp", [16, 32, 4], seed, "input", "probabilities", softmax=True)
        paths[f"mlp/{version}"] = save(make_model(g, f"small MLP classifier v{version} (seed {seed})"),
                                       EXAMPLES, "mlp", version)
    g = dense_stack("mlp_heavy", [256, 1024, 1024, 1024, 10], 3003, "input", "logits", softmax=False)
    paths["mlp_heavy/1"] = save(make_model(g, "heavy MLP 256->3x1024->10 logits"), EXAMPLES, "mlp_heavy", 1)
    paths["dtypes/1"] = save(make_model(dtypes_graph(), "Identity passthrough per dtype"), TESTS, "dtypes", 1)
    paths["fixed/1"] = save(make_model(fixed_graph(), "y = 2*x, fixed [2,3]"), TESTS, "fixed", 1)
    return paths


def verify(paths):
    os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="switchyard-xdg-"))
    import onnxruntime as ort

    def sess(key):
        onnx.checker.check_model(paths[key], full_check=True)
        return ort.InferenceSession(paths[key], providers=["CPUExecutionProvider"])

    rng = np.random.default_rng(7)
    x16 = rng.standard_normal((3, 16)).astype(np.float32)
    p1 = sess("mlp/1").run(None, {"input": x16})[0]
    p2 = sess("mlp/2").run(None, {"input": x16})[0]
    assert p1.shape == (3, 4) and p1.dtype == np.float32
    assert np.allclose(p1.sum(axis=1), 1.0, atol=1e-5)
    assert np.abs(p1 - p2).max() > 1e-2, "mlp v1 and v2 must differ"

    x256 = rng.standard_normal((5, 256)).astype(np.float32)
    l = sess("mlp_heavy/1").run(None, {"input": x256})[0]
    assert l.shape == (5, 10) and l.dtype == np.float32

    feeds = {}
    for name, _, dt in DTYPES:
        if name == "s":
            feeds[name] = np.array([["hello"], ["wörld"]], dtype=object)
        elif dt is np.bool_:
            feeds[name] = np.array([[True, False], [False, True]])
        else:
            feeds[name] = (np.arange(4).reshape(2, 2) * 3 + 1).astype(dt)
    outs = sess("dtypes/1").run([f"{n}_out" for n, _, _ in DTYPES], feeds)
    for (name, _, _), o in zip(DTYPES, outs):
        assert o.dtype == feeds[name].dtype and np.array_equal(o, feeds[name]), name

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = sess("fixed/1").run(None, {"x": x})[0]
    assert np.array_equal(y, 2 * x)

    print(f"verified with onnxruntime {ort.__version__}: mlp v1 vs v2 max|diff|={np.abs(p1 - p2).max():.4f}")


if __name__ == "__main__":
    paths = build()
    for k, p in paths.items():
        print(f"{k:14s} {os.path.relpath(p, REPO)}  {os.path.getsize(p):>10,d} bytes")
    if "--no-verify" not in sys.argv:
        verify(paths)
