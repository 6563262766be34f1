"""int8 ONNX MobileNetV3 (onnxruntime.quantization) bit-exact against onnxruntime.

quantize_static has no quantised HardSigmoid or HardSwish: it leaves them in float between
a DequantizeLinear and a QuantizeLinear, and onnxruntime runs that chain in float32 (its
graph optimiser keeps it; QOperator and QDQ alike). mbgen evaluates the chain for the 256
codes at generation time (ir.DequantizedActivation). The first test holds that table
against onnxruntime for every code under many scales and zero points; the others run the
zoo's mbv3s_0.75_128 (hard swish = HardSigmoid + Mul, squeeze-excite with HardSigmoid)
and a small opset-14 graph with a real HardSwish node.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from helpers_onnxruntime import (QOP_BOTH_QDQ_UINT8,  # noqa: E402
                                 assert_bit_exact_with_onnxruntime,
                                 assert_host_c_equals_numpy_and_ort, assert_same_as_ort,
                                 float_initializer, int8_input, lsb_diff, nchw, ort_session,
                                 quantized_zoo_files, save_float_model, zoo_inputs)
from mbgen import ir  # noqa: E402
from mbgen.compiler import CompileOptions, compile_model, emit, prepare  # noqa: E402
from mbgen.quantize import onnxruntime_params  # noqa: E402
from mbgen.reference import run_int8  # noqa: E402

ZOO_MODEL = "mbv3s_0.75_128"


# ----------------------------------------------------------------------------- every code


def _chain_session(function: str, alpha: float, beta: float, dtype, x_scale, x_zp, y_scale,
                   y_zp):
    """onnxruntime on DequantizeLinear -> function -> QuantizeLinear over a (256,) tensor."""
    elem = TensorProto.INT8 if dtype == np.int8 else TensorProto.UINT8
    inits = [numpy_helper.from_array(np.array(x_scale, np.float32), "xs"),
             numpy_helper.from_array(np.array(x_zp, dtype), "xz"),
             numpy_helper.from_array(np.array(y_scale, np.float32), "ys"),
             numpy_helper.from_array(np.array(y_zp, dtype), "yz")]
    attrs = {"alpha": alpha, "beta": beta} if function == "HardSigmoid" else {}
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["f"]),
             helper.make_node(function, ["f"], ["h"], **attrs),
             helper.make_node("QuantizeLinear", ["h", "ys", "yz"], ["y"])]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", elem, [256])],
                              [helper.make_tensor_value_info("y", elem, [256])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _table_graph(op: ir.DequantizedActivation, x_scale, x_zp, y_scale, y_zp) -> ir.Graph:
    """The one-node IR graph the frontend makes of such a chain (zero points as int8)."""
    tensors = {"x": ir.Tensor("x", (1, 256), "int8",
                              quant=ir.QuantParams.per_tensor(x_scale, x_zp)),
               "y": ir.Tensor("y", (1, 256), "int8",
                              quant=ir.QuantParams.per_tensor(y_scale, y_zp))}
    return ir.Graph("chain", tensors, [ir.Node("act", op, ["x"], ["y"])], ["x"], ["y"], {})


def test_dequantized_activation_tables_equal_onnxruntime_on_every_code():
    """HardSigmoid (torch's alpha 1/6 and random alpha/beta) and HardSwish, int8 and uint8
    storage, 40 random scale / zero-point sets each: all 256 codes equal onnxruntime's."""
    rng = np.random.default_rng(2026)
    checked = 0
    for function in ("HardSigmoid", "HardSwish"):
        for trial in range(40):
            dtype = np.int8 if trial % 2 else np.uint8
            info = np.iinfo(dtype)
            x_scale = np.float32(10 ** rng.uniform(-3, 0))
            y_scale = np.float32(10 ** rng.uniform(-4, -1))
            x_zp, y_zp = (int(v) for v in rng.integers(info.min, info.max + 1, 2))
            alpha, beta = float(np.float32(1 / 6)), 0.5
            if function == "HardSigmoid" and trial % 3 == 0:
                alpha, beta = float(rng.uniform(0.05, 0.5)), float(rng.uniform(0, 1))
            session = _chain_session(function, alpha, beta, dtype, x_scale, x_zp, y_scale,
                                     y_zp)
            codes = np.arange(info.min, info.max + 1).astype(dtype)
            want = session.run(None, {"x": codes})[0].astype(np.int64)
            shift = 128 if dtype == np.uint8 else 0  # the IR holds uint8 as int8 - 128
            op = ir.DequantizedActivation(function, float(np.float32(alpha)),
                                          float(np.float32(beta)))
            graph = _table_graph(op, x_scale, x_zp - shift, y_scale, y_zp - shift)
            table = onnxruntime_params.activation_table(graph, graph.nodes[0])
            got = table[codes.astype(np.int64) - shift + 128].astype(np.int64) + shift
            np.testing.assert_array_equal(got, want, err_msg=f"{function} trial {trial}")
            checked += 256
    print(f"DequantizeLinear -> HardSigmoid/HardSwish -> QuantizeLinear: {checked} codes "
          "equal onnxruntime")


def test_hard_swish_and_se_graph_bit_exact_with_onnxruntime(tmp_path):
    """Opset 14: conv -> HardSwish -> depthwise -> squeeze-excite (pool, conv, HardSigmoid,
    Mul) -> pool -> Gemm; both formats, int8 and uint8: host C == numpy == onnxruntime."""
    rng = np.random.default_rng(50)
    init = float_initializer(rng, 0.4)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c1"], ["h1"]),
        helper.make_node("Conv", ["h1", "w2", "b2"], ["d2"], pads=[1, 1, 1, 1], group=6),
        helper.make_node("GlobalAveragePool", ["d2"], ["squeezed"]),
        helper.make_node("Conv", ["squeezed", "w3", "b3"], ["s3"]),
        helper.make_node("HardSigmoid", ["s3"], ["gate"], alpha=1 / 6),
        helper.make_node("Mul", ["d2", "gate"], ["excited"]),
        helper.make_node("GlobalAveragePool", ["excited"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wf", "bf"], ["logits"], transB=1),
    ]
    float_path = save_float_model(
        tmp_path / "float.onnx", "hswish", nodes,
        [init("w1", 6, 3, 3, 3), init("b1", 6), init("w2", 6, 1, 3, 3), init("b2", 6),
         init("w3", 6, 6, 1, 1), init("b3", 6), init("wf", 5, 6), init("bf", 5)],
        [1, 3, 8, 8], [1, 5], opset=14)
    calib = [rng.uniform(-2, 2, (1, 3, 8, 8)).astype(np.float32) for _ in range(3)]
    tests = [rng.uniform(-2.5, 2.5, (1, 3, 8, 8)).astype(np.float32) for _ in range(6)]

    def check_graph(graph):
        functions = {n.op.function for n in graph.nodes
                     if isinstance(n.op, ir.DequantizedActivation)}
        assert functions == {"HardSigmoid", "HardSwish"}
    assert_bit_exact_with_onnxruntime(float_path, tmp_path, QOP_BOTH_QDQ_UINT8, calib, tests,
                                      check_graph)


# ----------------------------------------------------------------------------- zoo model


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory) -> dict[str, Path]:
    return quantized_zoo_files(ZOO_MODEL, tmp_path_factory.mktemp("ort_v3"),
                               ["QOperator", "QDQ", "QDQ-uint8", "QOperator-uint8"])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["QOperator", "QDQ-uint8", "QOperator-uint8"])
