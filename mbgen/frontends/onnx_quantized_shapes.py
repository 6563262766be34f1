"""Shape inference through com.microsoft quantised ops that onnx does not know.

onnx's shape inference stops at com.microsoft ops, so nothing after a QLinearConcat has a
static shape, and the Shape -> Gather -> Slice chains exporters write (ShuffleNetV2's
channel split) cannot fold. For inference only, each such op whose output shape a standard op
computes from the same tensors, with the same element type, is swapped for that op (the
model that is converted keeps the original node).
"""

from __future__ import annotations

import onnx


def _concat(node: onnx.NodeProto) -> onnx.NodeProto:
    """QLinearConcat(Y_scale, Y_zp, X1, X1_scale, X1_zp, ...) -> Concat(X1, X2, ...)."""
    axis = next(a.i for a in node.attribute if a.name == "axis") \
        if any(a.name == "axis" for a in node.attribute) else 0
    return onnx.helper.make_node("Concat", list(node.input[2::3]), list(node.output),
                                 name=node.name, axis=axis)


_SURROGATES = {"QLinearConcat": _concat}


def for_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself, or a copy whose com.microsoft ops above are standard ones."""
    if not any(n.domain == "com.microsoft" and n.op_type in _SURROGATES
               for n in model.graph.node):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for index, node in enumerate(copy.graph.node):
        if node.domain == "com.microsoft" and node.op_type in _SURROGATES:
            copy.graph.node[index].CopyFrom(_SURROGATES[node.op_type](node))
    return copy
