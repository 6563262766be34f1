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
        steps = float(np.float32(real) / scale)
        # TFLM's Prepare refuses a bound that overflows int32 (no_integer_overflow_from_...).
        if not -2.0**31 <= round_half_away(steps) <= 2.0**31 - 1:
            raise ValueError(f"{activation.value} bound {real} is {steps:g} steps of the output "
                             f"scale {float(scale):g}: beyond int32 (TFLM refuses it)")
        return zp + round_half_away(steps)

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
    """AveragePool2D (input and output quantisation equal): only the clamp."""

    act_min: int
    act_max: int


def _qp(graph: ir.Graph, name: str) -> ir.QuantParams:
    qp = graph.tensors[name].quant
    if qp is None:
        raise ValueError(f"tensor {name!r} has no quantisation parameters")
    return qp


def _output_channels(graph: ir.Graph, node: ir.Node) -> int:
    weight_shape = graph.tensors[node.inputs[1]].shape
    # TFLite's quantised dimension: conv (O,KH,KW,I) axis 0, depthwise (1,KH,KW,C*m) axis 3,
    # fully connected (O,I) axis 0.
    return weight_shape[3] if isinstance(node.op, ir.DepthwiseConv2D) else weight_shape[0]


def conv_quant(graph: ir.Graph, node: ir.Node) -> ConvQuant:
    """Per-channel (or per-tensor) requantisation of a conv-like node.

    Conv2D and DepthwiseConv2D always get one multiplier per output channel (TFLM's
    PopulateConvolutionQuantizationParams broadcasts a per-tensor weight scale). A
    FullyConnected with a per-tensor weight scale gets one, computed as TFLM's
    GetQuantizedConvolutionMultipler does: the product input_scale * weight_scale is taken in
    float32 before the division in double, which can differ in the last bit of the Q31 value.
    """
    x, w = _qp(graph, node.inputs[0]), _qp(graph, node.inputs[1])
    out = _qp(graph, node.outputs[0])
    input_scale = np.float32(x.scalar_scale)
    output_scale = float(np.float32(out.scalar_scale))
    weight_scales = w.scale.astype(np.float32).reshape(-1)
    channels = _output_channels(graph, node)
    if weight_scales.size not in (1, channels):
        raise ValueError(f"{node.name}: {weight_scales.size} weight scales for "
                         f"{channels} output channels")
    if isinstance(node.op, ir.FullyConnected) and weight_scales.size == 1:
        reals = [float(input_scale * weight_scales[0]) / output_scale]
        _check_bias_scale(graph, node, float(input_scale * weight_scales[0]), output_scale)
    else:
        if weight_scales.size == 1:
            weight_scales = np.repeat(weight_scales, channels)
        reals = [float(input_scale) * float(ws) / output_scale for ws in weight_scales]
    encoded = [quantize_multiplier(real) for real in reals]
    act_min, act_max = activation_range(node.op.activation, out)
    return ConvQuant(
        input_offset=-x.scalar_zero_point,
        output_offset=out.scalar_zero_point,
        multipliers=np.array([m for m, _ in encoded], dtype=np.int32),
        shifts=np.array([s for _, s in encoded], dtype=np.int32),
        act_min=act_min,
        act_max=act_max,
    )


def _check_bias_scale(graph: ir.Graph, node: ir.Node, product_scale: float,
                      output_scale: float) -> None:
    """TFLM's GetQuantizedConvolutionMultipler (per-tensor FULLY_CONNECTED) refuses a bias
    scale further than 2% of the output scale from input_scale * weight_scale (TFLM reads a
    tensor's first scale as its scale, so per-channel biases are checked on channel 0)."""
    if len(node.inputs) < 3 or not node.inputs[2]:
        return
    bias = _qp(graph, node.inputs[2])
    if abs(product_scale - float(np.float32(bias.scale[0]))) / output_scale > 0.02:
        raise ValueError(f"{node.name}: bias scale {float(bias.scale[0]):g} is not input scale "
                         f"x weight scale {product_scale:g} (TFLM refuses it)")


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


def calculate_input_radius(integer_bits: int, left_shift: int, total_bits: int = 31) -> int:
    """TFLite's CalculateInputRadius: the largest input diff that survives the rescale."""
    max_input_rescaled = (1.0 * ((1 << integer_bits) - 1) * (1 << (total_bits - integer_bits))
                          / (1 << left_shift))
    return int(math.floor(max_input_rescaled))


def preprocess_softmax_scaling(beta: float, input_scale: float,
                               integer_bits: int) -> tuple[int, int]:
    """TFLite's PreprocessSoftmaxScaling: beta*scale in Q(integer_bits), capped at 2**31-1."""
    real = min(beta * input_scale * (1 << (31 - integer_bits)), (1 << 31) - 1.0)
    return quantize_multiplier_greater_than_one(real)


