"""Calibration inputs: the synthetic set's promises and the folder loader's checks."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mbgen.errors import UserError
from mbgen.images import load_image
from mbgen.quantize.calibration import load_calibration_dir, synthetic_inputs

IMAGES = Path(__file__).resolve().parents[1].parent / "shared" / "images"


def test_synthetic_inputs_shape_range_and_determinism():
    a = synthetic_inputs((1, 32, 24, 3), count=5, seed=7)
    b = synthetic_inputs((1, 32, 24, 3), count=5, seed=7)
    c = synthetic_inputs((1, 32, 24, 3), count=5, seed=8)
    assert len(a) == 5
    for x, y in zip(a, b):
        assert x.shape == (1, 32, 24, 3) and x.dtype == np.float32
        assert x.min() >= -1.0 and x.max() <= 1.0
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[0], a[1])  # samples differ from each other


def test_synthetic_inputs_are_smooth_and_spread():
    xs = np.concatenate(synthetic_inputs((1, 64, 64, 3), count=16))
    # Image-like: neighbouring pixels are far more alike than random pairs of pixels.
    neighbour = np.abs(np.diff(xs, axis=2)).mean()
    shuffled = np.abs(xs - np.random.default_rng(0).permutation(xs.ravel()).reshape(xs.shape)).mean()
    assert neighbour < 0.25 * shuffled
    # The set covers most of [-1, 1], with both signs well represented.
    assert xs.min() < -0.9 and xs.max() > 0.9
    assert 0.2 < (xs > 0).mean() < 0.8


def test_synthetic_inputs_rejects_bad_arguments():
    with pytest.raises(UserError):
        synthetic_inputs((8, 8, 3))
    with pytest.raises(UserError):
        synthetic_inputs((1, 8, 8, 3), count=0)


def test_load_dir_images_and_arrays_in_name_order(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    hwc = rng.uniform(-1, 1, (8, 8, 3)).astype(np.float32)
    batch = rng.uniform(-1, 1, (2, 8, 8, 3))
    np.save(tmp_path / "b.npy", hwc)
    np.save(tmp_path / "c.npy", batch)
    (tmp_path / "README.txt").write_text("ignored")
    got = load_calibration_dir(tmp_path, (1, 8, 8, 3))
    assert len(got) == 4 and all(x.shape == (1, 8, 8, 3) and x.dtype == np.float32 for x in got)
    np.testing.assert_array_equal(got[0], load_image(tmp_path / "a.png", (1, 8, 8, 3)))
    np.testing.assert_array_equal(got[1][0], hwc)
    np.testing.assert_allclose(got[3][0], batch[1], rtol=1e-6)


@pytest.mark.skipif(not IMAGES.is_dir(), reason=f"{IMAGES} missing")
def test_load_dir_of_shared_images_uses_mode():
    got = load_calibration_dir(IMAGES, (1, 96, 96, 1), mode="uint8_minus128")
    assert len(got) == 5
    assert all(x.min() >= -128 and x.max() <= 127 for x in got)


def test_load_dir_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_calibration_dir(tmp_path / "nope", (1, 8, 8, 3))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="no calibration inputs"):
        load_calibration_dir(tmp_path, (1, 8, 8, 3))
    np.save(tmp_path / "wrong.npy", np.zeros((8, 8, 1), np.float32))
    with pytest.raises(UserError, match=r"wrong\.npy has shape \(8, 8, 1\)"):
        load_calibration_dir(tmp_path, (1, 8, 8, 3))
    (tmp_path / "wrong.npy").unlink()
    (tmp_path / "broken.npy").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read calibration array"):
        load_calibration_dir(tmp_path, (1, 8, 8, 3))
    (tmp_path / "broken.npy").unlink()
    (tmp_path / "broken.jpg").write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot read image"):
        load_calibration_dir(tmp_path, (1, 8, 8, 3))
