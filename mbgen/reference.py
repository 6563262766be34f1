"""The numpy int8 reference interpreter: the golden model for every generated C file.

Written from the TFLite int8 spec (``../shared/docs/int8.md``) and the semantics of TFLM's
reference kernels; it shares no code with our C kernels. Per-op integer constants come from
``mbgen.quantize.params``, as TFLM's kernels take theirs from Prepare().

Integers live in int64 numpy arrays holding int32 (or int16) values. The helpers below
reproduce C's integer behaviour where TFLite relies on it: truncating division, arithmetic
right shifts, and int32 products that wrap.
"""

from __future__ import annotations

from typing import Callable, Mapping, Union

import numpy as np

from mbgen import ir, reference_graph_ops, reference_layout
from mbgen.errors import UserError
from mbgen.quantize import params

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1
INT16_MIN, INT16_MAX = -(1 << 15), (1 << 15) - 1
INT8_MIN, INT8_MAX = -128, 127

ArrayLike = Union[np.ndarray, int]

# ----------------------------------------------------------------------------- fixed point


def wrap_int32(x: ArrayLike) -> np.ndarray:
    """Two's-complement wrap to int32, as an int32 product or sum overflows on the target."""
    return ((np.asarray(x, dtype=np.int64) + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _divide_by_pot_toward_zero(x: np.ndarray, bits: int) -> np.ndarray:
    """C's ``x / (1 << bits)`` for signed x (truncates toward zero, unlike ``>>``)."""
    return np.where(x >= 0, x >> bits, -((-x) >> bits))


def saturating_rounding_doubling_high_mul(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul (Arm VQRDMULH) on int32 values.

    The high 32 bits of 2*a*b rounded half away from zero; INT32_MIN * INT32_MIN, the only
    product that overflows, saturates to INT32_MAX.
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    product = a * b
    nudge = np.where(product >= 0, 1 << 30, 1 - (1 << 30))
    high = _divide_by_pot_toward_zero(product + nudge, 31)
    return np.where((a == b) & (a == INT32_MIN), INT32_MAX, high)


def rounding_divide_by_pot(x: ArrayLike, exponent: ArrayLike) -> np.ndarray:
    """gemmlowp's RoundingDivideByPOT: x / 2**exponent rounded half away from zero.

    ``exponent`` in [0, 31] may be an array (one shift per channel).
    """
    x = np.asarray(x, dtype=np.int64)
    exponent = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << exponent) - 1
    remainder = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> exponent) + (remainder > threshold)


def multiply_by_quantized_multiplier(x: ArrayLike, multiplier: ArrayLike,
                                     shift: ArrayLike) -> np.ndarray:
    """TFLite's MultiplyByQuantizedMultiplier (double rounding, the TFLM default).

    ``shift`` > 0 is a left shift applied before the Q31 multiply (the int32 product wraps,
    as in C); ``shift`` < 0 is a rounding right shift after it.
    """
    x = np.asarray(x, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(wrap_int32(x << left), multiplier), right)


def _saturating_rounding_mul_by_pot(x: np.ndarray, exponent: int) -> np.ndarray:
    """gemmlowp's SaturatingRoundingMultiplyByPOT<exponent> on int32 raw values."""
    if exponent == 0:
        return x
    if exponent < 0:
        return rounding_divide_by_pot(x, -exponent)
    threshold = (1 << (31 - exponent)) - 1
    return np.where(x > threshold, INT32_MAX,
                    np.where(x < -threshold, INT32_MIN, x << exponent))


def _rescale(x: np.ndarray, src_integer_bits: int, dst_integer_bits: int) -> np.ndarray:
    """gemmlowp's Rescale: the same real value in a Q format with other integer bits."""
    return _saturating_rounding_mul_by_pot(x, src_integer_bits - dst_integer_bits)


# Q0.31 constants of gemmlowp's exp (exp(-1/8), 1/3) and of its barrel shifter exp(-2^k).
_EXP_MINUS_ONE_EIGHTH = 1895147668
_ONE_THIRD = 715827883
_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308),
               (2, 39332535), (3, 720401), (4, 242))


