"""Fuse standalone ReLU / ReLU6 into the op that produces their input.

Conv2D, DepthwiseConv2D, FullyConnected, Add and AveragePool2D carry a fused activation (as in
TFLite), so ``ReLU6(conv(x))`` becomes one conv with ``activation=RELU6`` and no intermediate
tensor. Fusion needs the producer's output to have no other reader (and not be a graph output),
since the others would then see clamped values.

Activations compose: a ReLU after a fused ReLU6 (or the reverse) is a ReLU6, and a standalone
activation after another standalone activation merges into the first one.

Only float graphs are rewritten. In an int8 graph a standalone activation requantises between
two tensors with their own scales; fusing it would change the arithmetic TFLite does, so int8
graphs come back unchanged (TFLite files have their activations fused already).
"""

from __future__ import annotations

import dataclasses

from mbgen import ir
from mbgen.passes.graph_edit import drop_unused_tensors, sole_consumer

_FUSES_INTO = (ir.Conv2D, ir.DepthwiseConv2D, ir.FullyConnected, ir.Add, ir.AveragePool2D)
_FUSIBLE = (ir.Activation.RELU, ir.Activation.RELU6)


def compose(first: ir.Activation, then: ir.Activation) -> ir.Activation:
    """The single activation equal to applying ``first`` and then ``then``."""
    if first is ir.Activation.NONE:
        return then
    if then is ir.Activation.NONE:
        return first
    # Both clamp below at 0, so the composition is the tighter upper bound.
    if ir.Activation.RELU6 in (first, then):
        return ir.Activation.RELU6
    return ir.Activation.RELU


def _with_activation(op: ir.OpAttrs, activation: ir.Activation) -> ir.OpAttrs:
    return dataclasses.replace(op, activation=activation)


def fuse_activations(graph: ir.Graph) -> ir.Graph:
    """A new graph with every fusible ReLU/ReLU6 merged into its producer."""
    out = graph.copy()
    if out.is_quantized:
        return out
    for act in [n for n in out.nodes if isinstance(n.op, ir.ActivationOp)]:
        if act.op.activation not in _FUSIBLE:
            continue
        producer = out.producer(act.inputs[0])
        if producer is None or sole_consumer(out, act.inputs[0]) is not act:
            continue
        if isinstance(producer.op, _FUSES_INTO):
            merged_op = _with_activation(producer.op, compose(producer.op.activation,
                                                               act.op.activation))
        elif isinstance(producer.op, ir.ActivationOp):
            merged_op = ir.ActivationOp(compose(producer.op.activation, act.op.activation))
        else:
            continue
        merged = ir.Node(producer.name, merged_op, list(producer.inputs), list(act.outputs))
        out.nodes = [merged if n is producer else n for n in out.nodes if n is not act]
    drop_unused_tensors(out)
    return out
