"""The int8 reference interpreter against references that share none of its code.

Three kinds of evidence:
* the fixed-point primitives against scalar versions written here from their definitions
  (plain Python integers), and against values worked out by hand;
* every op on tiny tensors against hand-computed numbers or naive nested loops written here
  (the loops take the integer constants from params.py, which test_multiplier.py and the
  TFLM tests check separately);
* every op on random tensors against the real TFLM runtime (the tflite-micro wheel), fed a
  one-op .tflite model built in this file with the flatbuffer schema bindings.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbgen import ir
from mbgen.errors import UserError
from mbgen.quantize import params
from mbgen.reference import (
    multiply_by_quantized_multiplier,
    rounding_divide_by_pot,
    run_int8,
    saturating_rounding_doubling_high_mul,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
I32_MIN, I32_MAX = -(1 << 31), (1 << 31) - 1

# ----------------------------------------------------------------------------- scalar oracles


def _div_toward_zero(n: int, d: int) -> int:
    q = abs(n) // abs(d)
    return q if (n >= 0) == (d > 0) else -q


def _srdhm(a: int, b: int) -> int:
    """VQRDMULH: high half of 2ab with a nudge, saturating the single overflow."""
    if a == b == I32_MIN:
        return I32_MAX
    ab = a * b
    return _div_toward_zero(ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30)), 1 << 31)


def _round_half_away_div_pot(x: int, exponent: int) -> int:
    """x / 2**exponent rounded to nearest, halves away from zero (what RDBP computes)."""
    q, r = divmod(abs(x), 1 << exponent)
    if 2 * r >= (1 << exponent) and exponent > 0:
        q += 1
    return q if x >= 0 else -q


def _wrap32(x: int) -> int:
    return (x + (1 << 31)) % (1 << 32) - (1 << 31)


def _mbqm(x: int, multiplier: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    return _round_half_away_div_pot(_srdhm(_wrap32(x * (1 << left)), multiplier), right)


# ----------------------------------------------------------------------------- graph helpers


def _t(name, shape, scale=None, zp=None, dtype="int8", data=None, axis=None) -> ir.Tensor:
    quant = None
    if scale is not None:
        scale = np.atleast_1d(np.asarray(scale, dtype=np.float32))
        zp = np.zeros(scale.shape, np.int32) if zp is None else np.atleast_1d(
            np.asarray(zp, dtype=np.int32))
        quant = ir.QuantParams(scale, zp, axis)
    return ir.Tensor(name, tuple(shape), dtype, data, quant)


def _graph(op, inputs: list[ir.Tensor], output: ir.Tensor) -> ir.Graph:
    tensors = {t.name: t for t in inputs + [output]}
    node = ir.Node("n", op, [t.name for t in inputs], [output.name])
    graph = ir.Graph("g", tensors, [node], [t.name for t in inputs if not t.is_const],
                     [output.name])
    ir.verify(graph)
    return graph


def _run(graph: ir.Graph, *xs: np.ndarray) -> np.ndarray:
    return run_int8(graph, dict(zip(graph.inputs, xs)))[graph.outputs[0]]


# ----------------------------------------------------------------------------- primitives

int32s = st.one_of(st.integers(I32_MIN, I32_MAX),
                   st.sampled_from([I32_MIN, I32_MIN + 1, -1, 0, 1, I32_MAX - 1, I32_MAX]))


def test_srdhm_hand_values():
    assert saturating_rounding_doubling_high_mul(I32_MIN, I32_MIN) == I32_MAX  # the overflow
    assert saturating_rounding_doubling_high_mul(I32_MAX, I32_MAX) == I32_MAX - 1
    assert saturating_rounding_doubling_high_mul(1 << 30, 1 << 30) == 1 << 29  # .5 * .5
    assert saturating_rounding_doubling_high_mul(1, 1 << 30) == 1     # +0.5 rounds up
    assert saturating_rounding_doubling_high_mul(-1, 1 << 30) == 0    # -0.5 rounds up too
    assert saturating_rounding_doubling_high_mul(-3, 1 << 30) == -1   # -1.5 -> -1
    assert saturating_rounding_doubling_high_mul(I32_MIN, I32_MAX) == -I32_MAX


def test_rdbp_hand_values():
    cases = [(5, 1, 3), (-5, 1, -3), (-4, 1, -2), (7, 2, 2), (-6, 2, -2), (-2, 2, -1),
             (2, 2, 1), (1, 2, 0), (-1, 2, 0), (9, 0, 9), (I32_MIN, 31, -1),
             (I32_MAX, 31, 1), (-(1 << 30), 31, -1), ((1 << 30) - 1, 31, 0)]
    for x, e, want in cases:
        assert rounding_divide_by_pot(x, e) == want, (x, e)


def test_mbqm_hand_values():
    assert multiply_by_quantized_multiplier(15, 1 << 30, 1) == 15          # M = 1.0
    assert multiply_by_quantized_multiplier(10, 1 << 30, -1) == 3          # 2.5 -> 3
    assert multiply_by_quantized_multiplier(-10, 1 << 30, -1) == -3        # -2.5 -> -3
    assert multiply_by_quantized_multiplier(1000, 0, 0) == 0               # flushed multiplier
    # A left shift is applied in int32 before the multiply and wraps, as in C.
    assert multiply_by_quantized_multiplier(I32_MAX, 1 << 30, 1) == _mbqm(I32_MAX, 1 << 30, 1)
    assert multiply_by_quantized_multiplier(I32_MAX, 1 << 30, 1) == -1


@settings(max_examples=300, deadline=None)
@given(int32s, int32s)
def test_srdhm_matches_scalar_definition(a, b):
    assert int(saturating_rounding_doubling_high_mul(a, b)) == _srdhm(a, b)


@settings(max_examples=300, deadline=None)
@given(int32s, st.integers(0, 31))
def test_rdbp_is_round_half_away_from_zero(x, exponent):
    assert int(rounding_divide_by_pot(x, exponent)) == _round_half_away_div_pot(x, exponent)


@settings(max_examples=300, deadline=None)
@given(int32s, st.integers(0, I32_MAX), st.integers(-31, 30))
def test_mbqm_matches_scalar_definition(x, multiplier, shift):
    assert int(multiply_by_quantized_multiplier(x, multiplier, shift)) == _mbqm(x, multiplier,
                                                                                 shift)


def test_primitives_vectorise_per_channel_shifts():
    x = np.array([[100, -100, 7], [3, 5, -9]])
    mult = np.array([1 << 30, 1518500250, 2 ** 31 - 1])
    shift = np.array([-3, 0, 2])
    got = multiply_by_quantized_multiplier(x, mult, shift)
    want = [[_mbqm(int(v), int(m), int(s)) for v, m, s in zip(row, mult, shift)] for row in x]
    np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------- hand cases


def test_conv_1x1_by_hand():
    # M = 0.5 * 0.25 / 0.125 = 1; acc = (12-2)*3 + (-18-2)*1 + 5 = 15; out = 15 - 3.
    x = _t("x", (1, 1, 1, 2), 0.5, 2)
    w = _t("w", (1, 1, 1, 2), 0.25, data=np.array([3, 1], np.int8).reshape(1, 1, 1, 2), axis=0)
    b = _t("b", (1,), 0.125, dtype="int32", data=np.array([5], np.int32))
    g = _graph(ir.Conv2D(), [x, w, b], _t("y", (1, 1, 1, 1), 0.125, -3))
    assert _run(g, np.array([12, -18], np.int8).reshape(1, 1, 1, 2)).item() == 12


def test_conv_pads_with_the_input_zero_point():
    # Only the centre tap sees data; padded taps add (zp - zp) * 1 = 0, not (0 - 7) * 1.
    x = _t("x", (1, 1, 1, 1), 1.0, 7)
    w = _t("w", (1, 3, 3, 1), 1.0, data=np.ones((1, 3, 3, 1), np.int8), axis=0)
    g = _graph(ir.Conv2D(padding=ir.Padding(1, 1, 1, 1)), [x, w], _t("y", (1, 1, 1, 1), 1.0, 0))
    assert _run(g, np.full((1, 1, 1, 1), 9, np.int8)).item() == 2


def test_fused_relu6_clamps_to_quantised_six():
    x = _t("x", (1, 1, 1, 1), 1.0, 0)
    w = _t("w", (1, 1, 1, 1), 1.0, data=np.ones((1, 1, 1, 1), np.int8), axis=0)
    y = _t("y", (1, 1, 1, 1), 0.1, -100)   # q(0) = -100, q(6) = -40
    g = _graph(ir.Conv2D(activation=ir.Activation.RELU6), [x, w], y)
    assert _run(g, np.full((1, 1, 1, 1), 100, np.int8)).item() == -40
    assert _run(g, np.full((1, 1, 1, 1), -100, np.int8)).item() == -100


def test_add_by_hand_rounds_half_away_from_zero():
    a, b = _t("a", (1, 2), 0.5, 0), _t("b", (1, 2), 1.0, 0)
    g = _graph(ir.Add(), [a, b], _t("y", (1, 2), 1.0, 0))
    got = _run(g, np.array([[5, -5]], np.int8), np.array([[1, -1]], np.int8))
    np.testing.assert_array_equal(got, [[4, -4]])   # 2.5 + 1 = 3.5 -> 4, -3.5 -> -4


def test_mul_by_hand():
    a, b = _t("a", (1, 2), 0.5, 0), _t("b", (1, 2), 0.5, 1)
    g = _graph(ir.Mul(), [a, b], _t("y", (1, 2), 0.25, 0))
    got = _run(g, np.array([[3, 10]], np.int8), np.array([[-1, 2]], np.int8))
    np.testing.assert_array_equal(got, [[-6, 10]])  # 1.5 * -1 = -1.5; 5 * 0.5 = 2.5


def test_average_pool_by_hand():
    x = _t("x", (1, 2, 2, 2), 1.0, 0)
    g = _graph(ir.AveragePool2D((2, 2), (1, 1)), [x], _t("y", (1, 1, 1, 2), 1.0, 0))
    data = np.array([1, -1, 2, -2, 3, -3, 5, -5], np.int8).reshape(1, 2, 2, 2)
    np.testing.assert_array_equal(_run(g, data).reshape(-1), [3, -3])  # 11/4 -> 3, -11/4 -> -3
    data = np.array([1, -1, 2, -1, 0, -1, 3, -3], np.int8).reshape(1, 2, 2, 2)
    np.testing.assert_array_equal(_run(g, data).reshape(-1), [2, -2])  # 6/4 -> 2, -6/4 -> -2


def test_average_pool_excludes_padding_from_the_count():
    x = _t("x", (1, 2, 2, 1), 1.0, 0)
    g = _graph(ir.AveragePool2D((3, 3), (1, 1), ir.Padding(1, 1, 1, 1)), [x],
               _t("y", (1, 2, 2, 1), 1.0, 0))
    got = _run(g, np.array([1, 2, 3, 4], np.int8).reshape(1, 2, 2, 1))
    np.testing.assert_array_equal(got.reshape(-1), [3, 3, 3, 3])  # 10 / 4 everywhere


def test_mean_by_hand():
    x = _t("x", (1, 1, 4, 1), 1.0, 0)
    g = _graph(ir.Mean((1, 2)), [x], _t("y", (1, 1, 1, 1), 1.0, 0))
    assert _run(g, np.array([1, 2, 3, 4], np.int8).reshape(1, 1, 4, 1)).item() == 3   # 2.5
    x = _t("x", (1, 1, 3, 1), 1.0, 0)
    g = _graph(ir.Mean((1, 2), keep_dims=False), [x], _t("y", (1, 1), 1.0, 0))
    assert _run(g, np.array([1, 1, 2], np.int8).reshape(1, 1, 3, 1)).item() == 1     # 4/3


def test_softmax_by_hand():
    x = _t("x", (1, 3), 0.1, 0)
    g = _graph(ir.Softmax(), [x], _t("y", (1, 3), 1 / 256, -128))
    # Two equal logits share 1/2 (q = 0). The third is 10 lower: within diff_min (-248 here)
    # so it is counted, but exp(-10) / 2 * 256 = 0.006 rounds to q = -128.
    got = _run(g, np.array([[50, 50, -50]], np.int8))
    np.testing.assert_array_equal(got, [[0, 0, -128]])
    got = _run(g, np.array([[7, 7, 7]], np.int8))
    np.testing.assert_array_equal(got, [[-43, -43, -43]])  # 256/3 = 85.3 -> 85 - 128


def test_softmax_drops_diffs_below_diff_min():
    # scale 1: the diff 2**26 * d must fit Q5.26 after the 2**27 shift, so diff_min = -15.
    x = _t("x", (1, 2), 1.0, 0)
    g = _graph(ir.Softmax(), [x], _t("y", (1, 2), 1 / 256, -128))
    assert params.softmax_quant(g, g.nodes[0]).diff_min == -15
    np.testing.assert_array_equal(_run(g, np.array([[20, 4]], np.int8)), [[127, -128]])


def test_softmax_refuses_sums_tflite_cannot_represent():
    # 1001 near-equal logits sum to ~1000 > 2**8 in Q12: TFLM's TFLITE_CHECK aborts there.
    g = _graph(ir.Softmax(), [_t("x", (1, 1001), 0.0039, 0)], _t("y", (1, 1001), 1 / 256, -128))
    with pytest.raises(UserError, match="softmax sum"):
        run_int8(g, np.zeros((1, 1001), np.int8))


def test_logistic_by_hand():
    x = _t("x", (1, 3), 0.1, 10)
    g = _graph(ir.Logistic(), [x], _t("y", (1, 3), 1 / 256, -128))
    got = _run(g, np.array([[10, 127, -128]], np.int8))
    np.testing.assert_array_equal(got, [[0, 127, -128]])  # 1/2, ~1 (11.7), ~0 (-13.8)


def test_hard_swish_is_close_to_the_formula():
    x = _t("x", (1, 256), 0.05, 3)
    g = _graph(ir.HardSwish(), [x], _t("y", (1, 256), 0.04, -20))
    q = np.arange(-128, 128, dtype=np.int8).reshape(1, 256)
    real = (q.astype(np.float64) - 3) * np.float64(np.float32(0.05))
    want = np.clip(np.round(real * np.clip(real + 3, 0, 6) / 6 / np.float32(0.04)) - 20, -128, 127)
    got = _run(g, q)
    assert np.max(np.abs(got.astype(int) - want)) <= 1
    assert got[0, 3 + 128] == -20       # x = 0 -> 0 exactly


def test_quantize_float_rounds_half_away_and_saturates():
    x = _t("x", (1, 6), dtype="float32")
    g = _graph(ir.Quantize(), [x], _t("y", (1, 6), 0.25, 1))
    # Exact halves: 2.5 -> 3 and -2.5 -> -3 (np.round would give 2 and -2), 0.5 -> 1.
    data = np.array([[0.625, -0.625, 0.125, -0.125, 1000.0, -1000.0]], np.float32)
    np.testing.assert_array_equal(_run(g, data), [[4, -2, 2, 0, 127, -128]])


def test_requantize_and_dequantize():
    x = _t("x", (1, 3), 0.5, 10)
    g = _graph(ir.Quantize(), [x], _t("y", (1, 3), 0.25, -5))
    np.testing.assert_array_equal(_run(g, np.array([[10, 13, 100]], np.int8)), [[-5, 1, 127]])
    g = _graph(ir.Dequantize(), [x], _t("y", (1, 3), dtype="float32"))
    np.testing.assert_array_equal(_run(g, np.array([[10, 13, -128]], np.int8)),
                                  np.array([[0.0, 1.5, -69.0]], np.float32))


def test_pad_uses_zero_point_and_reshape_keeps_order():
    x = _t("x", (1, 1, 2, 1), 0.5, -7)
    g = _graph(ir.Pad(ir.Padding(0, 1, 1, 0)), [x], _t("y", (1, 2, 3, 1), 0.5, -7))
    got = _run(g, np.array([1, 2], np.int8).reshape(1, 1, 2, 1))
    np.testing.assert_array_equal(got.reshape(2, 3), [[-7, 1, 2], [-7, -7, -7]])
    x = _t("x", (1, 1, 2, 3), 0.5, 0)
    g = _graph(ir.Reshape((1, 6)), [x], _t("y", (1, 6), 0.5, 0))
    data = np.arange(6, dtype=np.int8).reshape(1, 1, 2, 3)
    np.testing.assert_array_equal(_run(g, data), data.reshape(1, 6))


# ----------------------------------------------------------------------------- naive loops


def _naive_conv(x, w, bias, stride, padding, dilation, quant, depthwise=False, mult=1):
    """Direct loops over output pixels and taps; taps outside the image are skipped."""
    _, h, wd, cin = x.shape
    kh, kw = w.shape[1:3]
    cout = w.shape[3] if depthwise else w.shape[0]
    oh = (h + padding.top + padding.bottom - (kh - 1) * dilation[0] - 1) // stride[0] + 1
    ow = (wd + padding.left + padding.right - (kw - 1) * dilation[1] - 1) // stride[1] + 1
    out = np.zeros((1, oh, ow, cout), np.int8)
    for oy in range(oh):
        for ox in range(ow):
            for oc in range(cout):
                acc = int(bias[oc])
                for ky in range(kh):
                    for kx in range(kw):
                        iy = oy * stride[0] - padding.top + ky * dilation[0]
                        ix = ox * stride[1] - padding.left + kx * dilation[1]
                        if not (0 <= iy < h and 0 <= ix < wd):
                            continue
                        if depthwise:
                            acc += (int(x[0, iy, ix, oc // mult]) + quant.input_offset) \
                                * int(w[0, ky, kx, oc])
                        else:
                            for ic in range(cin):
                                acc += (int(x[0, iy, ix, ic]) + quant.input_offset) \
                                    * int(w[oc, ky, kx, ic])
                v = _mbqm(acc, int(quant.multipliers[oc]), int(quant.shifts[oc]))
                out[0, oy, ox, oc] = min(max(v + quant.output_offset, quant.act_min),
                                         quant.act_max)
    return out


CONV_CASES = [  # kernel, stride, padding, dilation
    ((3, 3), (1, 1), ir.Padding(1, 1, 1, 1), (1, 1)),
    ((3, 3), (2, 2), ir.Padding(0, 1, 0, 1), (1, 1)),   # TF 'SAME' on even input
    ((3, 2), (2, 1), ir.Padding(2, 0, 1, 3), (1, 1)),   # asymmetric, non-square
    ((3, 3), (1, 1), ir.Padding(2, 2, 2, 2), (2, 2)),   # dilated
    ((1, 1), (1, 1), ir.Padding(), (1, 1)),             # the 1x1 fast path
    ((1, 1), (2, 2), ir.Padding(), (1, 1)),
]


def _random_conv_graph(rng, kernel, stride, padding, dilation, depthwise, mult=1,
                       activation=ir.Activation.RELU6, cin=3, cout=4, hw=(6, 7)):
    if depthwise:
        cout = cin * mult
        w_shape = (1,) + kernel + (cout,)
    else:
        w_shape = (cout,) + kernel + (cin,)
    in_scale, in_zp = 0.02, int(rng.integers(-20, 20))
    w_scales = rng.uniform(0.002, 0.02, cout).astype(np.float32)
    weights = rng.integers(-127, 128, w_shape, dtype=np.int8)
    bias = rng.integers(-3000, 3000, cout, dtype=np.int32)
    x = _t("x", (1,) + hw + (cin,), in_scale, in_zp)
    w = _t("w", w_shape, w_scales, data=weights, axis=3 if depthwise else 0)
    b = _t("b", (cout,), w_scales * np.float32(in_scale), dtype="int32", data=bias, axis=0)
    oh = (hw[0] + padding.top + padding.bottom - (kernel[0] - 1) * dilation[0] - 1) // stride[0] + 1
    ow = (hw[1] + padding.left + padding.right - (kernel[1] - 1) * dilation[1] - 1) // stride[1] + 1
    y = _t("y", (1, oh, ow, cout), 0.03, int(rng.integers(-10, 10)))
    if depthwise:
        op = ir.DepthwiseConv2D(stride, padding, mult, dilation, activation)
    else:
        op = ir.Conv2D(stride, padding, dilation, activation)
    return _graph(op, [x, w, b], y)


@pytest.mark.parametrize("kernel,stride,padding,dilation", CONV_CASES)
def test_conv_matches_naive_loops(kernel, stride, padding, dilation):
    rng = np.random.default_rng(hash((kernel, stride)) % 1000)
    g = _random_conv_graph(rng, kernel, stride, padding, dilation, depthwise=False,
                           activation=ir.Activation.NONE)
    x = rng.integers(-128, 128, g.tensors["x"].shape, dtype=np.int8)
    quant = params.conv_quant(g, g.nodes[0])
    want = _naive_conv(x, g.tensors["w"].data, g.tensors["b"].data, stride, padding, dilation,
                       quant)
    np.testing.assert_array_equal(_run(g, x), want)


@pytest.mark.parametrize("mult", [1, 2])
@pytest.mark.parametrize("kernel,stride,padding,dilation", CONV_CASES[:4])
def test_depthwise_matches_naive_loops(kernel, stride, padding, dilation, mult):
    rng = np.random.default_rng(mult)
    g = _random_conv_graph(rng, kernel, stride, padding, dilation, depthwise=True, mult=mult)
    x = rng.integers(-128, 128, g.tensors["x"].shape, dtype=np.int8)
    quant = params.conv_quant(g, g.nodes[0])
    want = _naive_conv(x, g.tensors["w"].data, g.tensors["b"].data, stride, padding, dilation,
                       quant, depthwise=True, mult=mult)
    np.testing.assert_array_equal(_run(g, x), want)


def test_fully_connected_matches_naive_loops():
    rng = np.random.default_rng(5)
    weights = rng.integers(-127, 128, (10, 24), dtype=np.int8)
    bias = rng.integers(-5000, 5000, 10, dtype=np.int32)
    x = _t("x", (1, 24), 0.05, -3)
    w = _t("w", (10, 24), 0.01, data=weights)
    b = _t("b", (10,), np.float32(0.05) * np.float32(0.01), dtype="int32", data=bias)
    g = _graph(ir.FullyConnected(ir.Activation.RELU), [x, w, b], _t("y", (1, 10), 0.1, -128))
    data = rng.integers(-128, 128, (1, 24), dtype=np.int8)
    q = params.conv_quant(g, g.nodes[0])
    want = []
    for o in range(10):
        acc = int(bias[o]) + sum((int(v) + 3) * int(wv) for v, wv in zip(data[0], weights[o]))
        want.append(min(max(_mbqm(acc, int(q.multipliers[0]), int(q.shifts[0])) - 128,
                            q.act_min), 127))
    np.testing.assert_array_equal(_run(g, data)[0], want)


# ----------------------------------------------------------------------------- graph runner


def test_keep_all_returns_every_activation_and_chains_nodes():
    x = _t("x", (1, 1, 2, 2), 0.5, 0)
    mid = _t("m", (1, 4), 0.5, 0)
    y = _t("y", (1, 4), 0.25, 0)
    g = ir.Graph("g", {"x": x, "m": mid, "y": y},
                 [ir.Node("r", ir.Reshape((1, 4)), ["x"], ["m"]),
                  ir.Node("q", ir.Quantize(), ["m"], ["y"])], ["x"], ["y"])
    data = np.array([1, -2, 3, 40], np.int8).reshape(1, 1, 2, 2)
    everything = run_int8(g, data, keep_all=True)
    assert set(everything) == {"x", "m", "y"}
    np.testing.assert_array_equal(everything["y"], [[2, -4, 6, 80]])
    assert set(run_int8(g, data)) == {"y"}


def test_unsupported_op_and_bad_inputs_are_user_errors():
    x = _t("x", (1, 2), 0.5, 0)
    bn = ir.Graph("g", {"x": x, "y": _t("y", (1, 2), 0.5, 0)},
                  [ir.Node("bn", ir.BatchNorm(1e-3), ["x"], ["y"])], ["x"], ["y"])
    with pytest.raises(UserError, match="BatchNorm"):
        run_int8(bn, np.zeros((1, 2), np.int8))
    g = _graph(ir.Reshape((1, 2)), [x], _t("y", (1, 2), 0.5, 0))
    with pytest.raises(UserError, match="shape"):
        run_int8(g, np.zeros((1, 3), np.int8))
    with pytest.raises(UserError, match="int8"):
        run_int8(g, np.zeros((1, 2), np.float32))
    with pytest.raises(UserError, match="missing"):
        run_int8(g, {"z": np.zeros((1, 2), np.int8)})
    float_graph = _graph(ir.Reshape((1, 2)), [_t("x", (1, 2), dtype="float32")],
                         _t("y", (1, 2), dtype="float32"))
    with pytest.raises(UserError, match="not quantised"):
        run_int8(float_graph, np.zeros((1, 2), np.float32))


def test_softmax_refuses_a_wrong_output_scale():
    g = _graph(ir.Softmax(), [_t("x", (1, 2), 0.1, 0)], _t("y", (1, 2), 1 / 128, -128))
    with pytest.raises(UserError, match="1/256"):
        run_int8(g, np.zeros((1, 2), np.int8))


# ----------------------------------------------------------------------------- against TFLM

try:
    import flatbuffers
    import tflite
    from tflite_micro.python.tflite_micro import runtime as tflm_runtime
except ImportError:  # pragma: no cover - depends on the optional [tflite] extra
    tflm_runtime = None

needs_tflm = pytest.mark.skipif(tflm_runtime is None,
                                reason="tflite-micro / tflite / flatbuffers not installed")

_TFLITE_TYPES = {"float32": 0, "int32": 2, "int8": 9}
_PADDING_SAME, _PADDING_VALID = 0, 1
_ACTIVATION_CODE = {ir.Activation.NONE: 0, ir.Activation.RELU: 1, ir.Activation.RELU6: 3}


def _tflite_model(graph: ir.Graph, op_code: int, options: tuple[str, dict] | None,
                  extra_inputs: tuple[ir.Tensor, ...] = ()) -> bytes:
    """A one-op .tflite flatbuffer from the single node of ``graph`` (plus extra constants
    TFLite wants as inputs, such as MEAN's axes)."""
    node = graph.nodes[0]
    tensors = [graph.tensors[n] for n in node.inputs] + list(extra_inputs) \
        + [graph.tensors[node.outputs[0]]]
    b = flatbuffers.Builder(4096)

    def vector(start, offsets):
        start(b, len(offsets))
        for offset in reversed(offsets):
            b.PrependUOffsetTRelative(offset)
        return b.EndVector()

    tflite.BufferStart(b)
    buffers, buffer_of = [tflite.BufferEnd(b)], []
    for t in tensors:
        if t.data is None:
            buffer_of.append(0)
            continue
        raw = b.CreateNumpyVector(np.frombuffer(np.ascontiguousarray(t.data).tobytes(), np.uint8))
        tflite.BufferStart(b)
        tflite.BufferAddData(b, raw)
        buffers.append(tflite.BufferEnd(b))
        buffer_of.append(len(buffers) - 1)
    tensor_offsets = []
    for t, buffer in zip(tensors, buffer_of):
        quant = None
        if t.quant is not None:
            scales = b.CreateNumpyVector(t.quant.scale.astype(np.float32))
            zero_points = b.CreateNumpyVector(t.quant.zero_point.astype(np.int64))
            tflite.QuantizationParametersStart(b)
            tflite.QuantizationParametersAddScale(b, scales)
            tflite.QuantizationParametersAddZeroPoint(b, zero_points)
            tflite.QuantizationParametersAddQuantizedDimension(b, t.quant.axis or 0)
            quant = tflite.QuantizationParametersEnd(b)
        name = b.CreateString(t.name)
        shape = b.CreateNumpyVector(np.asarray(t.shape, np.int32))
        tflite.TensorStart(b)
        tflite.TensorAddShape(b, shape)
        tflite.TensorAddType(b, _TFLITE_TYPES[t.dtype])
        tflite.TensorAddBuffer(b, buffer)
        tflite.TensorAddName(b, name)
        if quant is not None:
            tflite.TensorAddQuantization(b, quant)
        tensor_offsets.append(tflite.TensorEnd(b))
    options_offset = None
    if options is not None:
        kind, fields = options
        getattr(tflite, f"{kind}Start")(b)
        for field, value in fields.items():
            getattr(tflite, f"{kind}Add{field}")(b, value)
        options_offset = getattr(tflite, f"{kind}End")(b)
    inputs = [i for i, t in enumerate(tensors[:-1])]
    output = len(tensors) - 1
    op_inputs = b.CreateNumpyVector(np.asarray(inputs, np.int32))
    op_outputs = b.CreateNumpyVector(np.asarray([output], np.int32))
    tflite.OperatorStart(b)
    tflite.OperatorAddOpcodeIndex(b, 0)
    tflite.OperatorAddInputs(b, op_inputs)
    tflite.OperatorAddOutputs(b, op_outputs)
    if options_offset is not None:
        tflite.OperatorAddBuiltinOptionsType(b, getattr(tflite.BuiltinOptions, options[0]))
        tflite.OperatorAddBuiltinOptions(b, options_offset)
    operator = tflite.OperatorEnd(b)
    all_tensors = vector(tflite.SubGraphStartTensorsVector, tensor_offsets)
    operators = vector(tflite.SubGraphStartOperatorsVector, [operator])
    graph_inputs = b.CreateNumpyVector(np.asarray(
        [i for i, t in enumerate(tensors[:-1]) if t.data is None], np.int32))
    graph_outputs = b.CreateNumpyVector(np.asarray([output], np.int32))
    tflite.SubGraphStart(b)
    tflite.SubGraphAddTensors(b, all_tensors)
    tflite.SubGraphAddInputs(b, graph_inputs)
    tflite.SubGraphAddOutputs(b, graph_outputs)
    tflite.SubGraphAddOperators(b, operators)
    subgraph = tflite.SubGraphEnd(b)
    tflite.OperatorCodeStart(b)
    tflite.OperatorCodeAddDeprecatedBuiltinCode(b, min(op_code, 127))
    tflite.OperatorCodeAddBuiltinCode(b, op_code)
    tflite.OperatorCodeAddVersion(b, 1)
    opcode = tflite.OperatorCodeEnd(b)
    opcodes = vector(tflite.ModelStartOperatorCodesVector, [opcode])
    subgraphs = vector(tflite.ModelStartSubgraphsVector, [subgraph])
    all_buffers = vector(tflite.ModelStartBuffersVector, buffers)
    tflite.ModelStart(b)
    tflite.ModelAddVersion(b, 3)
    tflite.ModelAddOperatorCodes(b, opcodes)
    tflite.ModelAddSubgraphs(b, subgraphs)
    tflite.ModelAddBuffers(b, all_buffers)
    b.Finish(tflite.ModelEnd(b), file_identifier=b"TFL3")
    return bytes(b.Output())


def _tflm(model: bytes, *xs: np.ndarray) -> np.ndarray:
    interpreter = tflm_runtime.Interpreter.from_bytes(model, arena_size=1 << 20)
    for i, x in enumerate(xs):
        interpreter.set_input(x, i)
    interpreter.invoke()
    return interpreter.get_output(0)


def _assert_matches_tflm(graph, op_code, options, xs, extra_inputs=()):
    model = _tflite_model(graph, op_code, options, tuple(extra_inputs))
    want = _tflm(model, *xs)
    got = _run(graph, *xs)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.reshape(want.shape), want)


