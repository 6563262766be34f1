"""Graph passes: each keeps the float maths (checked with the float interpreter on the graph
before and after, and against PyTorch for zoo models), removes what it promises, and never
touches its input graph."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mbgen import ir, passes, zoo
from mbgen.float_interp import run_float
from mbgen.frontends.torch_frontend import from_module

RELU, RELU6, NONE = ir.Activation.RELU, ir.Activation.RELU6, ir.Activation.NONE


class GraphBuilder:
    """Hand-built float graphs: ``b.add(op, [inputs], shape)`` returns the output tensor name."""

    def __init__(self, input_shape: tuple[int, ...], seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.tensors = {"input": ir.Tensor("input", input_shape, "float32")}
        self.nodes: list[ir.Node] = []

    def const(self, name: str, shape: tuple[int, ...], low: float = -1.0,
              high: float = 1.0) -> str:
        data = self.rng.uniform(low, high, shape).astype(np.float32)
        self.tensors[name] = ir.Tensor(name, shape, "float32", data)
        return name

    def batchnorm_params(self, prefix: str, channels: int) -> list[str]:
        return [self.const(f"{prefix}.gamma", (channels,), 0.5, 2.0),
                self.const(f"{prefix}.beta", (channels,)),
                self.const(f"{prefix}.mean", (channels,)),
                self.const(f"{prefix}.var", (channels,), 0.01, 2.0)]

    def add(self, name: str, op: ir.OpAttrs, inputs: list[str], shape: tuple[int, ...]) -> str:
        self.tensors[name] = ir.Tensor(name, shape, "float32")
        self.nodes.append(ir.Node(name, op, inputs, [name]))
        return name

    def graph(self, outputs: list[str]) -> ir.Graph:
        graph = ir.Graph("hand", dict(self.tensors), list(self.nodes), ["input"], outputs)
        ir.verify(graph)
        return graph


def run(graph: ir.Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    return run_float(graph, {"input": x})


def assert_same_outputs(before: ir.Graph, after: ir.Graph, x: np.ndarray,
                        tol: float = 1e-5) -> None:
    assert after.outputs == before.outputs  # output names are preserved
    expected, got = run(before, x), run(after, x)
    for name in before.outputs:
        assert got[name].shape == expected[name].shape
        scale = max(float(np.abs(expected[name]).max()), 1e-6)
        assert float(np.abs(got[name] - expected[name]).max()) / scale < tol, name


def op_types(graph: ir.Graph) -> list[type]:
    return [type(n.op) for n in graph.nodes]


def snapshot(graph: ir.Graph) -> ir.Graph:
    return copy.deepcopy(graph)


def assert_unchanged(graph: ir.Graph, before: ir.Graph) -> None:
    assert graph.outputs == before.outputs and graph.inputs == before.inputs
    assert [(n.name, n.op, n.inputs, n.outputs) for n in graph.nodes] == \
        [(n.name, n.op, n.inputs, n.outputs) for n in before.nodes]
    assert graph.tensors.keys() == before.tensors.keys()
    for name, tensor in graph.tensors.items():
        old = before.tensors[name]
        assert (tensor.shape, tensor.dtype) == (old.shape, old.dtype)
        if old.data is not None:
            np.testing.assert_array_equal(tensor.data, old.data)


def frozen(graph: ir.Graph) -> ir.Graph:
    """Make every constant read-only, so a pass writing into an input array raises."""
    for tensor in graph.tensors.values():
        if tensor.data is not None:
            tensor.data.setflags(write=False)
    return graph


X8 = np.random.default_rng(1).uniform(-3, 3, (1, 6, 6, 4)).astype(np.float32)


def conv_bn_relu6(with_bias: bool = False, stride: int = 1) -> ir.Graph:
    b = GraphBuilder((1, 6, 6, 4))
    inputs = ["input", b.const("w", (5, 3, 3, 4))] + ([b.const("b", (5,))] if with_bias else [])
    out_hw = 6 // stride
    conv = b.add("conv", ir.Conv2D(stride=(stride, stride), padding=ir.Padding(1, 1, 1, 1)),
                 inputs, (1, out_hw, out_hw, 5))
    bn = b.add("bn", ir.BatchNorm(eps=1e-3), [conv] + b.batchnorm_params("bn", 5),
               (1, out_hw, out_hw, 5))
    out = b.add("relu6", ir.ActivationOp(RELU6), [bn], (1, out_hw, out_hw, 5))
    return b.graph([out])


# ----------------------------------------------------------------------------- fold_batchnorm


@pytest.mark.parametrize("with_bias", [False, True])
def test_fold_into_conv(with_bias: bool) -> None:
    graph = conv_bn_relu6(with_bias, stride=2)
    folded = passes.fold_batchnorm(graph)
    ir.verify(folded)
    assert op_types(folded) == [ir.Conv2D, ir.ActivationOp]
    assert len(folded.nodes[0].inputs) == 3  # a bias appears even if there was none
    assert_same_outputs(graph, folded, X8)


def test_fold_into_depthwise_with_multiplier() -> None:
    b = GraphBuilder((1, 6, 6, 4))
    dw = b.add("dw", ir.DepthwiseConv2D(padding=ir.Padding(0, 1, 0, 1), depth_multiplier=2),
               ["input", b.const("w", (1, 2, 2, 8)), b.const("b", (8,))], (1, 6, 6, 8))
    bn = b.add("bn", ir.BatchNorm(eps=1e-5), [dw] + b.batchnorm_params("bn", 8), (1, 6, 6, 8))
    graph = b.graph([bn])
    folded = passes.fold_batchnorm(graph)
    assert op_types(folded) == [ir.DepthwiseConv2D]
    assert folded.nodes[0].op.depth_multiplier == 2
    assert_same_outputs(graph, folded, X8)


def test_fold_into_fully_connected() -> None:
    b = GraphBuilder((1, 12))
    fc = b.add("fc", ir.FullyConnected(), ["input", b.const("w", (3, 12))], (1, 3))
    bn = b.add("bn", ir.BatchNorm(eps=0.1), [fc] + b.batchnorm_params("bn", 3), (1, 3))
    graph = b.graph([bn])
    folded = passes.fold_batchnorm(graph)
    assert op_types(folded) == [ir.FullyConnected]
    x = np.random.default_rng(2).normal(size=(1, 12)).astype(np.float32)
    assert_same_outputs(graph, folded, x)


def test_eps_is_used() -> None:
    """A large eps changes the result: folding must use the node's eps, not a constant."""
    graph = conv_bn_relu6()
    big_eps = graph.copy()
    bn = next(n for n in big_eps.nodes if isinstance(n.op, ir.BatchNorm))
    bn.op = ir.BatchNorm(eps=0.5)
    assert not np.allclose(run(graph, X8)["relu6"], run(big_eps, X8)["relu6"])
    assert_same_outputs(big_eps, passes.fold_batchnorm(big_eps), X8)