def _exp_on_interval_between_negative_one_quarter_and_0_excl(a: np.ndarray) -> np.ndarray:
    """exp(a) for a in [-1/4, 0), Q0.31 in and out: Taylor series around -1/8."""
    srdhm = saturating_rounding_doubling_high_mul
    x = wrap_int32(a + (1 << 28))   # a + 1/8
    x2 = srdhm(x, x)
    x3 = srdhm(x2, x)
    x4 = srdhm(x2, x2)
    x4_over_4 = rounding_divide_by_pot(x4, 2)
    polynomial = rounding_divide_by_pot(
        wrap_int32(srdhm(wrap_int32(x4_over_4 + x3), _ONE_THIRD) + x2), 1)
    return wrap_int32(_EXP_MINUS_ONE_EIGHTH
                      + srdhm(_EXP_MINUS_ONE_EIGHTH, wrap_int32(x + polynomial)))


def exp_on_negative_values(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """gemmlowp's exp_on_negative_values: exp(a) for a <= 0 in Q(integer_bits), out Q0.31."""
    fractional_bits = 31 - integer_bits
    one_quarter = 1 << (fractional_bits - 2)
    a_mod_quarter_minus_quarter = wrap_int32((a & (one_quarter - 1)) - one_quarter)
    result = _exp_on_interval_between_negative_one_quarter_and_0_excl(
        _rescale(a_mod_quarter_minus_quarter, integer_bits, 0))
    remainder = wrap_int32(a_mod_quarter_minus_quarter - a)
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            bit = np.int64(1) << (fractional_bits + exponent)
            result = np.where((remainder & bit) != 0,
                              saturating_rounding_doubling_high_mul(result, multiplier), result)
    if integer_bits > 5:  # below -32 the result is zero
        result = np.where(a < -(1 << (36 - integer_bits)), 0, result)
    return np.where(a == 0, INT32_MAX, result)


def one_over_one_plus_x_for_x_in_0_1(a: np.ndarray) -> np.ndarray:
    """gemmlowp's 1/(1+a) for a in [0, 1), Q0.31: three Newton-Raphson steps in Q2.29."""
    srdhm = saturating_rounding_doubling_high_mul
    total = np.asarray(a, dtype=np.int64) + INT32_MAX          # RoundingHalfSum(a, One)
    half_denominator = _divide_by_pot_toward_zero(total + np.where(total >= 0, 1, -1), 1)
    x = wrap_int32(1515870810 + srdhm(half_denominator, -1010580540))  # 48/17 - 32/17 * d
    for _ in range(3):
        one_minus_half_denominator_times_x = wrap_int32((1 << 29) - srdhm(half_denominator, x))
        x = wrap_int32(x + _rescale(srdhm(x, one_minus_half_denominator_times_x), 4, 2))
    return _rescale(x, 1, 0)  # x/2 is exact (a Q2 value read as Q1), then back to Q0


def logistic_fixed_point(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """gemmlowp's logistic: Q(integer_bits) in, Q0.31 out."""
    positive = a > 0
    magnitude = np.where(positive, a, wrap_int32(-a))
    if_positive = one_over_one_plus_x_for_x_in_0_1(
        exp_on_negative_values(wrap_int32(-magnitude), integer_bits))
    if_negative = wrap_int32(INT32_MAX - if_positive)
    return np.where(a == 0, 1 << 30, np.where(positive, if_positive, if_negative))


def _clamp_int8(x: np.ndarray, low: int = INT8_MIN, high: int = INT8_MAX) -> np.ndarray:
    return np.clip(x, low, high).astype(np.int8)


# ----------------------------------------------------------------------------- layout helpers


def _windows(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
             dilation: tuple[int, int]) -> np.ndarray:
    """(N, OH, OW, KH, KW, C) read-only view of every receptive field of a padded NHWC array."""
    n, h, w, c = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    oh = (h - (kh - 1) * dh - 1) // sh + 1
    ow = (w - (kw - 1) * dw - 1) // sw + 1
    s = x.strides
    return np.lib.stride_tricks.as_strided(
        x, shape=(n, oh, ow, kh, kw, c),
        strides=(s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3]), writeable=False)


def _pad_spatial(x: np.ndarray, padding: ir.Padding, value: float | int) -> np.ndarray:
    if padding == ir.Padding():
        return x
    return np.pad(x, ((0, 0), (padding.top, padding.bottom), (padding.left, padding.right),
                      (0, 0)), constant_values=value)


def _const(graph: ir.Graph, name: str) -> np.ndarray:
    tensor = graph.tensors[name]
    if tensor.data is None:
        raise UserError(f"int8 reference: tensor {name!r} must be a constant")
    return tensor.data


def _symmetric_weights(graph: ir.Graph, node: ir.Node) -> np.ndarray:
    weight = graph.tensors[node.inputs[1]]
    if weight.quant is not None and np.any(weight.quant.zero_point != 0):
        raise UserError(f"{node.name}: int8 weights need zero point 0 (TFLite int8 spec)")
    return _const(graph, node.inputs[1])


def _bias(graph: ir.Graph, node: ir.Node, channels: int) -> np.ndarray:
    if len(node.inputs) > 2 and node.inputs[2]:
        return _const(graph, node.inputs[2]).astype(np.int64).reshape(channels)
    return np.zeros(channels, dtype=np.int64)


# The convolutions multiply in float64 BLAS: each product |(x - zp) * w| <= 255 * 128 and a
# dot product has far fewer than 2**53 / 2**15 terms, so every partial sum is an integer
# below 2**53 and the float64 result is exact, whatever order BLAS adds in.
_MAX_EXACT_TERMS = (1 << 53) // (255 * 128)


def _requantize_channels(acc: np.ndarray, quant: params.ConvQuant) -> np.ndarray:
    acc = wrap_int32(acc)  # TFLM accumulates in int32
    scaled = multiply_by_quantized_multiplier(acc, quant.multipliers.astype(np.int64),
                                              quant.shifts.astype(np.int64))
    return _clamp_int8(scaled + quant.output_offset, quant.act_min, quant.act_max)


# ----------------------------------------------------------------------------- kernels

Kernel = Callable[[ir.Graph, ir.Node, list[np.ndarray]], np.ndarray]


def _conv2d(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    op: ir.Conv2D = node.op
    quant = params.conv_quant(graph, node)
    weight = _symmetric_weights(graph, node).astype(np.float64)     # O, KH, KW, I
    out_channels, kh, kw, in_channels = weight.shape
    if kh * kw * in_channels > _MAX_EXACT_TERMS:
        raise UserError(f"{node.name}: conv too deep for the exact float64 reference")
    x = args[0].astype(np.float64) + quant.input_offset              # padded pixels are 0
    x = _pad_spatial(x, op.padding, 0.0)
    if (kh, kw) == (1, 1) and op.stride == (1, 1):
        columns = x.reshape(-1, in_channels)
        out_shape = x.shape[:3] + (out_channels,)
    else:
        windows = _windows(x, (kh, kw), op.stride, op.dilation)
        out_shape = windows.shape[:3] + (out_channels,)
        columns = windows.reshape(-1, kh * kw * in_channels)
    acc = (columns @ weight.reshape(out_channels, -1).T).astype(np.int64)
    acc = acc.reshape(out_shape) + _bias(graph, node, out_channels)
    return _requantize_channels(acc, quant)


def _depthwise_conv2d(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    op: ir.DepthwiseConv2D = node.op
    quant = params.conv_quant(graph, node)
    weight = _symmetric_weights(graph, node)[0].astype(np.int64)    # KH, KW, C*m
    kh, kw, out_channels = weight.shape
    x = args[0].astype(np.int64) + quant.input_offset
    if op.depth_multiplier > 1:
        x = np.repeat(x, op.depth_multiplier, axis=3)  # output channel c*m+j reads input c
    if x.shape[3] != out_channels:
        raise UserError(f"{node.name}: depthwise weights have {out_channels} channels, "
                        f"input x multiplier gives {x.shape[3]}")
    x = _pad_spatial(x, op.padding, 0)
    (sh, sw), (dh, dw) = op.stride, op.dilation
    oh = (x.shape[1] - (kh - 1) * dh - 1) // sh + 1
    ow = (x.shape[2] - (kw - 1) * dw - 1) // sw + 1
    acc = np.zeros((x.shape[0], oh, ow, out_channels), dtype=np.int64)
    for ky in range(kh):        # one shifted, strided slice of the input per filter tap
        for kx in range(kw):
            rows = slice(ky * dh, ky * dh + (oh - 1) * sh + 1, sh)
            cols = slice(kx * dw, kx * dw + (ow - 1) * sw + 1, sw)
            acc += x[:, rows, cols, :] * weight[ky, kx]
    return _requantize_channels(acc + _bias(graph, node, out_channels), quant)


def _fully_connected(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    quant = params.conv_quant(graph, node)
    weight = _symmetric_weights(graph, node).astype(np.float64)     # O, I
    out_channels, depth = weight.shape
    if depth > _MAX_EXACT_TERMS:
        raise UserError(f"{node.name}: fully connected too deep for the exact reference")
    x = args[0].astype(np.float64).reshape(-1, depth) + quant.input_offset
    acc = (x @ weight.T).astype(np.int64) + _bias(graph, node, out_channels)
    return _requantize_channels(acc, quant)


def _add(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    q = params.add_quant(graph, node)
    a = wrap_int32((args[0].astype(np.int64) + q.input1_offset) << q.left_shift)
    b = wrap_int32((args[1].astype(np.int64) + q.input2_offset) << q.left_shift)
    a = multiply_by_quantized_multiplier(a, q.input1_multiplier, q.input1_shift)
    b = multiply_by_quantized_multiplier(b, q.input2_multiplier, q.input2_shift)
    total = multiply_by_quantized_multiplier(wrap_int32(a + b), q.output_multiplier,
                                             q.output_shift)
    return _clamp_int8(total + q.output_offset, q.act_min, q.act_max)


def _mul(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    q = params.mul_quant(graph, node)
    product = ((args[0].astype(np.int64) + q.input1_offset)
               * (args[1].astype(np.int64) + q.input2_offset))
    scaled = multiply_by_quantized_multiplier(product, q.output_multiplier, q.output_shift)
    return _clamp_int8(scaled + q.output_offset, q.act_min, q.act_max)


def _average_pool2d(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    op: ir.AveragePool2D = node.op
    q = params.pool_quant(graph, node)
    x = _pad_spatial(args[0].astype(np.int64), op.padding, 0)  # pads add 0 and are not counted
    ones = _pad_spatial(np.ones((1,) + args[0].shape[1:3] + (1,), dtype=np.int64),
                        op.padding, 0)
    sums = _windows(x, op.kernel, op.stride, (1, 1)).sum(axis=(3, 4))
    counts = _windows(ones, op.kernel, op.stride, (1, 1)).sum(axis=(3, 4))
    if np.any(counts == 0):
        raise UserError(f"{node.name}: a pooling window lies entirely in the padding")
    half = counts // 2
    # TFLM: (acc +/- count/2) / count with C's truncating division.
    averages = np.where(sums > 0, (sums + half) // counts, -((-sums + half) // counts))
    return _clamp_int8(averages, q.act_min, q.act_max)


def _mean(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    q = params.mean_quant(graph, node)
    x = args[0]
    axes = tuple(sorted({a % x.ndim for a in node.op.axes}))
    sums = wrap_int32(x.astype(np.int64).sum(axis=axes))
    shifted = wrap_int32(sums - q.input_zero_point * q.count)
    scaled = multiply_by_quantized_multiplier(shifted, q.multiplier, q.shift)
    out_shape = graph.tensors[node.outputs[0]].shape  # keep_dims or not
    return _clamp_int8(scaled + q.output_zero_point).reshape(out_shape)


def _reshape(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    return args[0].reshape(graph.tensors[node.outputs[0]].shape).copy()


def _pad(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    zero_point = graph.tensors[node.outputs[0]].quant.scalar_zero_point
    return _pad_spatial(args[0], node.op.padding, zero_point).astype(np.int8)


def _softmax(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    """TFLM's int8 softmax over the last axis: Q5.26 diffs, exp in Q0.31, sum in Q12.19."""
    q = params.softmax_quant(graph, node)
    x = args[0].astype(np.int64)
    diff = x - x.max(axis=-1, keepdims=True)
    counted = diff >= q.diff_min
    # MultiplyByQuantizedMultiplierGreaterThanOne: int32 left shift, then the Q31 multiply.
    scaled_diff = saturating_rounding_doubling_high_mul(
        wrap_int32(diff << q.input_left_shift), q.input_multiplier)
    exps = exp_on_negative_values(scaled_diff, params.SOFTMAX_SCALED_DIFF_INT_BITS)
    accumulation_bits = 12
    sum_of_exps = wrap_int32(np.where(counted, _rescale(exps, 0, accumulation_bits), 0)
                             .sum(axis=-1, keepdims=True))
    # GetReciprocal: normalise the sum to [1, 2) and take 1/x with gemmlowp's Newton steps.
    headroom_plus_one = 32 - np.frexp((sum_of_exps & 0xFFFFFFFF).astype(np.float64))[1]
    num_bits_over_unit = accumulation_bits - headroom_plus_one
    shifted_sum_minus_one = wrap_int32(((sum_of_exps << headroom_plus_one) & 0xFFFFFFFF)
                                       - (1 << 31))
    shifted_scale = one_over_one_plus_x_for_x_in_0_1(shifted_sum_minus_one)
    exponent = num_bits_over_unit + 31 - 8
    if np.any((exponent < 0) | (exponent > 31)):
        raise UserError(f"{node.name}: softmax sum out of TFLite's range")
    probabilities = rounding_divide_by_pot(
        saturating_rounding_doubling_high_mul(shifted_scale, exps), exponent)
    return np.where(counted, _clamp_int8(probabilities + INT8_MIN), INT8_MIN).astype(np.int8)


def _srdhm_int16(a: np.ndarray, b: ArrayLike) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul on int16 values."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    product = a * b
    nudge = np.where(product >= 0, 1 << 14, 1 - (1 << 14))
    high = _divide_by_pot_toward_zero(product + nudge, 15)
    return np.where((a == b) & (a == INT16_MIN), INT16_MAX, high)


def _sdhm_int16(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """TFLite's SaturatingDoublingHighMul (Arm SQDMULH): like the above, truncating."""
    high = _divide_by_pot_toward_zero(a * b, 15)
    return np.where((a == b) & (a == INT16_MIN), INT16_MAX, high)


def _saturating_left_shift_int16(x: np.ndarray, amount: int) -> np.ndarray:
    return np.clip(x << amount, INT16_MIN, INT16_MAX)


def _hard_swish(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    """TFLite's int8 HardSwish: x * relu6(x + 3) / 6 in int16 fixed point."""
    q = params.hardswish_quant(graph, node)
    hires_input = (args[0].astype(np.int64) - q.input_zero_point) * (1 << 7)
    preshift_output = _srdhm_int16(hires_input, q.output_multiplier_fixedpoint_int16)
    # 'relu-ish': x rescaled so that 3.0 maps to 32768 (saturating), then into [0, 1].
    exponent = q.reluish_multiplier_exponent
    reluish = hires_input
    if exponent > 0:
        reluish = _saturating_left_shift_int16(reluish, exponent - 1)
    reluish = _srdhm_int16(reluish, q.reluish_multiplier_fixedpoint_int16)
    if exponent > 0:
        reluish = _saturating_left_shift_int16(reluish, 1)
    if exponent < 0:
        reluish = rounding_divide_by_pot(reluish, -exponent)
    reluish = (reluish + (1 << 15)) >> 1
    output = rounding_divide_by_pot(_sdhm_int16(reluish, preshift_output),
                                    -q.output_multiplier_exponent)
    return _clamp_int8(output + q.output_zero_point)


def _logistic(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    q = params.logistic_quant(graph, node)
    x = args[0].astype(np.int64) - q.input_zero_point
    in_q4 = multiply_by_quantized_multiplier(x, q.input_multiplier, q.input_left_shift)
    sigmoid_q0 = logistic_fixed_point(in_q4, params.LOGISTIC_INPUT_INTEGER_BITS)
    output = _clamp_int8(rounding_divide_by_pot(sigmoid_q0, 23) + INT8_MIN)  # scale 1/256
    output = np.where(x <= -q.input_range_radius, INT8_MIN, output)
    return np.where(x >= q.input_range_radius, INT8_MAX, output).astype(np.int8)


def _round_half_away_float32(x: np.ndarray) -> np.ndarray:
    """std::round on float32 values, exactly (no x + 0.5 rounding error)."""
    whole = np.trunc(x)
    fraction = x - whole  # exact in float32
    return whole + np.where(np.abs(fraction) >= 0.5, np.sign(x), 0).astype(np.float32)


def _quantize(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    x = args[0]
    out = graph.tensors[node.outputs[0]].quant
    if graph.tensors[node.inputs[0]].dtype == "float32":
        # TFLite's AffineQuantize: float32 division by the scale, std::round, clamp.
        scaled = np.asarray(x, dtype=np.float32) / np.float32(out.scalar_scale)
        rounded = _round_half_away_float32(scaled)
        # Out-of-range float->int casts are undefined in C; saturate as Arm's VCVT does.
        rounded = np.clip(np.nan_to_num(rounded), INT32_MIN, INT32_MAX).astype(np.int64)
        return _clamp_int8(rounded + out.scalar_zero_point)
    q = params.requantize_quant(graph, node)
    scaled = multiply_by_quantized_multiplier(x.astype(np.int64) - q.input_zero_point,
                                              q.multiplier, q.shift)
    if graph.tensors[node.outputs[0]].dtype == "uint8":  # a uint8 interface's last op
        return np.clip(scaled + q.output_zero_point, 0, 255).astype(np.uint8)
    return _clamp_int8(scaled + q.output_zero_point, q.act_min, q.act_max)


def _dequantize(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    qp = graph.tensors[node.inputs[0]].quant
    return (np.float64(qp.scalar_scale)
            * (args[0].astype(np.float64) - qp.scalar_zero_point)).astype(np.float32)


def _activation(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    """Standalone RELU / RELU6 as TFLM runs them (RELU requantises, RELU6 only clamps)."""
    activation = node.op.activation
    if activation is ir.Activation.RELU:
        q = params.relu_quant(graph, node)
        scaled = multiply_by_quantized_multiplier(args[0].astype(np.int64) - q.input_zero_point,
                                                  q.multiplier, q.shift)
        return _clamp_int8(scaled + q.output_zero_point, q.act_min, q.act_max)
    if activation is ir.Activation.RELU6:
        q6 = params.relu6_quant(graph, node)
        return _clamp_int8(args[0].astype(np.int64), q6.lower, q6.upper)
    return args[0].copy()


def _identity(graph: ir.Graph, node: ir.Node, args: list[np.ndarray]) -> np.ndarray:
    return args[0].copy()


_KERNELS: dict[type, Kernel] = {
    ir.Conv2D: _conv2d,
    ir.DepthwiseConv2D: _depthwise_conv2d,
    ir.FullyConnected: _fully_connected,
    ir.Add: _add,
    ir.Mul: _mul,
    ir.AveragePool2D: _average_pool2d,
    ir.Mean: _mean,
    ir.Reshape: _reshape,
    ir.Pad: _pad,
    ir.Softmax: _softmax,
    ir.HardSwish: _hard_swish,
    ir.Logistic: _logistic,
    ir.Quantize: _quantize,
    ir.Dequantize: _dequantize,
    ir.ActivationOp: _activation,
    ir.Identity: _identity,
    **reference_graph_ops.KERNELS,
    **reference_layout.KERNELS,
}

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(t.__name__ for t in _KERNELS))


def _kernel_for(node: ir.Node) -> Kernel | None:
    """The node's kernel; onnxruntime's float requantisation lives in its own module."""
    if ir.uses_onnxruntime_arithmetic(node.op):
        from mbgen import reference_onnxruntime  # it imports this module's helpers
        return reference_onnxruntime.KERNELS.get(type(node.op))
    if ir.requantization_of(node.op) is ir.Requantization.TFLITE_UINT8:
        from mbgen import reference_uint8  # it imports this module's helpers
        return reference_uint8.KERNELS.get(type(node.op))
    return _KERNELS.get(type(node.op))

# ----------------------------------------------------------------------------- graph runner


def _bind_inputs(graph: ir.Graph,
                 inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
    if isinstance(inputs, np.ndarray):
        if len(graph.inputs) != 1:
            raise UserError(f"graph {graph.name!r} has {len(graph.inputs)} inputs; "
                            f"pass a dict name -> array")
        inputs = {graph.inputs[0]: inputs}
    missing = [name for name in graph.inputs if name not in inputs]
    unknown = [name for name in inputs if name not in graph.inputs]
    if missing or unknown:
        raise UserError(f"inputs do not match the graph: missing {missing}, unknown {unknown}")
    bound = {}
    for name in graph.inputs:
        tensor = graph.tensors[name]
        value = np.asarray(inputs[name])
        if tuple(value.shape) != tuple(tensor.shape):
            raise UserError(f"input {name!r} has shape {value.shape}, the graph expects "
                            f"{tensor.shape}")
        if tensor.dtype in ("int8", "uint8"):
            if value.dtype != np.dtype(tensor.dtype):
                raise UserError(f"input {name!r} must be {tensor.dtype} (got {value.dtype}); "
                                f"quantise it with the input scale and zero point first")
        elif tensor.dtype == "float32":
            value = value.astype(np.float32)
        bound[name] = value
    return bound


def run_int8(graph: ir.Graph, inputs: Mapping[str, np.ndarray] | np.ndarray,
             keep_all: bool = False) -> dict[str, np.ndarray]:
    """Run an int8 graph bit-exactly as TFLM's reference kernels would.

    ``inputs`` maps input names to NHWC arrays (int8, or float32 for a graph that starts with
    a Quantize), or is one array for a single-input graph. Returns the graph outputs by name;
    with ``keep_all``, every activation tensor (inputs included) for per-layer debugging.
    """
    if not graph.is_quantized and not any(isinstance(n.op, ir.Quantize) for n in graph.nodes):
        raise UserError(f"graph {graph.name!r} is not quantised; run_int8 needs an int8 graph")
    values = _bind_inputs(graph, inputs)
    for node in graph.nodes:
        kernel = _kernel_for(node)
        if kernel is None:
            raise UserError(f"int8 reference: op {ir.op_name(node.op)} (node {node.name}) is "
                            f"not supported; supported: {', '.join(SUPPORTED_OPS)}")
        args = [values[name] if name in values else _const(graph, name)
                for name in node.inputs if name]
        try:
            result = kernel(graph, node, args)
        except ValueError as exc:  # params.py refuses constants TFLM would refuse
            raise UserError(f"int8 reference: {exc}") from exc
        out = graph.tensors[node.outputs[0]]
        if tuple(result.shape) != tuple(out.shape):
            raise UserError(f"node {node.name}: computed shape {result.shape}, graph says "
                            f"{out.shape}")
        values[node.outputs[0]] = result
    if keep_all:
        return values
    return {name: values[name] for name in graph.outputs}