def _int8(rng, shape):
    return rng.integers(-128, 128, shape, dtype=np.int8)


def _same_or_valid(graph: ir.Graph) -> int:
    """Map the node's explicit padding back to TFLite's SAME / VALID (tests build only those)."""
    op = graph.nodes[0].op
    h, w = graph.tensors[graph.nodes[0].inputs[0]].shape[1:3]
    kh, kw = (op.kernel if isinstance(op, ir.AveragePool2D)
              else graph.tensors[graph.nodes[0].inputs[1]].shape[1:3])
    dilation = getattr(op, "dilation", (1, 1))
    if op.padding == ir.Padding():
        return _PADDING_VALID
    assert op.padding == ir.Padding.same(h, w, kh, kw, *op.stride, *dilation)
    return _PADDING_SAME


@needs_tflm
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind,kernel,stride,dilation,same", [
    ("conv", (3, 3), (2, 2), (1, 1), True),
    ("conv", (1, 1), (1, 1), (1, 1), False),
    ("conv", (3, 3), (1, 1), (2, 2), True),
    ("conv", (2, 3), (1, 2), (1, 1), False),
    ("depthwise", (3, 3), (1, 1), (1, 1), True),
    ("depthwise", (3, 3), (2, 2), (1, 1), True),
    ("depthwise2", (3, 3), (2, 2), (1, 1), True),
])
def test_conv_family_matches_tflm(kind, kernel, stride, dilation, same, seed):
    rng = np.random.default_rng(seed)
    hw = (9, 8)
    padding = ir.Padding.same(*hw, *kernel, *stride, *dilation) if same else ir.Padding()
    depthwise = kind.startswith("depthwise")
    mult = 2 if kind == "depthwise2" else 1
    activation = [ir.Activation.NONE, ir.Activation.RELU, ir.Activation.RELU6][seed % 3]
    g = _random_conv_graph(rng, kernel, stride, padding, dilation, depthwise, mult,
                           activation, cin=4 if depthwise else 5, cout=6, hw=hw)
    fields = {"Padding": _same_or_valid(g), "StrideH": stride[0], "StrideW": stride[1],
              "DilationHFactor": dilation[0], "DilationWFactor": dilation[1],
              "FusedActivationFunction": _ACTIVATION_CODE[activation]}
    if depthwise:
        fields["DepthMultiplier"] = mult
        options, code = ("DepthwiseConv2DOptions", fields), tflite.BuiltinOperator.DEPTHWISE_CONV_2D
    else:
        options, code = ("Conv2DOptions", fields), tflite.BuiltinOperator.CONV_2D
    _assert_matches_tflm(g, code, options, [_int8(rng, g.tensors["x"].shape)])


