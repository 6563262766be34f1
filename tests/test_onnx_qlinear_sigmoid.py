"""com.microsoft QLinearSigmoid (and DequantizeLinear -> Sigmoid -> QuantizeLinear) bit-exact
with onnxruntime, and quantize_dynamic's MatMulInteger refused in one line.

onnxruntime's QLinearSigmoid looks each code up in a 256-entry table of MLAS's float32
logistic of the dequantised codes (mbgen/quantize/mlas_logistic.py emulates it, fused
multiply-adds included). The first test holds mbgen's table, as the frontend builds it from a
model, against onnxruntime for every code under many scales and zero points; the second runs
a squeeze-excite graph quantised by quantize_static through the host C.
"""

from __future__ import annotations

import platform

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from helpers_onnxruntime import (QOP_BOTH_QDQ_UINT8,  # noqa: E402
                                 assert_bit_exact_with_onnxruntime, float_initializer,
                                 ort_session, save_float_model)
from mbgen import ir  # noqa: E402
from mbgen.compiler import CompileOptions, prepare  # noqa: E402
from mbgen.errors import UserError  # noqa: E402
from mbgen.quantize import onnxruntime_params  # noqa: E402
from mbgen.quantize.mlas_logistic import fused_multiply_add, logistic  # noqa: E402


def _sigmoid_model(path, dtype, x_scale, x_zp, y_scale, y_zp, qdq: bool):
    """float input (1, 256) -> QuantizeLinear -> QLinearSigmoid (or DequantizeLinear ->
    Sigmoid -> QuantizeLinear) -> the int8/uint8 codes as the model output."""
    elem = TensorProto.INT8 if dtype == np.int8 else TensorProto.UINT8
    inits = [numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(x_zp, dtype), "xz"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(y_zp, dtype), "yz")]
    nodes = [helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["q"])]
    if qdq:
        nodes += [helper.make_node("DequantizeLinear", ["q", "xs", "xz"], ["f"]),
                  helper.make_node("Sigmoid", ["f"], ["s"]),
                  helper.make_node("QuantizeLinear", ["s", "ys", "yz"], ["y"])]
    else:
        nodes.append(helper.make_node("QLinearSigmoid", ["q", "xs", "xz", "ys", "yz"], ["y"],
                                      domain="com.microsoft"))
    graph = helper.make_graph(
        nodes, "sigmoid", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", elem, [1, 256])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(path))
    return path


def test_fused_multiply_add_rounds_once():
    one, tiny = np.float32(1.0), np.float32(2.0 ** -24)
    # (1 + 2^-12)^2 + 2^-70 = 1 + 2^-11 + 2^-24 + 2^-70, just above a float32 tie: rounded
    # once it goes up; via float64 (2^-70 lost, then a tie to even) it would not
    a = np.float32(1 + 2.0 ** -12)
    assert fused_multiply_add(a, a, np.float32(2.0 ** -70)) == np.float32(1 + 2.0 ** -11 +
                                                                         2.0 ** -23)
    assert np.float32(np.float64(a) * np.float64(a) + 2.0 ** -70) == np.float32(1 + 2.0 ** -11)
    assert fused_multiply_add(tiny * np.float32(1 + 2.0 ** -23), one, one) == \
        np.nextafter(one, np.float32(2))
    assert fused_multiply_add(tiny, one, one) == one   # an exact tie: to even
    assert logistic(np.array([0.0], np.float32))[0] == np.float32(0.5)


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="onnxruntime's x86-64 (FMA3) logistic kernel is the one emulated")
def test_logistic_equals_onnxruntime_float_sigmoid():
    """onnxruntime's float Sigmoid runs the same MLAS kernel: 6000 floats over [-20, 20]
    (both clamps, the ends where the result passes 1 or drops below 0) equal ours exactly,
    where the unfused variant differs on many."""
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.uniform(-20, 20, 4000), rng.uniform(-1, 1, 1000),
                        rng.uniform(15, 18.5, 500), -rng.uniform(15, 18.5, 500)])
    x = x.astype(np.float32).reshape(1, -1)
    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"])], "sigmoid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(logistic(x), want)
    unfused = int((logistic(x, fused=False) != want).sum())
    print(f"MLAS logistic: {x.size} floats equal onnxruntime; unfused would differ on {unfused}")
    assert unfused > 0   # the emulation's rounding matters