def test_batchnorm_after_add_becomes_depthwise_scale() -> None:
    b = GraphBuilder((1, 6, 6, 4))
    conv = b.add("conv", ir.Conv2D(), ["input", b.const("w", (4, 1, 1, 4))], (1, 6, 6, 4))
    add = b.add("add", ir.Add(), ["input", conv], (1, 6, 6, 4))
    bn = b.add("bn", ir.BatchNorm(eps=1e-5), [add] + b.batchnorm_params("bn", 4), (1, 6, 6, 4))
    graph = b.graph([bn])
    folded = passes.fold_batchnorm(graph)
    assert op_types(folded) == [ir.Conv2D, ir.Add, ir.DepthwiseConv2D]
    assert folded.tensors[folded.nodes[2].inputs[1]].shape == (1, 1, 1, 4)
    assert_same_outputs(graph, folded, X8)


def test_conv_output_read_twice_is_not_folded() -> None:
    b = GraphBuilder((1, 6, 6, 4))
    conv = b.add("conv", ir.Conv2D(), ["input", b.const("w", (4, 1, 1, 4))], (1, 6, 6, 4))
    bn = b.add("bn", ir.BatchNorm(eps=1e-5), [conv] + b.batchnorm_params("bn", 4), (1, 6, 6, 4))
    add = b.add("add", ir.Add(), [conv, bn], (1, 6, 6, 4))
    graph = b.graph([add])
    folded = passes.fold_batchnorm(graph)
    assert op_types(folded) == [ir.Conv2D, ir.DepthwiseConv2D, ir.Add]
    assert_same_outputs(graph, folded, X8)


