"""int8 ONNX models from onnxruntime.quantization, bit-exact against onnxruntime itself.

The referee is onnxruntime's CPU provider (the installed wheel, default session options),
which shares nothing with our frontend, numpy reference or C. Models are made here with
``quantize_static`` (QOperator and QDQ, int8 activations and weights, per channel) from the
zoo's mbv2_0.35_96 and from small graphs holding each supported op.

Outputs are compared as onnxruntime returns them: float32 from its final DequantizeLinear,
against ``dequantize_linear`` of our int8 (the same one-rounding formula), so equal floats
mean equal int8.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat,  # noqa: E402
                                      QuantType, quantize_static)

from conftest import image_paths  # noqa: E402
from helpers_c import build_folder, run  # noqa: E402
from mbgen import ir  # noqa: E402
from mbgen.compiler import CompileOptions, compile_model, emit, prepare  # noqa: E402
from mbgen.errors import UserError  # noqa: E402
from mbgen.images import load_image  # noqa: E402
from mbgen.quantize.calibration import synthetic_inputs  # noqa: E402
from mbgen.reference import run_int8  # noqa: E402
from mbgen.reference_onnxruntime import (dequantize_linear, quantize_linear,  # noqa: E402
                                         requantize)

ZOO_MODEL = "mbv2_0.35_96"


# ----------------------------------------------------------------------------- helpers


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._items = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self._items, None)


def _quantize(float_path: Path, out: Path, fmt: str, batches: list[np.ndarray],
              activations: str = "QInt8", per_channel: bool = True,
              weights: str = "QInt8") -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(float_path), str(out), _Reader("input", batches),
                        quant_format=getattr(QuantFormat, fmt), per_channel=per_channel,
                        activation_type=getattr(QuantType, activations),
                        weight_type=getattr(QuantType, weights))
    return out


def _session(path: Path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _nchw(x_nhwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))


def _int8_input(graph: ir.Graph, x_nhwc: np.ndarray) -> np.ndarray:
    q = graph.tensors[graph.inputs[0]].quant
    return quantize_linear(x_nhwc, q.scalar_scale, q.scalar_zero_point)


def _as_ort_output(graph: ir.Graph, q8: np.ndarray) -> np.ndarray:
    q = graph.tensors[graph.outputs[0]].quant
    return dequantize_linear(q8, q.scalar_scale, q.scalar_zero_point)


def _assert_same_as_ort(graph: ir.Graph, ours: np.ndarray, want: np.ndarray, msg: str) -> None:
    """Our int8 output (NHWC) dequantised as onnxruntime does, against its NCHW output."""
    got = _as_ort_output(graph, ours).reshape(graph.tensors[graph.outputs[0]].shape)
    if want.ndim == 4:
        want = want.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got, want.reshape(got.shape), err_msg=msg)


def _lsb_diff(graph: ir.Graph, ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    q = graph.tensors[graph.outputs[0]].quant
    theirs_q = np.rint(theirs.reshape(-1) / np.float32(q.scalar_scale)) + q.scalar_zero_point
    return np.abs(ours.reshape(-1).astype(np.int64) - theirs_q.astype(np.int64))


# ----------------------------------------------------------------------------- zoo model


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory) -> dict[str, Path]:
    """mbv2_0.35_96 exported by torch.onnx and quantised in both formats (per channel)."""
    import torch
    from mbgen import zoo
    folder = tmp_path_factory.mktemp("ort_int8")
    float_path = folder / "float.onnx"
    shape = zoo.input_shape(ZOO_MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(zoo.get(ZOO_MODEL), (torch.zeros(shape),), str(float_path),
                          input_names=["input"], dynamo=False, opset_version=13)
    nhwc = (1, shape[2], shape[3], shape[1])
    calib = [_nchw(x) for x in synthetic_inputs(nhwc, count=4, seed=5)]
    calib += [_nchw(load_image(p, nhwc)) for p in image_paths()[:2]]
    files = {fmt: _quantize(float_path, folder / f"{fmt}.onnx", fmt, calib)
             for fmt in ("QOperator", "QDQ")}
    # uint8 activations (quantize_static's default); per-tensor weights for QOperator.
    files["QDQ-uint8"] = _quantize(float_path, folder / "qdq_u8.onnx", "QDQ", calib, "QUInt8")
    files["QOperator-uint8-per-tensor"] = _quantize(
        float_path, folder / "qop_u8.onnx", "QOperator", calib, "QUInt8", per_channel=False)
    return files


def _zoo_inputs(graph: ir.Graph) -> list[tuple[str, np.ndarray]]:
    """The shared photos (5) and 2 synthetic images, float NHWC."""
    shape = graph.tensors[graph.inputs[0]].shape
    inputs = [(p.name, load_image(p, shape)) for p in image_paths()[:5]]
    inputs += [(f"synthetic{i}", x) for i, x in
               enumerate(synthetic_inputs(shape, count=2, seed=77))]
    return inputs


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["QOperator", "QDQ-uint8", "QOperator-uint8-per-tensor"])
def test_mbv2_host_c_is_bit_exact_with_onnxruntime(variant, zoo_files, tmp_path):
    """The formats onnxruntime runs fully fused (int8 QOperator; uint8 in both formats)."""
    path = zoo_files[variant]
    compiled = compile_model(str(path), CompileOptions(target="host", out_dir=tmp_path / "c"))
    graph = compiled.graph
    assert all(ir.uses_onnxruntime_arithmetic(n.op) for n in graph.nodes
               if isinstance(n.op, (ir.Conv2D, ir.DepthwiseConv2D, ir.FullyConnected,
                                    ir.Add, ir.Mean)))
    exe = build_folder(compiled.out_dir)
    session = _session(path)
    inputs = _zoo_inputs(graph)
    assert len(inputs) >= 2
    for label, x in inputs:
        want = session.run(None, {"input": _nchw(x)})[0]
        q = _int8_input(graph, x)
        ours = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
        reference = run_int8(graph, q)[graph.outputs[0]].reshape(-1)
        np.testing.assert_array_equal(ours, reference, err_msg=f"C != numpy on {label}")
        np.testing.assert_array_equal(_as_ort_output(graph, ours).reshape(want.shape), want,
                                      err_msg=f"C != onnxruntime on {label}")
    print(f"{ZOO_MODEL} {variant}: host C == numpy == onnxruntime on {len(inputs)} inputs")


@pytest.mark.slow
def test_mbv2_qdq_matches_qoperator_and_bounds_onnxruntime(zoo_files):
    """QDQ becomes the same int8 graph as QOperator. onnxruntime (1.2x, x86) fuses only part
    of an int8-activation QDQ MobileNetV2 into QLinearConv/QLinearAdd: where a tensor feeds a
    residual Add it leaves Conv and Add in float (DequantizeLinear -> float op ->
    QuantizeLinear), whose float sums cannot be matched bit for bit. Those outputs are
    bounded here; the fully fused QOperator file is the bit-exact case."""
    qdq = prepare(str(zoo_files["QDQ"]), CompileOptions()).graph
    qop = prepare(str(zoo_files["QOperator"]), CompileOptions()).graph
    session = _session(zoo_files["QDQ"])
    worst, equal, total = 0, 0, 0
    for label, x in _zoo_inputs(qdq):
        ours = run_int8(qdq, _int8_input(qdq, x))[qdq.outputs[0]]
        np.testing.assert_array_equal(ours, run_int8(qop, _int8_input(qop, x))[qop.outputs[0]],
                                      err_msg=f"QDQ and QOperator graphs differ on {label}")
        diff = _lsb_diff(qdq, ours, session.run(None, {"input": _nchw(x)})[0])
        worst, equal, total = max(worst, int(diff.max())), equal + int((diff == 0).sum()), \
            total + diff.size
    print(f"{ZOO_MODEL} QDQ vs onnxruntime: {equal}/{total} outputs equal, worst {worst} LSB")
    assert worst <= 4 and equal >= 0.9 * total


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or
                    shutil.which("qemu-system-arm") is None, reason="no Arm toolchain or QEMU")
@pytest.mark.parametrize("variant", ["QOperator", "QDQ-uint8"])
def test_mbv2_in_qemu_cortex_m7_is_bit_exact(variant, zoo_files, tmp_path):
    from mbgen import targets
    from mbgen.runner import run_qemu
    path = zoo_files[variant]
    prepared = prepare(str(path), CompileOptions())
    # 1.7 MB of weights: over the STM32F746 budget, QEMU's board has room (as test_qemu_golden).
    emit(prepared, CompileOptions(target="cortex-m7", out_dir=tmp_path / "fw",
                                  flash_bytes=4 * 1024 * 1024))
    graph = prepared.graph
    label, x = _zoo_inputs(graph)[0]
    result = run_qemu(tmp_path / "fw", targets.get("cortex-m7"), _int8_input(graph, x).tobytes())
    want = _session(path).run(None, {"input": _nchw(x)})[0]
    _assert_same_as_ort(graph, result.output_int8(), want, f"Cortex-M7 != onnxruntime on {label}")
    print(f"{ZOO_MODEL} {variant} on cortex-m7 ({label}): {result.total_instructions:,} "
          "instructions, bit-exact with onnxruntime")


# ----------------------------------------------------------------------------- small models


def _small_float_model(path: Path, seed: int, head: str) -> Path:
    """conv 3x3/s2 -> depthwise 3x3 (multiplier 1) -> 1x1 conv -> residual add -> global
    average pool -> flatten -> Gemm or MatMul: one node of each kind quantize_static maps."""
    rng = np.random.default_rng(seed)
    c_in, c, classes, size = 3, 8, 10, 12

    def init(name, *shape, scale=0.5):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale)
                                       .astype(np.float32), name)
    inits = [init("w1", c, c_in, 3, 3), init("b1", c), init("w2", c, 1, 3, 3), init("b2", c),
             init("w3", c, c, 1, 1, scale=0.3), init("b3", c)]
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 0, 1, 2], group=c),
        helper.make_node("Conv", ["c2", "w3", "b3"], ["c3"]),
        helper.make_node("Add", ["c3", "r1"], ["sum"]),
        helper.make_node("GlobalAveragePool", ["sum"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
    ]
    if head == "Gemm":
        inits += [init("wf", classes, c), init("bf", classes)]
        nodes.append(helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1))
    else:
        inits.append(init("wf", c, classes))
        nodes.append(helper.make_node("MatMul", ["flat", "wf"], ["logits"]))
    graph = helper.make_graph(
        nodes, "small",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, c_in, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.mark.parametrize("seed,head", [(0, "Gemm"), (1, "MatMul"), (2, "Gemm")])
def test_small_models_every_op_bit_exact_with_onnxruntime(seed, head, tmp_path):
    float_path = _small_float_model(tmp_path / "float.onnx", seed, head)
    rng = np.random.default_rng(100 + seed)
    calib = [rng.uniform(-1, 1, (1, 3, 12, 12)).astype(np.float32) for _ in range(4)]
    tests = [rng.uniform(-1.2, 1.2, (1, 3, 12, 12)).astype(np.float32) for _ in range(6)]
    for fmt, activations in [("QOperator", "QInt8"), ("QDQ", "QInt8"), ("QOperator", "QUInt8"),
                             ("QDQ", "QUInt8")]:
        path = _quantize(float_path, tmp_path / f"{fmt}{activations}.onnx", fmt, calib,
                         activations, per_channel=seed != 2)
        compiled = compile_model(str(path), CompileOptions(
            target="host", out_dir=tmp_path / f"c_{fmt}{activations}"))
        graph = compiled.graph
        kinds = {type(n.op) for n in graph.nodes}
        assert {ir.Conv2D, ir.DepthwiseConv2D, ir.Add, ir.Mean, ir.FullyConnected} <= kinds
        exe = build_folder(compiled.out_dir)
        session = _session(path)
        for i, x in enumerate(tests):
            want = session.run(None, {"input": x})[0]
            q = _int8_input(graph, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
            ours = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
            np.testing.assert_array_equal(ours, run_int8(graph, q)[graph.outputs[0]].ravel(),
                                          err_msg=f"{fmt} {activations} {seed}: C != numpy ({i})")
            np.testing.assert_array_equal(
                _as_ort_output(graph, ours).reshape(want.shape), want,
                err_msg=f"{fmt} {activations} {seed}: != onnxruntime ({i})")


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


def test_uint8_weights_and_unsupported_ops_are_refused_in_one_line(tmp_path):
    float_path = _small_float_model(tmp_path / "float.onnx", 0, "Gemm")
    rng = np.random.default_rng(3)
    calib = [rng.uniform(-1, 1, (1, 3, 12, 12)).astype(np.float32) for _ in range(2)]
    _quantize(float_path, tmp_path / "u8.onnx", "QOperator", calib, "QUInt8",
              weights="QUInt8")
    with pytest.raises(UserError, match="int8 weights") as err:
        prepare(str(tmp_path / "u8.onnx"), CompileOptions())
    assert "\n" not in str(err.value)
    model = onnx.load(str(_quantize(float_path, tmp_path / "s8.onnx", "QOperator", calib)))
    next(n for n in model.graph.node if n.op_type == "QLinearAdd").op_type = "QLinearSigmoid"
    bad = tmp_path / "sigmoid.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(UserError, match="QLinearSigmoid"):
        prepare(str(bad), CompileOptions())


def test_verify_with_onnxruntime_reference(tmp_path):
    from mbgen.verify import verify_model
    float_path = _small_float_model(tmp_path / "float.onnx", 4, "Gemm")
    rng = np.random.default_rng(4)
    calib = [rng.uniform(-1, 1, (1, 3, 12, 12)).astype(np.float32) for _ in range(3)]
    path = _quantize(float_path, tmp_path / "q.onnx", "QOperator", calib)
    lines: list[str] = []
    outcome = verify_model(str(path), CompileOptions(target="host"), reference="onnxruntime",
                           count=2, echo=lines.append)
    assert outcome.ok
    assert sum("host C vs onnxruntime" in c.what and c.exact for c in outcome.comparisons) == 2
    with pytest.raises(UserError, match="needs an .onnx model"):
        verify_model("mbv1_0.25_96", CompileOptions(target="host"), reference="onnxruntime",
                     count=1, echo=lines.append)


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
    session = _session(path)
    rng = np.random.default_rng(9)
    for i in range(8):
        x = (rng.integers(-60, 60, (1, 6, 6, 4)) * 0.25).astype(np.float32)  # exact in int8
        want = session.run(None, {"input": _nchw(x)})[0]
        q = _int8_input(graph, x)
        ours = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
        np.testing.assert_array_equal(ours, run_int8(graph, q)[graph.outputs[0]].ravel())
        _assert_same_as_ort(graph, ours, want, f"{last}: input {i}")


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
    session = _session(path)
    graph = prepared.graph
    rng = np.random.default_rng(10)
    for i in range(2):
        x = (rng.integers(-60, 60, (1, 6, 6, 4)) * 0.25).astype(np.float32)
        result = run_qemu(tmp_path / "fw", target, _int8_input(graph, x).tobytes())
        want = session.run(None, {"input": _nchw(x)})[0]
        _assert_same_as_ort(graph, result.output_int8(), want,
                            f"{target_name} != onnxruntime on input {i}")


def test_depthwise_multiplier_dilation_and_asymmetric_padding(tmp_path):
    """Depthwise with multiplier 2 (group = channels, 2 filters each), dilation 2, strides
    (1, 2) and uneven pads, then a dilated 3x3 conv: both formats, both activation types."""
    rng = np.random.default_rng(21)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.4).astype(np.float32),
                                       name)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["d1"], group=4, dilations=[2, 2],
                         strides=[1, 2], pads=[2, 1, 2, 3]),
        helper.make_node("Conv", ["d1", "w2", "b2"], ["c2"], dilations=[1, 2], pads=[1, 1, 0, 2]),
        helper.make_node("GlobalAveragePool", ["c2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "dw2", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4, 10, 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
        [init("w1", 8, 1, 3, 3), init("b1", 8), init("w2", 6, 8, 3, 3), init("b2", 6),
         init("wf", 5, 6), init("bf", 5)])
    float_path = tmp_path / "float.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
              str(float_path))
    calib = [rng.uniform(-1, 1, (1, 4, 10, 10)).astype(np.float32) for _ in range(3)]
    tests = [rng.uniform(-1.2, 1.2, (1, 4, 10, 10)).astype(np.float32) for _ in range(4)]
    for fmt, activations in [("QOperator", "QInt8"), ("QDQ", "QUInt8")]:
        path = _quantize(float_path, tmp_path / f"{fmt}.onnx", fmt, calib, activations)
        compiled = compile_model(str(path), CompileOptions(target="host",
                                                           out_dir=tmp_path / f"c_{fmt}"))
        ops = [n.op for n in compiled.graph.nodes]
        assert any(isinstance(op, ir.DepthwiseConv2D) and op.depth_multiplier == 2
                   for op in ops)
        exe = build_folder(compiled.out_dir)
        session = _session(path)
        for i, x in enumerate(tests):
            want = session.run(None, {"input": x})[0]
            q = _int8_input(compiled.graph, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
            ours = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
            np.testing.assert_array_equal(_as_ort_output(compiled.graph, ours)
                                          .reshape(want.shape), want,
                                          err_msg=f"{fmt} {activations} input {i}")


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


def test_average_pools_bit_exact_with_onnxruntime(tmp_path):
    """QLinearAveragePool with a 3x3/s2 padded window (float32 window sums, as onnxruntime)
    and with a whole-image window (which onnxruntime runs as its global average pool)."""
    rng = np.random.default_rng(30)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.4).astype(np.float32),
                                       name)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["c1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"]),
        helper.make_node("AveragePool", ["c2"], ["p2"], kernel_shape=[5, 5]),
        helper.make_node("Flatten", ["p2"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "pools",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 10, 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
        [init("w1", 6, 3, 3, 3), init("b1", 6), init("w2", 6, 6, 1, 1), init("b2", 6),
         init("wf", 5, 6), init("bf", 5)])
    float_path = tmp_path / "float.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
              str(float_path))
    calib = [rng.uniform(-1, 1, (1, 3, 10, 10)).astype(np.float32) for _ in range(3)]
    tests = [rng.uniform(-1.2, 1.2, (1, 3, 10, 10)).astype(np.float32) for _ in range(8)]
    for fmt, activations in [("QOperator", "QInt8"), ("QOperator", "QUInt8"), ("QDQ", "QUInt8")]:
        path = _quantize(float_path, tmp_path / f"{fmt}{activations}.onnx", fmt, calib,
                         activations)
        compiled = compile_model(str(path), CompileOptions(
            target="host", out_dir=tmp_path / f"c_{fmt}{activations}"))
        kinds = [type(n.op) for n in compiled.graph.nodes]
        assert ir.AveragePool2D in kinds and ir.Mean in kinds
        exe = build_folder(compiled.out_dir)
        session = _session(path)
        for i, x in enumerate(tests):
            want = session.run(None, {"input": x})[0]
            q = _int8_input(compiled.graph, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
            ours = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
            np.testing.assert_array_equal(
                ours, run_int8(compiled.graph, q)[compiled.graph.outputs[0]].ravel())
            np.testing.assert_array_equal(
                _as_ort_output(compiled.graph, ours).reshape(want.shape), want,
                err_msg=f"{fmt} {activations} input {i}")



def test_squeeze_excite_mul_bit_exact_with_onnxruntime(tmp_path):
    """x * s with s (1, C, 1, 1) from a global pool and a 1x1 conv (squeeze-excite): the
    broadcast QLinearMul, both formats, int8 and uint8."""
    rng = np.random.default_rng(40)

    def init(name, *shape):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.4).astype(np.float32),
                                       name)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["x"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["x"], ["squeezed"]),
        helper.make_node("Conv", ["squeezed", "w2", "b2"], ["gate"]),
        helper.make_node("Mul", ["x", "gate"], ["excited"]),
        helper.make_node("GlobalAveragePool", ["excited"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "se", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 5])],
        [init("w1", 6, 3, 3, 3), init("b1", 6), init("w2", 6, 6, 1, 1), init("b2", 6),
         init("wf", 5, 6), init("bf", 5)])
    float_path = tmp_path / "float.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
              str(float_path))
    calib = [rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    tests = [rng.uniform(-1.2, 1.2, (1, 3, 8, 8)).astype(np.float32) for _ in range(8)]
    for fmt, activations in [("QOperator", "QInt8"), ("QOperator", "QUInt8"), ("QDQ", "QUInt8")]:
        path = _quantize(float_path, tmp_path / f"{fmt}{activations}.onnx", fmt, calib,
                         activations)
        compiled = compile_model(str(path), CompileOptions(
            target="host", out_dir=tmp_path / f"c_{fmt}{activations}"))
        muls = [n for n in compiled.graph.nodes if isinstance(n.op, ir.Mul)]
        assert muls and compiled.graph.tensors[muls[0].inputs[1]].shape == (1, 1, 1, 6)
        exe = build_folder(compiled.out_dir)
        session = _session(path)
        for i, x in enumerate(tests):
            want = session.run(None, {"input": x})[0]
            q = _int8_input(compiled.graph, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
            ours = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
            np.testing.assert_array_equal(
                ours, run_int8(compiled.graph, q)[compiled.graph.outputs[0]].ravel())
            np.testing.assert_array_equal(
                _as_ort_output(compiled.graph, ours).reshape(want.shape), want,
                err_msg=f"{fmt} {activations} input {i}")
