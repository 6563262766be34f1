"""Generated C, built with the host `cc -Werror`, against the numpy int8 reference (and TFLM).

The golden values come from ``mbgen.reference.run_int8`` (numpy, written independently of
the C kernels) and, when the tflite-micro wheel is installed, from TFLM itself running the
same graph exported to .tflite. Never from the generated C.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from helpers_c import build, build_folder, run
from mbgen import codegen, ir
from mbgen.errors import UserError
from mbgen.reference import run_int8

A = ir.Activation
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


# ----------------------------------------------------------------------------- graph builder


class GraphBuilder:
    """Small int8 graphs with random weights, per-channel scales and realistic zero points.

    Output scales follow the accumulator spread measured on a probe input (the input's
    actual spread, run through the reference), so outputs use much of the int8 range instead
    of saturating or collapsing to a few values, either of which would hide bugs. Choosing
    quantisation parameters this way is test data, not a golden value.
    """

    def __init__(self, seed: int, name: str = "case"):
        self.rng = np.random.default_rng(seed)
        self.name = name
        self.tensors: dict[str, ir.Tensor] = {}
        self.nodes: list[ir.Node] = []
        self.inputs: list[str] = []
        self._count = 0

    def _new(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def activation(self, shape: tuple[int, ...], scale: float, zero_point: int) -> str:
        name = self._new("act")
        self.tensors[name] = ir.Tensor(name, tuple(shape), "int8", None,
                                       ir.QuantParams.per_tensor(float(np.float32(scale)),
                                                                 int(zero_point)))
        return name

    def constant(self, data: np.ndarray, dtype: str, quant: ir.QuantParams | None) -> str:
        name = self._new("const")
        self.tensors[name] = ir.Tensor(name, tuple(data.shape), dtype, data.astype(dtype), quant)
        return name

    def input(self, shape: tuple[int, ...], scale: float = 0.04, zero_point: int = -7) -> str:
        name = self.activation(shape, scale, zero_point)
        self.inputs.append(name)
        return name

    def _spread(self, name: str) -> float:
        """Standard deviation of q - zero_point of ``name`` on a fixed random probe input."""
        if name in self.inputs:
            return 74.0  # uniform random int8
        probe_graph = ir.Graph("probe", self.tensors, list(self.nodes), list(self.inputs), [name])
        x = np.random.default_rng(0).integers(
            -128, 128, size=self.tensors[self.inputs[0]].shape).astype(np.int8)
        values = run_int8(probe_graph, x)[name].astype(np.float64)
        return max(float(np.std(values - self.quant(name).scalar_zero_point)), 1.0)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.tensors[name].shape

    def quant(self, name: str) -> ir.QuantParams:
        return self.tensors[name].quant

    def _out_zero_point(self, act: ir.Activation) -> int:
        return -128 if act is not A.NONE else int(self.rng.integers(-30, 31))

    def _node(self, op: ir.OpAttrs, inputs: list[str], output: str) -> str:
        self.nodes.append(ir.Node(self._new(ir.op_name(op).lower()), op, inputs, [output]))
        return output

    def _weighted(self, x: str, weight_shape: tuple[int, ...], axis: int | None,
                  out_shape: tuple[int, ...], op: ir.OpAttrs, fan_in: int,
                  act: ir.Activation, with_bias: bool = True) -> str:
        channels = weight_shape[axis if axis is not None else 0]
        n_scales = channels if axis is not None else 1
        weights = self.rng.integers(-127, 128, size=weight_shape)
        w_scale = self.rng.uniform(0.002, 0.02, size=n_scales).astype(np.float32)
        w = self.constant(weights, "int8", ir.QuantParams(
            w_scale, np.zeros(n_scales, np.int32), axis))
        in_scale = np.float32(self.quant(x).scalar_scale)
        b_scale = (in_scale * np.broadcast_to(w_scale, (channels,))).astype(np.float32)
        spread = self._spread(x)
        bias = self.constant(self.rng.integers(-30, 31, size=channels) * int(spread * 10), "int32",
                             ir.QuantParams(b_scale, np.zeros(channels, np.int32), 0))
        # accumulator std ~ spread(x) * std(w) (73 for uniform weights) * sqrt(fan_in); aim
        # for an output std of about 45 levels
        out_scale = float(in_scale * w_scale.mean() * spread * 73 * np.sqrt(fan_in) / 45)
        y = self.activation(out_shape, out_scale, self._out_zero_point(act))
        return self._node(op, [x, w, bias] if with_bias else [x, w], y)

    @staticmethod
    def _out_size(size: int, pad: int, k: int, stride: int, dilation: int) -> int:
        return (size + pad - (k - 1) * dilation - 1) // stride + 1

    def conv(self, x: str, out_c: int, k: tuple[int, int] = (3, 3),
             stride: tuple[int, int] = (1, 1), padding: ir.Padding | None = None,
             dilation: tuple[int, int] = (1, 1), act: ir.Activation = A.RELU6,
             with_bias: bool = True) -> str:
        _, h, w, c = self.shape(x)
        p = padding or ir.Padding.same(h, w, *k, *stride, *dilation)
        oh = self._out_size(h, p.top + p.bottom, k[0], stride[0], dilation[0])
        ow = self._out_size(w, p.left + p.right, k[1], stride[1], dilation[1])
        return self._weighted(x, (out_c, k[0], k[1], c), 0, (1, oh, ow, out_c),
                              ir.Conv2D(stride, p, dilation, act), k[0] * k[1] * c, act,
                              with_bias)

    def depthwise(self, x: str, multiplier: int = 1, k: tuple[int, int] = (3, 3),
                  stride: tuple[int, int] = (1, 1), padding: ir.Padding | None = None,
                  dilation: tuple[int, int] = (1, 1), act: ir.Activation = A.RELU6) -> str:
        _, h, w, c = self.shape(x)
        p = padding or ir.Padding.same(h, w, *k, *stride, *dilation)
        oh = self._out_size(h, p.top + p.bottom, k[0], stride[0], dilation[0])
        ow = self._out_size(w, p.left + p.right, k[1], stride[1], dilation[1])
        op = ir.DepthwiseConv2D(stride, p, multiplier, dilation, act)
        return self._weighted(x, (1, k[0], k[1], c * multiplier), 3,
                              (1, oh, ow, c * multiplier), op, k[0] * k[1], act)

    def fully_connected(self, x: str, out_features: int, act: ir.Activation = A.NONE) -> str:
        in_features = self.tensors[x].size
        return self._weighted(x, (out_features, in_features), None, (1, out_features),
                              ir.FullyConnected(act), in_features, act)

    def add(self, a: str, b: str, act: ir.Activation = A.NONE) -> str:
        scale = 1.3 * max(self.quant(a).scalar_scale, self.quant(b).scalar_scale)
        y = self.activation(self.shape(a), scale, self._out_zero_point(act))
        return self._node(ir.Add(act), [a, b], y)

    def mul(self, a: str, b: str) -> str:
        scale = 60 * self.quant(a).scalar_scale * self.quant(b).scalar_scale
        y = self.activation(self.shape(a), scale, int(self.rng.integers(-20, 21)))
        return self._node(ir.Mul(), [a, b], y)

    def _same_quant(self, x: str, shape: tuple[int, ...]) -> str:
        q = self.quant(x)
        return self.activation(shape, q.scalar_scale, q.scalar_zero_point)

    def average_pool(self, x: str, k: tuple[int, int], stride: tuple[int, int],
                     padding: ir.Padding = ir.Padding(), act: ir.Activation = A.NONE) -> str:
        _, h, w, c = self.shape(x)
        oh = self._out_size(h, padding.top + padding.bottom, k[0], stride[0], 1)
        ow = self._out_size(w, padding.left + padding.right, k[1], stride[1], 1)
        return self._node(ir.AveragePool2D(k, stride, padding, act), [x],
                          self._same_quant(x, (1, oh, ow, c)))

    def mean(self, x: str, keep_dims: bool = True, out_scale: float | None = None) -> str:
        c = self.shape(x)[3]
        shape = (1, 1, 1, c) if keep_dims else (1, c)
        if out_scale is None:
            y = self._same_quant(x, shape)
        else:
            y = self.activation(shape, out_scale, int(self.rng.integers(-10, 11)))
        return self._node(ir.Mean((1, 2), keep_dims), [x], y)

    def reshape(self, x: str, shape: tuple[int, ...]) -> str:
        return self._node(ir.Reshape(shape), [x], self._same_quant(x, shape))

    def pad(self, x: str, padding: ir.Padding) -> str:
        _, h, w, c = self.shape(x)
        shape = (1, h + padding.top + padding.bottom, w + padding.left + padding.right, c)
        return self._node(ir.Pad(padding), [x], self._same_quant(x, shape))

    def softmax(self, x: str, beta: float = 1.0) -> str:
        y = self.activation(self.shape(x), 1.0 / 256.0, -128)
        return self._node(ir.Softmax(beta), [x], y)

    def requantize(self, x: str, scale: float, zero_point: int) -> str:
        return self._node(ir.Quantize(), [x], self.activation(self.shape(x), scale, zero_point))

    def activation_op(self, x: str, act: ir.Activation, scale: float | None = None) -> str:
        q = self.quant(x)
        y = self.activation(self.shape(x), scale or q.scalar_scale,
                            q.scalar_zero_point if scale is None else -128)
        return self._node(ir.ActivationOp(act), [x], y)

    def hard_swish(self, x: str) -> str:
        q = self.quant(x)
        return self._node(ir.HardSwish(), [x],
                          self.activation(self.shape(x), q.scalar_scale * 0.7, -100))

    def logistic(self, x: str) -> str:
        return self._node(ir.Logistic(), [x], self.activation(self.shape(x), 1 / 256, -128))

    def graph(self, output: str) -> ir.Graph:
        g = ir.Graph(self.name, self.tensors, self.nodes, self.inputs, [output])
        ir.verify(g)
        return g


# ----------------------------------------------------------------------------- the case table


def _conv_3x3_same(b: GraphBuilder) -> str:
    return b.conv(b.input((1, 8, 8, 3)), 5)


def _conv_stride2_odd(b: GraphBuilder) -> str:
    # SAME on odd sizes with stride 2: the extra padding row/column is at the bottom/right
    return b.conv(b.input((1, 9, 7, 5)), 6, stride=(2, 2), act=A.RELU)


def _conv_asymmetric_padding(b: GraphBuilder) -> str:
    return b.conv(b.input((1, 6, 7, 4)), 3, padding=ir.Padding(0, 2, 1, 0), act=A.NONE)


def _conv_dilated_rect(b: GraphBuilder) -> str:
    return b.conv(b.input((1, 10, 9, 3)), 7, k=(3, 2), stride=(1, 2), dilation=(2, 1),
                  act=A.NONE)


def _conv_1x1(b: GraphBuilder) -> str:
    return b.conv(b.input((1, 6, 5, 7)), 10, k=(1, 1), act=A.NONE)


def _conv_per_tensor_weights(b: GraphBuilder) -> str:
    # one weight scale for every channel, as older TFLite models have
    x = b.input((1, 6, 6, 4))
    y = b.conv(x, 6, act=A.NONE)
    w = b.tensors[b.nodes[-1].inputs[1]]
    b.tensors[w.name] = ir.Tensor(w.name, w.shape, w.dtype, w.data,
                                  ir.QuantParams.per_tensor(float(w.quant.scale[0]), 0))
    bias = b.tensors[b.nodes[-1].inputs[2]]
    b.tensors[bias.name] = ir.Tensor(bias.name, bias.shape, bias.dtype, bias.data,
                                     ir.QuantParams(np.full(6, b.quant(x).scalar_scale
                                                            * w.quant.scale[0], np.float32),
                                                    np.zeros(6, np.int32), 0))
    return y


def _conv_without_bias(b: GraphBuilder) -> str:
    return b.conv(b.input((1, 5, 6, 9)), 7, stride=(2, 1), with_bias=False)


def _conv_5x5_valid_stride3(b: GraphBuilder) -> str:
    return b.conv(b.input((1, 11, 13, 2)), 4, k=(5, 5), stride=(3, 3),
                  padding=ir.Padding(), act=A.RELU6)


def _depthwise_3x3(b: GraphBuilder) -> str:
    return b.depthwise(b.input((1, 7, 6, 7)))


def _depthwise_stride2_odd(b: GraphBuilder) -> str:
    # 37 channels: more than one accumulator block, and not a multiple of 4
    return b.depthwise(b.input((1, 11, 9, 37)), stride=(2, 2), act=A.NONE)


def _depthwise_multiplier(b: GraphBuilder) -> str:
    return b.depthwise(b.input((1, 6, 5, 3)), multiplier=3, stride=(2, 1))


def _depthwise_multiplier_8_one_channel(b: GraphBuilder) -> str:
    # person_detect's first layer: 1 channel, multiplier 8
    return b.depthwise(b.input((1, 9, 9, 1)), multiplier=8, stride=(2, 2))


def _depthwise_dilated_asymmetric(b: GraphBuilder) -> str:
    return b.depthwise(b.input((1, 8, 8, 5)), dilation=(2, 2),
                       padding=ir.Padding(1, 3, 2, 0), act=A.RELU)


def _fully_connected(b: GraphBuilder) -> str:
    return b.fully_connected(b.input((1, 37)), 11, act=A.RELU)


def _residual_block(b: GraphBuilder) -> str:
    # MobileNetV2 inverted residual: expand 1x1, depthwise 3x3, project 1x1, add
    x = b.input((1, 7, 7, 6))
    y = b.conv(x, 18, k=(1, 1))
    y = b.depthwise(y)
    y = b.conv(y, 6, k=(1, 1), act=A.NONE)
    return b.add(y, x)


def _add_relu6(b: GraphBuilder) -> str:
    x = b.input((1, 5, 4, 3))
    y = b.conv(x, 3, k=(1, 1), act=A.NONE)
    return b.add(x, y, act=A.RELU6)


def _average_pool_valid(b: GraphBuilder) -> str:
    return b.average_pool(b.input((1, 7, 7, 5)), (3, 3), (2, 2))


def _average_pool_same(b: GraphBuilder) -> str:
    # padded pixels are left out of the divisor
    x = b.input((1, 6, 5, 9))
    return b.average_pool(x, (3, 3), (2, 2), ir.Padding.same(6, 5, 3, 3, 2, 2), act=A.RELU6)


def _classifier_head(b: GraphBuilder) -> str:
    x = b.input((1, 5, 5, 13))
    y = b.mean(x, keep_dims=True)
    y = b.reshape(y, (1, 13))
    y = b.fully_connected(y, 10)
    return b.softmax(y)


def _mean_rescaling(b: GraphBuilder) -> str:
    # in and out quantisation differ, no keep_dims, 7x7 = 49 (not a power of two)
    return b.mean(b.input((1, 7, 7, 40)), keep_dims=False, out_scale=0.013)


def _softmax_wide(b: GraphBuilder) -> str:
    return b.softmax(b.input((1, 1001), scale=0.11, zero_point=5))


def _softmax_rows_beta(b: GraphBuilder) -> str:
    return b.softmax(b.input((1, 2, 3, 10), scale=0.02, zero_point=-3), beta=0.7)


def _pad_then_valid_conv(b: GraphBuilder) -> str:
    y = b.pad(b.input((1, 5, 4, 3)), ir.Padding(1, 2, 0, 3))
    return b.conv(y, 4, padding=ir.Padding(), act=A.NONE)


def _reshape_to_output(b: GraphBuilder) -> str:
    y = b.conv(b.input((1, 4, 4, 3)), 5, act=A.NONE)
    return b.reshape(y, (1, 80))


def _requantize_and_activations(b: GraphBuilder) -> str:
    y = b.requantize(b.input((1, 3, 4, 5)), 0.013, 9)
    y = b.activation_op(y, A.RELU, scale=0.02)
    return b.activation_op(y, A.RELU6)


def _squeeze_excite(b: GraphBuilder) -> str:
    x = b.input((1, 4, 4, 6))
    s = b.mean(x, keep_dims=True)
    s = b.logistic(s)
    return b.mul(x, s)


def _hard_swish(b: GraphBuilder) -> str:
    y = b.conv(b.input((1, 5, 5, 4)), 6, act=A.NONE)
    return b.hard_swish(y)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[GraphBuilder], str]


CASES = [Case(f.__name__.lstrip("_"), f) for f in (
    _conv_3x3_same, _conv_stride2_odd, _conv_asymmetric_padding, _conv_dilated_rect,
    _conv_1x1, _conv_without_bias, _conv_per_tensor_weights, _conv_5x5_valid_stride3, _depthwise_3x3, _depthwise_stride2_odd,
    _depthwise_multiplier, _depthwise_multiplier_8_one_channel, _depthwise_dilated_asymmetric,
    _fully_connected, _residual_block, _add_relu6, _average_pool_valid, _average_pool_same,
    _classifier_head, _mean_rescaling, _softmax_wide, _softmax_rows_beta, _pad_then_valid_conv,
    _reshape_to_output, _requantize_and_activations, _squeeze_excite, _hard_swish,
)] + [Case("many_ops", lambda b: _many_ops(b))]


def _inputs(graph: ir.Graph, seed: int) -> list[np.ndarray]:
    """Random int8 inputs plus one made of the extremes -128/127 only."""
    rng = np.random.default_rng(seed)
    shape = graph.tensors[graph.inputs[0]].shape
    randoms = [rng.integers(-128, 128, size=shape).astype(np.int8) for _ in range(3)]
    extremes = rng.choice(np.array([-128, 127], dtype=np.int8), size=shape)
    return randoms + [extremes]


def _tflm_outputs(graph: ir.Graph, inputs: list[np.ndarray]) -> list[np.ndarray] | None:
    """TFLM's outputs for the graph exported to .tflite; None without the tflite-micro wheel."""
    try:
        import tflite_micro  # noqa: F401
    except ImportError:
        return None
    from mbgen.export.tflite_writer import tflite_bytes
    from mbgen.tflm import run_tflm
    model = tflite_bytes(graph)
    return [np.asarray(run_tflm(model, x)).reshape(-1) for x in inputs]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_generated_c_is_bit_exact(case: Case, tmp_path: Path):
    builder = GraphBuilder(seed=sum(map(ord, case.name)), name=case.name)
    graph = builder.graph(case.build(builder))
    report = codegen.generate(graph, tmp_path / "out")
    exe = build_folder(tmp_path / "out")
    inputs = _inputs(graph, seed=len(case.name))
    got = [np.frombuffer(run(exe, x.tobytes()), dtype=np.int8) for x in inputs]

    expected = [run_int8(graph, x)[graph.outputs[0]].reshape(-1) for x in inputs]
    for g, want in zip(got, expected):
        np.testing.assert_array_equal(g, want, err_msg=f"{case.name}: C vs run_int8")
    # TFLM itself on the same graph: a misreading of TFLite shared by the reference and the
    # C would pass the check above but not this one.
    tflm = _tflm_outputs(graph, inputs)
    for g, want in zip(got, tflm or []):
        np.testing.assert_array_equal(g, want, err_msg=f"{case.name}: C vs TFLM")
    # the outputs must carry information, or equality would prove little
    assert len(np.unique(np.concatenate(expected))) > 2
    assert [layer["kernel"] for layer in report["layers"]] == ["portable"] * len(graph.nodes)