def test_bn_after_fused_activation_is_not_folded_into_the_conv() -> None:
    b = GraphBuilder((1, 6, 6, 4))
    conv = b.add("conv", ir.Conv2D(activation=RELU), ["input", b.const("w", (4, 1, 1, 4))],
                 (1, 6, 6, 4))
    bn = b.add("bn", ir.BatchNorm(eps=1e-5), [conv] + b.batchnorm_params("bn", 4), (1, 6, 6, 4))
    graph = b.graph([bn])
    folded = passes.fold_batchnorm(graph)
    assert op_types(folded) == [ir.Conv2D, ir.DepthwiseConv2D]
    assert_same_outputs(graph, folded, X8)


def test_shared_weights_are_not_rescaled_for_the_other_user() -> None:
    b = GraphBuilder((1, 6, 6, 4))
    w = b.const("w", (4, 1, 1, 4))
    first = b.add("first", ir.Conv2D(), ["input", w], (1, 6, 6, 4))
    bn = b.add("bn", ir.BatchNorm(eps=1e-5), [first] + b.batchnorm_params("bn", 4), (1, 6, 6, 4))
    second = b.add("second", ir.Conv2D(), [bn, w], (1, 6, 6, 4))
    graph = b.graph([second])
    folded = passes.fold_batchnorm(graph)
    assert op_types(folded) == [ir.Conv2D, ir.Conv2D]
    assert_same_outputs(graph, folded, X8)


@settings(max_examples=25, deadline=None)
@given(kernel=st.integers(1, 3), stride=st.integers(1, 2), out_channels=st.integers(1, 6),
       depthwise=st.booleans(), seed=st.integers(0, 2**16))
