"""TRANSPOSE, PAD / PADV2 on any dimension, MEAN over any axes, RESHAPE/SQUEEZE views and the
uint8 interface of TF2 files: .tflite files written by our writer, loaded by our frontend,
run three ways: real TFLM, our numpy reference and our generated host C, bit for bit.

Single-op cases draw random shapes, permutations, paddings, axes and quantisation (3 seeds);
two whole graphs cover what converters make: a TinyNeuralNetwork-style one (NCHW input,
TRANSPOSE, PAD before VALID convolutions, TRANSPOSE back, MEAN chains over one axis,
SQUEEZE) and a TF2 PTQ-style one with a uint8 interface. Each case checks its output has a
spread of values, so a degenerate (constant) case cannot pass by accident.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from helpers_c import CFLAGS, build, build_folder, run
from mbgen import ir

pytest.importorskip("tflite_micro.python.tflite_micro.runtime",
                    reason="TFLM reference needs the tflite-micro package")

from mbgen.compiler import CompileOptions, emit, prepare  # noqa: E402
from mbgen.export.tflite_writer import write_tflite  # noqa: E402
from mbgen.reference import run_int8  # noqa: E402
from mbgen.tflm import run_tflm  # noqa: E402
from test_tflm_reference import GraphMaker, act  # noqa: E402

SEEDS = (0, 1, 2)
INPUTS_PER_CASE = 3


class Maker(GraphMaker):
    """GraphMaker with a unique name per node, for graphs of several ops."""

    def node(self, op: ir.OpAttrs, inputs: list[str], out: ir.Tensor) -> None:
        self.add(out)
        self.nodes.append(ir.Node(f"n{len(self.nodes)}_{out.name}", op, inputs, [out.name]))


def like(name: str, shape, source: ir.Tensor) -> ir.Tensor:
    """An activation quantised as ``source`` (the layout ops keep scale and zero point)."""
    return ir.Tensor(name, tuple(shape), source.dtype, None, source.quant)


def random_shape(rng: np.random.Generator, rank: int, high: int = 6) -> tuple[int, ...]:
    """Batch 1, the other dims in [2, high] so that every permutation moves values."""
    return (1,) + tuple(int(d) for d in rng.integers(2, high + 1, size=rank - 1))


def random_perm(rng: np.random.Generator, rank: int) -> tuple[int, ...]:
    while True:
        perm = tuple(int(p) for p in rng.permutation(rank))
        if perm != tuple(range(rank)):
            return perm


def random_input(graph: ir.Graph, rng: np.random.Generator) -> np.ndarray:
    t = graph.tensors[graph.inputs[0]]
    if t.dtype == "uint8":
        return rng.integers(0, 256, size=t.shape).astype(np.uint8)
    return rng.integers(-128, 128, size=t.shape).astype(np.int8)


# ----------------------------------------------------------------------------- the three runs


def three_way(graph: ir.Graph, tmp_path: Path, seed: int, min_distinct: int = 4,
              inputs: int = INPUTS_PER_CASE, edit=None, sanitize: bool = False) -> str:
    """Write ``graph`` as .tflite (then ``edit(ModelT)`` it, if given), compile the file to
    host C (with ``sanitize``: under ASan and UBSan, which fail the run on any report); on
    random inputs the C, our reference (on the graph our frontend loaded) and TFLM agree
    exactly. Returns model.c."""
    path = write_tflite(graph, tmp_path / f"{graph.name}.tflite")
    if edit is not None:
        from test_tflite_frontend import _mutated
        path = _mutated(path, edit, tmp_path)
    prepared = prepare(str(path), CompileOptions())
    out_dir = tmp_path / "c"
    emit(prepared, CompileOptions(target="host", out_dir=out_dir))
    if sanitize:
        exe = build(sorted(out_dir.glob("*.c")), [out_dir], out_dir / "prog",
                    flags=CFLAGS + ("-g", "-fsanitize=address,undefined",
                                    "-fno-sanitize-recover=all"))
    else:
        exe = build_folder(out_dir)
    rng = np.random.default_rng(1000 + seed)
    seen: set[int] = set()
    for _ in range(inputs):
        x = random_input(graph, rng)
        theirs = run_tflm(path, x)
        ours = run_int8(prepared.graph, x)[prepared.graph.outputs[0]]
        c_out = np.frombuffer(run(exe, x.tobytes()), dtype=theirs.dtype).reshape(theirs.shape)
        assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
        diff = np.argwhere(ours != theirs)
        assert diff.size == 0, (f"{graph.name}: reference != TFLM at {len(diff)} of "
                                f"{ours.size} values, first {tuple(diff[0])}")
        assert np.array_equal(c_out, theirs), f"{graph.name}: generated C != TFLM"
        seen.update(np.unique(theirs).tolist())
    assert len(seen) >= min_distinct, f"{graph.name}: degenerate case, outputs {sorted(seen)}"
    return (out_dir / "model.c").read_text()


# ----------------------------------------------------------------------------- single ops


def transpose_graph(seed: int) -> ir.Graph:
    """A chain of random permutations (ranks 4, 3, 4 over the seeds; 4 perms in a row)."""
    m = Maker(np.random.default_rng(seed))
    rank = (4, 3, 4)[seed]
    x = m.input(random_shape(m.rng, rank))
    current = x
    for step in range(4):
        perm = random_perm(m.rng, rank)
        out = like("y" if step == 3 else f"t{step}", [current.shape[p] for p in perm], x)
        m.node(ir.Transpose(perm), [current.name], out)
        current = out
    return m.graph("transpose")


def pad_graph(seed: int, constant: bool) -> ir.Graph:
    m = Maker(np.random.default_rng(seed))
    rank = 4 - seed % 3                       # ranks 4, 3, 2
    x = m.input(random_shape(m.rng, rank, high=4))
    pads = tuple((int(a), int(b)) for a, b in m.rng.integers(0, 3, size=(rank, 2)))
    # always pad the last (channel) dim; seed 2 pads the batch dimension too
    pads = ((int(seed == 2), 0),) + pads[1:-1] + ((1, pads[-1][1]),)
    value = int(m.rng.integers(-128, 128)) if constant else x.quant.scalar_zero_point
    shape = [n + a + b for n, (a, b) in zip(x.shape, pads)]
    m.node(ir.PadND(pads, value), ["x"], like("y", shape, x))
    return m.graph("padv2" if constant else "pad")


def mean_graph(seed: int, same_quant: bool) -> ir.Graph:
    m = Maker(np.random.default_rng(seed))
    rank = 4 if seed < 2 else 3
    x = m.input(random_shape(m.rng, rank, high=7))
    choices = [(1,), (2,), (-1,), (1, rank - 1)] + ([(1, 2), (2, 3), (3, 1)] if rank == 4 else [])
    axes = choices[(2 * seed + same_quant) % len(choices)]
    keep = bool((seed + same_quant) % 2)
    axes_set = {a % rank for a in axes}
    shape = [1 if d in axes_set else n for d, n in enumerate(x.shape)
             if keep or d not in axes_set]
    if same_quant:
        out = like("y", shape, x)
    else:
        out = act("y", tuple(shape), x.quant.scalar_scale * m.rng.uniform(0.2, 0.9), m.zp())
    m.node(ir.Mean(axes, keep), ["x"], out)
    return m.graph("mean")


@pytest.mark.parametrize("seed", SEEDS)
def test_transpose(seed, tmp_path):
    assert three_way(transpose_graph(seed), tmp_path, seed).count("transpose_s8(&") == 4


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("constant", [False, True], ids=["pad", "padv2"])
def test_pad_any_dimension(seed, constant, tmp_path):
    assert "pad_nd_s8(" in three_way(pad_graph(seed, constant), tmp_path, seed, min_distinct=3)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("same_quant", [True, False], ids=["same_quant", "requantized"])
def test_mean_any_axes(seed, same_quant, tmp_path):
    graph = mean_graph(seed, same_quant)
    kernel = "mean_hw_s8(" if graph.nodes[0].op.axes == (1, 2) else "mean_axes_s8("
    assert kernel in three_way(graph, tmp_path, seed, min_distinct=3)


# ----------------------------------------------------------------------------- whole graphs


def conv(m: Maker, x: ir.Tensor, name: str, cout: int, k: int, stride: int = 1,
         depthwise: bool = False) -> ir.Tensor:
    """A VALID conv (or depthwise) with random int8 weights and a bias, ReLU6 fused."""
    _, h, w, cin = x.shape
    if depthwise:
        cout = cin
        wt = m.weights(f"{name}_w", (1, k, k, cout), axis=3)
    else:
        wt = m.weights(f"{name}_w", (cout, k, k, cin), axis=0)
    m.bias(f"{name}_b", x, wt, cout)
    depth = k * k * (1 if depthwise else cin)
    shape = (1, (h - k) // stride + 1, (w - k) // stride + 1, cout)
    out = act(name, shape, m.conv_output_scale(x, wt, depth), m.zp())
    attrs = (ir.DepthwiseConv2D((stride, stride), ir.Padding(), 1, (1, 1), ir.Activation.RELU6)
             if depthwise else
             ir.Conv2D((stride, stride), ir.Padding(), (1, 1), ir.Activation.RELU6))
    m.node(attrs, [x.name, wt.name, f"{name}_b"], out)
    return out


def pad(m: Maker, x: ir.Tensor, name: str, amount: int = 1) -> ir.Tensor:
    _, h, w, c = x.shape
    out = like(name, (1, h + 2 * amount, w + 2 * amount, c), x)
    m.node(ir.Pad(ir.Padding(amount, amount, amount, amount)), [x.name], out)
    return out


def tinynn_graph(seed: int) -> ir.Graph:
    """What TinyNeuralNetwork writes for a small PyTorch CNN: NCHW input, TRANSPOSE to NHWC,
    explicit PAD + VALID convs, TRANSPOSE back to NCHW, MEAN over W then H (one axis each),
    a classifier and a RESHAPE / SQUEEZE pair that must cost nothing."""
    m = Maker(np.random.default_rng(seed))
    x = m.input((1, 3, 12, 10))
    nhwc = like("nhwc", (1, 12, 10, 3), x)
    m.node(ir.Transpose((0, 2, 3, 1)), ["x"], nhwc)
    y = conv(m, pad(m, nhwc, "pad1"), "conv1", 8, 3, stride=2)
    y = conv(m, pad(m, y, "pad2"), "dw2", 0, 3, depthwise=True)
    y = conv(m, y, "pw3", 12, 1)
    _, h, w, c = y.shape
    nchw = like("nchw", (1, c, h, w), y)
    m.node(ir.Transpose((0, 3, 1, 2)), [y.name], nchw)
    mean_w = act("mean_w", (1, c, h), y.quant.scalar_scale * 0.7, m.zp())
    m.node(ir.Mean((3,), False), ["nchw"], mean_w)
    mean_h = act("mean_h", (1, c, 1), mean_w.quant.scalar_scale * 0.8, m.zp())
    m.node(ir.Mean((-1,), True), ["mean_w"], mean_h)
    flat = like("flat", (1, c), mean_h)
    m.node(ir.Reshape((1, c)), ["mean_h"], flat)
    wt = m.weights("fc_w", (5, c), axis=None)
    m.bias("fc_b", flat, wt, 5)
    m.node(ir.FullyConnected(), ["flat", "fc_w", "fc_b"],
           act("logits", (1, 5), m.conv_output_scale(flat, wt, c), m.zp()))
    return m.graph("tinynn")


def uint8_interface_graph(seed: int) -> ir.Graph:
    """A TF2 post-training-quantised model with inference_input/output_type=tf.uint8.

    Seed 0 is what the converter writes (the same scale, zero points 128 apart: TFLM's
    xor-0x80 fast path); the other seeds requantise for real at both ends."""
    m = Maker(np.random.default_rng(seed))
    scale = m.scale(0.01, 0.05)
    zero_point = m.zp()
    exact = seed == 0
    m.add(ir.Tensor("x", (1, 9, 9, 3), "uint8", None, ir.QuantParams.per_tensor(
        scale if exact else scale * 0.9, zero_point + 128 if exact else 128 + m.zp(5))))
    q = act("q", (1, 9, 9, 3), scale, zero_point)
    m.node(ir.Quantize(), ["x"], q)
    y = conv(m, q, "conv1", 6, 3, stride=2)
    pooled = act("pooled", (1, 6), y.quant.scalar_scale, y.quant.scalar_zero_point)
    m.node(ir.Mean((1, 2), False), [y.name], pooled)
    wt = m.weights("fc_w", (4, 6), axis=None)
    m.bias("fc_b", pooled, wt, 4)
    logits = act("logits", (1, 4), m.conv_output_scale(pooled, wt, 6), m.zp())
    m.node(ir.FullyConnected(), ["pooled", "fc_w", "fc_b"], logits)
    out_quant = (ir.QuantParams.per_tensor(logits.quant.scalar_scale,
                                           logits.quant.scalar_zero_point + 128) if exact else
                 ir.QuantParams.per_tensor(logits.quant.scalar_scale * 1.1, 128 + m.zp(20)))
    m.node(ir.Quantize(), ["logits"], ir.Tensor("y", (1, 4), "uint8", None, out_quant))
    return m.graph("uint8_interface")


@pytest.mark.parametrize("seed", SEEDS)
def test_tinynn_style_graph(seed, tmp_path):
    model_c = three_way(tinynn_graph(seed), tmp_path, seed, min_distinct=4, inputs=4)
    assert model_c.count("transpose_s8(&") == 2 and "mean_axes_s8(&" in model_c
    header = (tmp_path / "c" / "model.h").read_text()
    assert "#define MODEL_INPUT_LAYOUT_NCHW 1" in header and "uint8_t [1, 3, 12, 10]" not in header
    assert "int8_t [1, 3, 12, 10]" in header
    assert "memcpy" not in model_c.split("_invoke(")[1]  # RESHAPE is a view, not a copy


@pytest.mark.parametrize("make", [tinynn_graph, uint8_interface_graph,
                                  lambda seed: pad_graph(seed, True),
                                  lambda seed: mean_graph(seed, False)],
                         ids=["tinynn", "uint8", "padv2", "mean"])
def test_generated_c_is_sanitizer_clean(make, tmp_path):
    """ASan + UBSan: no out-of-bounds access, no signed overflow or bad shift in the kernels."""
    three_way(make(1), tmp_path, 1, min_distinct=3, sanitize=True)


def test_squeeze_is_a_view_too(tmp_path):
    """The TinyNN graph with its RESHAPE written as SQUEEZE (how converters drop the 1)."""
    def reshape_to_squeeze(model):
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema
        codes = model.operatorCodes
        reshape = next(i for i, c in enumerate(codes)
                       if c.builtinCode == schema.BuiltinOperator.RESHAPE)
        codes[reshape].builtinCode = codes[reshape].deprecatedBuiltinCode = \
            schema.BuiltinOperator.SQUEEZE
        op = next(o for o in model.subgraphs[0].operators if o.opcodeIndex == reshape)
        op.inputs = op.inputs[:1]
        op.builtinOptionsType = schema.BuiltinOptions.SqueezeOptions
        op.builtinOptions = schema.SqueezeOptionsT()
        op.builtinOptions.squeezeDims = [2]
    model_c = three_way(tinynn_graph(2), tmp_path, 2, edit=reshape_to_squeeze)
    assert "memcpy" not in model_c.split("_invoke(")[1]


@pytest.mark.parametrize("seed", SEEDS)
def test_uint8_interface_graph(seed, tmp_path):
    model_c = three_way(uint8_interface_graph(seed), tmp_path, seed, min_distinct=3, inputs=4)
    header = (tmp_path / "c" / "model.h").read_text()
    assert "#define MODEL_INPUT_TYPE        uint8_t" in header
    assert "#define MODEL_OUTPUT_TYPE       uint8_t" in header
    assert "int model_invoke(const uint8_t *input, uint8_t *output);" in header
    assert "requantize_u8_s8(&" in model_c and "requantize_s8_u8(&" in model_c
    assert "#define MODEL_INPUT_LAYOUT_NCHW" not in header


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="needs arm-none-eabi-gcc")
@pytest.mark.parametrize("kernels", ["portable", "mbgen"])
def test_generated_c_builds_warning_free_for_cortex_m7(kernels, tmp_path):
    """The new kernels and the uint8 API under the target's flags plus -Wall -Wextra -Werror."""
    from mbgen import codegen, targets
    flags = [*targets.get("cortex-m7").cflags, "-std=c99", "-Wall", "-Wextra", "-Werror"]
    for graph in (tinynn_graph(0), uint8_interface_graph(1),
                  pad_graph(0, True), mean_graph(0, False), transpose_graph(1)):
        path = write_tflite(graph, tmp_path / f"{graph.name}.tflite")
        out_dir = tmp_path / f"{graph.name}-{kernels}"
        int8_graph = prepare(str(path), CompileOptions()).graph
        # generate() directly: compile's firmware link (flash measurement) is not needed here.
        codegen.generate(int8_graph, out_dir, target="cortex-m7", kernels=kernels)
        for source in sorted(out_dir.glob("model*.c")):
            proc = subprocess.run(["arm-none-eabi-gcc", *flags, f"-I{out_dir}", "-c",
                                   str(source), "-o", str(tmp_path / "x.o")],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, f"{source.name} ({graph.name}):\n{proc.stderr}"


def _verify(path: Path, target: str) -> subprocess.CompletedProcess:
    import sys
    return subprocess.run([sys.executable, "-m", "mbgen.cli", "verify", str(path), "--target",
                           target, "--reference", "tflm", "--count", "2"],
                          capture_output=True, text=True, timeout=600)


def test_mbgen_verify_takes_uint8_interface_models(tmp_path):
    """`mbgen verify --reference tflm` feeds uint8 inputs and reads uint8 outputs."""
    path = write_tflite(uint8_interface_graph(2), tmp_path / "u8.tflite")
    result = _verify(path, "host")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "host C vs TFLM" in result.stdout and "0 mismatched: OK" in result.stdout


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")),
                    reason="needs arm-none-eabi-gcc and qemu-system-arm")
