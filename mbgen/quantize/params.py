"""Integer constants an int8 op needs at run time, derived from its tensors' quant params.

This is what TFLM does in each kernel's Prepare(): the graph stores only scales and zero
points; the multipliers, shifts, offsets and clamps below follow from them exactly as in
TFLite (doubles computed from the stored float32 scales). The reference interpreter and
codegen both read these records, so a layer has one set of constants everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mbgen import ir
from mbgen.quantize.multiplier import (
    quantize_multiplier,
    quantize_multiplier_greater_than_one,
    quantize_multiplier_smaller_than_one,
    round_half_away,
)

INT8_MIN, INT8_MAX = -128, 127
ADD_LEFT_SHIFT = 20               # TFLite int8 ADD/SUB pre-shift
SOFTMAX_SCALED_DIFF_INT_BITS = 5  # TFLite int8 softmax: integer bits of the scaled diff


def activation_range(activation: ir.Activation, out: ir.QuantParams) -> tuple[int, int]:
    """TFLite's CalculateActivationRangeQuantized for int8 outputs."""
    scale = np.float32(out.scalar_scale)
    zp = out.scalar_zero_point

    def quantize(real: float) -> int:  # float32 division, as TFLite does it
        return zp + round_half_away(float(np.float32(real) / scale))

    if activation is ir.Activation.NONE:
        return INT8_MIN, INT8_MAX
    if activation is ir.Activation.RELU:
        return max(INT8_MIN, quantize(0.0)), INT8_MAX
    if activation is ir.Activation.RELU6:
        return max(INT8_MIN, quantize(0.0)), min(INT8_MAX, quantize(6.0))
    raise ValueError(f"no int8 range for {activation}")


@dataclass(frozen=True)
class ConvQuant:
    """Conv2D, DepthwiseConv2D and FullyConnected: acc = bias + sum((x + input_offset) * w)."""

    input_offset: int          # -input zero point
    output_offset: int         # output zero point
    multipliers: np.ndarray    # int32 per output channel (one for a per-tensor FC)
    shifts: np.ndarray         # int32, TFLite sign convention: > 0 is a left shift
    act_min: int
    act_max: int


@dataclass(frozen=True)
class AddQuant:
    """TFLite int8 ADD: both inputs rescaled with a 2**20 pre-shift, then an output multiplier."""

    input1_offset: int
    input2_offset: int
    output_offset: int
    left_shift: int
    input1_multiplier: int
    input1_shift: int
    input2_multiplier: int
    input2_shift: int
    output_multiplier: int
    output_shift: int
    act_min: int
    act_max: int


@dataclass(frozen=True)
class SoftmaxQuant:
    """TFLite int8 softmax: input diffs scaled by beta*scale into Q5.26, then fixed-point exp."""

    input_multiplier: int
    input_left_shift: int
    diff_min: int


@dataclass(frozen=True)
class PoolQuant:
    """AveragePool2D / Mean with equal input and output quantisation: only the clamp."""

    act_min: int
    act_max: int


def _qp(graph: ir.Graph, name: str) -> ir.QuantParams:
    qp = graph.tensors[name].quant
    if qp is None:
        raise ValueError(f"tensor {name!r} has no quantisation parameters")
    return qp


def conv_quant(graph: ir.Graph, node: ir.Node) -> ConvQuant:
    """Per-channel (or per-tensor) requantisation of a conv-like node."""
    x, w = _qp(graph, node.inputs[0]), _qp(graph, node.inputs[1])
    out = _qp(graph, node.outputs[0])
    input_scale = float(x.scale[0])
    output_scale = float(out.scale[0])
    mults, shifts = [], []
    for weight_scale in w.scale.astype(np.float32):
        real = input_scale * float(weight_scale) / output_scale
        m, s = quantize_multiplier(real)
        mults.append(m)
        shifts.append(s)
    act_min, act_max = activation_range(node.op.activation, out)
    return ConvQuant(
        input_offset=-x.scalar_zero_point,
        output_offset=out.scalar_zero_point,
        multipliers=np.array(mults, dtype=np.int32),
        shifts=np.array(shifts, dtype=np.int32),
        act_min=act_min,
        act_max=act_max,
    )


def add_quant(graph: ir.Graph, node: ir.Node) -> AddQuant:
    a, b = _qp(graph, node.inputs[0]), _qp(graph, node.inputs[1])
    out = _qp(graph, node.outputs[0])
    twice_max = 2.0 * float(max(np.float32(a.scalar_scale), np.float32(b.scalar_scale)))
    m1, s1 = quantize_multiplier_smaller_than_one(a.scalar_scale / twice_max)
    m2, s2 = quantize_multiplier_smaller_than_one(b.scalar_scale / twice_max)
    mo, so = quantize_multiplier_smaller_than_one(
        twice_max / ((1 << ADD_LEFT_SHIFT) * out.scalar_scale))
    act_min, act_max = activation_range(node.op.activation, out)
    return AddQuant(
        input1_offset=-a.scalar_zero_point, input2_offset=-b.scalar_zero_point,
        output_offset=out.scalar_zero_point, left_shift=ADD_LEFT_SHIFT,
        input1_multiplier=m1, input1_shift=s1, input2_multiplier=m2, input2_shift=s2,
        output_multiplier=mo, output_shift=so, act_min=act_min, act_max=act_max,
    )


def softmax_quant(graph: ir.Graph, node: ir.Node) -> SoftmaxQuant:
    """TFLite's PreprocessSoftmaxScaling and CalculateInputRadius for int8 input."""
    x = _qp(graph, node.inputs[0])
    bits = SOFTMAX_SCALED_DIFF_INT_BITS
    real = min(node.op.beta * x.scalar_scale * (1 << (31 - bits)), float((1 << 31) - 1))
    multiplier, left_shift = quantize_multiplier_greater_than_one(real)
    max_input_rescaled = (1.0 * ((1 << bits) - 1) * (1 << (31 - bits)) / (1 << left_shift))
    diff_min = -int(math.floor(max_input_rescaled))
    return SoftmaxQuant(input_multiplier=multiplier, input_left_shift=left_shift,
                        diff_min=diff_min)


def pool_quant(graph: ir.Graph, node: ir.Node) -> PoolQuant:
    x, out = _qp(graph, node.inputs[0]), _qp(graph, node.outputs[0])
    if (x.scalar_scale != out.scalar_scale) or (x.scalar_zero_point != out.scalar_zero_point):
        raise ValueError(f"{node.name}: int8 pooling needs equal input and output quantisation")
    activation = getattr(node.op, "activation", ir.Activation.NONE)
    act_min, act_max = activation_range(activation, out)
    return PoolQuant(act_min, act_max)