def test_mbv3s_host_c_is_bit_exact_with_onnxruntime(variant, zoo_files, tmp_path):
    """The formats onnxruntime runs fused (QLinear ops) apart from the float HardSigmoids."""
    path = zoo_files[variant]
    compiled = compile_model(str(path), CompileOptions(target="host", out_dir=tmp_path / "c"))
    graph = compiled.graph
    tables = sum(isinstance(n.op, ir.DequantizedActivation) for n in graph.nodes)
    assert tables == sum(n.op_type == "HardSigmoid" for n in onnx.load(str(path)).graph.node)
    count = assert_host_c_equals_numpy_and_ort(compiled.out_dir, graph, path)
    print(f"{ZOO_MODEL} {variant}: host C == numpy == onnxruntime on {count} inputs")


@pytest.mark.slow
def test_mbv3s_qdq_int8_matches_qoperator_and_bounds_onnxruntime(zoo_files):
    """int8-activation QDQ becomes the same graph as QOperator; onnxruntime (x86) leaves part
    of it in float (Conv/Add/Mul between DequantizeLinear and QuantizeLinear), so its output
    is bounded, as for MobileNetV2 in test_onnx_quantized.py."""
    qdq = prepare(str(zoo_files["QDQ"]), CompileOptions()).graph
    qop = prepare(str(zoo_files["QOperator"]), CompileOptions()).graph
    session = ort_session(zoo_files["QDQ"])
    worst, equal, total = 0, 0, 0
    for label, x in zoo_inputs(qdq):
        ours = run_int8(qdq, int8_input(qdq, x))[qdq.outputs[0]]
        np.testing.assert_array_equal(ours, run_int8(qop, int8_input(qop, x))[qop.outputs[0]],
                                      err_msg=f"QDQ and QOperator graphs differ on {label}")
        diff = lsb_diff(qdq, ours, session.run(None, {"input": nchw(x)})[0])
        worst = max(worst, int(diff.max()))
        equal, total = equal + int((diff == 0).sum()), total + diff.size
    print(f"{ZOO_MODEL} QDQ int8 vs onnxruntime: {equal}/{total} outputs equal, worst "
          f"{worst} LSB")
    assert worst <= 6 and equal >= 0.8 * total


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or
                    shutil.which("qemu-system-arm") is None, reason="no Arm toolchain or QEMU")
def test_mbv3s_in_qemu_cortex_m7_is_bit_exact(zoo_files, tmp_path):
    from mbgen import targets
    from mbgen.runner import run_qemu
    path = zoo_files["QOperator"]
    prepared = prepare(str(path), CompileOptions())
    emit(prepared, CompileOptions(target="cortex-m7", out_dir=tmp_path / "fw",
                                  flash_bytes=4 * 1024 * 1024))
    graph = prepared.graph
    label, x = zoo_inputs(graph)[0]
    result = run_qemu(tmp_path / "fw", targets.get("cortex-m7"), int8_input(graph, x).tobytes())
    want = ort_session(path).run(None, {"input": nchw(x)})[0]
    assert_same_as_ort(graph, result.output_int8(), want, f"Cortex-M7 != onnxruntime on {label}")
    print(f"{ZOO_MODEL} QOperator on cortex-m7 ({label}): {result.total_instructions:,} "
          "instructions, bit-exact with onnxruntime")
