"""The PTQ methods of issue 13 on small graphs: range methods, bias correction, cross-layer
equalisation, augmentation, and the int8 graph they give bit-exact in TFLM."""

import numpy as np
import pytest
from test_quantizer import GraphBuilder, small_mobilenet

from mbgen import ir
from mbgen.errors import UserError
from mbgen.fidelity import agreement, measure
from mbgen.float_interp import run_float
from mbgen.quantize.augment import augment, copies_for
from mbgen.quantize.bias_correction import correct_biases
from mbgen.quantize.calibration import synthetic_inputs
from mbgen.quantize.equalize import equalize, pairs
from mbgen.quantize.ptq import PtqSettings, quantize_float
from mbgen.quantize.ranges import (
    METHODS,
    choose_ranges,
    observe,
    pick,
    quantization_mse,
    softmax_inputs,
)
from mbgen.reference import run_int8

RELU = ir.Activation.RELU
NONE = ir.Activation.NONE


def relu_pairs_graph(seed=3):
    """conv -> depthwise -> pointwise with ReLU / no activation between (equalisable), channel
    ranges spread over two orders of magnitude, then a softmax head."""
    b = GraphBuilder((1, 12, 12, 3), seed)
    b.conv(6, stride=2, act=RELU)
    dw = b.depthwise(act=NONE)
    weights = b.tensors[f"{dw}/0"].data
    b.tensors[f"{dw}/0"].data = (weights * np.geomspace(0.05, 5.0, 6)).astype(np.float32)
    b.conv(8, k=1, act=RELU)
    b.conv(8, k=1, act=NONE)
    b.add(ir.Mean((1, 2), True))
    b.add(ir.Reshape((1, 8)))
    b.add(ir.FullyConnected(), consts=[b.rng.normal(0, 0.5, (5, 8)), b.rng.normal(0, 0.1, 5)])
    b.add(ir.Softmax())
    return b.graph("relu_pairs")


def inputs_of(graph, count, seed):
    return synthetic_inputs(graph.tensors[graph.inputs[0]].shape, count=count, seed=seed)


def test_each_range_method_is_no_worse_than_minmax_on_its_data():
    graph = small_mobilenet()
    observed = observe(graph, inputs_of(graph, 6, 0))
    picked = set()
    for name, values in observed.items():
        data = values.values
        minmax = quantization_mse(data, (values.minimum, values.maximum))
        for method in ("mse", "auto", "percentile"):
            how, rng = pick(values, method)
            picked.add(how)
            # auto/percentile choose among candidates that include min/max; the MSE grid too.
            assert quantization_mse(data, rng) <= minmax * (1 + 1e-12), (name, method)
        for method in ("kl", "minmax"):
            rng = pick(values, method)[1]
            assert values.minimum <= rng[0] <= rng[1] <= values.maximum
    assert "mse" in picked   # the methods do move ranges somewhere on this graph
    with pytest.raises(UserError, match="unknown range method"):
        choose_ranges(graph, inputs_of(graph, 1, 0), "median")
    assert set(METHODS) >= {"minmax", "percentile", "mse", "kl", "auto"}


def test_softmax_input_gets_headroom_and_input_its_known_range():
    graph = small_mobilenet()
    data = inputs_of(graph, 6, 0)
    ranges, chosen = choose_ranges(graph, data, "auto", input_range=(-1.0, 1.0))
    (logits,) = softmax_inputs(graph)
    observed = observe(graph, data)[logits]
    assert chosen[logits] == "softmax-headroom" and chosen["x"] == "input"
    assert ranges[logits][1] >= 1.25 * observed.maximum and ranges["x"] == (-1.0, 1.0)


def test_cle_preserves_the_float_function_and_evens_channel_ranges():
    graph = relu_pairs_graph()
    equalised, count = equalize(graph)
    assert count == 3 and len(pairs(small_mobilenet())) == 0   # ReLU6 pairs are left alone
    for x in inputs_of(graph, 3, 5):
        want = run_float(graph, x, keep_all=True)
        got = run_float(equalised, x, keep_all=True)
        assert np.abs(got[graph.outputs[0]] - want[graph.outputs[0]]).max() < 1e-5
    dw = graph.nodes[1].inputs[1]
    spread = lambda g: np.ptp(np.log(np.abs(g.tensors[dw].data).max(axis=(0, 1, 2))))
    assert spread(equalised) < 0.5 * spread(graph)
    assert graph.tensors[dw].data is not equalised.tensors[dw].data   # input graph untouched


def test_bias_correction_reduces_the_mean_output_error():
    graph = relu_pairs_graph(seed=4)
    calib, test = inputs_of(graph, 8, 0), inputs_of(graph, 6, 77)
    errors = {}
    for correct in (False, True):
        int8 = quantize_float(graph, calib, PtqSettings("minmax", bias_correction=correct)).graph
        # Mean (signed) error of the pre-softmax logits, averaged over the test inputs.
        logits = graph.nodes[-2].outputs[0]
        deltas = []
        for x in test:
            f = run_float(graph, x, keep_all=True)[logits]
            q_in = int8.tensors["x"].quant
            xq = np.clip(np.round(x / q_in.scalar_scale) + q_in.scalar_zero_point, -128, 127)
            q = run_int8(int8, {"x": xq.astype(np.int8)}, keep_all=True)[logits]
            qp = int8.tensors[logits].quant
            deltas.append(qp.scalar_scale * (q.astype(np.float64) - qp.scalar_zero_point) - f)
        errors[correct] = np.abs(np.mean(deltas, axis=0)).mean()
    assert errors[True] < errors[False]
    corrected = correct_biases(graph, calib)
    assert corrected is not graph and all(  # only biases move
        np.array_equal(corrected.tensors[n.inputs[1]].data, graph.tensors[n.inputs[1]].data)
        for n in graph.nodes if len(n.inputs) > 1)