# ----------------------------------------------------------------------------- the folder and API


def _small_graph(seed: int = 1, name: str = "small") -> ir.Graph:
    b = GraphBuilder(seed, name)
    x = b.input((1, 8, 8, 3))
    y = b.conv(x, 5)                                   # 8*8*5*3*3*3 = 8640 MACs
    y = b.depthwise(y, stride=(2, 2))                  # 4*4*5*3*3 = 720 MACs
    y = b.mean(y, keep_dims=False)
    return b.graph(b.fully_connected(y, 4))            # 5*4 = 20 MACs


def test_report_describes_every_layer(tmp_path: Path):
    graph = _small_graph()
    plan = codegen.build_program(graph).plan
    report = codegen.generate(graph, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert report["model"] == "small" and report["target"] == "host"
    assert report["kernels"] == "portable" and report["generator"] == "mbgen"
    assert report["arena_bytes"] == plan.arena_size
    layers = report["layers"]
    assert [l["op"] for l in layers] == ["Conv2D", "DepthwiseConv2D", "Mean", "FullyConnected"]
    assert [l["macs"] for l in layers] == [8640, 720, 0, 20]
    assert [l["params"] for l in layers] == [5 * 27 + 5, 5 * 9 + 5, 0, 20 + 4]
    assert report["macs"] == 8640 + 720 + 20
    assert report["params"] == 140 + 50 + 24
    assert layers[0]["input_shape"] == [1, 8, 8, 3]
    assert layers[0]["output_shape"] == [1, 8, 8, 5]
    assert [l["output_bytes"] for l in layers] == [320, 80, 5, 4]
    for node, layer in zip(graph.nodes, layers):
        assert layer["name"] == node.name
        assert layer["arena_offset"] == plan.offsets.get(node.outputs[0])
    assert layers[-1]["arena_offset"] is None        # written straight into the caller's output
    # weights, biases, multipliers and shifts: int8 weights + int32 everything else
    int8_bytes = 135 + 45 + 20
    int32_values = (5 + 5 + 5) + (5 + 5 + 5) + (4 + 1 + 1)
    assert report["weights_bytes"] == int8_bytes + 4 * int32_values
    assert set(report["files"]) == {p.name for p in tmp_path.iterdir()}


def test_header_macros_match_the_graph(tmp_path: Path):
    graph = _small_graph()
    codegen.generate(graph, tmp_path, name="net")
    main = tmp_path / "check.c"
    main.write_text(
        '#include <stdio.h>\n#include "net.h"\n'
        "int main(void) {\n"
        '  printf("%d %d %.9g %d %.9g %d %d %d %s\\n", NET_INPUT_SIZE, NET_OUTPUT_SIZE,\n'
        "         (double)NET_INPUT_SCALE, NET_INPUT_ZERO_POINT, (double)NET_OUTPUT_SCALE,\n"
        "         NET_OUTPUT_ZERO_POINT, NET_ARENA_SIZE, NET_NUM_LAYERS, net_layer_names[3]);\n"
        "  return 0;\n}\n")
    sources = [main, *(p for p in tmp_path.glob("*.c") if p.name not in ("main.c", "check.c"))]
    exe = build(sources, [tmp_path], tmp_path / "check")
    import subprocess
    fields = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    x, y = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    assert [int(fields[0]), int(fields[1])] == [x.nbytes, y.nbytes]
    assert np.float32(float(fields[2])) == np.float32(x.quant.scalar_scale)
    assert int(fields[3]) == x.quant.scalar_zero_point
    assert np.float32(float(fields[4])) == np.float32(y.quant.scalar_scale)
    assert int(fields[5]) == y.quant.scalar_zero_point
    assert [int(fields[6]), int(fields[7])] == [codegen.build_program(graph).plan.arena_size, 4]
    assert fields[8] == graph.nodes[3].name


TWO_MODELS_MAIN = r"""
#include <stdio.h>
#include <string.h>
#include "alpha.h"
#include "beta.h"

#ifdef MBGEN_PROFILE
static int begins, layers_done, last_index = -1;
void mbgen_profile_begin(void) { ++begins; }
void mbgen_profile_layer_done(int layer_index) { ++layers_done; last_index = layer_index; }
#endif

static int8_t a_in[ALPHA_INPUT_SIZE], a_out[ALPHA_OUTPUT_SIZE];
static int8_t b_in[BETA_INPUT_SIZE], b_out[BETA_OUTPUT_SIZE];

int main(int argc, char **argv)
{
    FILE *f = fopen(argv[1], "rb");
    (void)argc;
    if (fread(a_in, 1, sizeof a_in, f) != sizeof a_in) return 3;
    if (fread(b_in, 1, sizeof b_in, f) != sizeof b_in) return 3;
    fclose(f);
    if (alpha_invoke(NULL, a_out) != -1 || alpha_invoke(a_in, NULL) != -1) return 4;
    if (alpha_invoke(a_in, a_out) != 0 || beta_invoke(b_in, b_out) != 0) return 5;
#ifdef MBGEN_PROFILE
    printf("%d %d %d\n", begins, layers_done, last_index);
#endif
    f = fopen(argv[2], "wb");
    fwrite(a_out, 1, sizeof a_out, f);
    fwrite(b_out, 1, sizeof b_out, f);
    fclose(f);
    return 0;
}
"""


@pytest.mark.parametrize("profile", [False, True], ids=["plain", "profiled"])
def test_two_models_link_into_one_program(tmp_path: Path, profile: bool):
    """Two folders with different --name, the user's own main, no harness: no duplicate
    symbols, both models right, and the profiling hooks called once per layer."""
    import subprocess
    alpha, beta = _small_graph(1, "alpha"), _small_graph(2, "beta")
    for graph in (alpha, beta):
        codegen.generate(graph, tmp_path / graph.name, name=graph.name,
                         harness=False)
        assert not (tmp_path / graph.name / "main.c").exists()
    main = tmp_path / "main.c"
    main.write_text(TWO_MODELS_MAIN)
    sources = [main, *sorted((tmp_path / "alpha").glob("*.c")),
               *sorted((tmp_path / "beta").glob("*.c"))]
    exe = build(sources, [tmp_path / "alpha", tmp_path / "beta"], tmp_path / "prog",
                defines=("MBGEN_PROFILE",) if profile else ())
    xa, xb = _inputs(alpha, 3)[0], _inputs(beta, 4)[0]
    (tmp_path / "in.bin").write_bytes(xa.tobytes() + xb.tobytes())
    proc = subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = np.frombuffer((tmp_path / "out.bin").read_bytes(), np.int8)
    want_a = run_int8(alpha, xa)[alpha.outputs[0]].reshape(-1)
    want_b = run_int8(beta, xb)[beta.outputs[0]].reshape(-1)
    np.testing.assert_array_equal(out, np.concatenate([want_a, want_b]))
    if profile:
        # two invokes ran to the end (the NULL calls return before profiling starts)
        assert proc.stdout.split() == ["2", str(2 * len(alpha.nodes)), str(len(beta.nodes) - 1)]


def test_host_harness_rejects_a_wrong_sized_input(tmp_path: Path):
    import subprocess
    graph = _small_graph()
    codegen.generate(graph, tmp_path / "out")
    exe = build_folder(tmp_path / "out")
    size = graph.tensors[graph.inputs[0]].nbytes
    for data in (bytes(size - 1), bytes(size + 1)):
        (tmp_path / "in.bin").write_bytes(data)
        proc = subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "o.bin")],
                              capture_output=True, text=True)
        assert proc.returncode != 0 and "expected exactly" in proc.stderr
    proc = subprocess.run([str(exe)], capture_output=True, text=True)
    assert proc.returncode != 0 and "usage" in proc.stderr


