"""onnxruntime as the referee of int8 ONNX tests: quantize_static, sessions, comparisons.

Outputs are compared as onnxruntime returns them: float32 from its final DequantizeLinear,
against ``dequantize_linear`` of our int8 (the same one-rounding formula), so equal floats
mean equal int8.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)

from helpers_c import build_folder, run
from mbgen import ir
from mbgen.compiler import CompileOptions, compile_model
from mbgen.reference import run_int8
from mbgen.reference_onnxruntime import dequantize_linear, quantize_linear

# The (format, activation type) variants quantize_static writes.
FORMATS = {"QOperator": ("QOperator", "QInt8"), "QDQ": ("QDQ", "QInt8"),
           "QDQ-uint8": ("QDQ", "QUInt8"), "QOperator-uint8": ("QOperator", "QUInt8")}
# The variants onnxruntime runs fused on x86 (int8 QDQ is partly left in float there).
QOP_BOTH_QDQ_UINT8 = [("QOperator", "QInt8"), ("QOperator", "QUInt8"), ("QDQ", "QUInt8")]


class _Reader(CalibrationDataReader):
    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self._items = iter([{name: b} for b in batches])

    def get_next(self):
        return next(self._items, None)


def quantize(float_path: Path, out: Path, fmt: str, batches: list[np.ndarray],
              activations: str = "QInt8", per_channel: bool = True,
              weights: str = "QInt8") -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_static(str(float_path), str(out), _Reader("input", batches),
                        quant_format=getattr(QuantFormat, fmt), per_channel=per_channel,
                        activation_type=getattr(QuantType, activations),
                        weight_type=getattr(QuantType, weights))
    return out


def ort_session(path: Path):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def nchw(x_nhwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))


def int8_input(graph: ir.Graph, x_nhwc: np.ndarray) -> np.ndarray:
    q = graph.tensors[graph.inputs[0]].quant
    return quantize_linear(x_nhwc, q.scalar_scale, q.scalar_zero_point)


def as_ort_output(graph: ir.Graph, q8: np.ndarray) -> np.ndarray:
    q = graph.tensors[graph.outputs[0]].quant
    return dequantize_linear(q8, q.scalar_scale, q.scalar_zero_point)


def assert_same_as_ort(graph: ir.Graph, ours: np.ndarray, want: np.ndarray, msg: str) -> None:
    """Our int8 output (NHWC) dequantised as onnxruntime does, against its NCHW output."""
    got = as_ort_output(graph, ours).reshape(graph.tensors[graph.outputs[0]].shape)
    if want.ndim == 4:
        want = want.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got, want.reshape(got.shape), err_msg=msg)


def lsb_diff(graph: ir.Graph, ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    q = graph.tensors[graph.outputs[0]].quant
    theirs_q = np.rint(theirs.reshape(-1) / np.float32(q.scalar_scale)) + q.scalar_zero_point
    return np.abs(ours.reshape(-1).astype(np.int64) - theirs_q.astype(np.int64))


def quantized_zoo_files(model: str, folder: Path, variants: list[str]) -> dict[str, Path]:
    """A zoo model exported by torch.onnx (opset 13) and quantised by quantize_static per
    channel in each variant of FORMATS (calibrated on 4 synthetic images and 2 photos);
    a variant ending in "-per-tensor" quantises its weights per tensor."""
    import torch
    from conftest import image_paths
    from mbgen import zoo
    from mbgen.images import load_image
    from mbgen.quantize.calibration import synthetic_inputs
    float_path = folder / "float.onnx"
    shape = zoo.input_shape(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(zoo.get(model), (torch.zeros(shape),), str(float_path),
                          input_names=["input"], dynamo=False, opset_version=13)
    nhwc = (1, shape[2], shape[3], shape[1])
    calib = [nchw(x) for x in synthetic_inputs(nhwc, count=4, seed=5)]
    calib += [nchw(load_image(p, nhwc)) for p in image_paths()[:2]]
    files = {}
    for variant in variants:
        fmt, activations = FORMATS[variant.removesuffix("-per-tensor")]
        files[variant] = quantize(float_path, folder / f"{variant}.onnx", fmt, calib,
                                  activations, per_channel=not variant.endswith("-per-tensor"))
    return files


def zoo_inputs(graph: ir.Graph) -> list[tuple[str, np.ndarray]]:
    """The shared photos (5) and 2 synthetic images, float NHWC, with labels."""
    from conftest import image_paths
    from mbgen.images import load_image
    from mbgen.quantize.calibration import synthetic_inputs
    shape = graph.tensors[graph.inputs[0]].shape
    inputs = [(p.name, load_image(p, shape)) for p in image_paths()[:5]]
    inputs += [(f"synthetic{i}", x) for i, x in
               enumerate(synthetic_inputs(shape, count=2, seed=77))]
    return inputs


def assert_host_c_equals_numpy_and_ort(out_dir: Path, graph: ir.Graph, path: Path) -> int:
    """The compiled folder built for the host, run on ``zoo_inputs``: byte for byte equal to
    ``run_int8`` and to onnxruntime on the .onnx file. Returns how many inputs were run."""
    exe = build_folder(out_dir)
    session = ort_session(path)
    inputs = zoo_inputs(graph)
    for label, x in inputs:
        want = session.run(None, {"input": nchw(x)})[0]
        q = int8_input(graph, x)
        ours = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
        np.testing.assert_array_equal(ours, run_int8(graph, q)[graph.outputs[0]].reshape(-1),
                                      err_msg=f"C != numpy on {label}")
        np.testing.assert_array_equal(as_ort_output(graph, ours).reshape(want.shape), want,
                                      err_msg=f"C != onnxruntime on {label}")
    return len(inputs)


def float_initializer(rng: np.random.Generator, scale: float):
    """init(name, *shape[, scale]): a float32 initializer of rng's normal values times scale."""
    def init(name, *shape, scale=scale):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale)
                                       .astype(np.float32), name)
    return init


def save_float_model(path: Path, name: str, nodes, inits, input_shape: list[int],
                     output_shape: list[int], opset: int = 13) -> Path:
    """A float model (opset 13 unless told) from "input" to "logits"."""
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, output_shape)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]),
              str(path))
    return path


def assert_bit_exact_with_onnxruntime(float_path: Path, tmp_path: Path, variants, calib,
                                      tests, check_graph, per_channel: bool = True,
                                      label: str = "") -> None:
    """Each (format, activation type) of the float model, quantised by quantize_static on
    ``calib``: check_graph(graph) holds, and on every NCHW input of ``tests`` the host C
    equals the numpy reference and onnxruntime's output."""
    for fmt, activations in variants:
        path = quantize(float_path, tmp_path / f"{fmt}{activations}.onnx", fmt, calib,
                         activations, per_channel=per_channel)
        compiled = compile_model(str(path), CompileOptions(
            target="host", out_dir=tmp_path / f"c_{fmt}{activations}"))
        graph = compiled.graph
        check_graph(graph)
        exe = build_folder(compiled.out_dir)
        session = ort_session(path)
        for i, x in enumerate(tests):
            want = session.run(None, {"input": x})[0]
            q = int8_input(graph, np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
            ours = np.frombuffer(run(exe, q.tobytes()), dtype=np.int8)
            np.testing.assert_array_equal(
                ours, run_int8(graph, q)[graph.outputs[0]].ravel(),
                err_msg=f"{fmt} {activations}{label}: C != numpy ({i})")
            np.testing.assert_array_equal(
                as_ort_output(graph, ours).reshape(want.shape), want,
                err_msg=f"{fmt} {activations}{label}: != onnxruntime ({i})")
