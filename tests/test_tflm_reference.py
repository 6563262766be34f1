"""TFLM as the independent reference: real models and single-op graphs, bit for bit.

* person_detect.tflite (made by Google, not by us) on the five shared images: our numpy
  reference (``mbgen.reference.run_int8``) must give exactly TFLM's output, every
  intermediate tensor included, and MODELS.md's published raw values.
* A table of small random int8 graphs, one op each, written with our TFLite writer and run
  in TFLM: the reference must match TFLM exactly. Each case is checked to produce a spread of
  output values, so a degenerate (all-saturated) case cannot pass by accident.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from mbgen import ir

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PERSON_DETECT = SHARED / "models" / "person_detect.tflite"

runtime = pytest.importorskip("tflite_micro.python.tflite_micro.runtime",
                              reason="TFLM reference needs the tflite-micro package")

from mbgen.export.tflite_writer import write_tflite  # noqa: E402
from mbgen.reference import run_int8  # noqa: E402
from mbgen.tflm import run_tflm, run_tflm_tensors, tflm_arena_bytes  # noqa: E402

# MODELS.md: TFLM's raw int8 [notperson, person] for each image.
PERSON_DETECT_EXPECTED = {
    "person.bmp": [-113, 113],
    "no_person.bmp": [77, -77],
    "grace_hopper.bmp": [-114, 114],
    "cat.bmp": [19, -19],
    "hot_dog.jpg": [-62, 62],
}


def _needs(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"{path} is missing (shared models/images not present)")


def _person_detect_input(image: str) -> np.ndarray:
    from mbgen.images import load_image
    path = SHARED / "images" / image
    _needs(path)
    # MODELS.md: grey 96x96, int8 = p - 128; person.bmp stores grey - 128, so flip bit 7.
    pixels = load_image(path, (1, 96, 96, 1), "uint8_minus128",
                        xor_0x80=(image == "person.bmp"))
    return pixels.astype(np.int8)


@pytest.fixture(scope="module")
def person_detect_graph() -> ir.Graph:
    from mbgen.frontends.tflite_frontend import load_tflite
    _needs(PERSON_DETECT)
    return load_tflite(PERSON_DETECT)


@pytest.mark.parametrize("image", sorted(PERSON_DETECT_EXPECTED))
def test_person_detect_reference_equals_tflm_and_models_md(person_detect_graph, image):
    x = _person_detect_input(image)
    ours = run_int8(person_detect_graph, x)[person_detect_graph.outputs[0]]
    theirs = run_tflm(PERSON_DETECT, x)
    assert ours.dtype == theirs.dtype == np.int8
    assert ours.tolist() == theirs.tolist() == [PERSON_DETECT_EXPECTED[image]]


@pytest.mark.parametrize("image", ["grace_hopper.bmp", "hot_dog.jpg"])
def test_person_detect_every_intermediate_tensor_equals_tflm(person_detect_graph, image):
    x = _person_detect_input(image)
    ours = run_int8(person_detect_graph, x, keep_all=True)
    theirs = run_tflm_tensors(PERSON_DETECT, x)
    activations = [n.outputs[0] for n in person_detect_graph.nodes]
    assert len(activations) == 31
    for name in activations:  # IR tensor names are the file's names
        assert np.array_equal(ours[name], theirs[name]), f"first mismatch at {name}"


def test_tflm_arena_matches_models_md():
    _needs(PERSON_DETECT)
    assert tflm_arena_bytes(PERSON_DETECT) == 85_264  # MODELS.md: bisection and recorder agree
    assert tflm_arena_bytes(PERSON_DETECT.read_bytes()) == 85_264  # cached by content
    x = np.zeros((1, 96, 96, 1), np.int8)
    assert run_tflm(PERSON_DETECT, x, arena_size=85_264).shape == (1, 2)


@pytest.mark.slow
def test_quantized_zoo_model_written_by_us_runs_bit_exactly_in_tflm(tmp_path):
    """Our whole int8 route (torch frontend, passes, quantizer) yields graphs that TFLM runs
    exactly as our reference does: MobileNetV2 brings ADD and MEAN along."""
    from mbgen.compiler import CompileOptions, prepare
    graph = prepare("mbv2_0.35_96", CompileOptions(calib_count=4)).graph
    assert {"Add", "Mean", "FullyConnected"} <= {ir.op_name(n.op) for n in graph.nodes}
    path = write_tflite(graph, tmp_path / "mbv2.tflite")
    rng = np.random.default_rng(0)
    for _ in range(2):
        x = rng.integers(-128, 128, graph.tensors[graph.inputs[0]].shape).astype(np.int8)
        ours = run_int8(graph, x)[graph.outputs[0]]
        assert np.array_equal(ours, run_tflm(path, x))
        assert len(np.unique(ours)) > 20
    arena = tflm_arena_bytes(path)  # TFLM segfaults on some too-small arenas of this model
    assert run_tflm(path, x, arena_size=arena).shape == (1, 1000)


def test_tflm_refuses_too_small_arena_and_wrong_input():
    from mbgen.errors import RunFailure, UserError
    _needs(PERSON_DETECT)
    with pytest.raises(RunFailure, match="TFLM could not run"):
        run_tflm(PERSON_DETECT, np.zeros((1, 96, 96, 1), np.int8), arena_size=85_263)
    with pytest.raises(UserError, match="must be int8"):
        run_tflm(PERSON_DETECT, np.zeros((1, 96, 96, 1), np.float32))


# ----------------------------------------------------------------------------- single ops


def act(name: str, shape: tuple[int, ...], scale: float, zero_point: int) -> ir.Tensor:
    return ir.Tensor(name, shape, "int8", None, ir.QuantParams.per_tensor(scale, zero_point))


class GraphMaker:
    """Builds one-op int8 graphs with random constants, TFLite-converter style."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.tensors: dict[str, ir.Tensor] = {}
        self.nodes: list[ir.Node] = []

    def scale(self, low: float, high: float) -> float:
        return float(np.float32(math.exp(self.rng.uniform(math.log(low), math.log(high)))))

    def zp(self, spread: int = 40) -> int:
        return int(self.rng.integers(-spread, spread + 1))

    def input(self, shape, scale=None, zero_point=None) -> ir.Tensor:
        t = act("x", tuple(shape), scale or self.scale(0.01, 0.1),
                self.zp() if zero_point is None else zero_point)
        self.tensors[t.name] = t
        return t

    def add(self, t: ir.Tensor) -> ir.Tensor:
        self.tensors[t.name] = t
        return t

    def weights(self, name: str, shape, axis: int | None) -> ir.Tensor:
        channels = shape[axis] if axis is not None else 1
        scales = np.array([self.scale(0.002, 0.02) for _ in range(channels)], np.float32)
        data = self.rng.integers(-127, 128, size=shape, dtype=np.int64).astype(np.int8)
        quant = ir.QuantParams(scales, np.zeros(channels, np.int32), axis)
        return self.add(ir.Tensor(name, tuple(shape), "int8", data, quant))

    def bias(self, name: str, x: ir.Tensor, w: ir.Tensor, channels: int) -> ir.Tensor:
        w_scales = np.broadcast_to(w.quant.scale, (channels,))
        scales = (np.float32(x.quant.scalar_scale) * w_scales).astype(np.float32)
        data = self.rng.integers(-3000, 3001, size=channels).astype(np.int32)
        quant = ir.QuantParams(scales, np.zeros(channels, np.int32), 0 if channels > 1 else None)
        return self.add(ir.Tensor(name, (channels,), "int32", data, quant))

    def conv_output_scale(self, x: ir.Tensor, w: ir.Tensor, depth: int) -> float:
        # An accumulator of ``depth`` products of ~uniform int8 values has a standard deviation
        # of about sqrt(depth) * 74 * 73; aim for ~40 LSB of output spread.
        real_std = math.sqrt(depth) * 74 * 73 * x.quant.scalar_scale * float(np.mean(w.quant.scale))
        return float(np.float32(real_std / 40))

    def node(self, op: ir.OpAttrs, inputs: list[str], out: ir.Tensor) -> None:
        self.add(out)
        self.nodes.append(ir.Node("op", op, inputs, [out.name]))

    def graph(self, name: str, inputs: tuple[str, ...] = ("x",)) -> ir.Graph:
        g = ir.Graph(name, dict(self.tensors), list(self.nodes), list(inputs),
                     [self.nodes[-1].outputs[0]])
        ir.verify(g)
        return g