@needs_tflm
@pytest.mark.parametrize("per_channel", [False, True])
def test_fully_connected_matches_tflm(per_channel):
    rng = np.random.default_rng(11)
    in_scale = np.float32(0.0371)
    # Scales whose float32 product differs from the double product in the last bits.
    w_scales = (rng.uniform(0.001, 0.01, 7) if per_channel
                else np.array([0.0073211])).astype(np.float32)
    x = _t("x", (1, 33), in_scale, 5)
    w = _t("w", (7, 33), w_scales, data=_int8(rng, (7, 33)).clip(-127, 127), axis=0)
    bias = rng.integers(-4000, 4000, 7, dtype=np.int32)
    b = _t("b", (7,), w_scales * in_scale, dtype="int32", data=bias, axis=0)
    g = _graph(ir.FullyConnected(), [x, w, b], _t("y", (1, 7), 0.09, 3))
    _assert_matches_tflm(g, tflite.BuiltinOperator.FULLY_CONNECTED,
                         ("FullyConnectedOptions", {"FusedActivationFunction": 0}),
                         [_int8(rng, (1, 33))])


@needs_tflm
@pytest.mark.parametrize("seed", range(3))
def test_add_and_mul_match_tflm(seed):
    rng = np.random.default_rng(20 + seed)
    shape = (1, 4, 5, 6)
    scales = rng.uniform(0.005, 0.1, 3)
    zps = rng.integers(-30, 30, 3)
    activation = [ir.Activation.NONE, ir.Activation.RELU, ir.Activation.RELU6][seed]
    a, b = _t("a", shape, scales[0], zps[0]), _t("b", shape, scales[1], zps[1])
    y = _t("y", shape, scales[2], zps[2])
    xs = [_int8(rng, shape), _int8(rng, shape)]
    fields = {"FusedActivationFunction": _ACTIVATION_CODE[activation]}
    _assert_matches_tflm(_graph(ir.Add(activation), [a, b], y), tflite.BuiltinOperator.ADD,
                         ("AddOptions", fields), xs)
    y = _t("y", shape, scales[0] * scales[1] * 40, zps[2])
    _assert_matches_tflm(_graph(ir.Mul(activation), [a, b], y), tflite.BuiltinOperator.MUL,
                         ("MulOptions", fields), xs)