@pytest.mark.parametrize("graph", [tinynn_graph(1), uint8_interface_graph(1)],
                         ids=["tinynn", "uint8"])
def test_mbgen_verify_in_qemu_cortex_m7(graph, tmp_path):
    result = _verify(write_tflite(graph, tmp_path / "m.tflite"), "cortex-m7")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "QEMU cortex-m7 vs numpy" in result.stdout and "0 mismatched: OK" in result.stdout


# ----------------------------------------------------------------------------- refused files


def _refusal(graph: ir.Graph, edit, tmp_path: Path) -> str:
    """The one-line UserError our frontend gives for ``graph``'s file after ``edit``."""
    from mbgen.errors import UserError
    from mbgen.frontends.tflite_frontend import load_tflite
    from test_tflite_frontend import _mutated
    path = _mutated(write_tflite(graph, tmp_path / f"{graph.name}.tflite"), edit, tmp_path)
    with pytest.raises(UserError) as caught:
        load_tflite(path)
    message = str(caught.value)
    assert "\n" not in message
    return message


def _const_tensor(model, name_part: str):
    sub = model.subgraphs[0]
    return next(t for t in sub.tensors if name_part in t.name.decode())


def test_malformed_layout_ops_are_refused_naming_the_operator(tmp_path):
    def bad_perm(model):
        t = _const_tensor(model, "/perm")
        model.buffers[t.buffer].data = np.array([0, 0, 1, 2], "<i4").view(np.uint8)
    message = _refusal(transpose_graph(0), bad_perm, tmp_path)
    assert "operator 0 (TRANSPOSE" in message and "not a permutation" in message

    def constant_off_scale(model):
        t = _const_tensor(model, "/constant_values")
        t.quantization.zeroPoint = t.quantization.zeroPoint + 1
    message = _refusal(pad_graph(1, True), constant_off_scale, tmp_path)
    assert "(PADV2" in message and "share the output's scale and zero point" in message

    def uint8_into_transpose(model):  # a uint8 input that no QUANTIZE converts
        sub = model.subgraphs[0]
        sub.tensors[sub.inputs[0]].type = 3
    message = _refusal(tinynn_graph(0), uint8_into_transpose, tmp_path)
    assert "is uint8" in message and "uint8 interface" in message


