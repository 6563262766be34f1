"""int8 ONNX SqueezeNet / ShuffleNetV2 ops (Concat with requantised inputs, MaxPool, Slice,
Split, channel shuffle, float ReduceMean) bit-exact against onnxruntime.

onnxruntime's QLinearConcat maps an input whose parameters differ from the output's through
a QuantizeLinear(DequantizeLinear(q)) table; ShuffleNetV2's final ``x.mean([2, 3])`` is a
ReduceMean onnxruntime computes in float32 (Eigen's vectorised row sum) between a
DequantizeLinear and a QuantizeLinear. The referee is the onnxruntime wheel.
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
from helpers_onnxruntime import (as_ort_output, assert_host_c_equals_numpy_and_ort,  # noqa: E402
                                 assert_same_as_ort, int8_input, lsb_diff, nchw, ort_session,
                                 quantized_zoo_files, zoo_inputs)
from mbgen import ir  # noqa: E402
from mbgen.compiler import CompileOptions, compile_model, emit, prepare  # noqa: E402
from mbgen.reference import run_int8  # noqa: E402
from mbgen.reference_onnxruntime import eigen_sum  # noqa: E402


def _session(model) -> "ort.InferenceSession":
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def _scalars(**values) -> list:
    return [numpy_helper.from_array(np.array(v, dtype=np.float32 if isinstance(v, float)
                                             else np.int8), name) for name, v in values.items()]


def test_eigen_row_sums_equal_onnxruntime_float_reduce_mean():
    """The float32 ReduceMean of dequantised int8 rows, bit for bit, for 40 random shapes
    (every row start misalignment, rows shorter and longer than a packet). A left-to-right
    sum differs from onnxruntime on about half of these values."""
    rng = np.random.default_rng(12)
    checked = 0
    for trial in range(40):
        c, h, w = (int(v) for v in rng.integers(1, 9, 3)) if trial % 2 else (17, 3, 3)
        x_scale, x_zp = np.float32(10 ** rng.uniform(-3, 0)), int(rng.integers(-128, 128))
        nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["f"]),
                 helper.make_node("ReduceMean", ["f"], ["m"], axes=[2, 3], keepdims=0)]
        graph = helper.make_graph(
            nodes, "mean", [helper.make_tensor_value_info("x", TensorProto.INT8, [1, c, h, w])],
            [helper.make_tensor_value_info("m", TensorProto.FLOAT, [1, c])],
            _scalars(xs=float(x_scale), xz=x_zp))
        session = _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
        q = rng.integers(-128, 128, (1, c, h, w)).astype(np.int8)
        want = session.run(None, {"x": q})[0].reshape(-1)
        rows = (q.reshape(c, h * w).astype(np.int32) - x_zp).astype(np.float32) * x_scale
        got = np.array([eigen_sum(row, i * h * w) / np.float32(h * w)
                        for i, row in enumerate(rows)], dtype=np.float32)
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32),
                                      err_msg=f"trial {trial}: shape {(c, h, w)}")
        checked += c
    print(f"Eigen-order row sums: {checked} float32 means equal onnxruntime's")


def test_reduce_mean_on_ties_host_c_bit_exact(tmp_path):
    """Q -> DQ -> ReduceMean -> Q with y_scale = 2 * x_scale / (H * W): every odd code sum is
    a tie, so the last bit of the float sum decides the rounding; host C == numpy ==
    onnxruntime, two shapes (rows of 35 and 9 pixels)."""
    rng = np.random.default_rng(13)
    for c, h, w in ((37, 5, 7), (24, 3, 3)):
        x_scale = np.float32(0.05)
        y_scale = np.float32(2 * x_scale / (h * w))
        nodes = [helper.make_node("QuantizeLinear", ["input", "xs", "xz"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "xs", "xz"], ["f"]),
                 helper.make_node("ReduceMean", ["f"], ["m"], axes=[2, 3], keepdims=0),
                 helper.make_node("QuantizeLinear", ["m", "ys", "yz"], ["y"]),
                 helper.make_node("DequantizeLinear", ["y", "ys", "yz"], ["logits"])]
        graph = helper.make_graph(
            nodes, "ties", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                          [1, c, h, w])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, c])],
            _scalars(xs=float(x_scale), xz=3, ys=float(y_scale), yz=-2))
        path = tmp_path / f"ties{c}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]),
                  str(path))
        compiled = compile_model(str(path), CompileOptions(target="host",
                                                           out_dir=tmp_path / f"c{c}"))
        g = compiled.graph
        assert any(isinstance(n.op, ir.DequantizedMean) for n in g.nodes)
        exe = build_folder(compiled.out_dir)
        session = ort_session(path)
        for i in range(4):
            # small codes: the mean stays inside the int8 range of the output
            x = (rng.integers(-6, 7, (1, c, h, w)) * x_scale).astype(np.float32)
            want = session.run(None, {"input": x})[0]
            q = int8_input(g, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
            ours = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
            np.testing.assert_array_equal(ours, run_int8(g, q)[g.outputs[0]].ravel(),
                                          err_msg=f"C != numpy ({c}, {i})")
            np.testing.assert_array_equal(as_ort_output(g, ours).reshape(want.shape), want,
                                          err_msg=f"C != onnxruntime ({c}, {i})")


# ----------------------------------------------------------------------------- zoo models

ZOO_MODELS = ("squeezenet1_1_96", "shufflenetv2_0.5_96")


@pytest.fixture(scope="module")
def zoo_files(tmp_path_factory) -> dict[str, dict[str, Path]]:
    return {model: quantized_zoo_files(model, tmp_path_factory.mktemp(model),
                                       ["QOperator", "QDQ", "QDQ-uint8"])
            for model in ZOO_MODELS}


@pytest.mark.slow
@pytest.mark.parametrize("model", ZOO_MODELS)
@pytest.mark.parametrize("variant", ["QOperator", "QDQ-uint8"])
def test_light_models_host_c_bit_exact_with_onnxruntime(model, variant, zoo_files, tmp_path):
    path = zoo_files[model][variant]
    compiled = compile_model(str(path), CompileOptions(target="host", out_dir=tmp_path / "c"))
    graph = compiled.graph
    kinds = {type(n.op) for n in graph.nodes}
    assert {ir.Concatenation, ir.MaxPool2D} <= kinds
    if model.startswith("squeezenet"):  # a fire module's expand outputs differ in scale
        assert any(isinstance(n.op, ir.DequantizedActivation) for n in graph.nodes)
    else:
        assert {ir.StridedSlice, ir.Transpose, ir.DequantizedMean} <= kinds
    count = assert_host_c_equals_numpy_and_ort(compiled.out_dir, graph, path)
    print(f"{model} {variant}: host C == numpy == onnxruntime on {count} inputs")


@pytest.mark.slow
@pytest.mark.parametrize("model", ZOO_MODELS)
def test_light_models_qdq_int8_bounded(model, zoo_files):
    """int8-activation QDQ: onnxruntime (x86) leaves some Conv in float; bounded."""
    path = zoo_files[model]["QDQ"]
    graph = prepare(str(path), CompileOptions()).graph
    session = ort_session(path)
    worst, equal, total = 0, 0, 0
    for _, x in zoo_inputs(graph):
        diff = lsb_diff(graph, run_int8(graph, int8_input(graph, x))[graph.outputs[0]],
                        session.run(None, {"input": nchw(x)})[0])
        worst = max(worst, int(diff.max()))
        equal, total = equal + int((diff == 0).sum()), total + diff.size
    print(f"{model} QDQ int8 vs onnxruntime: {equal}/{total} outputs equal, worst {worst} LSB")
    assert worst <= 6 and equal >= 0.5 * total


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or
                    shutil.which("qemu-system-arm") is None, reason="no Arm toolchain or QEMU")
def test_shufflenet_in_qemu_cortex_m7_is_bit_exact(zoo_files, tmp_path):
    """The float32 ReduceMean and the concat tables on the M7's single-precision FPU."""
    from mbgen import targets
    from mbgen.runner import run_qemu
    path = zoo_files["shufflenetv2_0.5_96"]["QOperator"]
    prepared = prepare(str(path), CompileOptions())
    emit(prepared, CompileOptions(target="cortex-m7", out_dir=tmp_path / "fw",
                                  flash_bytes=4 * 1024 * 1024))
    graph = prepared.graph
    label, x = zoo_inputs(graph)[0]
    result = run_qemu(tmp_path / "fw", targets.get("cortex-m7"), int8_input(graph, x).tobytes())
    want = ort_session(path).run(None, {"input": nchw(x)})[0]
    assert_same_as_ort(graph, result.output_int8(), want, f"Cortex-M7 != onnxruntime on {label}")
    print(f"shufflenetv2_0.5_96 QOperator on cortex-m7 ({label}): bit-exact with onnxruntime")