@needs_tflm
def test_mul_broadcast_per_channel_matches_tflm():
    rng = np.random.default_rng(30)
    a, b = _t("a", (1, 3, 4, 5), 0.02, -4), _t("b", (1, 1, 1, 5), 1 / 256, -128)
    g = _graph(ir.Mul(), [a, b], _t("y", (1, 3, 4, 5), 0.015, 2))
    _assert_matches_tflm(g, tflite.BuiltinOperator.MUL, ("MulOptions", {}),
                         [_int8(rng, (1, 3, 4, 5)), _int8(rng, (1, 1, 1, 5))])


@needs_tflm
@pytest.mark.parametrize("kernel,stride,same", [((3, 3), (2, 2), False), ((3, 3), (1, 1), True),
                                                ((2, 3), (2, 2), True)])
def test_average_pool_matches_tflm(kernel, stride, same):
    rng = np.random.default_rng(40)
    hw = (7, 8)
    padding = ir.Padding.same(*hw, *kernel, *stride) if same else ir.Padding()
    oh = (hw[0] + padding.top + padding.bottom - kernel[0]) // stride[0] + 1
    ow = (hw[1] + padding.left + padding.right - kernel[1]) // stride[1] + 1
    x = _t("x", (1,) + hw + (3,), 0.1, -9)
    g = _graph(ir.AveragePool2D(kernel, stride, padding, ir.Activation.RELU6), [x],
               _t("y", (1, oh, ow, 3), 0.1, -9))
    fields = {"Padding": _same_or_valid(g), "StrideH": stride[0], "StrideW": stride[1],
              "FilterHeight": kernel[0], "FilterWidth": kernel[1],
              "FusedActivationFunction": 3}
    _assert_matches_tflm(g, tflite.BuiltinOperator.AVERAGE_POOL_2D, ("Pool2DOptions", fields),
                         [_int8(rng, x.shape)])