def test_host_harness_builds_with_profiling(tmp_path: Path):
    import subprocess
    graph = _small_graph()
    codegen.generate(graph, tmp_path / "out")
    exe = build_folder(tmp_path / "out", defines=("MBGEN_PROFILE",))
    x = _inputs(graph, 0)[0]
    (tmp_path / "in.bin").write_bytes(x.tobytes())
    proc = subprocess.run([str(exe), str(tmp_path / "in.bin"), str(tmp_path / "o.bin")],
                          capture_output=True, text=True)
    assert proc.returncode == 0
    assert [line.split()[2] for line in proc.stderr.splitlines()] == \
        [node.name for node in graph.nodes]


@pytest.mark.parametrize("name", ["1model", "my-model", "", "a b"])
def test_name_must_be_a_c_identifier(tmp_path: Path, name: str):
    graph = _small_graph()
    with pytest.raises(UserError, match="C identifier"):
        codegen.generate(graph, tmp_path / "out", name=name)


def test_never_writes_into_a_foreign_folder(tmp_path: Path):
    graph = _small_graph()
    user_file = tmp_path / "model.c"
    user_file.write_text("/* the user's own work */\n")
    with pytest.raises(UserError, match="not made by mbgen"):
        codegen.generate(graph, tmp_path)
    assert user_file.read_text() == "/* the user's own work */\n"
    with pytest.raises(UserError, match="not a folder"):
        codegen.generate(graph, user_file)


