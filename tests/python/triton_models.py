"""Models after Triton's standard test models, built with `onnx` into a
temporary repository (never into examples/):

- `simple`: INPUT0, INPUT1 INT32 [-1, 16] -> OUTPUT0 = sum, OUTPUT1 = difference.
- `simple_string`: the same on BYTES that hold decimal numbers (parsed by the
  graph with Cast, answered as BYTES), as Triton's `simple_string`.
- `simple_identity`: INPUT0 FP32 [-1, -1] -> OUTPUT0 unchanged.
"""
from pathlib import Path

import onnx
from onnx import TensorProto, helper

OPSET = 17
IR_VERSION = 8


def _save(graph, path: Path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _io(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def simple(path: Path):
    shape = ["batch", 16]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    g = helper.make_graph(
        nodes,
        "simple",
        [_io("INPUT0", TensorProto.INT32, shape), _io("INPUT1", TensorProto.INT32, shape)],
        [_io("OUTPUT0", TensorProto.INT32, shape), _io("OUTPUT1", TensorProto.INT32, shape)],
    )
    _save(g, path)


def simple_string(path: Path):
    shape = ["batch", 16]
    nodes = [
        helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
        helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
        helper.make_node("Add", ["a", "b"], ["sum"]),
        helper.make_node("Sub", ["a", "b"], ["diff"]),
        helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
        helper.make_node("Cast", ["diff"], ["OUTPUT1"], to=TensorProto.STRING),
    ]
    g = helper.make_graph(
        nodes,
        "simple_string",
        [_io("INPUT0", TensorProto.STRING, shape), _io("INPUT1", TensorProto.STRING, shape)],
        [_io("OUTPUT0", TensorProto.STRING, shape), _io("OUTPUT1", TensorProto.STRING, shape)],
    )
    _save(g, path)


def simple_identity(path: Path):
    shape = ["batch", "n"]
    g = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "simple_identity",
        [_io("INPUT0", TensorProto.FLOAT, shape)],
        [_io("OUTPUT0", TensorProto.FLOAT, shape)],
    )
    _save(g, path)


def build_repository(root: Path) -> Path:
    """`root/{simple,simple_string,simple_identity}/1/model.onnx`; returns root."""
    simple(root / "simple" / "1" / "model.onnx")
    simple_string(root / "simple_string" / "1" / "model.onnx")
    simple_identity(root / "simple_identity" / "1" / "model.onnx")
    return root