def test_fold_preserves_values_property(kernel: int, stride: int, out_channels: int,
                                        depthwise: bool, seed: int) -> None:
    b = GraphBuilder((1, 5, 5, 3), seed)
    pad = ir.Padding.same(5, 5, kernel, kernel, stride, stride)
    out_hw = -(-5 // stride)
    if depthwise:
        channels = 3 * out_channels
        op: ir.OpAttrs = ir.DepthwiseConv2D((stride, stride), pad, depth_multiplier=out_channels)
        w = b.const("w", (1, kernel, kernel, channels))
    else:
        channels = out_channels
        op = ir.Conv2D((stride, stride), pad)
        w = b.const("w", (channels, kernel, kernel, 3))
    conv = b.add("conv", op, ["input", w, b.const("b", (channels,))], (1, out_hw, out_hw, channels))
    bn = b.add("bn", ir.BatchNorm(eps=1e-4), [conv] + b.batchnorm_params("bn", channels),
               (1, out_hw, out_hw, channels))
    graph = b.graph([bn])
    folded = passes.fold_batchnorm(graph)
    assert not any(isinstance(n.op, ir.BatchNorm) for n in folded.nodes)
    x = np.random.default_rng(seed).normal(size=(1, 5, 5, 3)).astype(np.float32)
    assert_same_outputs(graph, folded, x)


# ----------------------------------------------------------------------------- fuse_activations


def test_fuse_into_conv_after_folding() -> None:
    graph = passes.fold_batchnorm(conv_bn_relu6())
    fused = passes.fuse_activations(graph)
    assert op_types(fused) == [ir.Conv2D]
    assert fused.nodes[0].op.activation is RELU6
    assert fused.outputs == ["relu6"] and fused.nodes[0].outputs == ["relu6"]
    assert_same_outputs(graph, fused, X8)


@pytest.mark.parametrize("producer", ["add", "avgpool", "fc", "depthwise"])
def test_fuse_into_each_producer_kind(producer: str) -> None:
    b = GraphBuilder((1, 6, 6, 4))
    if producer == "add":
        out = b.add("p", ir.Add(), ["input", "input"], (1, 6, 6, 4))
    elif producer == "avgpool":
        out = b.add("p", ir.AveragePool2D((3, 3), (1, 1), ir.Padding(1, 1, 1, 1)), ["input"],
                    (1, 6, 6, 4))
    elif producer == "depthwise":
        out = b.add("p", ir.DepthwiseConv2D(), ["input", b.const("w", (1, 1, 1, 4))],
                    (1, 6, 6, 4))
    else:
        b.tensors["input"] = ir.Tensor("input", (1, 144), "float32")
        out = b.add("p", ir.FullyConnected(), ["input", b.const("w", (7, 144), -0.3, 0.3)],
                    (1, 7))
    shape = b.tensors[out].shape
    act = b.add("relu", ir.ActivationOp(RELU), [out], shape)
    graph = b.graph([act])
    fused = passes.fuse_activations(graph)
    assert len(fused.nodes) == 1 and fused.nodes[0].op.activation is RELU
    x = X8 if producer != "fc" else X8.reshape(1, 144)
    assert_same_outputs(graph, fused, x)


@pytest.mark.parametrize("first, then, expected", [
    (RELU, RELU6, RELU6), (RELU6, RELU, RELU6), (RELU, RELU, RELU), (NONE, RELU6, RELU6)])
def test_activations_compose(first: ir.Activation, then: ir.Activation,
                             expected: ir.Activation) -> None:
    b = GraphBuilder((1, 6, 6, 4))
    conv = b.add("conv", ir.Conv2D(activation=first), ["input", b.const("w", (4, 1, 1, 4), 0, 3)],
                 (1, 6, 6, 4))
    out = b.add("act", ir.ActivationOp(then), [conv], (1, 6, 6, 4))
    graph = b.graph([out])
    fused = passes.fuse_activations(graph)
    assert op_types(fused) == [ir.Conv2D] and fused.nodes[0].op.activation is expected
    assert_same_outputs(graph, fused, X8)


def test_standalone_activation_chain_merges() -> None:
    b = GraphBuilder((1, 6, 6, 4))
    first = b.add("relu", ir.ActivationOp(RELU), ["input"], (1, 6, 6, 4))
    out = b.add("relu6", ir.ActivationOp(RELU6), [first], (1, 6, 6, 4))
    graph = b.graph([out])
    fused = passes.fuse_activations(graph)
    assert [n.op for n in fused.nodes] == [ir.ActivationOp(RELU6)]
    assert_same_outputs(graph, fused, X8 * 3)


def test_no_fusion_when_the_pre_activation_is_needed() -> None:
    b = GraphBuilder((1, 6, 6, 4))
    conv = b.add("conv", ir.Conv2D(), ["input", b.const("w", (4, 1, 1, 4))], (1, 6, 6, 4))
    act = b.add("relu", ir.ActivationOp(RELU), [conv], (1, 6, 6, 4))
    branch = b.add("add", ir.Add(), [conv, act], (1, 6, 6, 4))
    as_output = b.graph([act, conv])
    as_input = b.graph([branch])
    for graph in (as_output, as_input):
        fused = passes.fuse_activations(graph)
        assert ir.ActivationOp in op_types(fused)
        assert_same_outputs(graph, fused, X8)


def test_no_fusion_into_ops_without_fused_activation() -> None:
    b = GraphBuilder((1, 6, 6, 4))
    mean = b.add("mean", ir.Mean(), ["input"], (1, 1, 1, 4))
    out = b.add("relu", ir.ActivationOp(RELU), [mean], (1, 1, 1, 4))
    graph = b.graph([out])
    assert op_types(passes.fuse_activations(graph)) == [ir.Mean, ir.ActivationOp]


def test_int8_graphs_are_not_fused() -> None:
    q = ir.QuantParams.per_tensor(0.05, -3)
    tensors = {
        "input": ir.Tensor("input", (1, 4), "int8", quant=q),
        "w": ir.Tensor("w", (2, 4), "int8", np.ones((2, 4), np.int8),
                       ir.QuantParams.per_tensor(0.01, 0)),
        "fc": ir.Tensor("fc", (1, 2), "int8", quant=q),
        "relu": ir.Tensor("relu", (1, 2), "int8", quant=ir.QuantParams.per_tensor(0.02, -128)),
    }
    nodes = [ir.Node("fc", ir.FullyConnected(), ["input", "w"], ["fc"]),
             ir.Node("relu", ir.ActivationOp(RELU), ["fc"], ["relu"])]
    graph = ir.Graph("int8", tensors, nodes, ["input"], ["relu"])
    assert op_types(passes.optimize(graph)) == [ir.FullyConnected, ir.ActivationOp]


# ----------------------------------------------------------------------------- remove_noops


def classifier_head(keep_identity_at_end: bool = False) -> ir.Graph:
    b = GraphBuilder((1, 6, 6, 4))
    drop = b.add("drop1", ir.Identity("Dropout"), ["input"], (1, 6, 6, 4))
    mean = b.add("pool", ir.Mean(axes=(1, 2), keep_dims=True), [drop], (1, 1, 1, 4))
    flat = b.add("flatten", ir.Reshape((1, 4)), [mean], (1, 4))
    drop2 = b.add("drop2", ir.Identity("Dropout"), [flat], (1, 4))
    fc = b.add("fc", ir.FullyConnected(), [drop2, b.const("w", (3, 4)), b.const("b", (3,))],
               (1, 3))
    if keep_identity_at_end:
        fc = b.add("out", ir.Identity("Dropout"), [fc], (1, 3))
    return b.graph([fc])


@pytest.mark.parametrize("identity_at_end", [False, True])
def test_remove_identities_and_canonical_flatten(identity_at_end: bool) -> None:
    graph = classifier_head(identity_at_end)
    cleaned = passes.remove_noops(graph)
    ir.verify(cleaned)
    assert op_types(cleaned) == [ir.Mean, ir.FullyConnected]
    mean, fc = cleaned.nodes
    assert mean.op == ir.Mean(axes=(1, 2), keep_dims=False)
    assert cleaned.tensors[mean.outputs[0]].shape == (1, 4)
    assert fc.inputs[0] == mean.outputs[0]
    assert_same_outputs(graph, cleaned, X8)


def test_identity_from_input_to_output_stays() -> None:
    b = GraphBuilder((1, 6, 6, 4))
    out = b.add("id", ir.Identity(), ["input"], (1, 6, 6, 4))
    graph = b.graph([out])
    assert op_types(passes.remove_noops(graph)) == [ir.Identity]


def test_reshape_chains_collapse_and_same_shape_reshapes_vanish() -> None:
    b = GraphBuilder((1, 6, 6, 4))
    a = b.add("a", ir.Reshape((1, 144)), ["input"], (1, 144))
    c = b.add("c", ir.Reshape((1, 36, 4)), [a], (1, 36, 4))
    d = b.add("d", ir.Reshape((1, 144)), [c], (1, 144))
    e = b.add("e", ir.Reshape((1, 144)), [d], (1, 144))
    fc = b.add("fc", ir.FullyConnected(), [e, b.const("w", (2, 144))], (1, 2))
    graph = b.graph([fc])
    cleaned = passes.remove_noops(graph)
    assert op_types(cleaned) == [ir.Reshape, ir.FullyConnected]
    assert cleaned.tensors[cleaned.nodes[0].outputs[0]].shape == (1, 144)
    assert_same_outputs(graph, cleaned, X8)


def test_needed_reshape_before_fc_is_kept() -> None:
    b = GraphBuilder((1, 3, 3, 4))
    flat = b.add("flat", ir.Reshape((1, 36)), ["input"], (1, 36))
    fc = b.add("fc", ir.FullyConnected(), [flat, b.const("w", (2, 36))], (1, 2))
    graph = b.graph([fc])
    assert op_types(passes.remove_noops(graph)) == [ir.Reshape, ir.FullyConnected]


def test_int8_reshape_that_requantises_is_kept() -> None:
    tensors = {
        "input": ir.Tensor("input", (1, 1, 1, 4), "int8", quant=ir.QuantParams.per_tensor(0.1, 0)),
        "mean": ir.Tensor("mean", (1, 1, 1, 4), "int8", quant=ir.QuantParams.per_tensor(0.1, 0)),
        "flat": ir.Tensor("flat", (1, 4), "int8", quant=ir.QuantParams.per_tensor(0.2, 5)),
    }
    nodes = [ir.Node("mean", ir.Mean(), ["input"], ["mean"]),
             ir.Node("flat", ir.Reshape((1, 4)), ["mean"], ["flat"])]
    graph = ir.Graph("int8", tensors, nodes, ["input"], ["flat"])
    assert op_types(passes.remove_noops(graph)) == [ir.Mean, ir.Reshape]
    same = graph.copy()
    same.tensors["flat"] = ir.Tensor("flat", (1, 4), "int8",
                                     quant=ir.QuantParams.per_tensor(0.1, 0))
    assert op_types(passes.remove_noops(same)) == [ir.Mean]


# ----------------------------------------------------------------------------- purity


def branchy_graph() -> ir.Graph:
    b = GraphBuilder((1, 6, 6, 4))
    drop = b.add("drop", ir.Identity(), ["input"], (1, 6, 6, 4))
    conv = b.add("conv", ir.Conv2D(), [drop, b.const("w", (4, 1, 1, 4))], (1, 6, 6, 4))
    bn = b.add("bn", ir.BatchNorm(eps=1e-5), [conv] + b.batchnorm_params("bn", 4), (1, 6, 6, 4))
    act = b.add("act", ir.ActivationOp(RELU6), [bn], (1, 6, 6, 4))
    add = b.add("add", ir.Add(), [act, drop], (1, 6, 6, 4))
    bn2 = b.add("bn2", ir.BatchNorm(eps=1e-5), [add] + b.batchnorm_params("bn2", 4),
                (1, 6, 6, 4))
    act2 = b.add("act2", ir.ActivationOp(RELU), [bn2], (1, 6, 6, 4))
    mean = b.add("mean", ir.Mean(), [act2], (1, 1, 1, 4))
    flat = b.add("flat", ir.Reshape((1, 4)), [mean], (1, 4))
    fc = b.add("fc", ir.FullyConnected(), [flat, b.const("fcw", (3, 4))], (1, 3))
    return b.graph([fc])


@pytest.mark.parametrize("run_pass", [passes.fold_batchnorm, passes.fuse_activations,
                                      passes.remove_noops, passes.optimize],
                         ids=lambda f: f.__name__)
def test_passes_do_not_mutate_their_input(run_pass) -> None:
    graph = frozen(branchy_graph())
    before = snapshot(graph)
    result = run_pass(graph)
    assert result is not graph
    assert_unchanged(graph, before)
    assert_same_outputs(graph, result, X8)


def test_optimize_leaves_only_compute_ops() -> None:
    graph = branchy_graph()
    optimized = passes.optimize(graph)
    assert op_types(optimized) == [ir.Conv2D, ir.Add, ir.DepthwiseConv2D, ir.Mean,
                                   ir.FullyConnected]
    assert optimized.nodes[0].op.activation is RELU6
    assert optimized.nodes[2].op.activation is RELU
    assert set(optimized.tensors) == ({n for node in optimized.nodes
                                       for n in node.inputs + node.outputs} | {"input"})
    assert_same_outputs(graph, optimized, X8)


# ----------------------------------------------------------------------------- zoo


@pytest.mark.parametrize("name, expected_nodes", [("mbv1_0.25_128", 29), ("mbv2_0.35_96", 64)])
def test_optimized_zoo_model_matches_pytorch(name: str, expected_nodes: int) -> None:
    model = zoo.get(name)
    x = torch.rand(zoo.input_shape(name), generator=torch.Generator().manual_seed(9)) * 2 - 1
    graph = from_module(model, x, name)
    before = snapshot(graph)
    optimized = passes.optimize(graph)
    assert_unchanged(graph, before)
    leftovers = [n for n in optimized.nodes
                 if isinstance(n.op, (ir.ActivationOp, ir.BatchNorm, ir.Identity, ir.Reshape))]
    assert leftovers == []
    assert len(optimized.nodes) == expected_nodes
    convs = [n for n in optimized.nodes if isinstance(n.op, (ir.Conv2D, ir.DepthwiseConv2D))]
    # Every conv ends in ReLU6 except MobileNetV2's linear bottleneck projections.
    linear = [n for n in convs if n.op.activation is NONE]
    assert len(linear) == (0 if name.startswith("mbv1") else 17)
    with torch.no_grad():
        expected = model(x).numpy()
    got = run_float(optimized, {"input": x.permute(0, 2, 3, 1).numpy()})[optimized.outputs[0]]
    assert float(np.abs(got - expected).max()) / float(np.abs(expected).max()) < 1e-4