def test_regenerating_replaces_our_previous_files(tmp_path: Path):
    graph = _small_graph()
    codegen.generate(graph, tmp_path, name="first")
    report = codegen.generate(graph, tmp_path, name="second")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(report["files"])
    assert not any(p.name.startswith("first") for p in tmp_path.iterdir())


def test_unknown_kernel_set_is_a_user_error(tmp_path: Path):
    graph = _small_graph()
    with pytest.raises(UserError, match="kernel set 'fastest'"):
        codegen.generate(graph, tmp_path, kernels="fastest")


def test_layers_a_kernel_set_refuses_fall_back_to_portable(tmp_path: Path):
    from mbgen.codegen import kernel_sets
    from mbgen.codegen.kernels_portable import PortableKernels

    scratch_seen = []

    class ConvOnly(PortableKernels):
        """A pretend specialised set that only takes Conv2D, with 100 bytes of scratch."""
        name = "test-conv-only"

        def lower(self, ctx, index, node):
            scratch_seen.append(ctx.scratch(node.name, 100))   # asked, then refused
            if not isinstance(node.op, ir.Conv2D):
                return None
            return super().lower(ctx, index, node)

    kernel_sets.register(ConvOnly())
    graph = _small_graph()
    program = codegen.build_program(graph, kernels="test-conv-only")
    assert [i.scratch_bytes for i in program.instances] == [100, 0, 0, 0]
    plan = program.plan
    assert set(plan.scratch_offsets) == {graph.nodes[0].name}
    assert all(b.size == 100 for b in plan.buffers if b.name.startswith("scratch:"))
    report = codegen.generate(graph, tmp_path, kernels="test-conv-only")
    assert [l["kernel"] for l in report["layers"]] == \
        ["test-conv-only", "portable", "portable", "portable"]
    assert report["fallback_layers"] == [n.name for n in graph.nodes[1:]]