def _out_size(size: int, k: int, s: int, d: int, before: int, after: int) -> int:
    return (size + before + after - ((k - 1) * d + 1)) // s + 1


def conv_case(hw=(8, 8), cin=3, cout=4, k=(3, 3), stride=(1, 1), padding="same",
              activation=ir.Activation.NONE, dilation=(1, 1), bias=True):
    def build(m: GraphMaker) -> ir.Graph:
        x = m.input((1, *hw, cin))
        w = m.weights("w", (cout, *k, cin), axis=0)
        pad = _padding(padding, hw, k, stride, dilation)
        oh = _out_size(hw[0], k[0], stride[0], dilation[0], pad.top, pad.bottom)
        ow = _out_size(hw[1], k[1], stride[1], dilation[1], pad.left, pad.right)
        out = act("y", (1, oh, ow, cout), m.conv_output_scale(x, w, k[0] * k[1] * cin), m.zp())
        inputs = ["x", "w"] + (["b"] if bias else [])
        if bias:
            m.bias("b", x, w, cout)
        m.node(ir.Conv2D(stride, pad, dilation, activation), inputs, out)
        return m.graph("conv")
    return build


def depthwise_case(hw=(9, 9), cin=4, multiplier=1, k=(3, 3), stride=(1, 1), padding="same",
                   activation=ir.Activation.RELU6):
    def build(m: GraphMaker) -> ir.Graph:
        x = m.input((1, *hw, cin))
        cout = cin * multiplier
        w = m.weights("w", (1, *k, cout), axis=3)
        pad = _padding(padding, hw, k, stride, (1, 1))
        oh = _out_size(hw[0], k[0], stride[0], 1, pad.top, pad.bottom)
        ow = _out_size(hw[1], k[1], stride[1], 1, pad.left, pad.right)
        out = act("y", (1, oh, ow, cout), m.conv_output_scale(x, w, k[0] * k[1]), m.zp())
        m.bias("b", x, w, cout)
        m.node(ir.DepthwiseConv2D(stride, pad, multiplier, (1, 1), activation),
               ["x", "w", "b"], out)
        return m.graph("depthwise")
    return build


