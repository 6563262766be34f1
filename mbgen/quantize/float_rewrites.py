"""Shared pieces of the float-graph rewrites that prepare a graph for quantisation (bias
correction, cross-layer equalisation, AdaRound): each returns a new float graph, the input
graph untouched, and the quantizer then runs as ever (so the result stays TFLite int8)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from mbgen import ir
from mbgen.quantize.quantizer import (
    _CONV_LIKE,
    _WEIGHT_AXIS,
    WEIGHT_QMAX,
    _quantize_values,
    _symmetric_scales,
)


def weight_scales(weights: np.ndarray, axis: int | None) -> np.ndarray:
    """The float32 per-channel (or per-tensor) scales the quantizer gives these weights."""
    return _symmetric_scales(weights, axis)


def fake_quantized(weights: np.ndarray, axis: int | None) -> np.ndarray:
    """The weights as the int8 graph holds them, back in float (round half away from zero)."""
    scale = weight_scales(weights, axis)
    q = _quantize_values(weights, scale, 0, axis, -WEIGHT_QMAX, WEIGHT_QMAX, "int8")
    shape = [1] * weights.ndim
    if axis is not None:
        shape[axis] = -1
    return q.astype(np.float64) * scale.astype(np.float64).reshape(shape)


def conv_like_nodes(graph: ir.Graph) -> Iterator[ir.Node]:
    """Conv2D, DepthwiseConv2D and FullyConnected nodes whose weight only they use."""
    for node in graph.nodes:
        if isinstance(node.op, _CONV_LIKE) and len(graph.consumers(node.inputs[1])) == 1:
            yield node


def weight_axis(node: ir.Node) -> int | None:
    return _WEIGHT_AXIS[type(node.op)]


def has_private_bias(graph: ir.Graph, node: ir.Node) -> bool:
    return (len(node.inputs) > 2 and bool(node.inputs[2])
            and len(graph.consumers(node.inputs[2])) == 1)


def set_constant(graph: ir.Graph, name: str, data: np.ndarray) -> None:
    """Replace a float constant's values in ``graph`` (a copy made by the caller)."""
    tensor = graph.tensors[name]
    graph.tensors[name] = ir.Tensor(name, tensor.shape, tensor.dtype,
                                    np.asarray(data, np.float32).reshape(tensor.shape),
                                    tensor.quant)
