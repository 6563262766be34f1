"""ONNX files with hard sigmoid / hard swish written out as arithmetic (what torch.onnx makes of
hand-written MobileNetV3 code): Add(x, 3) -> Clip(0, 6) -> Div(6) or Mul(1/6), with x * ...
before or after the division. They become mbgen's hard sigmoid and HardSwish, and give the
numbers of onnx's own reference evaluator."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")

from onnx import helper  # noqa: E402

from mbgen import ir  # noqa: E402
from mbgen.errors import UserError  # noqa: E402
from mbgen.frontends.onnx_frontend import load_onnx  # noqa: E402
from test_onnx_frontend import (_check_against_reference, _conv_inits, _conv_node,  # noqa: E402
                                _rand, _save)

THREE, SIX, SIXTH = ("three", 3.0), ("six", 6.0), ("sixth", 1.0 / 6.0)


def _consts(*pairs):
    return [(name, np.array(value, np.float32)) for name, value in pairs]


def _relu6_plus_three(x: str, out: str, opset: int) -> list:
    add = helper.make_node("Add", [x, "three"], [f"{out}_add"])
    if opset < 11:
        clip = helper.make_node("Clip", [f"{out}_add"], [out], min=0.0, max=6.0)
    else:
        clip = helper.make_node("Clip", [f"{out}_add", "zero", "six"], [out])
    return [add, clip]


def _ops(graph: ir.Graph) -> list[str]:
    return [ir.op_name(n.op) for n in graph.nodes]


@pytest.mark.parametrize("opset", [10, 13])
def test_hand_written_hard_swish_and_gate(tmp_path, opset):
    """h_swish = x * (relu6(x + 3) / 6); h * relu6(h + 3) / 6; a squeeze gate
    relu6(m + 3) * (1/6) on the pooled map."""
    nodes = [_conv_node(),
             *_relu6_plus_three("c", "r", opset),
             helper.make_node("Div", ["r", "six"], ["hs"]),
             helper.make_node("Mul", ["c", "hs"], ["h"]),                # hard swish
             *_relu6_plus_three("h", "r2", opset),
             helper.make_node("Mul", ["h", "r2"], ["p"]),
             helper.make_node("Div", ["p", "six"], ["z"]),               # hard swish
             helper.make_node("GlobalAveragePool", ["z"], ["m"]),
             *_relu6_plus_three("m", "r3", opset),
             helper.make_node("Mul", ["sixth", "r3"], ["gate"]),         # hard sigmoid
             helper.make_node("Mul", ["z", "gate"], ["y"])]
    inits = _conv_inits() + _consts(THREE, SIX, SIXTH, ("zero", 0.0))
    graph = _check_against_reference(_save(tmp_path, nodes, inits, opset=opset),
                                     _rand(1, 3, 6, 6, seed=31) * 3)
    assert _ops(graph) == ["Conv2D", "HardSwish", "HardSwish", "Mean", "DepthwiseConv2D",
                           "DepthwiseConv2D", "Mul"]


def test_shared_intermediate_is_not_rewritten(tmp_path):
    """x + 3 read twice is not a private hard sigmoid: refused by name, not miscompiled."""
    nodes = [_conv_node(),
             *_relu6_plus_three("c", "r", 13),
             helper.make_node("Div", ["r", "six"], ["hs"]),
             helper.make_node("Mul", ["r_add", "hs"], ["y"], name="reuse")]
    inits = _conv_inits() + _consts(THREE, SIX, ("zero", 0.0))
    with pytest.raises(UserError, match="Add .* constant operand 'three'"):
        load_onnx(_save(tmp_path, nodes, inits))