def _padding(spec, hw, k, stride, dilation) -> ir.Padding:
    if spec == "same":
        return ir.Padding.same(*hw, *k, *stride, *dilation)
    if spec == "valid":
        return ir.Padding()
    return spec


def fc_case(n_in=20, n_out=7, activation=ir.Activation.NONE):
    def build(m: GraphMaker) -> ir.Graph:
        x = m.input((1, n_in))
        w = m.weights("w", (n_out, n_in), axis=None)
        m.bias("b", x, w, n_out)
        out = act("y", (1, n_out), m.conv_output_scale(x, w, n_in), m.zp())
        m.node(ir.FullyConnected(activation), ["x", "w", "b"], out)
        return m.graph("fc")
    return build


def add_case(shape=(1, 5, 6, 7), activation=ir.Activation.NONE):
    def build(m: GraphMaker) -> ir.Graph:
        x = m.input(shape)
        b = m.add(act("x2", shape, m.scale(0.01, 0.1), m.zp()))
        out = act("y", shape, 1.5 * max(x.quant.scalar_scale, b.quant.scalar_scale), m.zp())
        m.node(ir.Add(activation), ["x", "x2"], out)
        return m.graph("add", ("x", "x2"))
    return build


def mul_case(shape=(1, 5, 6, 7), other=None, activation=ir.Activation.NONE):
    def build(m: GraphMaker) -> ir.Graph:
        x = m.input(shape)
        b = m.add(act("x2", other or shape, m.scale(0.01, 0.1), m.zp()))
        out = act("y", shape, 40 * x.quant.scalar_scale * b.quant.scalar_scale, m.zp())
        m.node(ir.Mul(activation), ["x", "x2"], out)
        return m.graph("mul", ("x", "x2"))
    return build


def avgpool_case(hw=(7, 9), c=5, k=(3, 3), stride=(2, 2), padding="same",
                 activation=ir.Activation.NONE):
    def build(m: GraphMaker) -> ir.Graph:
        x = m.input((1, *hw, c))
        pad = _padding(padding, hw, k, stride, (1, 1))
        oh = _out_size(hw[0], k[0], stride[0], 1, pad.top, pad.bottom)
        ow = _out_size(hw[1], k[1], stride[1], 1, pad.left, pad.right)
        out = act("y", (1, oh, ow, c), x.quant.scalar_scale, x.quant.scalar_zero_point)
        m.node(ir.AveragePool2D(k, stride, pad, activation), ["x"], out)
        return m.graph("avgpool")
    return build