def float_tinynn_graph(rng: np.random.Generator) -> ir.Graph:
    """The TinyNN layout around a float network: NCHW input, TRANSPOSE, PAD, VALID conv,
    TRANSPOSE back, MEAN over one axis, a classifier."""
    def f32(name, shape, data=None):
        return ir.Tensor(name, tuple(shape), "float32", data)
    tensors = [f32("x", (1, 3, 10, 8)), f32("nhwc", (1, 10, 8, 3)), f32("padded", (1, 12, 10, 3)),
               f32("w", (6, 3, 3, 3), rng.normal(0, 0.3, (6, 3, 3, 3)).astype(np.float32)),
               f32("b", (6,), rng.normal(0, 0.1, 6).astype(np.float32)),
               f32("conv", (1, 10, 8, 6)), f32("nchw", (1, 6, 10, 8)), f32("mean", (1, 6, 10)),
               f32("mean2", (1, 6)),
               f32("fc_w", (4, 6), rng.normal(0, 0.5, (4, 6)).astype(np.float32)),
               f32("logits", (1, 4))]
    nodes = [ir.Node("t1", ir.Transpose((0, 2, 3, 1)), ["x"], ["nhwc"]),
             ir.Node("pad", ir.Pad(ir.Padding(1, 1, 1, 1)), ["nhwc"], ["padded"]),
             ir.Node("conv", ir.Conv2D(activation=ir.Activation.RELU), ["padded", "w", "b"],
                     ["conv"]),
             ir.Node("t2", ir.Transpose((0, 3, 1, 2)), ["conv"], ["nchw"]),
             ir.Node("mean", ir.Mean((3,), False), ["nchw"], ["mean"]),
             ir.Node("mean2", ir.Mean((2,), False), ["mean"], ["mean2"]),
             ir.Node("fc", ir.FullyConnected(), ["mean2", "fc_w"], ["logits"])]
    graph = ir.Graph("float_tinynn", {t.name: t for t in tensors}, nodes, ["x"], ["logits"])
    ir.verify(graph)
    return graph


