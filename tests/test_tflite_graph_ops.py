"""CONCATENATION, MAX_POOL_2D, SPLIT, SPLIT_V and STRIDED_SLICE: TFLM, numpy and C agree.

Each case is a small int8 graph with random shapes and quantisation (3 seeds), written with
our TFLite writer and read back by our TFLite frontend. On that file and graph, three
independent implementations must give the same bytes: real TFLM (``tflite_micro``), the
numpy reference (``mbgen.reference.run_int8``) and the generated C built with the host's
``cc -Werror``. The file must hold the TFLite operators the case is about.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from helpers_c import build_folder, run
from mbgen import codegen, ir
from mbgen.errors import UserError
from mbgen.reference import run_int8
from test_codegen import GraphBuilder

pytest.importorskip("tflite_micro.python.tflite_micro.runtime",
                    reason="TFLM reference needs the tflite-micro package")

from mbgen.export.tflite_writer import tflite_bytes  # noqa: E402
from mbgen.frontends.tflite_frontend import load_tflite  # noqa: E402
from mbgen.tflm import run_tflm  # noqa: E402

A = ir.Activation
SEEDS = (0, 1, 2)


class OpsBuilder(GraphBuilder):
    """GraphBuilder plus the graph-shaping ops, with TFLite-converter quantisation: slices,
    pools and concatenations keep their input's scale and zero point."""

    def dims(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def _like(self, x: str, shape: tuple[int, ...]) -> str:
        return self._same_quant(x, shape)

    def max_pool(self, x: str, k: tuple[int, int], stride: tuple[int, int],
                 same: bool = True, act: ir.Activation = A.NONE) -> str:
        _, h, w, c = self.shape(x)
        p = ir.Padding.same(h, w, *k, *stride) if same else ir.Padding()
        oh = self._out_size(h, p.top + p.bottom, k[0], stride[0], 1)
        ow = self._out_size(w, p.left + p.right, k[1], stride[1], 1)
        return self._node(ir.MaxPool2D(k, stride, p, act), [x], self._like(x, (1, oh, ow, c)))

    def requantize_like(self, x: str, like: str) -> str:
        q = self.quant(like)
        return self.requantize(x, q.scalar_scale, q.scalar_zero_point)

    def concat(self, xs: list[str], axis: int = 3) -> str:
        """Inputs with other quantisation than the first are requantised to it first (what
        TFLite's converter does; TFLM refuses a concatenation of differing inputs)."""
        xs = [x if i == 0 or self.quant(x) == self.quant(xs[0]) else
              self.requantize_like(x, xs[0]) for i, x in enumerate(xs)]
        shape = list(self.shape(xs[0]))
        shape[axis] = sum(self.shape(x)[axis] for x in xs)
        return self._node(ir.Concatenation(axis), xs, self._like(xs[0], tuple(shape)))

    def strided_slice(self, x: str, begin: tuple[int, ...], strides: tuple[int, ...],
                      counts: tuple[int, ...]) -> str:
        return self._node(ir.StridedSlice(begin, strides), [x], self._like(x, counts))

    def split(self, x: str, sizes: list[int], axis: int = 3) -> list[str]:
        """Consecutive slices along ``axis``: the writer makes them one SPLIT / SPLIT_V."""
        shape, pieces, start = self.shape(x), [], 0
        for size in sizes:
            begin = tuple(start if d == axis else 0 for d in range(len(shape)))
            counts = shape[:axis] + (size,) + shape[axis + 1:]
            pieces.append(self.strided_slice(x, begin, (1,) * len(shape), counts))
            start += size
        return pieces


# ----------------------------------------------------------------------------- cases


def _fire_module(b: OpsBuilder) -> str:
    """SqueezeNet: max-pool, squeeze 1x1, expand 1x1 and 3x3, concatenated on channels."""
    x = b.input((1, b.dims(7, 12), b.dims(7, 12), b.dims(3, 8)), zero_point=b.dims(-20, 20))
    y = b.max_pool(x, (3, 3), (2, 2), same=False)
    s = b.conv(y, b.dims(3, 6), k=(1, 1), act=A.RELU)
    return b.concat([b.conv(s, b.dims(4, 9), k=(1, 1), act=A.RELU),
                     b.conv(s, b.dims(4, 9), k=(3, 3), act=A.RELU)])


def _max_pools(b: OpsBuilder) -> str:
    """SAME and VALID windows, strides 1 and 2, fused ReLU and ReLU6, odd sizes."""
    x = b.input((1, b.dims(9, 15), b.dims(9, 15), b.dims(2, 7)), scale=0.05,
                zero_point=b.dims(-40, -20))   # ReLU6 clamps at zp + 120: some maxima above
    y = b.max_pool(x, (2, 2), (2, 2), same=True, act=A.RELU6)
    y = b.conv(y, b.dims(3, 6), k=(1, 1), act=A.NONE)  # 1x1 convs keep the values spread
    y = b.max_pool(y, (2, 3), (1, 2), same=False, act=A.RELU)
    y = b.conv(y, b.dims(3, 6), k=(1, 1), act=A.NONE)
    return b.max_pool(y, (3, 3), (1, 1), same=True)


def _shuffle_unit(b: OpsBuilder) -> str:
    """ShuffleNetV2 basic unit: SPLIT in halves, 1x1 / depthwise 3x3 / 1x1 on one half."""
    c = 2 * b.dims(2, 5)
    x = b.input((1, b.dims(5, 9), b.dims(5, 9), c), zero_point=b.dims(-20, 20))
    left, right = b.split(x, [c // 2, c // 2])
    y = b.conv(right, c // 2, k=(1, 1), act=A.RELU)
    y = b.depthwise(y, act=A.NONE)
    y = b.conv(y, c // 2, k=(1, 1), act=A.RELU)
    return b.concat([left, y])


def _split_v_reordered(b: OpsBuilder) -> str:
    """SPLIT_V into three unequal pieces, concatenated in another order, one pooled."""
    sizes = [b.dims(1, 3), b.dims(2, 5), b.dims(1, 4)]
    x = b.input((1, b.dims(4, 8), b.dims(4, 8), sum(sizes)), zero_point=b.dims(-20, 20))
    p0, p1, p2 = b.split(x, sizes)
    return b.concat([p2, b.max_pool(p1, (3, 3), (1, 1)), p0])


def _strided_slices(b: OpsBuilder) -> str:
    """Every other channel from 1, a spatial stride-2 crop, then a concat along H."""
    h, w, c = b.dims(6, 10), b.dims(6, 10), b.dims(5, 9)
    x = b.input((1, h, w, c), zero_point=b.dims(-20, 20))
    odd = b.strided_slice(x, (0, 0, 0, 1), (1, 1, 1, 2), (1, h, w, (c - 1 + 1) // 2))
    y = b.conv(odd, 4, k=(1, 1), act=A.NONE)
    top = b.strided_slice(y, (0, 1, 0, 0), (1, 2, 2, 1), (1, h // 2, (w + 1) // 2, 4))
    rows = b.strided_slice(y, (0, 0, 0, 0), (1, 1, 2, 1), (1, h, (w + 1) // 2, 4))
    return b.concat([rows, top], axis=1)


def _concat_width_and_flat(b: OpsBuilder) -> str:
    """Concatenation along W, then of flat (1, N) vectors."""
    x = b.input((1, b.dims(3, 6), b.dims(3, 6), b.dims(3, 6)), zero_point=b.dims(-20, 20))
    y = b.concat([x, b.conv(x, b.shape(x)[3], k=(3, 3), act=A.NONE)], axis=2)
    pooled = b.max_pool(y, (2, 2), (2, 2))
    return b.concat([b.reshape(t, (1, int(np.prod(b.shape(t))))) for t in (y, pooled)],
                    axis=1)


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[OpsBuilder], str]
    tflite_ops: frozenset[str]   # operators the written file must contain
    min_distinct: int = 20       # the outputs must take this many values (no degenerate case)


CASES = [
    Case("fire_module", _fire_module, frozenset({"CONCATENATION", "MAX_POOL_2D"})),
    Case("max_pools", _max_pools, frozenset({"MAX_POOL_2D"}), min_distinct=12),
    Case("shuffle_unit", _shuffle_unit, frozenset({"SPLIT", "CONCATENATION"})),
    Case("split_v_reordered", _split_v_reordered, frozenset({"SPLIT_V", "CONCATENATION"})),
    Case("strided_slices", _strided_slices, frozenset({"STRIDED_SLICE", "CONCATENATION"})),
    Case("concat_width_and_flat", _concat_width_and_flat, frozenset({"CONCATENATION"})),
]


def _operator_names(model: bytes) -> set[str]:
    import tflite
    from tflite.utils import BUILTIN_OPCODE2NAME
    m = tflite.Model.GetRootAsModel(model, 0)
    return {BUILTIN_OPCODE2NAME[max(m.OperatorCodes(i).BuiltinCode(),
                                    m.OperatorCodes(i).DeprecatedBuiltinCode())]
            for i in range(m.OperatorCodesLength())}


def _inputs(graph: ir.Graph, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1000 + seed)
    shape = graph.tensors[graph.inputs[0]].shape
    return [rng.integers(-128, 128, size=shape).astype(np.int8) for _ in range(2)] + \
        [rng.choice(np.array([-128, 127], dtype=np.int8), size=shape)]


def case_graph(case: Case, seed: int, tmp_path: Path) -> tuple[ir.Graph, bytes, ir.Graph]:
    """(built graph, .tflite bytes our writer made of it, the graph our frontend reads)."""
    builder = OpsBuilder(seed=seed * 7919 + sum(map(ord, case.name)), name=case.name)
    graph = builder.graph(case.build(builder))
    model = tflite_bytes(graph)
    path = tmp_path / f"{case.name}.tflite"
    path.write_bytes(model)
    return graph, model, load_tflite(path)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_c_reference_and_tflm_agree(case: Case, seed: int, tmp_path: Path):
    graph, model, loaded = case_graph(case, seed, tmp_path)
    assert case.tflite_ops <= _operator_names(model)
    codegen.generate(loaded, tmp_path / "out")
    exe = build_folder(tmp_path / "out")
    outputs = []
    for x in _inputs(loaded, seed):
        ours = run_int8(loaded, x)[loaded.outputs[0]]
        np.testing.assert_array_equal(ours, run_int8(graph, x)[graph.outputs[0]],
                                      err_msg="the graph read back computes otherwise")
        theirs = run_tflm(model, x)
        np.testing.assert_array_equal(ours, theirs.reshape(ours.shape),
                                      err_msg=f"{case.name}/{seed}: reference vs TFLM")
        got = np.frombuffer(run(exe, x.tobytes()), dtype=np.int8)
        np.testing.assert_array_equal(got, ours.reshape(-1),
                                      err_msg=f"{case.name}/{seed}: C vs reference")
        outputs.append(ours)
    assert len(np.unique(np.concatenate([o.reshape(-1) for o in outputs]))) >= case.min_distinct


# ----------------------------------------------------------------------------- float graphs


def _float_graph(seed: int) -> ir.Graph:
    """A float fire-module-like graph: slices, max-pool, nested concatenations and one input
    (a logistic, fixed at scale 1/256) whose quantisation cannot follow the concatenation."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, ir.Tensor] = {}
    nodes: list[ir.Node] = []

    def t(name: str, shape: tuple[int, ...], data: np.ndarray | None = None) -> str:
        tensors[name] = ir.Tensor(name, shape, "float32", data)
        return name

    def node(op: ir.OpAttrs, inputs: list[str], out: str) -> str:
        nodes.append(ir.Node(out, op, inputs, [out]))
        return out

    def conv(x: str, out_c: int, name: str, act: ir.Activation) -> str:
        _, h, w, c = tensors[x].shape
        weight = t(f"{name}.w", (out_c, 1, 1, c), rng.normal(0, 0.5, (out_c, 1, 1, c))
                   .astype(np.float32))
        bias = t(f"{name}.b", (out_c,), rng.normal(0, 0.2, out_c).astype(np.float32))
        return node(ir.Conv2D(activation=act), [x, weight, bias], t(name, (1, h, w, out_c)))

    x = t("x", (1, 8, 8, 6))
    a = conv(x, 4, "a", A.RELU)
    pooled = node(ir.MaxPool2D((3, 3), (1, 1), ir.Padding.same(8, 8, 3, 3, 1, 1)), [a],
                  t("pooled", (1, 8, 8, 4)))
    b = conv(x, 3, "b", A.NONE)
    piece = node(ir.StridedSlice((0, 0, 0, 2), (1, 1, 1, 1)), [x], t("piece", (1, 8, 8, 2)))
    inner = node(ir.Concatenation(3), [pooled, b], t("inner", (1, 8, 8, 7)))
    gate = node(ir.Logistic(), [conv(x, 2, "g", A.NONE)], t("gate", (1, 8, 8, 2)))
    out = node(ir.Concatenation(3), [inner, piece, gate], t("out", (1, 8, 8, 11)))
    graph = ir.Graph("float_concat", tensors, nodes, ["x"], [out])
    ir.verify(graph)
    return graph


@pytest.mark.parametrize("seed", SEEDS)
def test_quantizer_gives_concatenation_inputs_the_output_quantisation(seed: int, tmp_path: Path):
    from mbgen.float_interp import run_float
    from mbgen.quantize.quantizer import quantize
    float_graph = _float_graph(seed)
    rng = np.random.default_rng(seed)
    calib = [rng.normal(0, 1, (1, 8, 8, 6)).astype(np.float32) for _ in range(4)]
    graph = quantize(float_graph, calib)
    for node in graph.nodes:
        if isinstance(node.op, ir.Concatenation):
            out = graph.tensors[node.outputs[0]].quant
            for name in node.inputs:
                q = graph.tensors[name].quant
                assert np.array_equal(q.scale, out.scale), name
                assert np.array_equal(q.zero_point, out.zero_point), name
    # Only the logistic, fixed at 1/256, needs a requantisation; the convolutions were
    # calibrated with the concatenation's range instead.
    requantized = [n.inputs[0] for n in graph.nodes if isinstance(n.op, ir.Quantize)]
    assert requantized == ["gate"]
    q_out = graph.tensors["out"].quant
    model = tflite_bytes(graph)
    x_float = calib[0]
    q_in = graph.tensors["x"].quant
    x = np.clip(np.round(x_float / q_in.scalar_scale) + q_in.scalar_zero_point,
                -128, 127).astype(np.int8)
    ours = run_int8(graph, x)["out"]
    np.testing.assert_array_equal(ours, run_tflm(model, x).reshape(ours.shape))
    real = (ours.astype(np.float64) - q_out.scalar_zero_point) * q_out.scalar_scale
    expected = run_float(float_graph, x_float)["out"]
    cosine = float(np.sum(real * expected) / np.linalg.norm(real) / np.linalg.norm(expected))
    assert cosine > 0.99, cosine


# ----------------------------------------------------------------------------- big depthwise

HAVE_ARM = bool(shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm"))
needs_arm = pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")
BIG_DEPTHWISE = [((5, 5), (1, 1)), ((5, 5), (2, 2)), ((7, 7), (1, 1)), ((7, 7), (2, 2))]


def _depthwise_graph(kernel: tuple[int, int], stride: tuple[int, int], seed: int) -> ir.Graph:
    b = GraphBuilder(seed=seed, name=f"dw{kernel[0]}s{stride[0]}")
    rng = np.random.default_rng(seed)
    x = b.input((1, int(rng.integers(9, 14)), int(rng.integers(9, 14)), int(rng.integers(3, 9))),
                zero_point=int(rng.integers(-30, 30)))
    return b.graph(b.depthwise(x, k=kernel, stride=stride, act=A.NONE))


@pytest.mark.parametrize("kernels", ["portable", "cmsis-nn"])
@pytest.mark.parametrize("kernel,stride", BIG_DEPTHWISE, ids=lambda v: "x".join(map(str, v)))
def test_big_depthwise_on_the_host_equals_reference_and_tflm(kernel, stride, kernels,
                                                              tmp_path: Path):
    """5x5 and 7x7 depthwise at strides 1 and 2: the portable set (host cc) and the cmsis-nn
    set (host build against CMSIS-NN, or our stand-in when CMSIS_NN_PATH is unset)."""
    graph = _depthwise_graph(kernel, stride, seed=kernel[0] * 10 + stride[0])
    model = tflite_bytes(graph)
    out = tmp_path / "out"
    if kernels == "portable":
        report = codegen.generate(graph, out)
        exe = build_folder(out)
        runner = lambda x: np.frombuffer(run(exe, x.tobytes()), np.int8)  # noqa: E731
    else:
        from test_kernels_cmsis_nn import _generate, _run_host
        report = _generate(graph, out)
        runner = lambda x: _run_host(out, tmp_path / "build", [x])[0]  # noqa: E731
    assert report["layers"][0]["kernel"] == kernels and not report["fallback_layers"]
    for x in _inputs(graph, seed=stride[0]):
        want = run_int8(graph, x)[graph.outputs[0]]
        np.testing.assert_array_equal(want, run_tflm(model, x).reshape(want.shape))
        np.testing.assert_array_equal(runner(x), want.reshape(-1), err_msg=kernels)
    assert len(np.unique(want)) > 20


@needs_arm
@pytest.mark.qemu
@pytest.mark.parametrize("kernel,stride", [((7, 7), (1, 1)), ((7, 7), (2, 2))],
                         ids=lambda v: "x".join(map(str, v)))
def test_big_depthwise_with_the_mbgen_set_in_qemu(kernel, stride, tmp_path: Path):
    """The mbgen set's generic depthwise kernel on Cortex-M7 (5x5 is in test_kernels_mbgen)."""
    from test_kernels_mbgen import Layer, _check_in_qemu, build_graph, test_inputs
    pad = ir.Padding.same(11, 10, *kernel, *stride)
    layer = Layer("dw", (11, 10, 6), kernel=kernel, stride=stride, out="none",
                  padding=(pad.top, pad.bottom, pad.left, pad.right), seed=kernel[0] + stride[0])
    graph = build_graph(layer)
    model = tflite_bytes(graph)
    for x in test_inputs(graph, layer.seed):  # the inputs _check_in_qemu runs
        want = run_int8(graph, x)[graph.outputs[0]]
        np.testing.assert_array_equal(want, run_tflm(model, x).reshape(want.shape))
    _check_in_qemu(graph, tmp_path / "out", seed=layer.seed)


# ----------------------------------------------------------------------------- Cortex-M


@needs_arm
@pytest.mark.qemu
def test_graph_ops_bit_exact_in_qemu_with_every_kernel_set(tmp_path: Path):
    """The shuffle unit and the fire module as Cortex-M7 firmware (arm-none-eabi-gcc with the
    target's flags and -Werror): the new ops fall back to the portable kernels."""
    from mbgen import targets
    from mbgen.runner import run_qemu
    target = targets.get("cortex-m7")
    for case, kernels in ((CASES[2], "mbgen"), (CASES[0], "portable")):
        _, _, graph = case_graph(case, 0, tmp_path)
        out = tmp_path / f"{case.name}-{kernels}"
        report = codegen.generate(graph, out, target="cortex-m7", kernels=kernels)
        graph_ops = [layer for layer in report["layers"]
                     if layer["op"] in ("Concatenation", "StridedSlice", "MaxPool2D")]
        assert graph_ops and all(layer["kernel"] == "portable" for layer in graph_ops)
        if kernels != "portable":  # report.json lists them as fallbacks
            assert {layer["name"] for layer in graph_ops} <= set(report["fallback_layers"])
            assert any(layer["kernel"] == kernels for layer in report["layers"])
        sources = [str(f) for f in sorted(out.glob("*.c")) if f.name != "main.c"]
        compiled = subprocess.run(
            ["arm-none-eabi-gcc", *target.cflags, "-std=c99", "-Wall", "-Wextra", "-Werror",
             "-c", f"-I{out}", *sources], capture_output=True, text=True, cwd=tmp_path)
        assert compiled.returncode == 0, compiled.stderr
        x = _inputs(graph, 0)[0]
        result = run_qemu(out, target, x.tobytes(), timeout=60)
        np.testing.assert_array_equal(np.frombuffer(result.output, np.int8),
                                      run_int8(graph, x)[graph.outputs[0]].reshape(-1))


# ----------------------------------------------------------------------------- refusals


def _refused(graph: ir.Graph, tmp_path: Path) -> str:
    path = tmp_path / "bad.tflite"
    path.write_bytes(tflite_bytes(graph))
    with pytest.raises(UserError) as err:
        load_tflite(path)
    message = str(err.value)
    assert "\n" not in message
    return message


def _concat_graph(second_zero_point: int) -> ir.Graph:
    q = ir.QuantParams.per_tensor
    tensors = {"a": ir.Tensor("a", (1, 2, 2, 3), "int8", None, q(0.1, 3)),
               "b": ir.Tensor("b", (1, 2, 2, 2), "int8", None, q(0.1, second_zero_point)),
               "y": ir.Tensor("y", (1, 2, 2, 5), "int8", None, q(0.1, 3))}
    return ir.Graph("cat", tensors, [ir.Node("cat", ir.Concatenation(3), ["a", "b"], ["y"])],
                    ["a", "b"], ["y"])


def test_concatenation_of_differently_quantised_inputs_is_refused_as_tflm_does(tmp_path):
    model = tflite_bytes(_concat_graph(5))
    from mbgen.errors import RunFailure
    with pytest.raises(RunFailure, match="zero_point"):
        run_tflm(model, [np.zeros((1, 2, 2, 3), np.int8), np.zeros((1, 2, 2, 2), np.int8)])
    message = _refused(_concat_graph(5), tmp_path)
    assert "operator 0 (CONCATENATION" in message and "'b'" in message
    with pytest.raises(UserError, match="output's scale and zero point"):
        run_int8(_concat_graph(5), {"a": np.zeros((1, 2, 2, 3), np.int8),
                                    "b": np.zeros((1, 2, 2, 2), np.int8)})


def test_unsupported_slice_masks_and_ops_are_refused_with_index_and_name(tmp_path):
    import tflite_micro.tensorflow.lite.micro.python.schema_py_generated as schema

    graph = _concat_graph(3)
    model = bytearray(tflite_bytes(graph))
    path = tmp_path / "ok.tflite"
    path.write_bytes(model)
    assert [ir.op_name(n.op) for n in load_tflite(path).nodes] == ["Concatenation"]

    # the same file with the operator code turned into TFLite's GATHER (36)
    m = schema.ModelT.InitFromPackedBuf(bytes(model), 0)
    m.operatorCodes[0].builtinCode = m.operatorCodes[0].deprecatedBuiltinCode = 36
    path.write_bytes(_packed(m))
    with pytest.raises(UserError, match=r"operator 0 \(GATHER -> 'y'\): operator not supported"):
        load_tflite(path)

    # a STRIDED_SLICE with an ellipsis mask
    m = schema.ModelT.InitFromPackedBuf(tflite_bytes(_slice_graph((1, 4, 4, 3))), 0)
    m.subgraphs[0].operators[0].builtinOptions.ellipsisMask = 1
    path.write_bytes(_packed(m))
    with pytest.raises(UserError, match=r"operator 0 \(STRIDED_SLICE.*ellipsis"):
        load_tflite(path)


def _slice_graph(out_shape: tuple[int, ...], begin=(0, 0, 0, 1), strides=(1, 1, 1, 2),
                 out_zero_point: int = 0) -> ir.Graph:
    tensors = {"x": ir.Tensor("x", (1, 4, 4, 6), "int8", None, ir.QuantParams.per_tensor(0.1, 0)),
               "y": ir.Tensor("y", out_shape, "int8", None,
                              ir.QuantParams.per_tensor(0.1, out_zero_point))}
    return ir.Graph("s", tensors, [ir.Node("s", ir.StridedSlice(begin, strides), ["x"], ["y"])],
                    ["x"], ["y"])


def _packed(model) -> bytes:
    import flatbuffers
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_shrink_axis_and_requantising_slices_copy_bytes_as_tflm(tmp_path: Path):
    """A shrink-axis STRIDED_SLICE (a slice plus a Reshape view here) and slices whose output
    quantisation differs from the input's: TFLM copies bytes, and so do we."""
    import tflite_micro.tensorflow.lite.micro.python.schema_py_generated as schema
    m = schema.ModelT.InitFromPackedBuf(tflite_bytes(_slice_graph(
        (1, 1, 4, 3), begin=(0, 2, 0, 1))), 0)
    m.subgraphs[0].operators[0].builtinOptions.shrinkAxisMask = 2
    y = [t.name for t in m.subgraphs[0].tensors].index(b"y")
    m.subgraphs[0].tensors[y].shape = np.array([1, 4, 3], np.int32)
    shrunk = _packed(m)
    requantising = tflite_bytes(_slice_graph((1, 4, 4, 3), out_zero_point=-9))
    for model, ops in ((shrunk, ["StridedSlice", "Reshape"]), (requantising, ["StridedSlice"])):
        path = tmp_path / "slice.tflite"
        path.write_bytes(model)
        graph = load_tflite(path)
        assert [ir.op_name(n.op) for n in graph.nodes] == ops
        codegen.generate(graph, tmp_path / "out")
        exe = build_folder(tmp_path / "out")
        x = np.random.default_rng(0).integers(-128, 128, (1, 4, 4, 6)).astype(np.int8)
        want = run_int8(graph, x)[graph.outputs[0]]
        np.testing.assert_array_equal(want, run_tflm(model, x).reshape(want.shape))
        np.testing.assert_array_equal(np.frombuffer(run(exe, x.tobytes()), np.int8),
                                      want.reshape(-1))


# ----------------------------------------------------------------------------- mutants

_MUTATED_OPTIONS = ("ConcatenationOptionsT", "Pool2DOptionsT", "SplitOptionsT",
                    "SplitVOptionsT", "StridedSliceOptionsT")


def _mutant(model: bytes, rng) -> bytes | None:
    """The model with one option field of a graph op (and maybe one of its int32 constant
    operands: axis, size_splits, begin, end, strides) set to a plausible wrong value."""
    import copy

    import tflite_micro.tensorflow.lite.micro.python.schema_py_generated as schema
    m = copy.deepcopy(schema.ModelT.InitFromPackedBuf(model, 0))
    subgraph = m.subgraphs[0]
    ops = [o for o in subgraph.operators
           if type(o.builtinOptions).__name__ in _MUTATED_OPTIONS]
    op = ops[rng.integers(len(ops))]
    fields = sorted(vars(op.builtinOptions))
    field = fields[rng.integers(len(fields))]
    value = int(rng.choice([-3, -1, 0, 1, 2, 3, 5, 7, 100]))
    setattr(op.builtinOptions, field, type(getattr(op.builtinOptions, field))(value))
    if rng.random() < 0.3:
        for i in op.inputs:
            t = subgraph.tensors[i]
            if t.type == 2 and m.buffers[t.buffer].data is not None:  # int32 constant
                data = np.frombuffer(bytes(m.buffers[t.buffer].data), np.int32).copy()
                data[rng.integers(data.size)] = rng.choice([-5, -1, 0, 1, 2, 9, 1000])
                m.buffers[t.buffer].data = np.frombuffer(data.tobytes(), np.uint8)
    return _packed(m)


def test_mutated_graph_op_files_are_refused_in_one_line_or_agree_with_tflm(tmp_path: Path):
    from mbgen.errors import RunFailure
    rng = np.random.default_rng(10)
    counts = {"refused": 0, "agree with TFLM": 0}
    for case in CASES:
        _, model, _ = case_graph(case, 0, tmp_path)
        for _ in range(40):
            data = _mutant(model, rng)
            path = tmp_path / "mutant.tflite"
            path.write_bytes(data)
            try:
                graph = load_tflite(path)
                x = rng.integers(-128, 128, graph.tensors[graph.inputs[0]].shape).astype(np.int8)
                ours = run_int8(graph, x)[graph.outputs[0]]
            except UserError as err:
                assert "\n" not in str(err)
                counts["refused"] += 1
                continue
            try:
                theirs = run_tflm(data, x)
            except RunFailure as err:
                pytest.fail(f"{case.name}: we ran a mutant TFLM refuses: {err}")
            np.testing.assert_array_equal(ours.reshape(-1), theirs.reshape(-1),
                                          err_msg=f"{case.name}: mutant disagrees with TFLM")
            counts["agree with TFLM"] += 1
    print(f"{sum(counts.values())} mutants: {counts}")
    assert min(counts.values()) > 10
