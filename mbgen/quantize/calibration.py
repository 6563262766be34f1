"""Calibration inputs for the quantizer: a deterministic synthetic set, or a user's folder.

Every function returns a list of float32 NHWC arrays of shape ``(1, H, W, C)``, one per
sample, in the value range the float model expects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mbgen.errors import UserError
from mbgen.images import IMAGE_SUFFIXES, load_image

NPY_SUFFIX = ".npy"


def _upsample_bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Corner-aligned bilinear interpolation of a (gh, gw, C) grid to (height, width, C)."""
    def axis_weights(cells: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.linspace(0.0, cells - 1, size)
        lo = np.minimum(np.floor(pos).astype(int), cells - 2)
        return lo, lo + 1, pos - lo

    y0, y1, fy = axis_weights(grid.shape[0], height)
    x0, x1, fx = axis_weights(grid.shape[1], width)
    rows = grid[y0] * (1 - fy)[:, None, None] + grid[y1] * fy[:, None, None]
    return rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]


def synthetic_inputs(shape_nhwc: tuple[int, ...], count: int = 16,
                     seed: int = 0) -> list[np.ndarray]:
    """``count`` smooth, image-like random inputs in [-1, 1], the same for the same seed.

    Each sample (one ``numpy.random.default_rng(seed)`` stream for the whole set) is

    * a coarse uniform[-1, 1] noise grid of 2..8 cells per side and channel, bilinearly
      upsampled to H x W (large blobs, like objects and shading), weight 0.6,
    * plus a linear gradient across the image in a random direction with a random amplitude
      of up to 1 per channel (lighting), weight 0.4,
    * plus fine gaussian noise of sigma 0.05 (texture and sensor noise),
    * scaled by a random contrast in [0.7, 1.4] and clipped to [-1, 1], so some samples
      saturate as bright or dark photographs do.

    Real images calibrate better; this set exists so that a model can be quantised with no
    data at hand, and so that tests are reproducible.
    """
    if len(shape_nhwc) != 4 or shape_nhwc[0] != 1 or min(shape_nhwc) <= 0:
        raise UserError(f"calibration input shape must be (1, H, W, C), got {tuple(shape_nhwc)}")
    if count < 1:
        raise UserError(f"calibration needs at least one input, got count={count}")
    _, height, width, channels = (int(d) for d in shape_nhwc)
    rng = np.random.default_rng(seed)
    ys = np.linspace(-1.0, 1.0, height)[:, None, None]
    xs = np.linspace(-1.0, 1.0, width)[None, :, None]
    samples = []
    for _ in range(count):
        cells = int(rng.integers(2, 9))
        blobs = _upsample_bilinear(rng.uniform(-1, 1, (cells, cells, channels)), height, width)
        angle = rng.uniform(0, 2 * np.pi)
        amplitude = rng.uniform(-1, 1, channels)[None, None, :]
        gradient = amplitude * (np.cos(angle) * xs + np.sin(angle) * ys) / np.sqrt(2)
        fine = rng.normal(0.0, 0.05, (height, width, channels))
        contrast = rng.uniform(0.7, 1.4)
        image = np.clip(contrast * (0.6 * blobs + 0.4 * gradient + fine), -1.0, 1.0)
        samples.append(image.astype(np.float32)[np.newaxis])
    return samples


def _load_npy(path: Path, shape_nhwc: tuple[int, ...]) -> list[np.ndarray]:
    """An ``.npy`` holds tensor values as the model reads them: (H, W, C) or (N, H, W, C)."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read calibration array {path}: {exc}") from None
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise UserError(f"calibration array {path} has dtype {array.dtype}; need numbers")
    want = tuple(shape_nhwc[1:])
    stored_shape = array.shape
    if array.ndim == 3:
        array = array[np.newaxis]
    if array.ndim != 4 or tuple(array.shape[1:]) != want or array.shape[0] < 1:
        raise UserError(f"calibration array {path} has shape {stored_shape}; the model input "
                        f"needs (H, W, C) = {want} or (N, {', '.join(map(str, want))})")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise UserError(f"calibration array {path} contains NaN or infinity")
    return [array[i:i + 1].copy() for i in range(array.shape[0])]


def load_calibration_dir(path: str | Path, shape_nhwc: tuple[int, ...],
                         mode: str = "minus1_1") -> list[np.ndarray]:
    """Calibration inputs from the images and ``.npy`` arrays in a folder, in file-name order.

    Images (png, jpg, jpeg, bmp) are preprocessed by :func:`mbgen.images.load_image` with value
    range ``mode``; arrays are taken as already preprocessed. Other files are ignored.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(f"calibration directory {folder} does not exist or is not a directory")
    shape_nhwc = tuple(int(d) for d in shape_nhwc)
    samples: list[np.ndarray] = []
    for file in sorted(folder.iterdir()):
        if file.name.startswith(".") or not file.is_file():
            continue
        suffix = file.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            samples.append(load_image(file, shape_nhwc, mode))
        elif suffix == NPY_SUFFIX:
            samples.extend(_load_npy(file, shape_nhwc))
    if not samples:
        kinds = ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES + (NPY_SUFFIX,))
        raise UserError(f"no calibration inputs ({kinds}) in {folder}")
    return samples


def _load_file(file: Path, shape_nhwc: tuple[int, ...], mode) -> list[np.ndarray]:
    suffix = file.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return [load_image(file, shape_nhwc, mode)]
    if suffix == NPY_SUFFIX:
        return _load_npy(file, shape_nhwc)
    kinds = ", ".join(s.lstrip(".") for s in IMAGE_SUFFIXES + (NPY_SUFFIX,))
    raise UserError(f"calibration file {file} is not one of {kinds}")


def load_calibration(sources, shape_nhwc: tuple[int, ...], mode="minus1_1") -> list[np.ndarray]:
    """Calibration inputs from several sources, in the order given: a folder (its images and
    arrays in file-name order), an image or ``.npy`` file, or a glob pattern (``photos/*.jpg``,
    matches in name order)."""
    import glob

    shape_nhwc = tuple(int(d) for d in shape_nhwc)
    samples: list[np.ndarray] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            samples.extend(load_calibration_dir(path, shape_nhwc, mode))
        elif path.is_file():
            samples.extend(_load_file(path, shape_nhwc, mode))
        elif glob.has_magic(str(source)):
            matches = sorted(Path(m) for m in glob.glob(str(source)) if Path(m).is_file())
            if not matches:
                raise UserError(f"--calib {source}: the pattern matches no file")
            for file in matches:
                samples.extend(_load_file(file, shape_nhwc, mode))
        else:
            raise UserError(f"--calib {source}: no such folder, file or pattern")
    if not samples:
        raise UserError("no calibration inputs in " + ", ".join(map(str, sources)))
    return samples