def softmax_quant(graph: ir.Graph, node: ir.Node) -> SoftmaxQuant:
    """TFLM's CalculateSoftmaxParams for int8 in and out."""
    x, out = _qp(graph, node.inputs[0]), _qp(graph, node.outputs[0])
    if out.scalar_zero_point != -128 or np.float32(out.scalar_scale) != np.float32(1 / 256):
        raise ValueError(f"{node.name}: int8 softmax output must have scale 1/256 and zero "
                         f"point -128 (TFLM refuses others)")
    bits = SOFTMAX_SCALED_DIFF_INT_BITS
    beta = float(np.float32(node.op.beta))  # TfLiteSoftmaxParams.beta is a float
    multiplier, left_shift = preprocess_softmax_scaling(beta, x.scalar_scale, bits)
    return SoftmaxQuant(input_multiplier=multiplier, input_left_shift=left_shift,
                        diff_min=-calculate_input_radius(bits, left_shift))


def pool_quant(graph: ir.Graph, node: ir.Node) -> PoolQuant:
    """AveragePool2D: TFLM's PoolingPrepare accepts scales within 1e-6 and equal zero points."""
    x, out = _qp(graph, node.inputs[0]), _qp(graph, node.outputs[0])
    scale_diff = abs(np.float32(x.scalar_scale) - np.float32(out.scalar_scale))
    if scale_diff > 1.0e-6 or x.scalar_zero_point != out.scalar_zero_point:
        raise ValueError(f"{node.name}: int8 pooling needs equal input and output quantisation")
    activation = getattr(node.op, "activation", ir.Activation.NONE)
    act_min, act_max = activation_range(activation, out)
    return PoolQuant(act_min, act_max)


@dataclass(frozen=True)
class MulQuant:
    """TFLite int8 MUL: out = zp + MBQM((a - zp_a) * (b - zp_b), multiplier, shift)."""

    input1_offset: int
    input2_offset: int
    output_offset: int
    output_multiplier: int
    output_shift: int
    act_min: int
    act_max: int


def mul_quant(graph: ir.Graph, node: ir.Node) -> MulQuant:
    """TFLM's CalculateOpDataMul: one multiplier for scale_a * scale_b / scale_out (double)."""
    a, b = _qp(graph, node.inputs[0]), _qp(graph, node.inputs[1])
    out = _qp(graph, node.outputs[0])
    real = a.scalar_scale * b.scalar_scale / out.scalar_scale
    multiplier, shift = quantize_multiplier(real)
    act_min, act_max = activation_range(node.op.activation, out)
    return MulQuant(input1_offset=-a.scalar_zero_point, input2_offset=-b.scalar_zero_point,
                    output_offset=out.scalar_zero_point, output_multiplier=multiplier,
                    output_shift=shift, act_min=act_min, act_max=act_max)


def downscale_multiplier_to_int16(multiplier: int) -> int:
    """TFLite's DownScaleInt32ToInt16Multiplier: round a Q31 multiplier to Q15, saturating."""
    if multiplier >= (1 << 31) - 1 - (1 << 15):
        return (1 << 15) - 1
    return (multiplier + (1 << 15)) >> 16


@dataclass(frozen=True)
class HardSwishQuant:
    """TFLite's HardSwishParams (int8): Q15 multipliers for the output and 'relu-ish' scales."""

    input_zero_point: int
    output_zero_point: int
    output_multiplier_fixedpoint_int16: int
    output_multiplier_exponent: int   # <= 0
    reluish_multiplier_fixedpoint_int16: int
    reluish_multiplier_exponent: int


def hardswish_quant(graph: ir.Graph, node: ir.Node) -> HardSwishQuant:
    """TFLM's HardSwishPrepare. The scale ratios are float32 divisions, as in TFLM."""
    x, out = _qp(graph, node.inputs[0]), _qp(graph, node.outputs[0])
    hires_input_scale = np.float32(1.0 / 128.0) * np.float32(x.scalar_scale)
    reluish_scale = np.float32(3.0) / np.float32(32768.0)
    out_m, out_e = quantize_multiplier(float(hires_input_scale / np.float32(out.scalar_scale)))
    relu_m, relu_e = quantize_multiplier(float(hires_input_scale / reluish_scale))
    if out_e > 0:
        raise ValueError(f"{node.name}: hard-swish output scale too small for TFLite "
                         f"(output multiplier exponent {out_e} > 0)")
    # Our int16 shifts assume exponents TFLM can represent without wrapping the int16 mask.
    if out_e < -15 or not -15 <= relu_e <= 15:
        raise ValueError(f"{node.name}: hard-swish scales out of the int16 fixed-point range")
    return HardSwishQuant(
        input_zero_point=x.scalar_zero_point, output_zero_point=out.scalar_zero_point,
        output_multiplier_fixedpoint_int16=downscale_multiplier_to_int16(out_m),
        output_multiplier_exponent=out_e,
        reluish_multiplier_fixedpoint_int16=downscale_multiplier_to_int16(relu_m),
        reluish_multiplier_exponent=relu_e,
    )


LOGISTIC_INPUT_INTEGER_BITS = 4   # TFLite int8 logistic: input rescaled to Q4.27


@dataclass(frozen=True)
class LogisticQuant:
    """TFLite int8 LOGISTIC: inputs beyond the radius saturate, the rest go through Q4.27."""

    input_zero_point: int
    input_range_radius: int
    input_multiplier: int
    input_left_shift: int   # TFLite sign convention: > 0 is a left shift


