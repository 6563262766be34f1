"""ONNX frontend.

* Zoo models exported by torch.onnx (TorchScript exporter, several opsets) against PyTorch
  itself, and against the PyTorch frontend's route down to int8 outputs.
* Small graphs built with onnx.helper against onnx's own reference evaluator
  (``onnx.reference.ReferenceEvaluator``), an implementation of the ONNX semantics in NCHW
  that shares nothing with our converter.
* The one-line errors users get for bad files and unsupported ops.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.reference import ReferenceEvaluator  # noqa: E402

from mbgen import ir, zoo  # noqa: E402
from mbgen.errors import UserError  # noqa: E402
from mbgen.float_interp import run_float  # noqa: E402
from mbgen.frontends.onnx_frontend import load_onnx  # noqa: E402

# torch 2.13's default exporter (dynamo=True) needs the onnxscript package; the TorchScript
# exporter does not, and is what most published .onnx MobileNets were made with.
EXPORT_OPSETS = [11, 13, 17, None]  # None: the exporter's current default
ZOO_MODELS = ["mbv1_0.25_128", "mbv2_0.35_96"]


# ----------------------------------------------------------------------------- helpers


def _nhwc(x: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = x.detach().numpy() if isinstance(x, torch.Tensor) else x
    return np.ascontiguousarray(arr.transpose(0, 2, 3, 1))


def _as_onnx_layout(y: np.ndarray) -> np.ndarray:
    return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def _export(module: nn.Module, x: torch.Tensor, path: Path, opset: int | None,
            keep_batchnorm: bool = True, **kwargs) -> Path:
    """TorchScript ONNX export; PRESERVE keeps BatchNormalization nodes (EVAL folds them)."""
    mode = torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL
    if opset is not None:
        kwargs["opset_version"] = opset
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), str(path), input_names=["input"], dynamo=False,
                          training=mode, **kwargs)
    return path


def _example(name: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(zoo.input_shape(name), generator=gen) * 2 - 1


def _optimize():
    passes = pytest.importorskip("mbgen.passes")
    if not hasattr(passes, "optimize"):
        pytest.skip("mbgen.passes.optimize is not written yet")
    return passes.optimize


def _op_count(graph: ir.Graph, op_type: type) -> int:
    return sum(isinstance(n.op, op_type) for n in graph.nodes)


@pytest.fixture(scope="module")
def zoo_exports(tmp_path_factory):
    """(model name, opset) -> (module, example input, .onnx path), exported once per module."""
    cache: dict = {}
    folder = tmp_path_factory.mktemp("zoo_onnx")

    def get(name: str, opset: int | None):
        if (name, opset) not in cache:
            module = zoo.get(name)
            x = _example(name)
            path = _export(module, x, folder / f"{name}_{opset}.onnx", opset)
            cache[(name, opset)] = (module, x, path)
        return cache[(name, opset)]
    return get


# ----------------------------------------------------------------------------- zoo models


# every opset on the small V1; V2 (residual Adds) on the opset the int8 test shares and today's
ZOO_CASES = [("mbv1_0.25_128", opset) for opset in EXPORT_OPSETS] + \
    [("mbv2_0.35_96", 13), ("mbv2_0.35_96", None)]


@pytest.mark.parametrize("name,opset", ZOO_CASES)
def test_zoo_export_matches_pytorch(zoo_exports, name, opset):
    module, x, path = zoo_exports(name, opset)
    graph = load_onnx(path)
    ir.verify(graph)
    assert graph.inputs == ["input"]
    assert graph.tensors["input"].shape == (1, x.shape[2], x.shape[3], 3)
    batchnorms = [m for m in module.modules() if isinstance(m, nn.BatchNorm2d)]
    assert _op_count(graph, ir.BatchNorm) == len(batchnorms)
    depthwise = [m for m in module.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert _op_count(graph, ir.DepthwiseConv2D) == len(depthwise)
    with torch.no_grad():
        want = module(x).numpy()
    got = run_float(graph, _nhwc(x))[graph.outputs[0]]
    assert got.shape == want.shape
    assert _relative_error(got, want) < 1e-4

    optimized = _optimize()(graph)
    ir.verify(optimized)
    assert _op_count(optimized, ir.BatchNorm) == 0
    got = run_float(optimized, _nhwc(x))[optimized.outputs[0]]
    assert _relative_error(got, want) < 1e-4


def test_export_with_batchnorm_folded_by_the_exporter(tmp_path):
    module, x = zoo.get("mbv2_0.35_96"), _example("mbv2_0.35_96", seed=3)
    graph = load_onnx(_export(module, x, tmp_path / "m.onnx", 13, keep_batchnorm=False))
    assert _op_count(graph, ir.BatchNorm) == 0
    assert _op_count(graph, ir.Add) == 10  # the residual connections survive
    with torch.no_grad():
        want = module(x).numpy()
    assert _relative_error(run_float(graph, _nhwc(x))[graph.outputs[0]], want) < 1e-4


def _quantize_input(x_nhwc: np.ndarray, quant: ir.QuantParams) -> np.ndarray:
    q = np.round(x_nhwc / quant.scalar_scale) + quant.scalar_zero_point
    return np.clip(q, -128, 127).astype(np.int8)


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_onnx_and_pytorch_routes_give_identical_int8_outputs(zoo_exports, name):
    torch_frontend = pytest.importorskip("mbgen.frontends.torch_frontend")
    quantizer = pytest.importorskip("mbgen.quantize.quantizer")
    reference = pytest.importorskip("mbgen.reference")
    calibration = pytest.importorskip("mbgen.quantize.calibration")
    optimize = _optimize()
    module, x, path = zoo_exports(name, 13)
    via_onnx = optimize(load_onnx(path))
    via_torch = optimize(torch_frontend.from_module(module, x, name))

    samples = [_nhwc(_example(name, seed)) for seed in (10, 11, 12)]
    for sample in samples:
        np.testing.assert_allclose(run_float(via_onnx, sample)[via_onnx.outputs[0]],
                                   run_float(via_torch, sample)[via_torch.outputs[0]],
                                   rtol=1e-5, atol=1e-5)

    shape_nhwc = via_onnx.tensors["input"].shape
    calib = calibration.synthetic_inputs(shape_nhwc, count=4, seed=0)
    q_onnx = quantizer.quantize(via_onnx, calib)
    q_torch = quantizer.quantize(via_torch, calib)
    in_quant = q_onnx.tensors["input"].quant
    assert in_quant.scalar_scale == q_torch.tensors["input"].quant.scalar_scale
    for sample in samples:
        x_q = _quantize_input(sample, in_quant)
        got = reference.run_int8(q_onnx, x_q)[q_onnx.outputs[0]]
        want = reference.run_int8(q_torch, x_q)[q_torch.outputs[0]]
        assert got.dtype == np.int8
        np.testing.assert_array_equal(got, want)


class _SpatialHead(nn.Module):
    """Conv, then a classifier on a flattened 3x3 map: the FC weights need permuting."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(4, eps=1e-3)
        self.fc = nn.Linear(4 * 3 * 3, 5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.relu6(self.bn(self.conv(x)))
        return self.fc(y.view(y.size(0), -1))


def test_dynamic_batch_shape_chain_and_flatten_permutation(tmp_path):
    module, x = _SpatialHead(), torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    path = _export(module, x, tmp_path / "m.onnx", 13, do_constant_folding=False,
                   dynamic_axes={"input": {0: "batch"}})
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Reshape"} <= ops  # the chain to fold
    graph = load_onnx(path)
    (bn,) = [n for n in graph.nodes if isinstance(n.op, ir.BatchNorm)]
    assert bn.op.eps == pytest.approx(1e-3)  # read from the node, not assumed
    with torch.no_grad():
        want = module(x).numpy()
    assert _relative_error(run_float(graph, _nhwc(x))[graph.outputs[0]], want) < 1e-5


# ----------------------------------------------------------------------------- hand-built graphs


def _value(name: str, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _save(tmp_path: Path, nodes, initializers=(), opset: int = 13, in_shape=(1, 3, 6, 6),
          in_name: str = "x", out_shape=None) -> Path:
    graph = helper.make_graph(
        list(nodes), "test", [_value(in_name, list(in_shape))], [_value("y", out_shape)],
        initializer=[numpy_helper.from_array(np.asarray(a), n) for n, a in initializers])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)
    # the checker wants every graph output to have a shape: let onnx's inference fill them in
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    return path


def _check_against_reference(path: Path, x: np.ndarray, graph: ir.Graph | None = None,
                             tol: float = 1e-5) -> ir.Graph:
    """Run the ONNX graph with onnx's reference evaluator and the IR with run_float."""
    graph = graph or load_onnx(path)
    ir.verify(graph)
    evaluator = ReferenceEvaluator(str(path))
    want = evaluator.run(None, {evaluator.input_names[0]: x})
    got = run_float(graph, _nhwc(x) if x.ndim == 4 else x)
    for name, expected in zip(graph.outputs, want):
        actual = _as_onnx_layout(got[name])
        assert actual.shape == expected.shape
        np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol)
    return graph


