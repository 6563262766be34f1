"""What a model expects of an image: the pixel-to-input mapping recorded at compile time.

One record answers it for calibration (``compile --calib``), ``run --image`` and
``verify --images``, and travels in report.json under ``"preprocessing"``:

* ``range``: a named float range, ``-1,1`` (``p / 127.5 - 1``: TF MobileNets and the zoo) or
  ``0,1`` (``p / 255``), computed in float32 exactly as ``mbgen.images`` does;
* ``mean_std``: ``(p - mean) / std`` per channel, mean and std in pixel units (0..255);
* ``quantized``: no float step at all. The pixel spans the input's whole quantised range,
  ``q = p - 128`` for an int8 input, ``q = p`` for a uint8 one. It is the default for int8
  ``.tflite`` files, and what TFLM's person_detection example and MODELS.md feed
  person_detect; the real value it stands for is ``scale * (q - zero_point)``.

The pixel ``p`` (0..255) comes from :func:`mbgen.images.load_pixels` (centre crop, bilinear
resize, RGB or grey).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mbgen.errors import UserError
from mbgen.images import load_pixels, map_pixels, quantize_input

# --input-range spelling -> mbgen.images value range (same float32 arithmetic as MODELS.md).
INPUT_RANGES = {"-1,1": "minus1_1", "0,1": "zero_1"}
_FORMULAS = {"minus1_1": "p / 127.5 - 1", "zero_1": "p / 255"}


@dataclass(frozen=True)
class Interface:
    """The caller's input or output buffer: shape, element type and quantisation."""

    shape: tuple[int, ...]
    dtype: str          # "int8" or "uint8"
    scale: float
    zero_point: int
    half_even: bool = False   # onnxruntime's QuantizeLinear rounds half to even, TFLite away

    def as_report(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "scale": self.scale,
                "zero_point": self.zero_point,
                "rounding": "half_even" if self.half_even else "half_away_from_zero"}

    @staticmethod
    def from_report(entry: dict) -> "Interface":
        return Interface(tuple(int(d) for d in entry["shape"]), str(entry["dtype"]),
                         float(entry["scale"]), int(entry["zero_point"]),
                         entry.get("rounding") == "half_even")

    def quantize(self, float_nhwc: np.ndarray) -> np.ndarray:
        """Real values -> the bytes the model reads, rounded as the model's own quantiser."""
        if self.half_even:
            from mbgen.reference_onnxruntime import quantize_linear
            return quantize_linear(float_nhwc, self.scale, self.zero_point)
        return quantize_input(float_nhwc, self.scale, self.zero_point, self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return self.scale * (q.astype(np.float64) - self.zero_point)


def interface_of(graph, tensor_name: str) -> Interface:
    from mbgen import ir
    t = graph.tensors[tensor_name]
    half_even = graph.metadata.get("requantization") == ir.Requantization.ONNXRUNTIME.value
    return Interface(tuple(int(d) for d in t.shape), t.dtype, t.quant.scalar_scale,
                     t.quant.scalar_zero_point, half_even)


@dataclass(frozen=True)
class Preprocessing:
    kind: str                        # "range" | "mean_std" | "quantized"
    value_range: str | None = None   # for "range": a key of mbgen.images.VALUE_RANGES
    mean: tuple[float, ...] = ()     # for "mean_std", pixel units, one or C values
    std: tuple[float, ...] = ()

    @property
    def is_default_float(self) -> bool:
        return self.kind == "range" and self.value_range == "minus1_1"

    def formula(self) -> str:
        if self.kind == "range":
            return _FORMULAS[self.value_range]
        if self.kind == "mean_std":
            return f"(p - {_values(self.mean)}) / {_values(self.std)}"
        return "q = p - 128 (int8 input) or q = p (uint8 input)"

    def as_report(self) -> dict:
        entry: dict = {"kind": self.kind, "formula": self.formula(),
                       "pixels": "RGB (grey for 1-channel inputs), centre square crop, "
                                 "bilinear resize to the input"}
        if self.kind == "range":
            entry["input_range"] = next(k for k, v in INPUT_RANGES.items()
                                        if v == self.value_range)
        elif self.kind == "mean_std":
            entry["mean"], entry["std"] = list(self.mean), list(self.std)
        return entry

    @staticmethod
    def from_report(entry: dict | None) -> "Preprocessing":
        """The record of a folder's report.json; folders from before it was recorded used
        the zoo's [-1, 1]."""
        if not entry:
            return Preprocessing("range", "minus1_1")
        kind = entry.get("kind")
        if kind == "range" and entry.get("input_range") in INPUT_RANGES:
            return Preprocessing("range", INPUT_RANGES[entry["input_range"]])
        if kind == "mean_std":
            return Preprocessing("mean_std", mean=tuple(map(float, entry["mean"])),
                                 std=tuple(map(float, entry["std"])))
        if kind == "quantized":
            return Preprocessing("quantized")
        raise UserError(f"report.json has an unknown preprocessing record: {entry}")

    def float_input(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (1, H, W, C) -> the float32 input the float model reads."""
        p = pixels.astype(np.float32)
        if self.kind == "range":
            return map_pixels(pixels, self.value_range)
        if self.kind == "mean_std":
            mean = np.asarray(self.mean, np.float32)
            std = np.asarray(self.std, np.float32)
            return (p - mean) / std
        raise UserError("this model reads quantised pixels; it has no float preprocessing")

    def from_unit(self, x: np.ndarray) -> np.ndarray:
        """A synthetic sample in [-1, 1] (pixel 0 -> -1, 255 -> 1) mapped to this input range."""
        if self.is_default_float:
            return x
        p = (np.asarray(x, np.float32) + np.float32(1.0)) * np.float32(127.5)
        if self.kind == "range" and self.value_range == "zero_1":
            return p / np.float32(255.0)
        mean = np.asarray(self.mean, np.float32)
        return (p - mean) / np.asarray(self.std, np.float32)

    def model_input(self, pixels: np.ndarray, interface: Interface) -> np.ndarray:
        """uint8 pixels -> the bytes the compiled model reads (its dtype, scale, zero point)."""
        if self.kind == "quantized":
            q = pixels.astype(np.int32) - (128 if interface.dtype == "int8" else 0)
            return q.astype(interface.dtype)
        return interface.quantize(self.float_input(pixels))

    def image_input(self, path: str | Path, interface: Interface) -> np.ndarray:
        """An image file -> the model's input tensor (1, H, W, C) in its dtype."""
        return self.model_input(load_pixels(path, interface.shape), interface)


def _values(values: tuple[float, ...]) -> str:
    return f"{values[0]:g}" if len(values) == 1 else "(" + ", ".join(f"{v:g}" for v in values) + ")"


def parse_values(text: str, what: str) -> tuple[float, ...]:
    """'127.5' or '123.675,116.28,103.53' -> floats; UserError naming the option."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{what} takes one number or one per channel separated by commas, "
                        f"got {text!r}") from None
    if not all(np.isfinite(values)):
        raise UserError(f"{what} must be finite, got {text!r}")
    return values


def resolve(input_range: str | None, mean: str | None, std: str | None, *,
            quantized_input: bool, channels: int) -> Preprocessing:
    """The preprocessing for the options given, else the model kind's default: the int8 input's
    own quantised range for an int8 model, [-1, 1] for a float one."""
    if input_range is not None and (mean is not None or std is not None):
        raise UserError("give either --input-range or --mean/--std, not both")
    if input_range is not None:
        if input_range not in INPUT_RANGES:
            raise UserError(f"--input-range must be one of {', '.join(INPUT_RANGES)}, "
                            f"got {input_range!r}")
        return Preprocessing("range", INPUT_RANGES[input_range])
    if mean is not None or std is not None:
        means = parse_values(mean, "--mean") if mean is not None else (0.0,)
        stds = parse_values(std, "--std") if std is not None else (1.0,)
        for values, what in ((means, "--mean"), (stds, "--std")):
            if len(values) not in (1, channels):
                raise UserError(f"{what} needs 1 or {channels} values (one per input "
                                f"channel), got {len(values)}")
        if min(stds) <= 0:
            raise UserError(f"--std must be positive, got {std}")
        return Preprocessing("mean_std", mean=means, std=stds)
    if quantized_input:
        return Preprocessing("quantized")
    return Preprocessing("range", "minus1_1")