def test_float_tinynn_file_calibrates_and_matches_tflm(tmp_path):
    """A float file with the layout ops compiles through calibration; the int8 graph it gives
    is then checked three ways like the others."""
    path = write_tflite(float_tinynn_graph(np.random.default_rng(3)), tmp_path / "f.tflite")
    prepared = prepare(str(path), CompileOptions())
    ops = [ir.op_name(n.op) for n in prepared.graph.nodes]
    assert ops.count("Transpose") == 2 and ops.count("Mean") == 2
    (tmp_path / "int8").mkdir()
    three_way(prepared.graph, tmp_path / "int8", 0, min_distinct=4)


def test_uint8_input_with_float_output(tmp_path):
    """uint8 in, DEQUANTIZE to float out (another TF2 choice): the C takes uint8 and returns
    the int8 values that TFLM's DEQUANTIZE turns into its float output."""
    graph = uint8_interface_graph(1)
    last = graph.nodes[-1]
    logits = graph.tensors[last.inputs[0]]
    graph.nodes[-1] = ir.Node(last.name, ir.Dequantize(), list(last.inputs), ["y"])
    graph.tensors["y"] = ir.Tensor("y", logits.shape, "float32")
    ir.verify(graph)
    path = write_tflite(graph, tmp_path / "u8_float.tflite")
    prepared = prepare(str(path), CompileOptions())
    emit(prepared, CompileOptions(target="host", out_dir=tmp_path / "c"))
    header = (tmp_path / "c" / "model.h").read_text()
    assert "int model_invoke(const uint8_t *input, int8_t *output);" in header
    exe = build_folder(tmp_path / "c")
    scale, zero_point = logits.quant.scalar_scale, logits.quant.scalar_zero_point
    rng = np.random.default_rng(5)
    for _ in range(3):
        x = random_input(graph, rng)
        c_out = np.frombuffer(run(exe, x.tobytes()), dtype=np.int8).reshape(logits.shape)
        assert np.array_equal(c_out, run_int8(prepared.graph, x)[prepared.graph.outputs[0]])
        expected = (np.float32(scale) * (c_out.astype(np.float32) - np.float32(zero_point)))
        assert np.array_equal(run_tflm(path, x), expected)


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(not (shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm")),
                    reason="needs arm-none-eabi-gcc and qemu-system-arm")
def test_bench_runs_a_uint8_interface_model(tmp_path):
    """bench checks its run against the reference with a uint8 input and output."""
    from mbgen.bench import bench_model
    path = write_tflite(uint8_interface_graph(0), tmp_path / "u8.tflite")
    outcome = bench_model(str(path), "cortex-m7", ["portable"], echo=None)
    assert outcome["results"][0]["instructions"] > 0


def test_absurd_boundary_scale_is_refused_not_miscompiled(tmp_path):
    """A uint8 input scale of 1e30 would need a left shift of 106 (undefined in C)."""
    from mbgen import codegen
    from mbgen.errors import UserError
    graph = uint8_interface_graph(1)
    x = graph.tensors["x"]
    graph.tensors["x"] = ir.Tensor("x", x.shape, "uint8", None,
                                   ir.QuantParams.per_tensor(1e30, 128))
    with pytest.raises(UserError, match=r"layer 'n0_q': .* shift 106 > 31"):
        codegen.generate(graph, tmp_path / "c", kernels="portable")
