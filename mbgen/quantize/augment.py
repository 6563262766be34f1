"""Seeded augmentation of a small calibration set, so that a handful of photos covers the range
of inputs the model will meet: random crops (zoom), horizontal flips, brightness and contrast.

Works on model inputs (float32 ``(1, H, W, C)``) given the values a black and a white pixel map
to (``low``/``high`` per channel), so it is the same for ``--input-range``, ``--mean/--std`` and
pre-processed ``.npy`` arrays (whose own min/max stand in for black and white).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from mbgen.quantize.calibration import _upsample_bilinear

SMALL_SET = 32          # below this many distinct inputs, compile augments (and warns)
AUGMENTED_TARGET = 40   # a small set is augmented to about this many inputs


def copies_for(count: int) -> int:
    """Augmented copies per input for a set of ``count`` inputs (0 from SMALL_SET on)."""
    return 0 if count >= SMALL_SET or count <= 0 else math.ceil(AUGMENTED_TARGET / count) - 1


def _zoom(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop of 60..100 % of each side, resized back to the full size (bilinear)."""
    height, width, _ = image.shape
    frac = rng.uniform(0.6, 1.0)
    ch, cw = max(2, round(height * frac)), max(2, round(width * frac))
    top, left = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
    return _upsample_bilinear(image[top:top + ch, left:left + cw], height, width)


def augment(samples: Sequence[np.ndarray], copies: int, seed: int = 0,
            low: np.ndarray | float | None = None, high: np.ndarray | float | None = None
            ) -> list[np.ndarray]:
    """``samples`` followed by ``copies`` augmented variants of each, the same for a seed.

    Each variant: a zoom crop (probability 0.7), a horizontal flip (0.5), then contrast in
    [0.7, 1.3] about mid-grey and a brightness shift of up to 15 % of the black-white span,
    clipped to [low, high]. Without ``low``/``high`` the set's own min/max are used.
    """
    originals = [np.asarray(s, np.float32) for s in samples]
    if copies <= 0 or not originals:
        return list(originals)
    stacked = np.concatenate(originals)
    lo = np.asarray(stacked.min(axis=(0, 1, 2)) if low is None else low, np.float64)
    hi = np.asarray(stacked.max(axis=(0, 1, 2)) if high is None else high, np.float64)
    span, middle = hi - lo, (hi + lo) / 2
    rng = np.random.default_rng(seed)
    out = list(originals)
    for _ in range(copies):
        for sample in originals:
            image = sample[0].astype(np.float64)
            if rng.uniform() < 0.7:
                image = _zoom(image, rng)
            if rng.uniform() < 0.5:
                image = image[:, ::-1]
            contrast = rng.uniform(0.7, 1.3)
            shift = rng.uniform(-0.15, 0.15) * span
            image = np.clip(middle + contrast * (image - middle) + shift, lo, hi)
            out.append(image.astype(np.float32)[np.newaxis])
    return out
