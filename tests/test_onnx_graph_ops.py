"""ONNX Concat, Split, Slice, MaxPool (ceil_mode) and the channel shuffle (Reshape ->
Transpose -> Reshape) in a hand-written graph: the float IR computes what onnxruntime
computes; a 5-D view outside a shuffle is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from mbgen.errors import UserError  # noqa: E402
from mbgen.float_interp import run_float  # noqa: E402
from mbgen.frontends.onnx_frontend import load_onnx  # noqa: E402


def _model(path, nodes, inits, out_shape):
    graph = helper.make_graph(
        nodes, "graph_ops",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 8, 10, 11])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(np.asarray(v, dtype=np.int64), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_graph_ops_compute_what_onnxruntime_computes(tmp_path):
    nodes = [
        # 10 x 11 -> ceil_mode: 5 x 5 (floor would give 4 x 5)
        helper.make_node("MaxPool", ["input"], ["pooled"], kernel_shape=[3, 3], strides=[2, 2],
                         ceil_mode=1),
        helper.make_node("Split", ["pooled", "sizes"], ["a", "b"], axis=1),
        helper.make_node("Concat", ["b", "a"], ["joined"], axis=1),
        helper.make_node("Reshape", ["joined", "grouped"], ["view"]),
        helper.make_node("Transpose", ["view"], ["swapped"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["swapped", "flat"], ["shuffled"]),
        helper.make_node("Slice", ["shuffled", "starts", "ends", "axes", "steps"], ["out"]),
    ]
    inits = {"sizes": [3, 5], "grouped": [1, 2, 4, 5, 5], "flat": [1, 8, 5, 5],
             "starts": [1], "ends": [7], "axes": [1], "steps": [2]}
    path = _model(tmp_path / "ops.onnx", nodes, inits, [1, 3, 5, 5])
    graph = load_onnx(path)
    ops = [type(n.op).__name__ for n in graph.nodes]
    assert ops == ["MaxPool2D", "StridedSlice", "StridedSlice", "Concatenation", "Reshape",
                   "Transpose", "Reshape", "StridedSlice"]
    assert graph.nodes[0].op.padding.bottom == 1  # ceil_mode's extra row
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(2).standard_normal((1, 8, 10, 11)).astype(np.float32)
    want = session.run(None, {"input": x})[0]
    got = run_float(graph, x.transpose(0, 2, 3, 1))[graph.outputs[0]]
    np.testing.assert_array_equal(got.transpose(0, 3, 1, 2), want)


def test_five_d_view_outside_a_shuffle_is_refused(tmp_path):
    nodes = [helper.make_node("Reshape", ["input", "grouped"], ["view"]),
             helper.make_node("ReduceMean", ["view"], ["mean"], axes=[2], keepdims=0),
             helper.make_node("Identity", ["mean"], ["out"])]
    path = _model(tmp_path / "bad.onnx", nodes, {"grouped": [1, 2, 4, 10, 11]},
                  [1, 2, 10, 11])
    with pytest.raises(UserError, match="channel shuffle"):
        load_onnx(path)
