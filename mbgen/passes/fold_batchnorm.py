"""Fold inference-mode BatchNorm into the layer before it.

``BN(x) = (x - mean) / sqrt(var + eps) * gamma + beta = scale * x + shift`` per channel. After a
Conv2D, DepthwiseConv2D or FullyConnected (with no fused activation, and whose output nothing
else reads) the scale multiplies each output channel's weights and the bias becomes
``bias * scale + shift``: the BN disappears at no cost.

A BatchNorm with no such producer (after an Add, the graph input, a pool, or a conv whose output
is also read elsewhere) becomes a 1x1 DepthwiseConv2D with weight ``scale`` and bias ``shift``,
so the graph the quantizer sees never holds a BatchNorm. Only a BatchNorm on a tensor that is
not NHWC (rank != 4) and has no foldable producer is kept; the quantizer then rejects it.

Scale and shift are computed in float64 from the stored eps and rounded once to float32.
"""

from __future__ import annotations

import numpy as np

from mbgen import ir
from mbgen.passes.graph_edit import add_constant, drop_unused_tensors, sole_consumer

# Axis of the weight that indexes output channels, per foldable op.
_OUTPUT_CHANNEL_AXIS = {ir.Conv2D: 0, ir.DepthwiseConv2D: 3, ir.FullyConnected: 0}


def _scale_and_shift(graph: ir.Graph, node: ir.Node) -> tuple[np.ndarray, np.ndarray]:
    gamma, beta, mean, var = (graph.tensors[name] for name in node.inputs[1:5])
    for t in (gamma, beta, mean, var):
        if not t.is_const:
            raise ir.GraphError(f"BatchNorm {node.name}: parameter {t.name!r} is not a constant")
    scale = gamma.data.astype(np.float64) / np.sqrt(var.data.astype(np.float64) + node.op.eps)
    shift = beta.data.astype(np.float64) - mean.data.astype(np.float64) * scale
    return scale, shift


def _foldable_producer(graph: ir.Graph, bn: ir.Node) -> ir.Node | None:
    producer = graph.producer(bn.inputs[0])
    if producer is None or type(producer.op) not in _OUTPUT_CHANNEL_AXIS:
        return None
    if producer.op.activation is not ir.Activation.NONE:
        return None  # BN(relu(conv)) is not an affine function of conv
    if sole_consumer(graph, bn.inputs[0]) is not bn:
        return None  # someone else needs the un-normalised values
    if not graph.tensors[producer.inputs[1]].is_const:
        return None
    if len(producer.inputs) > 2 and producer.inputs[2] and \
            not graph.tensors[producer.inputs[2]].is_const:
        return None
    return producer


def _fold_into(graph: ir.Graph, producer: ir.Node, bn: ir.Node, scale: np.ndarray,
               shift: np.ndarray) -> ir.Node:
    weight = graph.tensors[producer.inputs[1]].data.astype(np.float64)
    axis = _OUTPUT_CHANNEL_AXIS[type(producer.op)]
    broadcast = [1] * weight.ndim
    broadcast[axis] = -1
    has_bias = len(producer.inputs) > 2 and bool(producer.inputs[2])
    bias = graph.tensors[producer.inputs[2]].data.astype(np.float64) if has_bias \
        else np.zeros(weight.shape[axis])
    new_weight = add_constant(graph, f"{producer.name}.weight_bn", weight * scale.reshape(broadcast))
    new_bias = add_constant(graph, f"{producer.name}.bias_bn", bias * scale + shift)
    return ir.Node(producer.name, producer.op, [producer.inputs[0], new_weight, new_bias],
                   list(bn.outputs))


def _as_depthwise(graph: ir.Graph, bn: ir.Node, scale: np.ndarray, shift: np.ndarray) -> ir.Node:
    channels = scale.shape[0]
    weight = add_constant(graph, f"{bn.name}.scale", scale.reshape(1, 1, 1, channels))
    bias = add_constant(graph, f"{bn.name}.shift", shift)
    return ir.Node(bn.name, ir.DepthwiseConv2D(), [bn.inputs[0], weight, bias], list(bn.outputs))


def fold_batchnorm(graph: ir.Graph) -> ir.Graph:
    """A new graph with every BatchNorm folded into its producer or turned into a 1x1 depthwise."""
    out = graph.copy()
    for bn in [n for n in out.nodes if isinstance(n.op, ir.BatchNorm)]:
        scale, shift = _scale_and_shift(out, bn)
        producer = _foldable_producer(out, bn)
        if producer is not None:
            folded = _fold_into(out, producer, bn, scale, shift)
            out.nodes = [folded if n is producer else n for n in out.nodes if n is not bn]
        elif len(out.tensors[bn.inputs[0]].shape) == 4:
            converted = _as_depthwise(out, bn, scale, shift)
            out.nodes = [converted if n is bn else n for n in out.nodes]
    drop_unused_tensors(out)
    return out