def logistic_quant(graph: ir.Graph, node: ir.Node) -> LogisticQuant:
    """TFLM's CalculateArithmeticOpDataLogistic (int8).

    Unlike QuantizeMultiplier it has no guard for a mantissa that rounds up to 2**31; C++
    leaves that conversion undefined and Arm's VCVT saturates, so we saturate too.
    """
    x, out = _qp(graph, node.inputs[0]), _qp(graph, node.outputs[0])
    if out.scalar_zero_point != -128:
        raise ValueError(f"{node.name}: int8 logistic output zero point must be -128")
    bits = LOGISTIC_INPUT_INTEGER_BITS
    real = x.scalar_scale * float(1 << (31 - bits))
    mantissa, left_shift = math.frexp(real)
    multiplier = min(round_half_away(mantissa * (1 << 31)), (1 << 31) - 1)
    # TFLM's CalculateInputRadius would shift by a negative amount, its MBQM overflow int32.
    if not 0 <= left_shift <= 30:
        raise ValueError(f"{node.name}: logistic input scale {x.scalar_scale} out of range")
    return LogisticQuant(input_zero_point=x.scalar_zero_point,
                         input_range_radius=calculate_input_radius(bits, left_shift),
                         input_multiplier=multiplier, input_left_shift=left_shift)


@dataclass(frozen=True)
class MeanQuant:
    """TFLite int8 MEAN: out = zp + MBQM(sum - zp_in * count, multiplier, shift).

    ``multiplier``/``shift`` already include the 1/count factor, folded in exactly as TFLM's
    QuantizedMeanOrSum does at run time (integer division of the Q31 value).
    """

    input_zero_point: int
    output_zero_point: int
    count: int            # elements averaged into each output
    multiplier: int
    shift: int


def mean_quant(graph: ir.Graph, node: ir.Node) -> MeanQuant:
    x, out = _qp(graph, node.inputs[0]), _qp(graph, node.outputs[0])
    in_shape = graph.tensors[node.inputs[0]].shape
    rank = len(in_shape)
    axes = sorted({a % rank for a in node.op.axes})
    count = int(np.prod([in_shape[a] for a in axes], dtype=np.int64))
    if count <= 0:
        raise ValueError(f"{node.name}: mean over an empty axis")
    base_multiplier, base_shift = quantize_multiplier(x.scalar_scale / out.scalar_scale)
    shift = min(count.bit_length() - 1, 32, 31 + base_shift)
    if shift < 0:
        raise ValueError(f"{node.name}: mean output scale too large for TFLite's encoding")
    multiplier = (base_multiplier << shift) // count
    return MeanQuant(input_zero_point=x.scalar_zero_point,
                     output_zero_point=out.scalar_zero_point, count=count,
                     multiplier=int(multiplier), shift=base_shift - shift)


@dataclass(frozen=True)
class RequantizeQuant:
    """int8 -> int8 QUANTIZE, and a standalone RELU: out = zp + MBQM(x - zp_in, m, shift)."""

    input_zero_point: int
    output_zero_point: int
    multiplier: int
    shift: int
    act_min: int
    act_max: int


def requantize_quant(graph: ir.Graph, node: ir.Node) -> RequantizeQuant:
    """TFLM's PrepareQuantizeReference for int8 -> int8 (ratio of scales in double)."""
    x, out = _qp(graph, node.inputs[0]), _qp(graph, node.outputs[0])
    multiplier, shift = quantize_multiplier(x.scalar_scale / out.scalar_scale)
    return RequantizeQuant(x.scalar_zero_point, out.scalar_zero_point, multiplier, shift,
                           INT8_MIN, INT8_MAX)


def relu_quant(graph: ir.Graph, node: ir.Node) -> RequantizeQuant:
    """TFLM's standalone int8 RELU (CalculateReluOpData): requantise, then clamp at q(0).

    The scale ratio is a float32 division and q(0) uses roundf(0 / scale), as in TFLM.
    """
    x, out = _qp(graph, node.inputs[0]), _qp(graph, node.outputs[0])
    out_scale = np.float32(out.scalar_scale)
    real = float(np.float32(x.scalar_scale) / out_scale)
    multiplier, shift = quantize_multiplier(real)
    act_min = max(INT8_MIN, out.scalar_zero_point
                  + round_half_away(float(np.float32(0.0) / out_scale)))
    return RequantizeQuant(x.scalar_zero_point, out.scalar_zero_point, multiplier, shift,
                           act_min, INT8_MAX)


@dataclass(frozen=True)
class Relu6Quant:
    """TFLM's standalone int8 RELU6: a clamp in the *input's* quantisation, no rescale."""

    lower: int
    upper: int


def relu6_quant(graph: ir.Graph, node: ir.Node) -> Relu6Quant:
    x = _qp(graph, node.inputs[0])
    six = round_half_away(float(np.float32(6.0) / np.float32(x.scalar_scale)))
    upper = min(INT8_MAX, max(INT8_MIN, six + x.scalar_zero_point))
    return Relu6Quant(lower=x.scalar_zero_point, upper=upper)