def test_augment_is_seeded_bounded_and_sized():
    x = [np.linspace(-1, 1, 8 * 8 * 3, dtype=np.float32).reshape(1, 8, 8, 3)] * 2
    a, b, c = augment(x, 3, seed=1), augment(x, 3, seed=1), augment(x, 3, seed=2)
    assert len(a) == 8 and all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[2], c[2]) and np.array_equal(a[0], x[0])
    assert all(s.min() >= -1 and s.max() <= 1 and s.dtype == np.float32 for s in a)
    assert copies_for(5) == 7 and copies_for(13) == 3 and copies_for(32) == 0


def test_fidelity_agreement_counts_ties_as_lost():
    f = [np.array([0.1, 0.7, 0.2]), np.array([0.5, 0.3, 0.2])]
    q = [np.array([0.1, 0.6, 0.3]), np.array([0.4, 0.4, 0.2])]   # the second is a tie
    result = agreement(f, q, probabilities=True)
    assert result["unique_top1"] == 1 and result["top5"] == 2 and result["inputs"] == 2
    assert result["mean_abs_delta_top1_prob"] == pytest.approx((0.1 + 0.1) / 2)


def test_all_methods_stay_bit_exact_in_tflm(tmp_path):
    tflm = pytest.importorskip("tflite_micro")  # noqa: F841
    from mbgen.export.tflite_writer import write_tflite
    from mbgen.preprocessing import interface_of
    from mbgen.tflm import run_tflm
    graph = relu_pairs_graph(seed=5)
    calib = augment(inputs_of(graph, 4, 0), 2, seed=0, low=-1.0, high=1.0)
    from mbgen.quantize.adaround import adaround
    # ptq's order: CLE, AdaRound (a few steps here), bias correction, ranges.
    equalised = equalize(graph)[0]
    rounded = adaround(equalised, calib, iterations=20)[0]
    int8 = quantize_float(correct_biases(rounded, calib, original=equalised), calib,
                          PtqSettings("auto"), input_range=(-1.0, 1.0)).graph
    path = write_tflite(int8, tmp_path / "methods.tflite")
    report = measure(graph, int8, inputs_of(graph, 2, 9))
    assert report["layers"] and report["min_cosine"] > 0.9
    interface = interface_of(int8, int8.inputs[0])
    for x in inputs_of(graph, 3, 11):
        xq = interface.quantize(x)
        want = run_int8(int8, {int8.inputs[0]: xq})[int8.outputs[0]]
        np.testing.assert_array_equal(run_tflm(path, xq).reshape(want.shape), want)


def test_adaround_moves_weights_within_one_step_and_keeps_the_scales():
    pytest.importorskip("torch")
    from mbgen.quantize.adaround import adaround
    from mbgen.quantize.float_rewrites import conv_like_nodes
    graph = relu_pairs_graph(seed=6)
    calib = inputs_of(graph, 8, 0)
    rounded, layers = adaround(graph, calib, seconds=60.0, iterations=150)
    assert layers == 5
    plain = quantize_float(graph, calib).graph
    ada = quantize_float(rounded, calib).graph
    moved = 0
    for node in conv_like_nodes(graph):
        w_plain, w_ada = plain.tensors[node.inputs[1]], ada.tensors[node.inputs[1]]
        np.testing.assert_array_equal(w_plain.quant.scale, w_ada.quant.scale)
        # The quantizer rounds the rewritten float weights back to AdaRound's choice exactly.
        scale = w_ada.quant.scale.reshape([-1 if d == (w_ada.quant.axis or 0) and
                                           w_ada.quant.axis is not None else 1
                                           for d in range(w_ada.data.ndim)])
        np.testing.assert_array_equal(
            np.round(rounded.tensors[node.inputs[1]].data / scale).astype(np.int8), w_ada.data)
        diff = w_ada.data.astype(int) - w_plain.data.astype(int)
        assert np.abs(diff).max() <= 1
        moved += np.count_nonzero(diff)
    assert moved > 0
    # Its objective: the first layer's output error on the calibration data goes down.
    first = graph.nodes[0]
    errors = []
    for g8 in (plain, ada):
        total = 0.0
        for x in calib:
            f = run_float(graph, x, keep_all=True)[first.outputs[0]]
            w = g8.tensors[first.inputs[1]]
            approx = graph.copy()
            approx.tensors[first.inputs[1]] = ir.Tensor(
                first.inputs[1], w.shape, "float32",
                (w.data * w.quant.scale.reshape(-1, 1, 1, 1)).astype(np.float32))
            total += float(np.sum((run_float(approx, x, keep_all=True)[first.outputs[0]] - f) ** 2))
        errors.append(total)
    assert errors[1] < errors[0]