def _rand(*shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _conv_node(name: str = "conv", inp: str = "x", out: str = "c", **attrs):
    attrs.setdefault("pads", [1, 1, 1, 1])
    return helper.make_node("Conv", [inp, "w", "b"], [out], name=name, **attrs)


def _conv_inits(out_ch: int = 4, in_ch: int = 3, k: int = 3):
    return [("w", _rand(out_ch, in_ch, k, k, seed=1)), ("b", _rand(out_ch, seed=2))]


def _activation_of(graph: ir.Graph) -> ir.Activation | None:
    ops = [n.op for n in graph.nodes if isinstance(n.op, (ir.ActivationOp, ir.Identity))]
    assert len(ops) == 1
    return ops[0].activation if isinstance(ops[0], ir.ActivationOp) else None


@pytest.mark.parametrize("opset,bounds,expected", [
    (10, "attrs", ir.Activation.RELU6),        # opset < 11: min/max attributes
    (11, "initializers", ir.Activation.RELU6),
    (13, "constants", ir.Activation.RELU6),    # Constant nodes, folded first
    (11, "min only", ir.Activation.RELU),
    (17, "none", None),                        # no bounds: an identity
])
def test_clip_variants(tmp_path, opset, bounds, expected):
    inits = _conv_inits()
    nodes = [_conv_node()]
    if bounds == "attrs":
        nodes.append(helper.make_node("Clip", ["c"], ["y"], name="clip", min=0.0, max=6.0))
    elif bounds == "initializers":
        inits += [("lo", np.array(0.0, np.float32)), ("hi", np.array(6.0, np.float32))]
        nodes.append(helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip"))
    elif bounds == "constants":
        nodes += [helper.make_node("Constant", [], ["lo"], value_float=0.0),
                  helper.make_node("Constant", [], ["hi"], value_float=6.0),
                  helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="clip")]
    elif bounds == "min only":
        inits.append(("lo", np.array(0.0, np.float32)))
        nodes.append(helper.make_node("Clip", ["c", "lo", ""], ["y"], name="clip"))
    else:
        nodes.append(helper.make_node("Clip", ["c"], ["y"], name="clip"))
    x = _rand(1, 3, 6, 6, seed=3) * 4  # large enough to hit both bounds
    graph = _check_against_reference(_save(tmp_path, nodes, inits, opset), x)
    assert _activation_of(graph) == expected


def test_clip_other_range_is_a_user_error(tmp_path):
    inits = _conv_inits() + [("lo", np.array(-1.0, np.float32)), ("hi", np.array(1.0, np.float32))]
    nodes = [_conv_node(), helper.make_node("Clip", ["c", "lo", "hi"], ["y"], name="/act/Clip")]
    with pytest.raises(UserError, match=r"Clip \(node '/act/Clip'\).*\[-1, 1\]"):
        load_onnx(_save(tmp_path, nodes, inits))


@pytest.mark.parametrize("trans_b,alpha,beta,bias_shape", [
    (1, 1.0, 1.0, (5,)), (0, 1.0, 1.0, (1, 5)), (0, 0.5, 2.0, (5,)), (1, 2.0, 0.25, None)])
def test_gemm(tmp_path, trans_b, alpha, beta, bias_shape):
    weight = _rand(5, 8, seed=4) if trans_b else _rand(8, 5, seed=4)
    inits = [("w", weight)]
    inputs = ["x", "w"]
    if bias_shape is not None:
        inits.append(("bias", _rand(*bias_shape, seed=5)))
        inputs.append("bias")
    nodes = [helper.make_node("Gemm", inputs, ["y"], name="fc", transB=trans_b, alpha=alpha,
                              beta=beta)]
    graph = _check_against_reference(_save(tmp_path, nodes, inits, in_shape=(1, 8)),
                                     _rand(1, 8, seed=6))
    assert [type(n.op) for n in graph.nodes] == [ir.FullyConnected]
    assert graph.tensors[graph.nodes[0].inputs[1]].shape == (5, 8)  # (O, I)


def test_gemm_with_transposed_activation_is_a_user_error(tmp_path):
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transA=1)]
    with pytest.raises(UserError, match="transA"):
        load_onnx(_save(tmp_path, nodes, [("w", _rand(1, 5))], in_shape=(1, 8)))


