"""int8 ONNX models from onnxruntime.quantization, bit-exact against onnxruntime itself.

The referee is onnxruntime's CPU provider (the installed wheel, default session options),
which shares nothing with our frontend, numpy reference or C. Models are made here with
``quantize_static`` (QOperator and QDQ, int8 and uint8 activations, int8 weights per channel
or per tensor) from the zoo's mbv2_0.35_96 and from small graphs holding each supported op.
The arithmetic itself (ties, every input pair, malformed scales) is in
test_onnx_quantized_arithmetic.py.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import helper  # noqa: E402

from helpers_onnxruntime import (QOP_BOTH_QDQ_UINT8,  # noqa: E402
                                 assert_bit_exact_with_onnxruntime,
                                 assert_host_c_equals_numpy_and_ort, assert_same_as_ort,
                                 float_initializer, int8_input, lsb_diff, nchw, ort_session,
                                 quantize, quantized_zoo_files, save_float_model, zoo_inputs)
from mbgen import ir  # noqa: E402
from mbgen.compiler import CompileOptions, compile_model, emit, prepare  # noqa: E402
from mbgen.errors import UserError  # noqa: E402
from mbgen.reference import run_int8  # noqa: E402


ZOO_MODEL = "mbv2_0.35_96"


# ----------------------------------------------------------------------------- zoo model


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory) -> dict[str, Path]:
    """mbv2_0.35_96 quantised in both formats (per channel); uint8 activations
    (quantize_static's default) in both, and per-tensor weights for QOperator."""
    return quantized_zoo_files(ZOO_MODEL, tmp_path_factory.mktemp("ort_int8"),
                               ["QOperator", "QDQ", "QDQ-uint8",
                                "QOperator-uint8-per-tensor"])


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
    count = assert_host_c_equals_numpy_and_ort(compiled.out_dir, graph, path)
    assert count >= 2
    print(f"{ZOO_MODEL} {variant}: host C == numpy == onnxruntime on {count} inputs")


@pytest.mark.slow
def test_mbv2_qdq_matches_qoperator_and_bounds_onnxruntime(zoo_files):
    """QDQ becomes the same int8 graph as QOperator. onnxruntime (1.2x, x86) fuses only part
    of an int8-activation QDQ MobileNetV2 into QLinearConv/QLinearAdd: where a tensor feeds a
    residual Add it leaves Conv and Add in float (DequantizeLinear -> float op ->
    QuantizeLinear), whose float sums cannot be matched bit for bit. Those outputs are
    bounded here; the fully fused QOperator file is the bit-exact case."""
    qdq = prepare(str(zoo_files["QDQ"]), CompileOptions()).graph
    qop = prepare(str(zoo_files["QOperator"]), CompileOptions()).graph
    session = ort_session(zoo_files["QDQ"])
    worst, equal, total = 0, 0, 0
    for label, x in zoo_inputs(qdq):
        ours = run_int8(qdq, int8_input(qdq, x))[qdq.outputs[0]]
        np.testing.assert_array_equal(ours, run_int8(qop, int8_input(qop, x))[qop.outputs[0]],
                                      err_msg=f"QDQ and QOperator graphs differ on {label}")
        diff = lsb_diff(qdq, ours, session.run(None, {"input": nchw(x)})[0])
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
    label, x = zoo_inputs(graph)[0]
    result = run_qemu(tmp_path / "fw", targets.get("cortex-m7"), int8_input(graph, x).tobytes())
    want = ort_session(path).run(None, {"input": nchw(x)})[0]
    assert_same_as_ort(graph, result.output_int8(), want, f"Cortex-M7 != onnxruntime on {label}")
    print(f"{ZOO_MODEL} {variant} on cortex-m7 ({label}): {result.total_instructions:,} "
          "instructions, bit-exact with onnxruntime")


# ----------------------------------------------------------------------------- small models


def _small_float_model(path: Path, seed: int, head: str) -> Path:
    """conv 3x3/s2 -> depthwise 3x3 (multiplier 1) -> 1x1 conv -> residual add -> global
    average pool -> flatten -> Gemm or MatMul: one node of each kind quantize_static maps."""
    rng = np.random.default_rng(seed)
    c_in, c, classes, size = 3, 8, 10, 12
    init = float_initializer(rng, 0.5)
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
    return save_float_model(path, "small", nodes, inits, [1, c_in, size, size], [1, classes])


@pytest.mark.parametrize("seed,head", [(0, "Gemm"), (1, "MatMul"), (2, "Gemm")])
def test_small_models_every_op_bit_exact_with_onnxruntime(seed, head, tmp_path):
    float_path = _small_float_model(tmp_path / "float.onnx", seed, head)
    rng = np.random.default_rng(100 + seed)
    calib = [rng.uniform(-1, 1, (1, 3, 12, 12)).astype(np.float32) for _ in range(4)]
    tests = [rng.uniform(-1.2, 1.2, (1, 3, 12, 12)).astype(np.float32) for _ in range(6)]

    def check_graph(graph):
        kinds = {type(n.op) for n in graph.nodes}
        assert {ir.Conv2D, ir.DepthwiseConv2D, ir.Add, ir.Mean, ir.FullyConnected} <= kinds
    variants = [("QOperator", "QInt8"), ("QDQ", "QInt8"), ("QOperator", "QUInt8"),
                ("QDQ", "QUInt8")]
    assert_bit_exact_with_onnxruntime(float_path, tmp_path, variants, calib, tests,
                                       check_graph, per_channel=seed != 2, label=f" {seed}")


def test_depthwise_multiplier_dilation_and_asymmetric_padding(tmp_path):
    """Depthwise with multiplier 2 (group = channels, 2 filters each), dilation 2, strides
    (1, 2) and uneven pads, then a dilated 3x3 conv: both formats, both activation types."""
    rng = np.random.default_rng(21)
    init = float_initializer(rng, 0.4)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["d1"], group=4, dilations=[2, 2],
                         strides=[1, 2], pads=[2, 1, 2, 3]),
        helper.make_node("Conv", ["d1", "w2", "b2"], ["c2"], dilations=[1, 2], pads=[1, 1, 0, 2]),
        helper.make_node("GlobalAveragePool", ["c2"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ]
    float_path = save_float_model(
        tmp_path / "float.onnx", "dw2", nodes,
        [init("w1", 8, 1, 3, 3), init("b1", 8), init("w2", 6, 8, 3, 3), init("b2", 6),
         init("wf", 5, 6), init("bf", 5)], [1, 4, 10, 10], [1, 5])
    calib = [rng.uniform(-1, 1, (1, 4, 10, 10)).astype(np.float32) for _ in range(3)]
    tests = [rng.uniform(-1.2, 1.2, (1, 4, 10, 10)).astype(np.float32) for _ in range(4)]

    def check_graph(graph):
        assert any(isinstance(n.op, ir.DepthwiseConv2D) and n.op.depth_multiplier == 2
                   for n in graph.nodes)
    assert_bit_exact_with_onnxruntime(float_path, tmp_path, [("QOperator", "QInt8"),
                                                              ("QDQ", "QUInt8")],
                                       calib, tests, check_graph)


def test_average_pools_bit_exact_with_onnxruntime(tmp_path):
    """QLinearAveragePool with a 3x3/s2 padded window (float32 window sums, as onnxruntime)
    and with a whole-image window (which onnxruntime runs as its global average pool)."""
    rng = np.random.default_rng(30)
    init = float_initializer(rng, 0.4)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("AveragePool", ["c1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"]),
        helper.make_node("AveragePool", ["c2"], ["p2"], kernel_shape=[5, 5]),
        helper.make_node("Flatten", ["p2"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ]
    float_path = save_float_model(
        tmp_path / "float.onnx", "pools", nodes,
        [init("w1", 6, 3, 3, 3), init("b1", 6), init("w2", 6, 6, 1, 1), init("b2", 6),
         init("wf", 5, 6), init("bf", 5)], [1, 3, 10, 10], [1, 5])
    calib = [rng.uniform(-1, 1, (1, 3, 10, 10)).astype(np.float32) for _ in range(3)]
    tests = [rng.uniform(-1.2, 1.2, (1, 3, 10, 10)).astype(np.float32) for _ in range(8)]

    def check_graph(graph):
        kinds = [type(n.op) for n in graph.nodes]
        assert ir.AveragePool2D in kinds and ir.Mean in kinds
    assert_bit_exact_with_onnxruntime(float_path, tmp_path, QOP_BOTH_QDQ_UINT8, calib, tests,
                                       check_graph)


def test_squeeze_excite_mul_bit_exact_with_onnxruntime(tmp_path):
    """x * s with s (1, C, 1, 1) from a global pool and a 1x1 conv (squeeze-excite): the
    broadcast QLinearMul, both formats, int8 and uint8."""
    rng = np.random.default_rng(40)
    init = float_initializer(rng, 0.4)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["x"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["x"], ["squeezed"]),
        helper.make_node("Conv", ["squeezed", "w2", "b2"], ["gate"]),
        helper.make_node("Mul", ["x", "gate"], ["excited"]),
        helper.make_node("GlobalAveragePool", ["excited"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ]
    float_path = save_float_model(
        tmp_path / "float.onnx", "se", nodes,
        [init("w1", 6, 3, 3, 3), init("b1", 6), init("w2", 6, 6, 1, 1), init("b2", 6),
         init("wf", 5, 6), init("bf", 5)], [1, 3, 8, 8], [1, 5])
    calib = [rng.uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    tests = [rng.uniform(-1.2, 1.2, (1, 3, 8, 8)).astype(np.float32) for _ in range(8)]

    def check_graph(graph):
        muls = [n for n in graph.nodes if isinstance(n.op, ir.Mul)]
        assert muls and graph.tensors[muls[0].inputs[1]].shape == (1, 1, 1, 6)
    assert_bit_exact_with_onnxruntime(float_path, tmp_path, QOP_BOTH_QDQ_UINT8, calib, tests,
                                       check_graph)


def test_uint8_weights_and_unsupported_ops_are_refused_in_one_line(tmp_path):
    float_path = _small_float_model(tmp_path / "float.onnx", 0, "Gemm")
    rng = np.random.default_rng(3)
    calib = [rng.uniform(-1, 1, (1, 3, 12, 12)).astype(np.float32) for _ in range(2)]
    quantize(float_path, tmp_path / "u8.onnx", "QOperator", calib, "QUInt8",
              weights="QUInt8")
    with pytest.raises(UserError, match="int8 weights") as err:
        prepare(str(tmp_path / "u8.onnx"), CompileOptions())
    assert "\n" not in str(err.value)
    model = onnx.load(str(quantize(float_path, tmp_path / "s8.onnx", "QOperator", calib)))
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
    path = quantize(float_path, tmp_path / "q.onnx", "QOperator", calib)
    lines: list[str] = []
    outcome = verify_model(str(path), CompileOptions(target="host"), reference="onnxruntime",
                           count=2, echo=lines.append)
    assert outcome.ok
    assert sum("host C vs onnxruntime" in c.what and c.exact for c in outcome.comparisons) == 2
    with pytest.raises(UserError, match="needs an .onnx model"):
        verify_model("mbv1_0.25_96", CompileOptions(target="host"), reference="onnxruntime",
                     count=1, echo=lines.append)