@needs_tflm
@pytest.mark.parametrize("same_quant,keep_dims,hw", [(True, True, (7, 7)), (False, True, (5, 3)),
                                                     (False, False, (10, 10)),
                                                     (True, False, (1, 3))])
def test_mean_matches_tflm(same_quant, keep_dims, hw):
    rng = np.random.default_rng(50)
    x = _t("x", (1,) + hw + (6,), 0.04, 7)
    out_shape = (1, 1, 1, 6) if keep_dims else (1, 6)
    y = _t("y", out_shape, 0.04, 7) if same_quant else _t("y", out_shape, 0.011, -20)
    g = _graph(ir.Mean((1, 2), keep_dims), [x], y)
    axes = _t("axes", (2,), dtype="int32", data=np.array([1, 2], np.int32))
    _assert_matches_tflm(g, tflite.BuiltinOperator.MEAN,
                         ("ReducerOptions", {"KeepDims": keep_dims}),
                         [_int8(rng, x.shape)], [axes])


@needs_tflm
@pytest.mark.parametrize("scale,beta,n", [(0.1, 1.0, 10), (0.07, 1.0, 1001), (0.35, 0.7, 7),
                                          (1.0, 1.0, 5), (0.017, 2.0, 64)])
def test_softmax_matches_tflm(scale, beta, n):
    rng = np.random.default_rng(60)
    g = _graph(ir.Softmax(beta), [_t("x", (1, n), scale, int(rng.integers(-20, 20)))],
               _t("y", (1, n), 1 / 256, -128))
    for _ in range(3):
        _assert_matches_tflm(g, tflite.BuiltinOperator.SOFTMAX,
                             ("SoftmaxOptions", {"Beta": beta}), [_int8(rng, (1, n))])
    ramp = np.arange(-128, 128, dtype=np.int8)[np.linspace(0, 255, n).astype(int)][None]
    _assert_matches_tflm(g, tflite.BuiltinOperator.SOFTMAX,
                         ("SoftmaxOptions", {"Beta": beta}), [ramp])