def test_an_op_without_a_kernel_is_a_user_error(tmp_path: Path):
    b = GraphBuilder(0, "grouped")
    x = b.input((1, 4, 4, 4))
    y = b.conv(x, 4, k=(1, 1))
    graph = b.graph(y)
    w = graph.tensors[graph.nodes[0].inputs[1]]
    # a grouped convolution (weights see 2 of the 4 input channels) has no C kernel
    graph.tensors[w.name] = ir.Tensor(w.name, (4, 1, 1, 2), "int8", w.data[..., :2], w.quant)
    with pytest.raises(UserError, match="has no int8 C kernel"):
        codegen.generate(graph, tmp_path)
    assert not tmp_path.joinpath("report.json").exists()


def test_float_graph_is_refused(tmp_path: Path):
    graph = _small_graph()
    x = graph.tensors[graph.inputs[0]]
    graph.tensors[x.name] = ir.Tensor(x.name, x.shape, "float32")
    with pytest.raises(UserError, match="int8 graph"):
        codegen.generate(graph, tmp_path)


# ----------------------------------------------------------------------------- whole models

# TFLM's outputs for person_detect.tflite, as MODELS.md records them (raw int8
# [notperson, person]); person.bmp holds grey - 128 as two's-complement bytes.
PERSON_DETECT_TFLM = {
    "person.bmp": ([-113, 113], True),
    "no_person.bmp": ([77, -77], False),
    "grace_hopper.bmp": ([-114, 114], False),
    "cat.bmp": ([19, -19], False),
    "hot_dog.jpg": ([-62, 62], False),
}


