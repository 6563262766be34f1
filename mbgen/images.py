"""Image files to model input tensors, preprocessed exactly as ``shared/models/MODELS.md`` says.

Steps (MODELS.md, "How the facts below were measured"):

1. Decode with Pillow. ``xor_0x80=True`` flips the top bit of every 8-bit sample, for files
   such as TFLM's ``person.bmp`` that store ``grey - 128`` as two's-complement bytes.
2. Convert to ``L`` for 1-channel inputs or ``RGB`` for 3-channel inputs (grey is replicated).
3. Centre square crop: side ``s = min(W, H)``, left ``(W - s) // 2``, top ``(H - s) // 2``.
4. ``Image.resize((w, h), Image.BILINEAR)`` to the input size, skipped when it already matches.
5. Map each pixel ``p`` (0..255) to the tensor value of the chosen ``value_range``.

The result is always a float32 NHWC array ``(1, H, W, C)``; :func:`quantize_input` turns a
float input into the int8 bytes a quantised model reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

from mbgen.errors import UserError

# value_range -> what pixel p becomes. All arithmetic is float32, as in MODELS.md's measurements
# (p / 127.5 - 1 in float64 gives different low bits from the published sha256 prefixes).
VALUE_RANGES: dict[str, str] = {
    "minus1_1": "p / 127.5 - 1 (float MobileNets and the zoo)",
    "uint8_minus128": "p - 128 (already the int8 value, e.g. person_detect)",
    "uint8": "p as is, 0..255 (legacy uint8 models)",
    "zero_1": "p / 255",
}

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def map_pixels(pixels: np.ndarray, value_range: str) -> np.ndarray:
    p = pixels.astype(np.float32)
    if value_range == "minus1_1":
        return p / np.float32(127.5) - np.float32(1.0)
    if value_range == "uint8_minus128":
        return p - np.float32(128.0)
    if value_range == "uint8":
        return p
    if value_range == "zero_1":
        return p / np.float32(255.0)
    raise UserError(f"unknown value range {value_range!r}; choose one of {', '.join(VALUE_RANGES)}")


def _check_shape(shape_nhwc: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape_nhwc) != 4 or shape_nhwc[0] != 1 or shape_nhwc[3] not in (1, 3):
        raise UserError(f"image input must be (1, H, W, 1) or (1, H, W, 3), got {tuple(shape_nhwc)}")
    _, h, w, c = (int(d) for d in shape_nhwc)
    if h <= 0 or w <= 0:
        raise UserError(f"image input size must be positive, got {tuple(shape_nhwc)}")
    return h, w, c


def load_pixels(path: str | Path, shape_nhwc: tuple[int, ...], xor_0x80: bool = False
                ) -> np.ndarray:
    """Steps 1-4: decode, crop and resize an image file to uint8 pixels ``(1, H, W, C)``."""
    h, w, c = _check_shape(tuple(shape_nhwc))
    path = Path(path)
    if not path.is_file():
        raise UserError(f"cannot read image {path}: no such file")
    try:
        with Image.open(path) as decoded:
            image = decoded.convert("L" if c == 1 else "RGB")
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None
    if xor_0x80:
        image = Image.fromarray(np.asarray(image) ^ np.uint8(0x80), image.mode)
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if image.size != (w, h):
        image = image.resize((w, h), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8).reshape(1, h, w, c)


PixelMap = Callable[[np.ndarray], np.ndarray]


def load_image(path: str | Path, shape_nhwc: tuple[int, ...],
               value_range: str | PixelMap = "minus1_1", xor_0x80: bool = False) -> np.ndarray:
    """Decode, crop, resize and map an image file to a float32 ``(1, H, W, C)`` input.

    ``value_range`` is a name from VALUE_RANGES or a function of the uint8 pixels (e.g. a
    recorded ``mbgen.preprocessing.Preprocessing.float_input``)."""
    if isinstance(value_range, str) and value_range not in VALUE_RANGES:
        map_pixels(np.zeros(1, np.uint8), value_range)  # raises the UserError
    pixels = load_pixels(path, shape_nhwc, xor_0x80)
    if callable(value_range):
        return np.asarray(value_range(pixels), dtype=np.float32)
    return map_pixels(pixels, value_range)


def quantize_input(float_nhwc: np.ndarray, scale: float, zero_point: int,
                   dtype: str = "int8") -> np.ndarray:
    """TFLite QUANTIZE: ``q = clamp(round(x / scale) + zero_point, -128, 127)`` (for a
    ``dtype`` "uint8" interface: clamped to [0, 255]).

    The division is float32 (x and the stored float32 scale) and rounding goes half away from
    zero (``std::round``), as in TFLite's reference Quantize kernel.
    """
    if not scale > 0:
        raise UserError(f"input scale must be positive, got {scale}")
    x = np.asarray(float_nhwc, dtype=np.float32)
    scaled = (x / np.float32(scale)).astype(np.float64)  # exact widening: no double rounding
    q = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5) + int(zero_point)
    info = np.iinfo(dtype)
    return np.clip(q, info.min, info.max).astype(dtype)