def _every_int8(n_rows: int = 1) -> np.ndarray:
    return np.tile(np.arange(-128, 128, dtype=np.int8), (n_rows, 1))


@needs_tflm
@pytest.mark.parametrize("in_scale,in_zp,out_scale,out_zp", [
    (0.05, 3, 0.04, -20), (0.02, -128, 0.02, -100), (0.2, 0, 0.1, -90), (0.003, 60, 0.5, -128),
    (1.5, 10, 0.9, -80),
])
def test_hard_swish_matches_tflm_on_every_input(in_scale, in_zp, out_scale, out_zp):
    g = _graph(ir.HardSwish(), [_t("x", (1, 256), in_scale, in_zp)],
               _t("y", (1, 256), out_scale, out_zp))
    _assert_matches_tflm(g, tflite.BuiltinOperator.HARD_SWISH, None, [_every_int8()])


@needs_tflm
@pytest.mark.parametrize("in_scale,in_zp", [(0.1, 10), (0.02, -128), (0.5, 0), (0.0625, -3),
                                            (0.004, 100)])
def test_logistic_matches_tflm_on_every_input(in_scale, in_zp):
    g = _graph(ir.Logistic(), [_t("x", (1, 256), in_scale, in_zp)],
               _t("y", (1, 256), 1 / 256, -128))
    _assert_matches_tflm(g, tflite.BuiltinOperator.LOGISTIC, None, [_every_int8()])


