"""LiteRT as a reference: run the user's own quantised .tflite with TFLite's reference
kernels (``OpResolverType.BUILTIN_REF``; the default resolver's XNNPACK and optimised
kernels compute some layers differently) and return its output on our int8 grid.

The referee for legacy uint8 files, which TFLM refuses: uint8 tensors are fed and read as
our int8 + 128.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mbgen.errors import UserError


class LiteRtReference:
    def __init__(self, path: Path) -> None:
        try:
            from ai_edge_litert import interpreter
        except ImportError:
            raise UserError("--reference litert needs the 'ai-edge-litert' package: "
                            "pip install ai-edge-litert") from None
        try:
            self.interpreter = interpreter.Interpreter(
                model_path=str(path),
                experimental_op_resolver_type=interpreter.OpResolverType.BUILTIN_REF)
            self.interpreter.allocate_tensors()
        except Exception as exc:  # noqa: BLE001 - any load failure is the model's
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"LiteRT cannot load {path}: {first}") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        for detail in (self.input, self.output):
            if np.dtype(detail["dtype"]) not in (np.int8, np.uint8):
                raise UserError(f"--reference litert needs an int8 or uint8 model; "
                                f"{detail['name']!r} is {np.dtype(detail['dtype'])}")

    def run_int8(self, x_int8: np.ndarray) -> np.ndarray:
        """LiteRT's output for our int8 input, as int32 values on our int8 grid."""
        x = np.asarray(x_int8).astype(np.int16)
        if np.dtype(self.input["dtype"]) == np.uint8:
            x = x + 128
        self.interpreter.set_tensor(self.input["index"], x.reshape(self.input["shape"])
                                    .astype(self.input["dtype"]))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"]).astype(np.int32).ravel()
        return y - 128 if np.dtype(self.output["dtype"]) == np.uint8 else y
