"""onnxruntime as the referee of int8 ONNX tests: quantize_static, sessions, comparisons.

Outputs are compared as onnxruntime returns them: float32 from its final DequantizeLinear,
against ``dequantize_linear`` of our int8 (the same one-rounding formula), so equal floats
mean equal int8.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                      quantize_static)

from mbgen import ir
from mbgen.reference_onnxruntime import dequantize_linear, quantize_linear


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