@needs_tflm
def test_quantize_dequantize_relu_match_tflm():
    rng = np.random.default_rng(70)
    x = _t("x", (1, 256), 0.07, 12)
    ops = tflite.BuiltinOperator
    for out in [_t("y", (1, 256), 0.03, -40), _t("y", (1, 256), 0.7, 100)]:
        _assert_matches_tflm(_graph(ir.Quantize(), [x], out), ops.QUANTIZE, None,
                             [_every_int8()])
        _assert_matches_tflm(_graph(ir.ActivationOp(ir.Activation.RELU), [x], out), ops.RELU,
                             None, [_every_int8()])
    _assert_matches_tflm(_graph(ir.ActivationOp(ir.Activation.RELU6), [x],
                                _t("y", (1, 256), 0.07, 12)), ops.RELU6, None, [_every_int8()])
    _assert_matches_tflm(_graph(ir.Dequantize(), [x], _t("y", (1, 256), dtype="float32")),
                         ops.DEQUANTIZE, None, [_every_int8()])
    # (Values beyond int32 after scaling are undefined behaviour in TFLM's cast: not tested.)
    floats = np.concatenate([rng.normal(0, 5, 200), np.arange(-14, 14) * 0.035,
                             [1e5, -1e5]]).astype(np.float32)[None]
    g = _graph(ir.Quantize(), [_t("x", floats.shape, dtype="float32")],
               _t("y", floats.shape, 0.07, 12))
    _assert_matches_tflm(g, ops.QUANTIZE, None, [floats])


