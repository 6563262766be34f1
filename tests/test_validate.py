"""mbgen.validate on IR graphs, whatever frontend made them: each breach is one line naming the
layer or tensor, and a sound graph passes.

The TFLite frontend already refuses most of these from a file (see test_semantic_fuzz); here
the graph is built directly, as the torch / ONNX frontends and the quantizer would hand it over.
"""

from __future__ import annotations

import dataclasses

import pytest

from mbgen import ir
from mbgen.errors import UserError
from mbgen.validate import check_int8_graph
from test_codegen import GraphBuilder

A = ir.Activation


def _conv_graph() -> tuple[ir.Graph, ir.Node]:
    b = GraphBuilder(seed=3, name="v")
    x = b.input((1, 6, 6, 3))
    y = b.depthwise(b.conv(x, 4, stride=(2, 2)), multiplier=2, act=A.NONE)
    graph = b.graph(b.softmax(b.fully_connected(b.reshape(y, (1, 72)), 5)))
    return graph, graph.nodes[1]


def _with_op(graph: ir.Graph, node: ir.Node, **changes) -> ir.Graph:
    g = graph.copy()
    index = [n.name for n in g.nodes].index(node.name)
    g.nodes[index].op = dataclasses.replace(node.op, **changes)
    return g


def _refused(graph: ir.Graph, pattern: str) -> None:
    with pytest.raises(UserError, match=pattern) as caught:
        check_int8_graph(graph)
    assert "\n" not in str(caught.value)


def test_a_sound_graph_passes():
    graph, _ = _conv_graph()
    check_int8_graph(graph)


def test_depth_multiplier_contradicting_the_channels():
    graph, dw = _conv_graph()
    _refused(_with_op(graph, dw, depth_multiplier=1),
             rf"layer '{dw.name}' \(DepthwiseConv2D\): depth multiplier 1 contradicts 4 input, "
             "8 weight")


@pytest.mark.parametrize("changes,pattern", [
    ({"stride": (0, 1)}, r"stride \(0, 1\) .* must be >= 1"),
    ({"dilation": (1, -1)}, r"dilation \(1, -1\) must be >= 1"),
    ({"stride": (2, 2)}, r"output \(1, 3, 3, 8\) does not match its window .* \(2, 2\) pixels"),
])
def test_windows_that_contradict_the_shapes(changes, pattern):
    graph, dw = _conv_graph()
    _refused(_with_op(graph, dw, **changes), pattern)


def test_requantisation_shift_beyond_the_kernels_range():
    graph, dw = _conv_graph()
    out = graph.tensors[dw.outputs[0]]
    out.quant = ir.QuantParams.per_tensor(1e-25, 0)
    _refused(graph, r"requantisation shift of \d+, outside \[-31, 30\]")


def test_bias_that_can_overflow_the_accumulator():
    graph, dw = _conv_graph()
    bias = graph.tensors[dw.inputs[2]]
    bias.data = bias.data.copy()
    bias.data[3] = -(2**31 - 100)
    _refused(graph, r"output channel 3: bias -2147483548 plus its weights can overflow")


def test_float_activation_inside_an_int8_graph():
    graph, dw = _conv_graph()
    graph.tensors[dw.outputs[0]].dtype = "float32"
    _refused(graph, r"must be int8|is float32")
