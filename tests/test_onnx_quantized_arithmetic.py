"""onnxruntime's int8 arithmetic, op by op: every input pair of QLinearAdd / QLinearMul,
QuantizeLinear's ties, a hand-built model whose scales make ties in every op (host and QEMU
on four cores), and malformed scales refused at load time. The referee is onnxruntime.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from helpers_c import build_folder, run  # noqa: E402
from helpers_onnxruntime import assert_same_as_ort, int8_input, nchw, ort_session  # noqa: E402
from mbgen import ir  # noqa: E402
from mbgen.compiler import CompileOptions, compile_model, emit, prepare  # noqa: E402
from mbgen.errors import UserError  # noqa: E402
from mbgen.reference import run_int8  # noqa: E402
from mbgen.reference_onnxruntime import quantize_linear, requantize  # noqa: E402


# ----------------------------------------------------------------------------- arithmetic


def _qlinear_add_model(a_scale, a_zp, b_scale, b_zp, c_scale, c_zp, size, dtype=np.int8,
                       op_type="QLinearAdd"):
    def scalar(name, value, kind):
        return numpy_helper.from_array(np.array(value, dtype=kind), name)
    inits = [scalar("as", a_scale, np.float32), scalar("az", a_zp, dtype),
             scalar("bs", b_scale, np.float32), scalar("bz", b_zp, dtype),
             scalar("cs", c_scale, np.float32), scalar("cz", c_zp, dtype)]
    elem = TensorProto.INT8 if dtype == np.int8 else TensorProto.UINT8
    node = helper.make_node(op_type, ["a", "as", "az", "b", "bs", "bz", "cs", "cz"], ["c"],
                            domain="com.microsoft")
    graph = helper.make_graph(
        [node], "qadd",
        [helper.make_tensor_value_info(n, elem, [1, size]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", elem, [1, size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                   helper.make_opsetid("com.microsoft", 1)])


@pytest.mark.parametrize("op_type", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("seed,storage", [(0, "int8"), (1, "int8"), (2, "uint8"), (3, "uint8")])
def test_qlinear_binary_every_input_pair_matches_onnxruntime(op_type, seed, storage):
    """All 65536 (a, b) pairs through onnxruntime's QLinearAdd / QLinearMul and our numpy
    kernels; uint8 tensors are held as int8 minus 128, as the frontend does."""
    from mbgen.reference_onnxruntime import KERNELS
    rng = np.random.default_rng(seed)
    scales = (rng.uniform(0.005, 0.2, 3)).astype(np.float32)
    shift = 128 if storage == "uint8" else 0
    zps = rng.integers(-128, 128, 3) + shift
    a, b = (g.reshape(1, -1) for g in np.meshgrid(np.arange(-128, 128), np.arange(-128, 128)))
    dtype = np.dtype(storage)
    if op_type == "QLinearMul":
        scales[2] *= 20  # a product's range is wider: keep the outputs off the rails
    model = _qlinear_add_model(scales[0], zps[0], scales[1], zps[1], scales[2], zps[2], a.size,
                               dtype, op_type)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    want = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(
        None, {"a": (a + shift).astype(dtype), "b": (b + shift).astype(dtype)})[0]
    tensors = {n: ir.Tensor(n, a.shape, "int8", quant=ir.QuantParams.per_tensor(s, z - shift))
               for n, s, z in zip("abc", scales, zps)}
    mode = ir.Requantization.ONNXRUNTIME_UINT8 if shift else ir.Requantization.ONNXRUNTIME
    op = ir.Add(requantization=mode) if op_type == "QLinearAdd" else ir.Mul(requantization=mode)
    graph = ir.Graph("qbin", tensors, [ir.Node("op", op, ["a", "b"], ["c"])], ["a", "b"], ["c"])
    got = KERNELS[type(op)](graph, graph.nodes[0], [a.astype(np.int8), b.astype(np.int8)])
    np.testing.assert_array_equal(got.astype(np.int64) + shift, want.astype(np.int64))


def test_quantize_linear_and_requantize_round_half_to_even_like_onnxruntime():
    scale, zp = np.float32(0.05), -3
    ties = (np.arange(-200, 200) + 0.5).astype(np.float32) * scale
    x = np.concatenate([ties, np.random.default_rng(0).uniform(-9, 9, 4000).astype(np.float32)])
    model = helper.make_model(helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"])], "q",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [x.size])],
        [helper.make_tensor_value_info("y", TensorProto.INT8, [x.size])],
        [numpy_helper.from_array(np.array(scale, np.float32), "s"),
         numpy_helper.from_array(np.array(zp, np.int8), "z")]),
        opset_imports=[helper.make_opsetid("", 13)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    want = ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(quantize_linear(x, scale, zp), want)
    # requantize: ties go to even, and the clamp happens before the zero point is added.
    got = requantize(np.array([1, 3, 5, -1, -3, 10 ** 6, -10 ** 6]), np.float32(0.5), 10)
    np.testing.assert_array_equal(got, [10, 12, 12, 10, 8, 127, -128])


TIE_OUTPUTS = {"c1": ("y1s", "y1z", 6), "c2": ("y2s", "y2z", 6), "sum": ("y3s", "y3z", 6),
               "prod": ("y6s", "y6z", 6), "avg": ("y5s", "y5z", 3),
               "pooled": ("y4s", "y4z", 1)}


def _tie_model(path: Path, seed: int, last: str = "pooled") -> Path:
    """QOperator graph built by hand with power-of-two scale ratios (and small weights, so few
    values saturate): many values land exactly half-way between two integers, and round half
    to even is visible in every op. The model ends at ``last`` (one of TIE_OUTPUTS), so each
    op's own output is compared."""
    rng = np.random.default_rng(seed)
    c = 4

    def const(name, value, dtype):
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)
    inits = [
        const("xs", 0.25, np.float32), const("xz", 3, np.int8),
        const("w1", rng.integers(-3, 4, (c, c, 3, 3)), np.int8),
        const("w1s", [0.5, 0.25, 0.125, 1.0], np.float32), const("w1z", [0] * c, np.int8),
        const("b1", rng.integers(-50, 50, c), np.int32),
        const("y1s", 1.0, np.float32), const("y1z", -5, np.int8),
        const("w2", rng.integers(-3, 4, (c, 1, 3, 3)), np.int8),
        const("w2s", 0.5, np.float32), const("w2z", 0, np.int8),
        const("y2s", 4.0, np.float32), const("y2z", 7, np.int8),
        const("y3s", 4.0, np.float32), const("y3z", -1, np.int8),
        const("y6s", 128.0, np.float32), const("y6z", 1, np.int8),
        const("y5s", 64.0, np.float32), const("y5z", -4, np.int8),
        # float32(128 / 9): the global pool's scale 64 / (y4s * 9) is then exactly 1/2
        const("y4s", 128.0 / 9.0, np.float32), const("y4z", 2, np.int8),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "w1", "w1s", "w1z", "y1s", "y1z",
                                         "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("QLinearConv", ["c1", "y1s", "y1z", "w2", "w2s", "w2z", "y2s", "y2z"],
                         ["c2"], pads=[1, 1, 1, 1], group=c),
        helper.make_node("QLinearAdd", ["c2", "y2s", "y2z", "c1", "y1s", "y1z", "y3s", "y3z"],
                         ["sum"], domain="com.microsoft"),
        helper.make_node("QLinearMul", ["sum", "y3s", "y3z", "c1", "y1s", "y1z", "y6s", "y6z"],
                         ["prod"], domain="com.microsoft"),
        helper.make_node("QLinearAveragePool", ["prod", "y6s", "y6z", "y5s", "y5z"], ["avg"],
                         domain="com.microsoft", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("QLinearGlobalAveragePool", ["avg", "y5s", "y5z", "y4s", "y4z"],
                         ["pooled"], domain="com.microsoft", channels_last=0),
    ]
    nodes = nodes[:1 + list(TIE_OUTPUTS).index(last) + 1]
    scale, zero_point, size = TIE_OUTPUTS[last]
    nodes.append(helper.make_node("DequantizeLinear", [last, scale, zero_point], ["output"]))
    graph = helper.make_graph(
        nodes, "ties",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c, 6, 6])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, c, size, size])],
        [i for i in inits if any(i.name in n.input for n in nodes)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("last", list(TIE_OUTPUTS))
def test_half_way_values_round_to_even_in_c_like_onnxruntime(last, tmp_path):
    """Ties are rare with calibrated scales; with these every op meets many of them, and
    rounding them any other way (half away from zero, TFLite's) fails this test. Each op's
    output is checked on its own (a model ending there), so pooling cannot hide a tie."""
    path = _tie_model(tmp_path / "ties.onnx", 0, last)
    compiled = compile_model(str(path), CompileOptions(target="host", out_dir=tmp_path / "c"))
    graph = compiled.graph
    exe = build_folder(compiled.out_dir)
    session = ort_session(path)
    rng = np.random.default_rng(9)
    for i in range(8):
        x = (rng.integers(-60, 60, (1, 6, 6, 4)) * 0.25).astype(np.float32)  # exact in int8
        want = session.run(None, {"input": nchw(x)})[0]
        q = int8_input(graph, x)
        ours = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
        np.testing.assert_array_equal(ours, run_int8(graph, q)[graph.outputs[0]].ravel())
        assert_same_as_ort(graph, ours, want, f"{last}: input {i}")


def test_emit_tflite_of_an_onnxruntime_model_is_refused(tmp_path):
    path = _tie_model(tmp_path / "ties.onnx", 1)
    with pytest.raises(UserError, match="onnxruntime"):
        compile_model(str(path), CompileOptions(target="host", out_dir=tmp_path / "c",
                                                emit_tflite=tmp_path / "x.tflite"))


@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or
                    shutil.which("qemu-system-arm") is None, reason="no Arm toolchain or QEMU")