@pytest.mark.parametrize("with_bias", [True, False])
def test_matmul_plus_add_is_one_fully_connected_layer(tmp_path, with_bias):
    inits = [("w", _rand(8, 5, seed=7)), ("bias", _rand(5, seed=8))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m" if with_bias else "y"], name="mm")]
    if with_bias:
        nodes.append(helper.make_node("Add", ["bias", "m"], ["y"], name="add"))
    graph = _check_against_reference(_save(tmp_path, nodes, inits, in_shape=(1, 8)),
                                     _rand(1, 8, seed=9))
    assert [type(n.op) for n in graph.nodes] == [ir.FullyConnected]
    assert len(graph.nodes[0].inputs) == (3 if with_bias else 2)


@pytest.mark.parametrize("opset,form", [(10, "attrs"), (11, "inputs"), (18, "axes")])
def test_pad_then_valid_conv(tmp_path, opset, form):
    pads = [0, 0, 1, 2, 0, 0, 2, 0]  # N, C, H, W begins, then ends: top 1, left 2, bottom 2
    if form == "attrs":
        pad = helper.make_node("Pad", ["x"], ["p"], name="pad", pads=pads, mode="constant")
        inits = []
    elif form == "inputs":
        pad = helper.make_node("Pad", ["x", "pads"], ["p"], name="pad", mode="constant")
        inits = [("pads", np.array(pads, np.int64))]
    else:
        pad = helper.make_node("Pad", ["x", "pads", "", "axes"], ["p"], name="pad")
        inits = [("pads", np.array([1, 2, 2, 0], np.int64)), ("axes", np.array([2, 3], np.int64))]
    nodes = [pad, _conv_node(inp="p", out="y", pads=[0, 0, 0, 0], strides=[2, 2])]
    graph = _check_against_reference(_save(tmp_path, nodes, inits + _conv_inits(), opset),
                                     _rand(1, 3, 6, 6, seed=10))
    (pad_node,) = [n for n in graph.nodes if isinstance(n.op, ir.Pad)]
    assert pad_node.op.padding == ir.Padding(top=1, bottom=2, left=2, right=0)


@pytest.mark.parametrize("pads,mode,match", [
    ([0, 1, 0, 0, 0, 0, 0, 0], "constant", "H and W only"),
    ([0, 0, 1, 1, 0, 0, 1, 1], "reflect", "mode 'reflect'")])
def test_unsupported_pads_are_user_errors(tmp_path, pads, mode, match):
    nodes = [helper.make_node("Pad", ["x", "pads"], ["y"], name="pad", mode=mode)]
    with pytest.raises(UserError, match=match):
        load_onnx(_save(tmp_path, nodes, [("pads", np.array(pads, np.int64))]))


@pytest.mark.parametrize("opset", [11, 13])
def test_reshape_through_constant_shape_chain(tmp_path, opset):
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape, as torch writes x.view(x.size(0), -1)."""
    unsqueeze = (helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0]) if opset < 13 else
                 helper.make_node("Unsqueeze", ["n", "zero_axis"], ["n1"]))
    nodes = [_conv_node(strides=[2, 2]),
             helper.make_node("Shape", ["c"], ["s"]),
             helper.make_node("Gather", ["s", "idx"], ["n"], axis=0),
             unsqueeze,
             helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
             helper.make_node("Reshape", ["c", "target"], ["flat"], name="reshape"),
             helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["y"], name="fc", transB=1)]
    inits = _conv_inits() + [("idx", np.array(0, np.int64)),
                             ("zero_axis", np.array([0], np.int64)),
                             ("minus_one", np.array([-1], np.int64)),
                             ("fc_w", _rand(5, 4 * 3 * 3, seed=11)), ("fc_b", _rand(5, seed=12))]
    if opset < 13:
        inits = [i for i in inits if i[0] != "zero_axis"]
    graph = _check_against_reference(_save(tmp_path, nodes, inits, opset, out_shape=[1, 5]),
                                     _rand(1, 3, 6, 6, seed=13))
    assert [type(n.op) for n in graph.nodes] == [ir.Conv2D, ir.Reshape, ir.FullyConnected]
    assert graph.tensors[graph.nodes[1].outputs[0]].shape == (1, 36)


def test_flattened_feature_map_as_output_is_a_user_error(tmp_path):
    nodes = [_conv_node(), helper.make_node("Flatten", ["c"], ["y"], name="flat")]
    with pytest.raises(UserError, match="NCHW order"):
        load_onnx(_save(tmp_path, nodes, _conv_inits()))


def test_flatten_and_unflatten_round_trip(tmp_path):
    nodes = [_conv_node(), helper.make_node("Flatten", ["c"], ["f"]),
             helper.make_node("Relu", ["f"], ["r"]),
             helper.make_node("Reshape", ["r", "shape"], ["y"])]
    inits = _conv_inits() + [("shape", np.array([1, 4, 6, 6], np.int64))]
    _check_against_reference(_save(tmp_path, nodes, inits), _rand(1, 3, 6, 6, seed=14))


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv(tmp_path, multiplier):
    inits = [("w", _rand(3 * multiplier, 1, 3, 3, seed=15)), ("b", _rand(3 * multiplier, seed=16))]
    nodes = [_conv_node(out="y", group=3, strides=[2, 1], pads=[0, 1, 2, 1])]
    path = _save(tmp_path, nodes, inits, in_shape=(1, 3, 7, 6))
    graph = _check_against_reference(path, _rand(1, 3, 7, 6, seed=17))
    (node,) = graph.nodes
    assert isinstance(node.op, ir.DepthwiseConv2D)
    assert node.op.depth_multiplier == multiplier
    assert node.op.padding == ir.Padding(top=0, bottom=2, left=1, right=1)


def test_grouped_conv_is_a_user_error(tmp_path):
    inits = [("w", _rand(4, 2, 3, 3)), ("b", _rand(4))]
    nodes = [_conv_node(out="y", group=2)]
    with pytest.raises(UserError, match="group=2"):
        load_onnx(_save(tmp_path, nodes, inits, in_shape=(1, 4, 6, 6)))


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv_auto_pad(tmp_path, auto_pad):
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], auto_pad=auto_pad, strides=[2, 2])
    _check_against_reference(_save(tmp_path, [node], _conv_inits(k=4), in_shape=(1, 3, 7, 7)),
                             _rand(1, 3, 7, 7, seed=18))


def test_hard_swish_spelled_with_hard_sigmoid(tmp_path):
    nodes = [_conv_node(),
             helper.make_node("HardSigmoid", ["c"], ["g"], alpha=1.0 / 6.0, beta=0.5),
             helper.make_node("Mul", ["c", "g"], ["y"], name="hswish")]
    x = _rand(1, 3, 6, 6, seed=19) * 3
    graph = _check_against_reference(_save(tmp_path, nodes, _conv_inits(), opset=13), x)
    assert [type(n.op) for n in graph.nodes] == [ir.Conv2D, ir.HardSwish]


def test_hard_swish_op(tmp_path):
    nodes = [_conv_node(), helper.make_node("HardSwish", ["c"], ["y"])]
    graph = _check_against_reference(_save(tmp_path, nodes, _conv_inits(), opset=14),
                                     _rand(1, 3, 6, 6, seed=20) * 3)
    assert [type(n.op) for n in graph.nodes] == [ir.Conv2D, ir.HardSwish]


@pytest.mark.parametrize("attrs", [{}, {"alpha": 1.0 / 6.0}, {"alpha": 0.3, "beta": 0.4}])
def test_standalone_hard_sigmoid_any_alpha_beta(tmp_path, attrs):
    nodes = [_conv_node(), helper.make_node("HardSigmoid", ["c"], ["y"], name="/se/gate",
                                            **attrs)]
    graph = _check_against_reference(_save(tmp_path, nodes, _conv_inits()),
                                     _rand(1, 3, 6, 6, seed=23) * 3)
    # two 1x1 depthwise layers: relu6(6 alpha x + 6 beta), then * 1/6
    assert [type(n.op) for n in graph.nodes] == [ir.Conv2D] + [ir.DepthwiseConv2D] * 2


def test_squeeze_excite_style_channel_scale(tmp_path):
    nodes = [_conv_node(), helper.make_node("GlobalAveragePool", ["c"], ["m"]),
             helper.make_node("Sigmoid", ["m"], ["s"]),
             helper.make_node("Mul", ["s", "c"], ["y"], name="scale")]
    graph = _check_against_reference(_save(tmp_path, nodes, _conv_inits()),
                                     _rand(1, 3, 6, 6, seed=21))
    (mul,) = [n for n in graph.nodes if isinstance(n.op, ir.Mul)]
    assert graph.tensors[mul.inputs[1]].shape == (1, 1, 1, 4)  # the broadcast operand second


@pytest.mark.parametrize("op", ["Mul", "Add"])
def test_constant_operand_of_add_or_mul_is_a_user_error(tmp_path, op):
    nodes = [_conv_node(), helper.make_node(op, ["c", "k"], ["y"], name="affine")]
    inits = _conv_inits() + [("k", _rand(4, 1, 1, seed=22))]
    with pytest.raises(UserError, match=rf"{op} \(node 'affine'\) with the constant operand 'k'"):
        load_onnx(_save(tmp_path, nodes, inits))


@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_average_pool_with_padding(tmp_path, count_include_pad):
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                            pads=[1, 1, 1, 1], count_include_pad=count_include_pad)
    graph = _check_against_reference(_save(tmp_path, [node], in_shape=(1, 3, 7, 7)),
                                     _rand(1, 3, 7, 7, seed=24))
    # counting the padding is spelled as an explicit zero Pad before an unpadded pool
    assert _op_count(graph, ir.Pad) == count_include_pad


def test_average_pool_ceil_mode_that_adds_windows_is_a_user_error(tmp_path):
    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                            ceil_mode=1, name="pool")
    with pytest.raises(UserError, match="ceil_mode"):
        load_onnx(_save(tmp_path, [node], in_shape=(1, 3, 7, 7)))


@pytest.mark.parametrize("opset,keepdims", [(13, 1), (13, 0), (18, 0)])
def test_reduce_mean_softmax_head(tmp_path, opset, keepdims):
    mean = (helper.make_node("ReduceMean", ["c"], ["m"], axes=[2, 3], keepdims=keepdims)
            if opset < 18 else helper.make_node("ReduceMean", ["c", "axes"], ["m"],
                                                keepdims=keepdims))
    nodes = [_conv_node(), mean]
    inits = _conv_inits() + [("axes", np.array([-2, -1], np.int64))]
    if keepdims:
        nodes.append(helper.make_node("Flatten", ["m"], ["f"]))
    nodes += [helper.make_node("Dropout", ["f" if keepdims else "m"], ["d"]),
              helper.make_node("Softmax", ["d"], ["y"], axis=1)]
    graph = _check_against_reference(_save(tmp_path, nodes, inits, opset),
                                     _rand(1, 3, 6, 6, seed=25))
    assert _op_count(graph, ir.Mean) == 1 and _op_count(graph, ir.Softmax) == 1


def test_batchnorm_epsilon_and_identity_of_initializer(tmp_path):
    # opset 15: onnx's reference evaluator runs BatchNormalization-9..14 with batch statistics
    nodes = [_conv_node(), helper.make_node("Identity", ["gamma0"], ["gamma"]),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"],
                              ["y"], epsilon=0.01)]
    inits = _conv_inits() + [("gamma0", _rand(4, seed=26)), ("beta", _rand(4, seed=27)),
                             ("mean", _rand(4, seed=28)),
                             ("var", np.abs(_rand(4, seed=29)) + 0.1)]
    graph = _check_against_reference(_save(tmp_path, nodes, inits, opset=15),
                                     _rand(1, 3, 6, 6, seed=30))
    (bn,) = [n for n in graph.nodes if isinstance(n.op, ir.BatchNorm)]
    assert bn.op.eps == pytest.approx(0.01)


def test_graph_input_is_named_input_and_batch_may_be_symbolic(tmp_path):
    nodes = [_conv_node(inp="image", out="y")]
    path = _save(tmp_path, nodes, _conv_inits(), in_shape=("N", 3, 6, 6), in_name="image")
    graph = _check_against_reference(path, _rand(1, 3, 6, 6, seed=31))
    assert graph.inputs == ["input"] and graph.tensors["input"].shape == (1, 6, 6, 3)


@pytest.mark.parametrize("in_shape,match", [
    ((1, 3, "H", 6), "dynamic dimension 'H'"),
    ((2, 3, 6, 6), "batch size 2")])
def test_non_static_or_batched_input_is_a_user_error(tmp_path, in_shape, match):
    with pytest.raises(UserError, match=match):
        load_onnx(_save(tmp_path, [_conv_node(out="y")], _conv_inits(), in_shape=in_shape))


# ----------------------------------------------------------------------------- errors


def test_unsupported_op_is_named_with_its_node(tmp_path):
    nodes = [_conv_node(), helper.make_node("LeakyRelu", ["c"], ["y"],
                                            name="/features/3/LeakyRelu")]
    with pytest.raises(UserError) as err:
        load_onnx(_save(tmp_path, nodes, _conv_inits()))
    assert str(err.value) == "unsupported ONNX op 'LeakyRelu' (node '/features/3/LeakyRelu')"


def _corrupt_files(tmp_path: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    files = {
        "random": np.random.default_rng(0).bytes(4096),
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "text": b"this is not a model\n" * 20,
    }
    paths = {}
    for kind, content in files.items():
        paths[kind] = tmp_path / f"{kind}.onnx"
        paths[kind].write_bytes(content)
    paths["missing"] = tmp_path / "missing.onnx"
    paths["directory"] = tmp_path
    return paths


@pytest.mark.parametrize("kind", ["random", "truncated", "empty", "text", "missing",
                                  "directory"])
def test_unreadable_files_are_one_line_user_errors(tmp_path, kind):
    good = _save(tmp_path, [_conv_node(out="y")], _conv_inits(out_ch=64, in_ch=32),
                 in_shape=(1, 32, 6, 6))
    path = _corrupt_files(tmp_path, good)[kind]
    with pytest.raises(UserError) as err:
        load_onnx(path)
    message = str(err.value)
    assert "\n" not in message and str(path.name) in message


def test_non_float_input_is_a_user_error(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT8, [1, 4])])
    path = tmp_path / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    with pytest.raises(UserError, match="float32"):
        load_onnx(path)