@pytest.fixture(scope="module")
def person_detect_program(tmp_path_factory, shared_dir: Path):
    from mbgen.frontends.tflite_frontend import load_tflite
    graph = load_tflite(shared_dir / "models" / "person_detect.tflite")
    out = tmp_path_factory.mktemp("person_detect")
    report = codegen.generate(graph, out, name="person_detect")
    return graph, report, build_folder(out)


@pytest.mark.slow
@pytest.mark.parametrize("image", sorted(PERSON_DETECT_TFLM))
def test_person_detect_matches_tflm_published_outputs(person_detect_program, shared_dir: Path,
                                                      image: str):
    from mbgen.images import load_image
    graph, report, exe = person_detect_program
    expected, xor = PERSON_DETECT_TFLM[image]
    x = load_image(shared_dir / "images" / image, (1, 96, 96, 1), "uint8_minus128",
                   xor_0x80=xor).astype(np.int8)
    got = np.frombuffer(run(exe, x.tobytes()), dtype=np.int8)
    assert got.tolist() == expected
    np.testing.assert_array_equal(got, run_int8(graph, x)[graph.outputs[0]].reshape(-1))
    assert report["macs"] == sum(layer["macs"] for layer in report["layers"])


def _zoo_int8_graph(name: str) -> ir.Graph:
    torch = pytest.importorskip("torch")
    from mbgen import passes, zoo
    from mbgen.frontends.torch_frontend import from_module
    from mbgen.quantize.calibration import synthetic_inputs
    from mbgen.quantize.quantizer import quantize
    float_graph = passes.optimize(from_module(zoo.get(name), torch.zeros(zoo.input_shape(name)),
                                              name))
    shape = tuple(float_graph.tensors[float_graph.inputs[0]].shape)
    return quantize(float_graph, synthetic_inputs(shape, 4, 0))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mbv1_0.25_128", "mbv2_0.35_96"])
