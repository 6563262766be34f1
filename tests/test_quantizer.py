"""The quantizer against the TFLite int8 spec (int8.md) and, end to end, the int8 reference."""

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbgen import ir
from mbgen.errors import UserError
from mbgen.float_interp import run_float
from mbgen.quantize import params
from mbgen.quantize.calibration import synthetic_inputs
from mbgen.quantize.quantizer import activation_quant, calibrate, describe_ranges, quantize

RELU6 = ir.Activation.RELU6


class GraphBuilder:
    """A float graph built op by op; shapes come from the float interpreter."""

    def __init__(self, input_shape, seed=0):
        self.rng = np.random.default_rng(seed)
        self.tensors = {"x": ir.Tensor("x", tuple(input_shape), "float32")}
        self.nodes = []
        self.last = "x"

    def const(self, name, data):
        data = np.asarray(data, np.float32)
        self.tensors[name] = ir.Tensor(name, data.shape, "float32", data)
        return name

    def add(self, op, inputs=None, consts=()):
        name = f"n{len(self.nodes)}_{ir.op_name(op)}"
        inputs = list(inputs or [self.last]) + [self.const(f"{name}/{i}", c)
                                               for i, c in enumerate(consts)]
        shape = self._out_shape(op, [self.tensors[n].shape for n in inputs])
        self.tensors[name] = ir.Tensor(name, shape, "float32")
        self.nodes.append(ir.Node(name, op, inputs, [name]))
        self.last = name
        return name

    @staticmethod
    def _out_shape(op, shapes):
        x = shapes[0]
        if isinstance(op, (ir.Conv2D, ir.DepthwiseConv2D, ir.AveragePool2D)):
            p = op.padding
            kh, kw = op.kernel if isinstance(op, ir.AveragePool2D) else shapes[1][1:3]
            ch = shapes[1][0 if isinstance(op, ir.Conv2D) else 3] if len(shapes) > 1 else x[3]
            return (1, (x[1] + p.top + p.bottom - kh) // op.stride[0] + 1,
                    (x[2] + p.left + p.right - kw) // op.stride[1] + 1, ch)
        if isinstance(op, ir.Pad):
            p = op.padding
            return (1, x[1] + p.top + p.bottom, x[2] + p.left + p.right, x[3])
        if isinstance(op, ir.Mean):
            return tuple(1 if d in op.axes else n for d, n in enumerate(x))
        if isinstance(op, ir.Reshape):
            return op.shape
        if isinstance(op, ir.FullyConnected):
            return (1, shapes[1][0])
        if isinstance(op, (ir.Add, ir.Mul)):
            return tuple(np.broadcast_shapes(x, shapes[1]))
        return x

    def conv(self, out_ch, k=3, stride=1, act=RELU6, bias=True, scale=0.3):
        in_ch = self.tensors[self.last].shape[-1]
        consts = [self.rng.normal(0, scale, (out_ch, k, k, in_ch))]
        if bias:
            consts.append(self.rng.normal(0, 0.1, out_ch))
        pad = ir.Padding(k // 2, k // 2, k // 2, k // 2)
        return self.add(ir.Conv2D((stride, stride), pad, activation=act), consts=consts)

    def depthwise(self, stride=1, act=RELU6, mult=1):
        ch = self.tensors[self.last].shape[-1] * mult
        consts = [self.rng.normal(0, 0.4, (1, 3, 3, ch)), self.rng.normal(0, 0.1, ch)]
        return self.add(ir.DepthwiseConv2D((stride, stride), ir.Padding(1, 1, 1, 1), mult,
                                           activation=act), consts=consts)

    def graph(self, name="hand"):
        return ir.Graph(name, dict(self.tensors), list(self.nodes), ["x"], [self.last])


def small_mobilenet(seed=0):
    """Stem, two depthwise-separable blocks, a residual, global pool, classifier, softmax."""
    b = GraphBuilder((1, 16, 16, 3), seed)
    b.conv(8, stride=2)
    b.depthwise()
    block_in = b.conv(8, k=1, act=ir.Activation.NONE)
    b.depthwise(mult=2)
    b.conv(8, k=1, act=ir.Activation.NONE)
    b.add(ir.Add(activation=ir.Activation.RELU), inputs=[block_in, b.last])
    b.add(ir.Mean((1, 2), True))
    b.add(ir.Reshape((1, 8)))
    b.add(ir.FullyConnected(), consts=[b.rng.normal(0, 0.5, (10, 8)), b.rng.normal(0, 0.1, 10)])
    b.add(ir.Softmax())
    return b.graph("small_mobilenet")


def every_op_graph(seed=1):
    """The remaining ops a float graph can hold after passes."""
    b = GraphBuilder((1, 8, 8, 4), seed)
    b.add(ir.Pad(ir.Padding(1, 0, 1, 0)))
    b.conv(6, act=ir.Activation.NONE)
    b.add(ir.HardSwish())
    hs = b.add(ir.ActivationOp(ir.Activation.RELU))
    b.add(ir.AveragePool2D((2, 2), (2, 2)))
    b.add(ir.Mean((1, 2), True))
    gate = b.add(ir.Logistic())
    b.add(ir.Mul(), inputs=[hs, gate])
    b.add(ir.Add(), inputs=[b.last, hs])
    return b.graph("every_op")


def calib(graph, count=8, seed=0):
    return synthetic_inputs(graph.tensors[graph.inputs[0]].shape, count=count, seed=seed)


def dequantize(tensor):
    qp = tensor.quant
    shape = [1] * tensor.data.ndim
    if qp.axis is not None:
        shape[qp.axis] = -1
    scale = qp.scale.astype(np.float64).reshape(shape)
    return (tensor.data.astype(np.float64) - qp.zero_point.reshape(shape)) * scale, scale


def cosine(a, b):
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def small():
    graph = small_mobilenet()
    return graph, quantize(graph, calib(graph))


# ----------------------------------------------------------------------------- activation params


def test_activation_params_match_tflite_files():
    # person_detect.tflite (MODELS.md): input in [-1, 1] has scale 1/127.5, zero point -1.
    qp = activation_quant(-1.0, 1.0)
    assert qp.scale.dtype == np.float32 and qp.scale[0] == np.float32(1 / 127.5)
    assert qp.scalar_zero_point == -1
    relu6 = activation_quant(0.0, 6.0)
    assert relu6.scale[0] == np.float32(6 / 255) and relu6.scalar_zero_point == -128


def test_activation_range_always_includes_zero():
    positive = activation_quant(2.0, 5.0)
    assert positive.scale[0] == np.float32(5 / 255) and positive.scalar_zero_point == -128
    negative = activation_quant(-3.0, -1.0)
    assert negative.scale[0] == np.float32(3 / 255) and negative.scalar_zero_point == 127


def test_empty_range_gets_a_finite_positive_scale():
    qp = activation_quant(0.0, 0.0)
    assert 0 < qp.scalar_scale < 1e-8 and -128 <= qp.scalar_zero_point <= 127


@settings(max_examples=300, deadline=None)
@given(st.floats(-100, 0), st.floats(0, 100))
def test_activation_params_cover_the_range(rmin, rmax):
    qp = activation_quant(rmin, rmax)
    scale, zp = float(qp.scalar_scale), qp.scalar_zero_point
    if rmax - rmin > 1e-6:
        assert np.isclose(scale, (rmax - rmin) / 255, rtol=1e-6)
        # Zero-point rounding shifts the grid by at most half a step.
        assert scale * (-128 - zp) <= rmin + scale * 0.5001
        assert scale * (127 - zp) >= rmax - scale * 0.5001


# ----------------------------------------------------------------------------- weights and bias


def test_weights_per_channel_symmetric_within_half_step(small):
    fgraph, qgraph = small
    for node in qgraph.nodes:
        if not isinstance(node.op, (ir.Conv2D, ir.DepthwiseConv2D, ir.FullyConnected)):
            continue
        w = qgraph.tensors[node.inputs[1]]
        w_float = fgraph.tensors[node.inputs[1]].data.astype(np.float64)
        axis = {ir.Conv2D: 0, ir.DepthwiseConv2D: 3, ir.FullyConnected: None}[type(node.op)]
        assert w.dtype == "int8" and w.quant.axis == axis
        assert not w.quant.zero_point.any()
        assert w.data.min() >= -127
        others = tuple(d for d in range(w_float.ndim) if d != axis) if axis is not None else None
        want = (np.abs(w_float).max(axis=others) / 127).astype(np.float32)
        np.testing.assert_allclose(w.quant.scale, np.atleast_1d(want), rtol=1e-6)
        deq, scale = dequantize(w)
        assert np.all(np.abs(deq - w_float) <= scale / 2 * (1 + 1e-6))
        # The largest weight of each channel uses the full range.
        assert np.abs(w.data).max(axis=others).min() == 127


def test_bias_int32_scale_is_input_times_weight_scale(small):
    fgraph, qgraph = small
    checked = 0
    for node in qgraph.nodes:
        if len(node.inputs) < 3:
            continue
        x, w, b = (qgraph.tensors[n] for n in node.inputs[:3])
        assert b.dtype == "int32" and not b.quant.zero_point.any()
        want = (np.float64(x.quant.scale[0]) * w.quant.scale.astype(np.float64)).astype(np.float32)
        np.testing.assert_array_equal(b.quant.scale, want)
        deq, scale = dequantize(b)
        assert np.all(np.abs(deq - fgraph.tensors[node.inputs[2]].data) <= scale / 2 * 1.0001)
        checked += 1
    assert checked == 6


def test_zero_channel_is_guarded():
    b = GraphBuilder((1, 6, 6, 3))
    w = b.rng.normal(0, 0.3, (4, 3, 3, 3))
    w[2] = 0.0
    bias = np.array([0.1, -0.2, 0.5, 0.0])
    b.add(ir.Conv2D(padding=ir.Padding(1, 1, 1, 1)), consts=[w, bias])
    qgraph = quantize(b.graph(), calib(b.graph(), 4))
    qw, qb = (qgraph.tensors[n] for n in qgraph.nodes[0].inputs[1:])
    assert np.all(np.isfinite(qw.quant.scale)) and np.all(qw.quant.scale > 0)
    assert not qw.data[2].any()
    deq, scale = dequantize(qb)
    assert abs(deq[2] - 0.5) <= scale[2] / 2 and np.all(np.abs(qb.data) <= 2**30)
    cq = params.conv_quant(qgraph, qgraph.nodes[0])  # the runtime constants exist
    assert cq.multipliers.shape == (4,)


def test_fully_connected_is_per_tensor(small):
    _, qgraph = small
    fc = next(n for n in qgraph.nodes if isinstance(n.op, ir.FullyConnected))
    w, bias = qgraph.tensors[fc.inputs[1]], qgraph.tensors[fc.inputs[2]]
    assert w.quant.axis is None and w.quant.scale.shape == (1,)
    assert bias.quant.axis is None and bias.quant.scale.shape == (1,)


# ----------------------------------------------------------------------------- activations


def test_graph_is_int8_and_verifies(small):
    fgraph, qgraph = small
    ir.verify(qgraph)
    assert qgraph.is_quantized
    for name in qgraph.inputs + qgraph.outputs:
        assert qgraph.tensors[name].dtype == "int8"
    for node in qgraph.nodes:
        out = qgraph.tensors[node.outputs[0]]
        assert out.dtype == "int8" and out.quant.scale.dtype == np.float32
        assert out.shape == fgraph.tensors[node.outputs[0]].shape
    assert "min/max over 8 inputs" in qgraph.metadata["calibration"]


def test_input_graph_is_not_modified():
    graph = small_mobilenet()
    before = copy.deepcopy(graph)
    quantize(graph, calib(graph, 2))
    assert [t.dtype for t in graph.tensors.values()] == [t.dtype for t in before.tensors.values()]
    assert all(t.quant is None for t in graph.tensors.values())
    for name, t in graph.tensors.items():
        if t.is_const:
            np.testing.assert_array_equal(t.data, before.tensors[name].data)


def test_activations_cover_calibrated_float_values(small):
    fgraph, qgraph = small
    inputs = calib(fgraph)
    observed = {}
    for x in inputs:
        for name, value in run_float(fgraph, x, keep_all=True).items():
            lo, hi = observed.get(name, (0.0, 0.0))
            observed[name] = (min(lo, value.min()), max(hi, value.max()))
    for tensor, lo, hi in describe_ranges(qgraph):
        scale = qgraph.tensors[tensor].quant.scalar_scale
        assert lo <= observed[tensor][0] + scale / 2 and hi >= observed[tensor][1] - scale / 2


def test_fused_relu6_range_is_post_activation(small):
    _, qgraph = small
    stem = qgraph.nodes[0]
    (tensor, lo, hi), = [r for r in describe_ranges(qgraph) if r.tensor == stem.outputs[0]]
    assert lo == 0.0 and 0.0 < hi <= 6.0 + qgraph.tensors[tensor].quant.scalar_scale


def test_fixed_and_pass_through_output_quant():
    graph = every_op_graph()
    qgraph = quantize(graph, calib(graph))
    for node in qgraph.nodes:
        out = qgraph.tensors[node.outputs[0]].quant
        if isinstance(node.op, (ir.Pad, ir.AveragePool2D, ir.Mean, ir.Reshape)):
            assert _same(out, qgraph.tensors[node.inputs[0]].quant), node.name
        if isinstance(node.op, (ir.Logistic, ir.Softmax)):
            assert out.scale[0] == np.float32(1 / 256) and out.scalar_zero_point == -128
    ir.verify(qgraph)


def test_constant_operand_of_add_is_int8_per_tensor():
    b = GraphBuilder((1, 4, 4, 3))
    b.add(ir.Add(), consts=[b.rng.normal(0, 1, (1, 1, 1, 3))])
    graph = b.graph()
    try:
        run_float(graph, calib(graph, 1)[0])
    except KeyError:
        pytest.skip("float_interp cannot run Add with a constant operand yet")
    qgraph = quantize(graph, calib(graph))
    const = qgraph.tensors[qgraph.nodes[0].inputs[1]]
    assert const.dtype == "int8" and const.quant.axis is None
    deq, scale = dequantize(const)
    assert np.all(np.abs(deq - graph.tensors[graph.nodes[0].inputs[1]].data) <= scale / 2 * 1.0001)


def _same(a, b):
    return a.scalar_scale == b.scalar_scale and a.scalar_zero_point == b.scalar_zero_point


def test_pool_constants_accept_the_quantized_graph():
    graph = every_op_graph()
    qgraph = quantize(graph, calib(graph))
    for node in qgraph.nodes:
        if isinstance(node.op, (ir.AveragePool2D, ir.Mean)):
            params.pool_quant(qgraph, node)  # raises if input and output quant differ


# ----------------------------------------------------------------------------- calibration


def test_percentile_ranges_equal_numpy_percentiles():
    b = GraphBuilder((1, 5, 7, 2))
    b.add(ir.ActivationOp(ir.Activation.RELU))
    graph = b.graph()
    rng = np.random.default_rng(3)
    inputs = [rng.standard_normal((1, 5, 7, 2)).astype(np.float32) * (i + 1) for i in range(6)]
    everything = np.concatenate([x.ravel() for x in inputs]).astype(np.float64)
    for p in (99.0, 97.3, 60.0):
        ranges = calibrate(graph, inputs, percentile=p)
        np.testing.assert_allclose(ranges["x"], np.percentile(everything, [100 - p, p]),
                                   rtol=1e-12)
        relu = np.maximum(everything, 0)
        np.testing.assert_allclose(ranges[graph.outputs[0]], np.percentile(relu, [100 - p, p]),
                                   rtol=1e-12, atol=1e-15)
    minmax = calibrate(graph, inputs)
    assert minmax["x"] == (everything.min(), everything.max())
    assert calibrate(graph, inputs, percentile=100.0) == minmax


def test_percentile_narrows_the_input_range():
    graph = small_mobilenet()
    full = quantize(graph, calib(graph))
    clipped = quantize(graph, calib(graph), percentile=99.0)
    assert clipped.tensors["x"].quant.scalar_scale < full.tensors["x"].quant.scalar_scale
    assert "percentile 99" in clipped.metadata["calibration"]


# ----------------------------------------------------------------------------- user errors


@pytest.mark.parametrize("op,inputs", [
    (ir.BatchNorm(1e-5), "bn"), (ir.Identity("Dropout"), "x"), (ir.Dequantize(), "x")])
def test_unquantisable_op_names_op_and_node(op, inputs):
    b = GraphBuilder((1, 4, 4, 2))
    if isinstance(op, ir.BatchNorm):
        b.add(op, consts=[np.ones(2), np.zeros(2), np.zeros(2), np.ones(2)])
    else:
        b.add(op)
    with pytest.raises(UserError, match=rf"{ir.op_name(op)} \(node n0_{ir.op_name(op)}\)"):
        quantize(b.graph(), calib(b.graph(), 1))


def test_calibration_user_errors(small):
    graph, qgraph = small
    with pytest.raises(UserError, match="at least one"):
        quantize(graph, [])
    with pytest.raises(UserError, match="has shape"):
        quantize(graph, [np.zeros((1, 8, 8, 3), np.float32)])
    with pytest.raises(UserError, match="NaN"):
        quantize(graph, [np.full((1, 16, 16, 3), np.nan, np.float32)])
    with pytest.raises(UserError, match="percentile"):
        quantize(graph, calib(graph, 1), percentile=40.0)
    with pytest.raises(UserError, match="already int8"):
        quantize(qgraph, calib(graph, 1))


# ----------------------------------------------------------------------------- end to end


def _reference():
    return pytest.importorskip("mbgen.reference", reason="mbgen.reference not written yet")


def _run_dequantized(reference, qgraph, x):
    from mbgen.images import quantize_input

    qin = qgraph.tensors[qgraph.inputs[0]].quant
    out_name = qgraph.outputs[0]
    q = reference.run_int8(qgraph, {qgraph.inputs[0]: quantize_input(
        x, qin.scalar_scale, qin.scalar_zero_point)})[out_name]
    qout = qgraph.tensors[out_name].quant
    return (q.astype(np.float64) - qout.scalar_zero_point) * qout.scalar_scale


@pytest.mark.parametrize("make", [small_mobilenet, every_op_graph])
def test_int8_reference_tracks_float(make):
    reference = _reference()
    graph = make()
    qgraph = quantize(graph, calib(graph, 8))
    for x in calib(graph, 3, seed=99):  # inputs the calibration never saw
        want = run_float(graph, x)[graph.outputs[0]]
        got = _run_dequantized(reference, qgraph, x)
        assert cosine(got, want) >= 0.98


@pytest.mark.parametrize("make", [small_mobilenet, every_op_graph])
def test_tflm_runs_the_quantized_graph_and_tracks_float(make):
    # TFLM checks the TFLite constraints on quant params (softmax/logistic output, equal
    # pooling quant, per-channel layouts) and computes the int8 graph with its own kernels.
    pytest.importorskip("tflite_micro", reason="tflite-micro not installed")
    writer = pytest.importorskip("mbgen.export.tflite_writer", reason="no tflite writer yet")
    from mbgen.images import quantize_input
    from mbgen.tflm import run_tflm

    graph = make()
    qgraph = quantize(graph, calib(graph, 8))
    model = writer.tflite_bytes(qgraph)
    qin = qgraph.tensors[qgraph.inputs[0]].quant
    qout = qgraph.tensors[qgraph.outputs[0]].quant
    for x in calib(graph, 3, seed=99):
        q = run_tflm(model, quantize_input(x, qin.scalar_scale, qin.scalar_zero_point))
        got = (q.astype(np.float64) - qout.scalar_zero_point) * qout.scalar_scale
        assert cosine(got, run_float(graph, x)[graph.outputs[0]]) >= 0.98


def _single_layer(qgraph, node):
    """``node`` alone, as an int8 graph whose inputs are its activation inputs."""
    names = [n for n in node.inputs if n and not qgraph.tensors[n].is_const]
    tensors = {n: qgraph.tensors[n] for n in node.inputs + node.outputs if n}
    return ir.Graph(node.name, tensors, [node], names, list(node.outputs))


@pytest.mark.slow
def test_zoo_mbv1_int8_reference_tracks_float():
    """mbv1_0.25_128 from the zoo, through the torch frontend and passes, quantised.

    Layer by layer (each int8 layer fed its quantised float input) and end to end the int8
    model must track float closely (end to end measured 0.999; the zoo's BatchNorm init keeps
    the random network out of the chaotic regime, see mbgen.zoo._init_weights).
    """
    from mbgen.images import quantize_input

    reference = _reference()
    zoo = pytest.importorskip("mbgen.zoo")
    torch_frontend = pytest.importorskip("mbgen.frontends.torch_frontend")
    passes = pytest.importorskip("mbgen.passes")
    if not hasattr(passes, "optimize"):
        pytest.skip("mbgen.passes.optimize not written yet")
    import torch

    name = "mbv1_0.25_128"
    graph = passes.optimize(torch_frontend.from_module(
        zoo.get(name), torch.zeros(zoo.input_shape(name)), name))
    qgraph = quantize(graph, calib(graph, 4))
    ir.verify(qgraph)
    assert {type(n.op) for n in qgraph.nodes} >= {ir.Conv2D, ir.DepthwiseConv2D, ir.Mean,
                                                   ir.FullyConnected}
    x = calib(graph, 1, seed=123)[0]  # an input the calibration never saw
    float_values = run_float(graph, x, keep_all=True)
    for node in qgraph.nodes:
        layer = _single_layer(qgraph, node)
        inputs = {n: quantize_input(float_values[n], qgraph.tensors[n].quant.scalar_scale,
                                    qgraph.tensors[n].quant.scalar_zero_point)
                  for n in layer.inputs}
        out = node.outputs[0]
        qp = qgraph.tensors[out].quant
        got = reference.run_int8(layer, inputs)[out]
        got = (got.astype(np.float64) - qp.scalar_zero_point) * qp.scalar_scale
        assert cosine(got, float_values[out]) >= 0.995, node.name
    end_to_end = _run_dequantized(reference, qgraph, x)
    assert cosine(end_to_end, float_values[graph.outputs[0]]) >= 0.98