def mean_case(hw=(5, 7), c=6, keep_dims=True, same_quant=True):
    def build(m: GraphMaker) -> ir.Graph:
        x = m.input((1, *hw, c))
        shape = (1, 1, 1, c) if keep_dims else (1, c)
        if same_quant:
            out = act("y", shape, x.quant.scalar_scale, x.quant.scalar_zero_point)
        else:
            out = act("y", shape, x.quant.scalar_scale * m.rng.uniform(0.3, 0.9), m.zp())
        m.node(ir.Mean((1, 2), keep_dims), ["x"], out)
        return m.graph("mean")
    return build


def softmax_case(n=10, beta=1.0):
    def build(m: GraphMaker) -> ir.Graph:
        m.input((1, n), scale=m.scale(0.005, 0.03))  # logits spread over ~1..8
        out = act("y", (1, n), 1.0 / 256, -128)
        m.node(ir.Softmax(beta), ["x"], out)
        return m.graph("softmax")
    return build


def pad_case(hw=(4, 5), c=3, padding=ir.Padding(1, 2, 0, 3)):
    def build(m: GraphMaker) -> ir.Graph:
        x = m.input((1, *hw, c))
        shape = (1, hw[0] + padding.top + padding.bottom, hw[1] + padding.left + padding.right, c)
        out = act("y", shape, x.quant.scalar_scale, x.quant.scalar_zero_point)
        m.node(ir.Pad(padding), ["x"], out)
        return m.graph("pad")
    return build


def unary_case(op: ir.OpAttrs, shape=(1, 6, 6, 8), output=None):
    """HardSwish, Logistic, ReLU, ReLU6, int8->int8 Quantize. ``output``: fixed (scale, zp)."""
    def build(m: GraphMaker) -> ir.Graph:
        m.input(shape, scale=m.scale(0.02, 0.08))
        scale, zp = output or (m.scale(0.01, 0.06), m.zp())
        m.node(op, ["x"], act("y", shape, scale, zp))
        return m.graph(ir.op_name(op).lower())
    return build


def quantize_float_case(shape=(1, 4, 4, 3)):
    def build(m: GraphMaker) -> ir.Graph:
        m.add(ir.Tensor("x", shape, "float32"))
        m.node(ir.Quantize(), ["x"], act("y", shape, m.scale(0.01, 0.05), m.zp()))
        return m.graph("quantize_float")
    return build


def dequantize_case(shape=(1, 4, 4, 3)):
    def build(m: GraphMaker) -> ir.Graph:
        m.input(shape)
        m.node(ir.Dequantize(), ["x"], ir.Tensor("y", shape, "float32"))
        return m.graph("dequantize")
    return build


@dataclass(frozen=True)
class OpCase:
    name: str
    build: Callable[[GraphMaker], ir.Graph]
    min_distinct: int = 8  # the output must take at least this many values


