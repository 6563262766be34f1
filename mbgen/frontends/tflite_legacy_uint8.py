"""Legacy uint8 .tflite files (TOCO-era quantisation: uint8 activations and weights, one
scale and zero point per tensor), which TFLM refuses and LiteRT runs.

The IR holds every uint8 tensor as int8 (value and zero point minus 128; weights keep their
zero point), which changes nothing for an op that works on ``q - zero_point``: reshape,
softmax, max pool. Convolutions and the average pool, whose uint8 arithmetic differs from
the int8 kernels' (weight zero points, one multiplier from the float32 product of the
scales, half-up rounding of uint8 sums), get ``requantization=TFLITE_UINT8``
(``quantize/uint8_params``). Other ops are refused.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mbgen import ir
from mbgen.errors import UserError
from mbgen.quantize import uint8_params

_UINT8 = 3  # TensorType

# Ops whose uint8 kernels compute what the int8 kernels compute on the shifted values.
_SHIFT_INVARIANT = (ir.Reshape, ir.Softmax, ir.MaxPool2D)
_LEGACY_ARITHMETIC = (ir.Conv2D, ir.DepthwiseConv2D, ir.AveragePool2D)


def is_legacy(tensors, uint8_io) -> bool:
    """True when uint8 tensors other than a uint8 interface exist and none is int8 (raw
    tensor records with ``type`` and ``index``)."""
    int8 = 9
    stray = [t for t in tensors if t.type == _UINT8 and t.index not in uint8_io]
    return bool(stray) and not any(t.type == int8 for t in tensors)


def as_int8(data: np.ndarray | None, quant: ir.QuantParams) -> tuple[np.ndarray | None,
                                                                      ir.QuantParams]:
    """A uint8 tensor's data and parameters as the IR holds them (minus 128)."""
    shifted = ir.QuantParams(quant.scale, (quant.zero_point.astype(np.int32) - 128), quant.axis)
    if data is None:
        return None, shifted
    return (np.asarray(data, dtype=np.int16) - 128).astype(np.int8), shifted


def legacy_nodes(graph: ir.Graph, label: str) -> list[ir.Node]:
    """The nodes with TFLite's uint8 arithmetic marked; UserError for ops we do not run."""
    nodes = []
    for node in graph.nodes:
        op = node.op
        if isinstance(op, _LEGACY_ARITHMETIC):
            node = ir.Node(node.name, dataclasses.replace(
                op, requantization=ir.Requantization.TFLITE_UINT8), node.inputs, node.outputs)
            try:
                if isinstance(op, ir.AveragePool2D):
                    uint8_params.average_pool_range(graph, node)
                else:
                    uint8_params.conv_quant(graph, node)
            except ValueError as exc:
                raise UserError(f"{label}: layer {node.name!r}: "
                                f"{str(exc).removeprefix(node.name + ': ')}") from None
        elif not isinstance(op, _SHIFT_INVARIANT):
            raise UserError(f"{label}: layer {node.name!r} ({ir.op_name(op)}) in a legacy uint8 "
                            "model: mbgen runs uint8 CONV_2D, DEPTHWISE_CONV_2D, "
                            "AVERAGE_POOL_2D, MAX_POOL_2D, RESHAPE and SOFTMAX")
        nodes.append(node)
    return nodes