@pytest.mark.parametrize("target_name", ["cortex-m3", "cortex-m4", "cortex-m33", "cortex-m55"])
def test_ties_model_in_qemu_is_bit_exact_with_onnxruntime(target_name, tmp_path):
    """Every core's float path: M4/M33 single-precision FPU with software double for the add,
    M55 with MVE, M3 with no FPU at all (libgcc's IEEE arithmetic)."""
    from mbgen import targets
    from mbgen.runner import build_firmware, run_qemu
    target = targets.get(target_name)
    path = _tie_model(tmp_path / "ties.onnx", 2, "avg")
    prepared = prepare(str(path), CompileOptions())
    emit(prepared, CompileOptions(target=target_name, out_dir=tmp_path / "fw"))
    build_firmware(tmp_path / "fw", target)  # warnings are errors with the target's flags
    session = ort_session(path)
    graph = prepared.graph
    rng = np.random.default_rng(10)
    for i in range(2):
        x = (rng.integers(-60, 60, (1, 6, 6, 4)) * 0.25).astype(np.float32)
        result = run_qemu(tmp_path / "fw", target, int8_input(graph, x).tobytes())
        want = session.run(None, {"input": nchw(x)})[0]
        assert_same_as_ort(graph, result.output_int8(), want,
                            f"{target_name} != onnxruntime on input {i}")


@pytest.mark.parametrize("name,value", [("y1s", 0.0), ("y1s", np.inf), ("xs", np.nan),
                                        ("w1s", -0.5), ("y5s", 1e-30), ("y4s", 1e30)])
def test_malformed_scales_are_refused_in_one_line(name, value, tmp_path):
    """Each mutant is refused at load time, naming the layer, before any C is written."""
    model = onnx.load(str(_tie_model(tmp_path / "ties.onnx", 3)))
    for init in model.graph.initializer:
        if init.name == name:
            data = numpy_helper.to_array(init).copy()
            data.reshape(-1)[0] = value
            init.CopyFrom(numpy_helper.from_array(data.astype(np.float32), name))
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UserError) as err:
        prepare(str(path), CompileOptions())
    assert "\n" not in str(err.value) and "QLinear" in str(err.value)
