"""Image preprocessing against the input-tensor sha256 prefixes published in MODELS.md."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mbgen.errors import UserError
from mbgen.images import load_image, quantize_input

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
IMAGES = SHARED / "images"
needs_images = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"{IMAGES} missing")

# Copied from MODELS.md ("Input-tensor sha256 prefixes"), measured outside this project.
PERSON_DETECT = {"person.bmp": "d4ebdafe351a7b78", "no_person.bmp": "404891ef65ec1188",
                 "grace_hopper.bmp": "7a94e1f2de78c205", "cat.bmp": "b314d0f11059a646",
                 "hot_dog.jpg": "1bb6d843f5af3276"}
MBV1_FLOAT = {"person.bmp": "a7d6803101b9d57b", "no_person.bmp": "a15e894a0515e0bb",
              "grace_hopper.bmp": "4881ac70a09b1d1d", "cat.bmp": "68d2f27e4570b88c",
              "hot_dog.jpg": "b4939dbc4df09774"}
MBV1_UINT8 = {"person.bmp": "5404f24095fe4513", "no_person.bmp": "f595d379bc4f83e2",
              "grace_hopper.bmp": "adb76dd6b093f686", "cat.bmp": "7b0e6957ca47f18d",
              "hot_dog.jpg": "64308b73e5ba078f"}


def _sha(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]


def _xor(name: str) -> bool:
    return name == "person.bmp"  # a property of that file (MODELS.md, image notes)


@needs_images
@pytest.mark.parametrize("name", sorted(PERSON_DETECT))
def test_person_detect_input_bytes(name):
    x = load_image(IMAGES / name, (1, 96, 96, 1), "uint8_minus128", xor_0x80=_xor(name))
    assert x.shape == (1, 96, 96, 1) and x.dtype == np.float32
    assert _sha(x.astype(np.int8)) == PERSON_DETECT[name]


@needs_images
@pytest.mark.parametrize("name", sorted(MBV1_FLOAT))
def test_mobilenet_float_input(name):
    x = load_image(IMAGES / name, (1, 128, 128, 3), "minus1_1", xor_0x80=_xor(name))
    assert x.dtype == np.float32 and x.min() >= -1.0 and x.max() <= 1.0
    assert _sha(x) == MBV1_FLOAT[name]


@needs_images
@pytest.mark.parametrize("name", sorted(MBV1_UINT8))
def test_mobilenet_uint8_input(name):
    x = load_image(IMAGES / name, (1, 128, 128, 3), "uint8", xor_0x80=_xor(name))
    assert _sha(x.astype(np.uint8)) == MBV1_UINT8[name]


# MODELS.md: TFLM's raw int8 outputs [notperson, person] of person_detect.tflite per image.
PERSON_DETECT_TFLM = {"person.bmp": [-113, 113], "no_person.bmp": [77, -77],
                      "grace_hopper.bmp": [-114, 114], "cat.bmp": [19, -19],
                      "hot_dog.jpg": [-62, 62]}


@needs_images
@pytest.mark.parametrize("name", sorted(PERSON_DETECT_TFLM))
def test_person_detect_in_tflm_gives_the_published_outputs(name):
    pytest.importorskip("tflite_micro", reason="tflite-micro not installed")
    model = SHARED / "models" / "person_detect.tflite"
    if not model.is_file():
        pytest.skip(f"{model} missing")
    from mbgen.tflm import run_tflm

    x = load_image(IMAGES / name, (1, 96, 96, 1), "uint8_minus128", xor_0x80=_xor(name))
    assert run_tflm(model, x.astype(np.int8)).ravel().tolist() == PERSON_DETECT_TFLM[name]


@needs_images
def test_person_bmp_bytes_are_the_int8_input_without_xor():
    # MODELS.md: person.bmp stores grey - 128; its raw bytes read as int8 are the model input.
    raw = load_image(IMAGES / "person.bmp", (1, 96, 96, 1), "uint8")
    fixed = load_image(IMAGES / "person.bmp", (1, 96, 96, 1), "uint8_minus128", xor_0x80=True)
    np.testing.assert_array_equal(raw.astype(np.uint8).view(np.int8), fixed.astype(np.int8))


def test_centre_crop_without_resize(tmp_path):
    cols = np.arange(6, dtype=np.uint8) * 10
    Image.fromarray(np.tile(cols, (4, 1)), "L").save(tmp_path / "wide.png")  # W=6, H=4
    x = load_image(tmp_path / "wide.png", (1, 4, 4, 1), "uint8")
    np.testing.assert_array_equal(x[0, :, :, 0], np.tile(cols[1:5], (4, 1)))


def test_grey_is_replicated_to_rgb(tmp_path):
    Image.fromarray(np.full((5, 5), 200, np.uint8), "L").save(tmp_path / "g.png")
    x = load_image(tmp_path / "g.png", (1, 3, 3, 3), "zero_1")
    np.testing.assert_allclose(x, 200 / 255, rtol=1e-6)


def test_user_errors(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UserError, match="cannot read image"):
        load_image(tmp_path / "bad.png", (1, 8, 8, 3))
    with pytest.raises(UserError, match="cannot read image"):
        load_image(tmp_path / "missing.png", (1, 8, 8, 3))
    with pytest.raises(UserError, match=r"\(1, H, W, 1\)"):
        load_image(tmp_path / "bad.png", (1, 8, 8, 2))
    with pytest.raises(UserError, match="unknown value range"):
        load_image(tmp_path / "bad.png", (1, 8, 8, 3), "zero_to_one")


def test_quantize_input_rounds_half_away_and_clamps():
    x = np.array([0.5, -0.5, 1.5, -1.5, 2.5, 0.49999997, 1000.0, -1000.0], np.float32)
    np.testing.assert_array_equal(quantize_input(x, 1.0, 0), [1, -1, 2, -2, 3, 0, 127, -128])
    np.testing.assert_array_equal(quantize_input(np.float32([0.0, 0.25]), 0.5, -3), [-3, -2])


@settings(max_examples=200, deadline=None)
@given(st.floats(-3, 3, width=32), st.floats(2.0**-10, 0.125, width=32), st.integers(-128, 127))
def test_quantize_input_is_nearest_representable(x, scale, zp):
    q = int(quantize_input(np.float32([x]), scale, zp)[0])
    lo, hi = np.float32(scale) * (-128 - zp), np.float32(scale) * (127 - zp)
    if lo <= x <= hi:
        assert abs(float(np.float32(scale)) * (q - zp) - x) <= float(np.float32(scale)) * 0.5001
    else:
        assert q == (127 if x > hi else -128)