RELU, RELU6 = ir.Activation.RELU, ir.Activation.RELU6
OP_CASES = [
    OpCase("conv3x3_same", conv_case()),
    OpCase("conv1x1", conv_case(k=(1, 1), padding="valid", cin=16, cout=8)),
    OpCase("conv3x3_stride2_odd_same", conv_case(hw=(9, 7), stride=(2, 2))),
    OpCase("conv3x3_stride2_odd_valid_relu", conv_case(hw=(11, 8), stride=(2, 2),
                                                       padding="valid", activation=RELU)),
    OpCase("conv_asymmetric_pad_relu6", conv_case(hw=(6, 7), padding=ir.Padding(0, 2, 1, 0),
                                                  activation=RELU6), min_distinct=4),
    OpCase("conv_symmetric_pad_stride2", conv_case(hw=(8, 8), stride=(2, 2),
                                                   padding=ir.Padding(1, 1, 1, 1))),
    OpCase("conv_5x3_no_bias", conv_case(k=(5, 3), bias=False)),
    OpCase("conv_dilated", conv_case(hw=(9, 9), dilation=(2, 2))),
    OpCase("depthwise_m1", depthwise_case()),
    OpCase("depthwise_m1_stride2_odd", depthwise_case(hw=(9, 11), stride=(2, 2),
                                                      activation=ir.Activation.NONE)),
    OpCase("depthwise_m8_from_1ch", depthwise_case(hw=(10, 10), cin=1, multiplier=8,
                                                   stride=(2, 2))),
    OpCase("depthwise_m8_from_2ch", depthwise_case(cin=2, multiplier=8,
                                                   activation=ir.Activation.NONE)),
    OpCase("depthwise_asymmetric_pad", depthwise_case(padding=ir.Padding(2, 0, 0, 1),
                                                      activation=ir.Activation.NONE)),
    OpCase("fully_connected", fc_case(), 5),
    OpCase("fully_connected_relu", fc_case(n_in=64, n_out=10, activation=RELU), 4),
    OpCase("add", add_case()),
    OpCase("add_relu6", add_case(activation=RELU6), 4),
    OpCase("mul", mul_case()),
    OpCase("mul_per_channel", mul_case(other=(1, 1, 1, 7))),
    OpCase("avgpool_3x3_s2_same", avgpool_case()),
    OpCase("avgpool_2x2_s2_valid", avgpool_case(hw=(8, 6), k=(2, 2), padding="valid")),
    OpCase("avgpool_global", avgpool_case(hw=(5, 5), k=(5, 5), stride=(1, 1),
                                          padding="valid"), 3),
    OpCase("mean_same_quant", mean_case(), 3),
    OpCase("mean_requantized", mean_case(same_quant=False), 3),
    OpCase("mean_flat", mean_case(keep_dims=False, hw=(3, 3), c=16), 5),
    OpCase("softmax", softmax_case(), 5),
    OpCase("softmax_beta", softmax_case(n=40, beta=0.5), 5),
    OpCase("pad", pad_case()),
    OpCase("hardswish", unary_case(ir.HardSwish())),
    OpCase("logistic", unary_case(ir.Logistic(), output=(1.0 / 256, -128))),
    OpCase("relu", unary_case(ir.ActivationOp(RELU))),
    OpCase("relu6", unary_case(ir.ActivationOp(RELU6), output=None)),
    OpCase("requantize", unary_case(ir.Quantize())),
    OpCase("quantize_float", quantize_float_case()),
    OpCase("dequantize", dequantize_case()),
]
SEEDS = (0, 1, 2)


def random_inputs(graph: ir.Graph, rng: np.random.Generator) -> dict[str, np.ndarray]:
    values = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        if t.dtype == "int8":
            values[name] = rng.integers(-128, 128, size=t.shape).astype(np.int8)
        else:
            values[name] = rng.normal(0, 2.0, size=t.shape).astype(np.float32)
    return values


def build_case(case: OpCase, seed: int) -> ir.Graph:
    return case.build(GraphMaker(np.random.default_rng(seed)))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_single_op_reference_equals_tflm(case, seed, tmp_path):
    graph = build_case(case, seed)
    path = write_tflite(graph, tmp_path / f"{case.name}.tflite")
    inputs = random_inputs(graph, np.random.default_rng(100 + seed))
    ours = run_int8(graph, inputs)[graph.outputs[0]]
    theirs = run_tflm(path, [inputs[n] for n in graph.inputs])
    assert ours.dtype == theirs.dtype
    assert ours.shape == theirs.shape
    if ours.dtype == np.float32:
        assert np.array_equal(ours.view(np.int32), theirs.view(np.int32))
    else:
        diff = np.argwhere(ours != theirs)
        assert diff.size == 0, (f"{case.name}: {len(diff)} of {ours.size} values differ, first "
                                f"at {tuple(diff[0])}: ours {ours[tuple(diff[0])]}, "
                                f"TFLM {theirs[tuple(diff[0])]}")
    assert len(np.unique(theirs)) >= case.min_distinct, "degenerate case: output too uniform"


def test_a_wrong_reference_would_be_caught(tmp_path):
    """The parity check is sensitive: one changed bias LSB-step changes TFLM's output."""
    graph = build_case(OP_CASES[0], 0)
    inputs = random_inputs(graph, np.random.default_rng(7))
    tampered = graph.copy()
    b = tampered.tensors["b"]
    tampered.tensors["b"] = ir.Tensor(b.name, b.shape, b.dtype, b.data + 200, b.quant)
    path = write_tflite(graph, tmp_path / "conv.tflite")
    assert not np.array_equal(run_int8(tampered, inputs)["y"], run_tflm(path, inputs["x"]))