@needs_tflm
def test_pad_and_reshape_match_tflm():
    rng = np.random.default_rng(80)
    x = _t("x", (1, 3, 4, 2), 0.1, -17)
    g = _graph(ir.Pad(ir.Padding(0, 1, 2, 1)), [x], _t("y", (1, 4, 7, 2), 0.1, -17))
    paddings = _t("p", (4, 2), dtype="int32",
                  data=np.array([[0, 0], [0, 1], [2, 1], [0, 0]], np.int32))
    _assert_matches_tflm(g, tflite.BuiltinOperator.PAD, None, [_int8(rng, x.shape)], [paddings])
    g = _graph(ir.Reshape((1, 24)), [x], _t("y", (1, 24), 0.1, -17))
    shape = _t("s", (2,), dtype="int32", data=np.array([1, 24], np.int32))
    _assert_matches_tflm(g, tflite.BuiltinOperator.RESHAPE, None, [_int8(rng, x.shape)], [shape])


# ----------------------------------------------------------------------------- real model


def _load_person_detect():
    frontend = pytest.importorskip("mbgen.frontends.tflite_frontend",
                                   reason="the TFLite frontend is not written yet")
    path = SHARED / "models" / "person_detect.tflite"
    if not path.exists():
        pytest.skip(f"{path} missing")
    return frontend.load_tflite(path)


def _bmp_grey_int8(path: Path) -> np.ndarray:
    """The 96x96 8-bit BMPs as TFLM's person_detection_test feeds them: raw bytes as int8,
    rows flipped from BMP's bottom-up order."""
    data = path.read_bytes()
    offset = int.from_bytes(data[10:14], "little")
    rows = np.frombuffer(data[offset:offset + 96 * 96], np.uint8).reshape(96, 96)[::-1]
    return rows


@pytest.mark.parametrize("image,want", [("person.bmp", [-113, 113]),
                                        ("no_person.bmp", [77, -77])])
def test_person_detect_matches_the_published_tflm_outputs(image, want):
    graph = _load_person_detect()
    path = SHARED / "images" / image
    if not path.exists():
        pytest.skip(f"{path} missing")
    pixels = _bmp_grey_int8(path)
    if image == "person.bmp":      # stored as int8 already (MODELS.md): grey = byte ^ 0x80
        pixels = pixels ^ 0x80
    x = (pixels.astype(np.int16) - 128).astype(np.int8).reshape(1, 96, 96, 1)
    got = run_int8(graph, x)[graph.outputs[0]]
    np.testing.assert_array_equal(got.reshape(-1), want)


@pytest.mark.skipif(tflm_runtime is None, reason="tflite-micro not installed")
def test_person_detect_every_layer_matches_tflm_on_random_input():
    graph = _load_person_detect()
    rng = np.random.default_rng(90)
    x = _int8(rng, (1, 96, 96, 1))
    interpreter = tflm_runtime.Interpreter.from_file(
        str(SHARED / "models" / "person_detect.tflite"))
    interpreter.set_input(x, 0)
    interpreter.invoke()
    got = run_int8(graph, x)[graph.outputs[0]]
    np.testing.assert_array_equal(got.reshape(-1), interpreter.get_output(0).reshape(-1))
