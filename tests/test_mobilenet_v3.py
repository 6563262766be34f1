"""Issue 10's MobileNetV3 proof: zoo V3 -> int8 C, bit-exact with the numpy reference on the
host, with TFLM on the emitted .tflite and in QEMU (Cortex-M7); close to PyTorch float.

Also the zoo's V3 architecture against the paper (Table 3 sizes, SE placement).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from torch import nn

from helpers_c import build_folder, run
from mbgen import zoo
from mbgen.compiler import CompileOptions, emit
from mbgen.zoo_v3 import MobileNetV3, SqueezeExcitation
from test_zoo import count_macs_and_params
from zoo_checks import check_c_equals_numpy_and_tflm_and_tracks_pytorch, \
    check_qemu_cortex_m7_equals_numpy

INPUTS = 7   # the shared photos, topped up with synthetic images (at least 2)


@pytest.mark.parametrize("name, macs_m, params_m", [
    ("mbv3l_1.0_224", 219, 5.4),    # MobileNetV3 paper, Table 3
    ("mbv3l_0.75_224", 155, 4.0),
    ("mbv3s_1.0_224", 56, 2.5),
    ("mbv3s_0.75_224", 44, 2.0),
])
def test_v3_size_matches_the_paper(name: str, macs_m: float, params_m: float) -> None:
    info = zoo.describe(name)  # the bare architecture: sizes need no weights or BN statistics
    model = MobileNetV3(info.family.endswith("large"), info.alpha, zoo.make_divisible)
    macs, params = count_macs_and_params(model, zoo.input_shape(name))
    assert macs / 1e6 == pytest.approx(macs_m, rel=0.04)
    assert params / 1e6 == pytest.approx(params_m, rel=0.04)


def test_v3_blocks_follow_the_tables() -> None:
    small, large = zoo.get("mbv3s_1.0_96"), zoo.get("mbv3l_1.0_96")
    se_small = [m for m in small.modules() if isinstance(m, SqueezeExcitation)]
    se_large = [m for m in large.modules() if isinstance(m, SqueezeExcitation)]
    assert [m.fc1.in_channels for m in se_small] == [16, 96, 240, 240, 120, 144, 288, 576, 576]
    assert [m.fc1.out_channels for m in se_small] == [8, 24, 64, 64, 32, 40, 72, 144, 144]
    assert [m.fc1.in_channels for m in se_large] == [72, 120, 120, 480, 672, 672, 960, 960]
    assert sum(isinstance(m, nn.Hardswish) for m in small.modules()) == 1 + 2 * 8 + 1 + 1
    assert sum(isinstance(m, nn.Hardswish) for m in large.modules()) == 1 + 2 * 9 + 1 + 1
    assert small.classifier[0].out_features == 1024 and large.classifier[0].out_features == 1280
    assert zoo.get("mbv3s_0.5_96").classifier[0].out_features == 1024  # kept for alpha < 1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mbv3s_0.75_128", "mbv3l_0.5_160", "mbv3s_1.0_224"])
def test_v3_c_equals_numpy_and_tflm_and_tracks_pytorch(name, prepared, tmp_path):
    check_c_equals_numpy_and_tflm_and_tracks_pytorch(name, prepared, tmp_path, INPUTS)


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="no arm-none-eabi-gcc")
@pytest.mark.skipif(shutil.which("qemu-system-arm") is None, reason="no qemu-system-arm")
def test_v3_in_qemu_cortex_m7_equals_numpy(prepared, tmp_path):
    # 2 MB of weights: more than the STM32F746's 1 MB flash, within QEMU's board
    check_qemu_cortex_m7_equals_numpy("mbv3s_0.75_128", prepared, tmp_path)


@pytest.mark.slow
def test_emitted_v3_tflite_compiles_again_bit_exact_with_tflm(prepared, tmp_path):
    """Our .tflite of a V3 (1x1 depthwise hard sigmoid, broadcast MUL) read back by the TFLite
    frontend: that C equals TFLM on the file."""
    pytest.importorskip("tflite_micro.python.tflite_micro.runtime",
                        reason="the TFLM reference needs the tflite-micro package")
    from mbgen.compiler import prepare
    from mbgen.tflm import run_tflm

    tflite = tmp_path / "mbv3s.tflite"
    emit(prepared("mbv3s_0.75_128"), CompileOptions(target="host", out_dir=tmp_path / "a",
                                                   emit_tflite=tflite))
    reread = prepare(str(tflite), CompileOptions())
    emit(reread, CompileOptions(target="host", out_dir=tmp_path / "c"))
    exe = build_folder(tmp_path / "c")
    rng = np.random.default_rng(3)
    for _ in range(2):
        q = rng.integers(-128, 128, reread.graph.tensors[reread.graph.inputs[0]].shape)
        q = q.astype(np.int8)
        np.testing.assert_array_equal(np.frombuffer(run(exe, q.tobytes()), dtype=np.int8),
                                      run_tflm(tflite, q).ravel())
