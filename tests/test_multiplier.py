"""TFLite's multiplier encoding and the per-op constants of params.py.

Expected values are either worked out by hand from the definitions or copied from the
numbers TFLite's own tests document (quantization_util_test.cc); the per-op constants are
additionally exercised bit-exactly against TFLM in test_reference.py.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbgen import ir
from mbgen.quantize import params
from mbgen.quantize.multiplier import (
    quantize_multiplier,
    quantize_multiplier_greater_than_one,
    quantize_multiplier_smaller_than_one,
    round_half_away,
)

Q30 = 1 << 30


def test_round_half_away_from_zero_exactly():
    assert [round_half_away(v) for v in (0.5, -0.5, 1.5, 2.5, -2.5, 0.49, -0.51)] == \
        [1, -1, 2, 3, -3, 0, -1]
    # floor(x + 0.5) would round this up: 0.49999999999999994 + 0.5 == 1.0 in doubles.
    assert round_half_away(0.49999999999999994) == 0
    assert round_half_away(-0.49999999999999994) == 0


def test_zero_and_exact_powers_of_two():
    assert quantize_multiplier(0.0) == (0, 0)
    for k in range(-31, 8):   # 2**k = 0.5 * 2**(k+1)
        assert quantize_multiplier(2.0 ** k) == (Q30, k + 1)


def test_values_tflite_documents():
    # QuantizationUtilTest_QuantizeMultiplierArray (the positive half).
    for real, shift in [(0.125, -2), (0.25, -1), (0.5, 0), (1.0, 1), (2.0, 2), (4.0, 3)]:
        assert quantize_multiplier(real) == (1073741824, shift)
    # QuantizationUtilTest_PreprocessSoftmaxScaling: the cap at 2**31 - 1 gives shift 31.
    assert params.preprocess_softmax_scaling(1.0, 16.0, 4) == (2147483647, 31)
    assert params.preprocess_softmax_scaling(1.0, 8.0, 4) == (1073741824, 31)
    assert params.preprocess_softmax_scaling(2.0, 16.0, 5) == (2147483647, 31)
    assert params.preprocess_softmax_scaling(2.0, 8.0, 5) == (1073741824, 31)
    # QuantizationUtilTest_CalculateInputRadius.
    assert params.calculate_input_radius(4, 27) == 15
    assert params.calculate_input_radius(3, 27) == 14
    assert params.calculate_input_radius(3, 28) == 7
    assert params.calculate_input_radius(4, 2) == 503316480


def test_typical_value_by_hand():
    # 1/3 = 0.666.. * 2**-1; 0.666.. * 2**31 = 1431655765.33 -> 1431655765.
    assert quantize_multiplier(1 / 3) == (1431655765, -1)


def test_mantissa_halves_round_away_from_zero():
    # 0.5 + 2**-32 has mantissa * 2**31 = 2**30 + 0.5 exactly: TfLiteRound goes up.
    assert quantize_multiplier(0.5 + 2.0 ** -32) == (Q30 + 1, 0)


def test_mantissa_rounding_up_to_two_pow_31_carries_into_the_shift():
    # 1 - 2**-33: mantissa * 2**31 = 2**31 - 0.25 rounds to 2**31, which is not an int32.
    assert quantize_multiplier(1.0 - 2.0 ** -33) == (Q30, 1)


def test_shift_below_minus_31_flushes_to_zero():
    assert quantize_multiplier(2.0 ** -33) == (0, 0)
    assert quantize_multiplier(2.0 ** -32 * (1 - 2.0 ** -20)) == (0, 0)   # shift -32
    assert quantize_multiplier(1e-20) == (0, 0)
    # The carry happens before the flush check: shift -32 + 1 = -31 survives.
    assert quantize_multiplier(2.0 ** -32 * (1 - 2.0 ** -34)) == (Q30, -31)


def test_range_checked_variants():
    assert quantize_multiplier_smaller_than_one(0.75) == (1610612736, 0)
    assert quantize_multiplier_greater_than_one(3.0) == (1610612736, 2)
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError):
            quantize_multiplier_smaller_than_one(bad)
    for bad in (1.0, 0.5):
        with pytest.raises(ValueError):
            quantize_multiplier_greater_than_one(bad)
    with pytest.raises(ValueError):
        quantize_multiplier(-0.5)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=2.0 ** -31, max_value=2.0 ** 20, allow_nan=False))
def test_encoding_is_normalised_and_accurate(real):
    q, shift = quantize_multiplier(real)
    assert Q30 <= q < (1 << 31)
    # Rounding the mantissa to 31 bits: relative error at most 2**-31.
    assert abs(q * 2.0 ** (shift - 31) - real) <= real * 2.0 ** -31


def test_downscale_to_int16():
    assert params.downscale_multiplier_to_int16((1 << 31) - 1) == 32767
    assert params.downscale_multiplier_to_int16((1 << 31) - 1 - (1 << 15)) == 32767
    assert params.downscale_multiplier_to_int16(Q30) == 16384
    assert params.downscale_multiplier_to_int16(Q30 + (1 << 15)) == 16385       # half up
    assert params.downscale_multiplier_to_int16(Q30 + (1 << 15) - 1) == 16384


# ----------------------------------------------------------------------------- per-op constants


def _qt(name, shape, scale, zp=0, data=None, dtype="int8", axis=None):
    scale = np.atleast_1d(np.asarray(scale, np.float32))
    quant = ir.QuantParams(scale, np.full(scale.shape, zp, np.int32), axis)
    return ir.Tensor(name, shape, dtype, data, quant)


def _node_graph(op, inputs, output):
    tensors = {t.name: t for t in inputs + [output]}
    return ir.Graph("g", tensors, [ir.Node("n", op, [t.name for t in inputs], [output.name])],
                    [inputs[0].name], [output.name])


def test_fully_connected_per_tensor_multiplies_scales_in_float32():
    # TFLM's GetQuantizedConvolutionMultipler: double(float(in * w)) / out. For these float32
    # scales the float32 product changes the Q31 multiplier.
    a, b, o = np.float32(0.064059205), np.float32(0.0027708884), np.float32(0.01778497)
    x = _qt("x", (1, 4), a)
    w = _qt("w", (3, 4), b, data=np.ones((3, 4), np.int8))
    g = _node_graph(ir.FullyConnected(), [x, w], _qt("y", (1, 3), o))
    q = params.conv_quant(g, g.nodes[0])
    assert (int(q.multipliers[0]), int(q.shifts[0])) == (1371694198, -6)
    assert quantize_multiplier(float(a) * float(b) / float(o)) == (1371694145, -6)
    assert q.multipliers.shape == (1,)


def test_conv_per_tensor_weights_get_one_multiplier_per_output_channel():
    x = _qt("x", (1, 4, 4, 2), 0.5)
    w = _qt("w", (3, 1, 1, 2), 0.25, data=np.ones((3, 1, 1, 2), np.int8))
    g = _node_graph(ir.Conv2D(), [x, w], _qt("y", (1, 4, 4, 3), 0.125))
    q = params.conv_quant(g, g.nodes[0])
    np.testing.assert_array_equal(q.multipliers, [Q30] * 3)
    np.testing.assert_array_equal(q.shifts, [1] * 3)


def test_activation_ranges():
    out = ir.QuantParams.per_tensor(0.1, -100)
    assert params.activation_range(ir.Activation.NONE, out) == (-128, 127)
    assert params.activation_range(ir.Activation.RELU, out) == (-100, 127)
    assert params.activation_range(ir.Activation.RELU6, out) == (-100, -40)
    wide = ir.QuantParams.per_tensor(0.01, 0)   # q(6) = 600 is clipped to 127
    assert params.activation_range(ir.Activation.RELU6, wide) == (0, 127)


def test_mean_folds_one_over_count_like_tflm():
    x = _qt("x", (1, 7, 7, 8), 0.1, 3)
    g = _node_graph(ir.Mean((1, 2)), [x], _qt("y", (1, 1, 1, 8), 0.1, 3))
    q = params.mean_quant(g, g.nodes[0])
    # base (2**30, 1); shift = floor(log2(49)) = 5; (2**30 << 5) // 49; 1 - 5.
    assert (q.count, q.multiplier, q.shift) == (49, (2 ** 35) // 49, -4)
    assert q.multiplier == 701219150


def test_softmax_constants_by_hand():
    x = _qt("x", (1, 10), 0.125)
    g = _node_graph(ir.Softmax(), [x], _qt("y", (1, 10), 1 / 256, -128))
    q = params.softmax_quant(g, g.nodes[0])
    # 0.125 * 2**26 = 2**23 = 0.5 * 2**24; radius floor(31 * 2**26 / 2**24) = 124.
    assert (q.input_multiplier, q.input_left_shift, q.diff_min) == (Q30, 24, -124)


def test_pooling_accepts_tflms_scale_tolerance_only():
    x = _qt("x", (1, 2, 2, 1), 0.1, 0)
    op = ir.AveragePool2D((2, 2), (2, 2))
    g = _node_graph(op, [x], _qt("y", (1, 1, 1, 1), 0.1 + 5e-7, 0))
    assert params.pool_quant(g, g.nodes[0]) == params.PoolQuant(-128, 127)
    g = _node_graph(op, [x], _qt("y", (1, 1, 1, 1), 0.1 + 5e-6, 0))
    with pytest.raises(ValueError):
        params.pool_quant(g, g.nodes[0])
    g = _node_graph(op, [x], _qt("y", (1, 1, 1, 1), 0.1, 1))
    with pytest.raises(ValueError):
        params.pool_quant(g, g.nodes[0])


def test_logistic_constants_by_hand():
    x = _qt("x", (1, 4), 1 / 16, 0)
    g = _node_graph(ir.Logistic(), [x], _qt("y", (1, 4), 1 / 256, -128))
    q = params.logistic_quant(g, g.nodes[0])
    # 2**-4 * 2**27 = 2**23 = 0.5 * 2**24; radius floor(15 * 2**27 / 2**24) = 120.
    assert (q.input_multiplier, q.input_left_shift, q.input_range_radius) == (Q30, 24, 120)
