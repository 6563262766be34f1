"""onnxruntime as a reference: run the user's own .onnx file and return its int8 output.

The session uses the CPU provider with default options (what a user of onnxruntime runs).
A float model output (the usual final DequantizeLinear) is mapped back to the int8 grid of
our graph's output; values that are not exactly on that grid cannot equal ours and are
returned as out-of-range sentinels, so a comparison reports them instead of hiding them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mbgen import ir
from mbgen.errors import UserError

OFF_GRID = 1000  # not an int8: marks a float output that no int8 value dequantises to


class OnnxRuntimeReference:
    def __init__(self, path: Path, graph: ir.Graph) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise UserError("--reference onnxruntime needs the 'onnxruntime' package: "
                            "pip install onnxruntime") from None
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = onnxruntime.InferenceSession(str(path), options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - any load failure is the model's
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"onnxruntime cannot load {path}: {first}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.graph = graph

    def run_int8(self, x_nhwc: np.ndarray) -> np.ndarray:
        """onnxruntime's output for a float NHWC input, as int32 values on our int8 grid."""
        x = np.asarray(x_nhwc, dtype=np.float32)
        if x.ndim == 4:
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        y = self.session.run(None, {self.input_name: x})[0]
        if y.ndim == 4:
            y = y.transpose(0, 2, 3, 1)  # NCHW -> our NHWC
        if y.dtype == np.int8:
            return y.astype(np.int32).ravel()
        if y.dtype == np.uint8:  # the IR holds uint8 tensors as int8 minus 128
            return (y.astype(np.int32) - 128).ravel()
        q = self.graph.tensors[self.graph.outputs[0]].quant
        scale, zero_point = np.float32(q.scalar_scale), q.scalar_zero_point
        ints = np.rint(y.astype(np.float32) / scale).astype(np.int64)
        back = ints.astype(np.float32) * scale  # DequantizeLinear: float(q - zp) * scale
        ints = np.where(back == y, ints + zero_point, OFF_GRID)
        return ints.astype(np.int32).ravel()