def test_zoo_model_is_bit_exact(name: str, tmp_path: Path):
    graph = _zoo_int8_graph(name)
    report = codegen.generate(graph, tmp_path)
    exe = build_folder(tmp_path)
    for x in _inputs(graph, seed=7)[:2]:
        got = np.frombuffer(run(exe, x.tobytes()), dtype=np.int8)
        want = run_int8(graph, x)[graph.outputs[0]].reshape(-1)
        np.testing.assert_array_equal(got, want)
        assert len(np.unique(want)) > 20
    assert report["layers"][-1]["op"] == "FullyConnected"
    assert all(layer["kernel"] == "portable" for layer in report["layers"])


# ----------------------------------------------------------------------------- on a Cortex-M


def _many_ops(b: GraphBuilder) -> str:
    """Every kernel family in one graph, odd sizes throughout."""
    x = b.input((1, 9, 11, 3))
    y = b.conv(x, 6, stride=(2, 2))
    y = b.depthwise(y, multiplier=4, padding=ir.Padding(1, 0, 0, 2))
    z = b.conv(y, 24, k=(1, 1), act=A.NONE)
    y = b.add(y, z, act=A.RELU)
    y = b.hard_swish(y)
    y = b.pad(y, ir.Padding(1, 0, 2, 1))
    y = b.average_pool(y, (2, 3), (1, 2))
    s = b.logistic(b.mean(y, keep_dims=True))
    y = b.mul(y, s)
    y = b.reshape(b.mean(y, keep_dims=True), (1, 24))
    return b.softmax(b.fully_connected(y, 9))


@pytest.mark.qemu
@pytest.mark.skipif(not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")),
                    reason="needs arm-none-eabi-gcc and qemu-system-arm")
@pytest.mark.parametrize("target_name", ["cortex-m3", "cortex-m55"])
def test_generated_c_is_bit_exact_on_cortex_m(tmp_path: Path, target_name: str):
    """32-bit size_t, 64-bit products in software (M3) or Helium-capable M55: same bytes."""
    from mbgen import targets
    from mbgen.runner.qemu import run_qemu
    builder = GraphBuilder(seed=5, name="many_ops")
    graph = builder.graph(_many_ops(builder))
    out = tmp_path / "out"
    report = codegen.generate(graph, out, target=target_name)
    assert (out / "main.c").exists()
    for x in _inputs(graph, seed=11)[:2]:
        result = run_qemu(out, targets.get(target_name), x.tobytes(), build_dir=tmp_path / "b")
        want = run_int8(graph, x)[graph.outputs[0]].reshape(-1)
        np.testing.assert_array_equal(result.output_int8(), want)
        assert [name for name, _ in result.layer_instructions] == \
            [layer["name"] for layer in report["layers"]]
