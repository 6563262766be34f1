"""What TFLM's Prepare demands of the graph-shaping ops' quantisation (the byte-copying ops
have no constants to derive; MaxPool2D shares ``params.pool_quant`` with AveragePool2D)."""

from __future__ import annotations

import numpy as np

from mbgen import ir


def check_concat_quant(graph: ir.Graph, node: ir.Node) -> None:
    """TFLM's int8 CONCATENATION copies bytes, so its Prepare demands that every input has
    exactly the output's scale and zero point (it refuses the model otherwise)."""
    out = graph.tensors[node.outputs[0]]
    if out.dtype != "int8":
        return
    for name in node.inputs:
        q = graph.tensors[name].quant
        if q is None or not (np.array_equal(q.scale, out.quant.scale)
                             and np.array_equal(q.zero_point, out.quant.zero_point)):
            raise ValueError(f"{node.name}: int8 concatenation input {name!r} must have the "
                             f"output's scale and zero point (TFLM refuses other inputs)")