def test_sigmoid_tables_equal_onnxruntime_on_every_code(tmp_path):
    """48 random (scale, zero point) sets, int8 and uint8, QLinearSigmoid and the QDQ form:
    all 256 codes of mbgen's table (built by the frontend from the model) equal
    onnxruntime's output."""
    rng = np.random.default_rng(1031)
    checked, differ_unfused = 0, 0
    for trial in range(48):
        dtype = np.int8 if trial % 2 else np.uint8
        qdq = trial % 4 >= 2
        info = np.iinfo(dtype)
        x_scale = np.float32(10 ** rng.uniform(-3, -0.5))
        y_scale = np.float32(10 ** rng.uniform(-3, -1.9))   # 1/256 is -2.4
        x_zp, y_zp = (int(v) for v in rng.integers(info.min, info.max + 1, 2))
        path = _sigmoid_model(tmp_path / f"s{trial}.onnx", dtype, x_scale, x_zp, y_scale, y_zp,
                              qdq)
        codes = np.arange(info.min, info.max + 1, dtype=np.int64)
        x = (codes - x_zp).astype(np.float32) * x_scale      # quantises back to the codes
        want = ort_session(path).run(None, {"input": x.reshape(1, 256)})[0].reshape(-1)
        graph = prepare(str(path), CompileOptions()).graph
        node = next(n for n in graph.nodes if isinstance(n.op, ir.DequantizedActivation))
        assert node.op.function == "Sigmoid"
        table = onnxruntime_params.activation_table(graph, node).astype(np.int64)
        shift = 128 if dtype == np.uint8 else 0               # uint8 is held as int8 - 128
        got = table[codes - shift + 128] + shift
        np.testing.assert_array_equal(got, want.astype(np.int64),
                                      err_msg=f"trial {trial} ({dtype.__name__}, qdq={qdq})")
        checked += 256
        # MLAS's portable kernel (no fused multiply-add, result clamped to 1): at most 1 LSB
        dequantized = (codes - x_zp).astype(np.float32) * x_scale
        unfused = onnxruntime_params.quantize_linear_int8(
            logistic(dequantized, fused=False), y_scale, y_zp - shift).astype(np.int64) + shift
        assert np.abs(unfused - got).max() <= 1
        differ_unfused += int((unfused != got).sum())
    print(f"QLinearSigmoid / DQ-Sigmoid-Q: {checked} codes equal onnxruntime; MLAS's unfused "
          f"kernel would differ by 1 LSB on {differ_unfused}")


def test_squeeze_excite_sigmoid_graph_bit_exact_with_onnxruntime(tmp_path):
    """conv -> squeeze-excite (pool, 1x1 conv, Sigmoid, Mul) -> pool -> Gemm, quantised by
    quantize_static (QOperator: QLinearSigmoid; QDQ uint8: DQ -> Sigmoid -> Q), int8 and
    uint8: host C == numpy reference == onnxruntime on 5 inputs."""
    rng = np.random.default_rng(77)
    init = float_initializer(rng, 0.5)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c1"], ["squeezed"]),
        helper.make_node("Conv", ["squeezed", "w2", "b2"], ["s2"]),
        helper.make_node("Sigmoid", ["s2"], ["gate"]),
        helper.make_node("Mul", ["c1", "gate"], ["excited"]),
        helper.make_node("GlobalAveragePool", ["excited"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ]
    float_path = save_float_model(
        tmp_path / "float.onnx", "se_sigmoid", nodes,
        [init("w1", 6, 3, 3, 3), init("b1", 6), init("w2", 6, 6, 1, 1, scale=1.5),
         init("b2", 6), init("wf", 5, 6), init("bf", 5)], [1, 3, 8, 8], [1, 5])
    calib = [rng.uniform(-2, 2, (1, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    tests = [rng.uniform(-2.5, 2.5, (1, 3, 8, 8)).astype(np.float32) for _ in range(5)]

    def check_graph(graph):
        functions = [n.op.function for n in graph.nodes
                     if isinstance(n.op, ir.DequantizedActivation)]
        assert functions == ["Sigmoid"]
    assert_bit_exact_with_onnxruntime(float_path, tmp_path, QOP_BOTH_QDQ_UINT8, calib, tests,
                                      check_graph)


def test_quantize_dynamic_matmul_integer_is_refused_in_one_line(tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic
    rng = np.random.default_rng(5)
    init = float_initializer(rng, 0.3)
    nodes = [helper.make_node("Flatten", ["input"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"], name="classifier")]
    float_path = save_float_model(tmp_path / "float.onnx", "fc", nodes, [init("w", 48, 5)],
                                  [1, 3, 4, 4], [1, 5])
    path = tmp_path / "dynamic.onnx"
    quantize_dynamic(str(float_path), str(path), weight_type=QuantType.QInt8)
    matmul = next(n for n in onnx.load(str(path)).graph.node if n.op_type == "MatMulInteger")
    with pytest.raises(UserError) as err:
        prepare(str(path), CompileOptions())
    message = str(err.value)
    assert "\n" not in message
    assert f"MatMulInteger (node {matmul.name!r})" in message
    assert "dynamic quantization" in message and "quantize_static" in message
