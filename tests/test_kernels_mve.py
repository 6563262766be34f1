"""Helium (MVE) pointwise and depthwise kernels on Cortex-M55, bit-exact with the reference.

Each one-layer case is generated for cortex-m55 (mve = true), built with
arm-none-eabi-gcc -mcpu=cortex-m55, run in QEMU mps3-an547 (which executes MVE) and compared
byte for byte with ``mbgen.reference.run_int8`` (numpy from the TFLite spec, sharing
nothing with the C). The same folders also build on the host, where the kernels' plain-C
twins run: same bytes. Graph builders come from test_kernels_mbgen.
"""

from __future__ import annotations

import numpy as np
import pytest

from helpers_c import CFLAGS, build, run
from mbgen import codegen, targets
from mbgen.codegen import kernels_mbgen as mb
from mbgen.codegen import kernels_mve as mve
from mbgen.reference import run_int8
from test_kernels_mbgen import HAVE_ARM, Layer, build_graph, test_inputs

TARGET = "cortex-m55"
needs_arm = pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")

# name -> (layer, the Helium call it must lower to; None: left to the DSP kernels)
CASES = {
    "pw_8_to_7": (Layer("conv", (3, 5, 8), 7, seed=31), mve.MvePointwiseCall),
    "pw_13_to_32_no_activation": (Layer("conv", (5, 3, 13), 32, out="none", seed=32),
                                  mve.MvePointwiseCall),
    "pw_64_to_32": (Layer("conv", (4, 4, 64), 32, seed=33), mve.MvePointwiseCall),
    "pw_64_to_7_clamped": (Layer("conv", (3, 3, 64), 7, out="relu6_narrow", seed=34),
                           mve.MvePointwiseCall),
    "pw_37_to_5_per_tensor": (Layer("conv", (1, 3, 37), 5, per_channel=False, seed=35),
                              mve.MvePointwiseCall),
    "dw3x3_s1_5ch": (Layer("dw", (7, 9, 5), kernel=(3, 3), padding=(1, 1, 1, 1), seed=36),
                     mve.MveDepthwiseCall),
    "dw3x3_s2_16ch_odd": (Layer("dw", (9, 7, 16), kernel=(3, 3), stride=(2, 2),
                                padding=(1, 1, 1, 1), seed=37), mve.MveDepthwiseCall),
    "dw3x3_s2_20ch_same_one_side": (Layer("dw", (8, 7, 20), kernel=(3, 3), stride=(2, 2),
                                          padding=(0, 1, 0, 1), out="none", seed=38),
                                    mve.MveDepthwiseCall),
    "dw3x3_s1_20ch_valid_clamped": (Layer("dw", (5, 6, 20), kernel=(3, 3),
                                          out="relu6_narrow", seed=39), mve.MveDepthwiseCall),
    "dw5x3_dilated_7ch": (Layer("dw", (9, 8, 7), kernel=(5, 3), dilation=(2, 1),
                                padding=(4, 4, 1, 1), out="relu", seed=40),
                          mve.MveDepthwiseCall),
    "dw3x3_s1_13ch_interior_and_tails": (Layer("dw", (6, 9, 13), kernel=(3, 3),
                                               padding=(1, 1, 1, 1), seed=43),
                                         mve.MveDepthwiseCall),
    "dw5x3_dilated_12ch_signed": (Layer("dw", (11, 8, 12), kernel=(5, 3), dilation=(2, 1),
                                        padding=(4, 4, 1, 1), out="none", seed=44),
                                  mve.MveDepthwiseCall),
    # not Helium's: must fall back to the DSP kernels and stay exact
    "conv3x3_stays_dsp": (Layer("conv", (6, 5, 3), 4, (3, 3), padding=(1, 1, 1, 1), seed=41),
                          mb.GemmCall),
    "dw_multiplier_2_stays_dsp": (Layer("dw", (5, 4, 3), kernel=(3, 3), padding=(1, 1, 1, 1),
                                        multiplier=2, seed=42), mb.DepthwiseCall),
}


@pytest.fixture(autouse=True)
def helium_depthwise(monkeypatch):
    """By default the Helium depthwise kernel only takes small maps (the DSP one counts
    fewer instructions on large ones); these tests give it every depthwise case."""
    monkeypatch.setattr(mve, "DEPTHWISE_MAX_OUTPUT_PIXELS", 1 << 30)


def _generate(graph, out, target=TARGET) -> dict:
    return codegen.generate(graph, out, target=target, kernels=mb.NAME)


def _lowered_call(graph, target=TARGET):
    return codegen.build_program(graph, kernels=mb.NAME, target=target).layers[0].call


def _assert_same(got: bytes, graph, x: np.ndarray, what: str) -> None:
    want = np.frombuffer(run_int8(graph, x)[graph.outputs[0]].tobytes(), np.int8)
    got_values = np.frombuffer(got, np.int8)
    bad = np.flatnonzero(got_values != want)
    assert got_values.size == want.size and bad.size == 0, (
        f"{what}: {bad.size} of {want.size} outputs differ, first at {bad[:5]}: "
        f"got {got_values[bad[:5]]}, reference {want[bad[:5]]}")


@pytest.mark.parametrize("name", list(CASES))
def test_case_lowers_to_the_intended_kernel(name):
    layer, kind = CASES[name]
    assert type(_lowered_call(build_graph(layer))) is kind


@pytest.mark.parametrize("target", ["cortex-m7", "cortex-m33"])
def test_cores_without_helium_keep_the_dsp_kernels(target):
    graph = build_graph(CASES["pw_64_to_32"][0])
    assert type(_lowered_call(graph, target)) is mb.GemmCall
    graph = build_graph(CASES["dw3x3_s1_5ch"][0])
    assert type(_lowered_call(graph, target)) is mb.DepthwiseCall


def test_depthwise_takes_only_small_maps_by_default(monkeypatch):
    monkeypatch.undo()
    assert type(_lowered_call(build_graph(CASES["dw3x3_s1_5ch"][0]))) is mb.DepthwiseCall
    small = Layer("dw", (4, 4, 16), kernel=(3, 3), padding=(1, 1, 1, 1), seed=45)
    assert type(_lowered_call(build_graph(small))) is mve.MveDepthwiseCall


@pytest.mark.parametrize("name,groups", [("dw3x3_s1_5ch", 0), ("dw3x3_s2_16ch_odd", 2),
                                         ("dw3x3_s1_13ch_interior_and_tails", 1),
                                         ("dw5x3_dilated_12ch_signed", 1)])
def test_depthwise_interior_groups(name, groups):
    """8-channel interior groups exist where the QEMU cases need them covered."""
    call = _lowered_call(build_graph(CASES[name][0]))
    assert call.interior_groups == groups
    assert call.vector_requant


def test_pointwise_tail_geometry():
    call = _lowered_call(build_graph(CASES["pw_13_to_32_no_activation"][0]))
    assert (call.full_chunks, call.tail_depth) == (0, 13)
    assert (call.full_pixel_blocks, call.tail_pixels) == (7, 1)
    call = _lowered_call(build_graph(CASES["pw_37_to_5_per_tensor"][0]))
    assert (call.full_chunks, call.tail_depth, call.tail_channels) == (2, 5, 1)


@needs_arm
@pytest.mark.qemu
@pytest.mark.parametrize("name", list(CASES))
def test_layer_is_bit_exact_on_cortex_m55_in_qemu(name, tmp_path):
    from mbgen.runner import run_qemu
    layer, _ = CASES[name]
    graph = build_graph(layer)
    report = _generate(graph, tmp_path / name)
    assert report["layers"][0]["kernel"] == mb.NAME
    for i, x in enumerate(test_inputs(graph, layer.seed)):
        result = run_qemu(tmp_path / name, targets.get(TARGET), x.tobytes(), timeout=60)
        _assert_same(result.output, graph, x, f"input {i}")


@pytest.mark.parametrize("name", ["pw_37_to_5_per_tensor", "pw_13_to_32_no_activation",
                                  "dw3x3_s2_20ch_same_one_side", "dw5x3_dilated_7ch",
                                  "dw3x3_s1_13ch_interior_and_tails"])
def test_folder_for_cortex_m55_also_builds_on_the_host(name, tmp_path):
    """Off-target the same folder compiles the plain-C twins: same bytes."""
    layer, _ = CASES[name]
    graph = build_graph(layer)
    out = tmp_path / name
    _generate(graph, out)
    # The arena holds only the DSP kernels' planned scratch (the planner does not know the
    # target), which a one-layer Helium graph never touches: unused, not an error here.
    exe = build(sorted(out.glob("*.c")), [out], out / "prog",
                flags=(*CFLAGS, "-Wno-unused-variable"))
    for i, x in enumerate(test_inputs(graph, seed=3)):
        _assert_same(run(exe, x.tobytes()), graph, x, f"input {i}")


@needs_arm
@pytest.mark.qemu
@pytest.mark.slow
def test_mbv1_is_bit_exact_on_cortex_m55_and_helium_counts_fewer_instructions(
        prepared, tmp_path, monkeypatch):
    from mbgen.compiler import CompileOptions, emit
    from mbgen.images import quantize_input
    from mbgen.quantize.calibration import synthetic_inputs
    from mbgen.runner import run_qemu

    model = prepared("mbv1_0.25_96")
    graph = model.graph
    qp = graph.tensors[graph.inputs[0]].quant
    x = quantize_input(synthetic_inputs(graph.tensors[graph.inputs[0]].shape, count=1,
                                        seed=5)[0], qp.scalar_scale, qp.scalar_zero_point)
    expected = run_int8(graph, x)[graph.outputs[0]].tobytes()
    target = targets.get(TARGET)

    monkeypatch.undo()   # the default build
    # unstreamed: the kernel of every layer is counted (a streamed stage hides its layers)
    compiled = emit(model, CompileOptions(target=TARGET, out_dir=tmp_path / "mve",
                                          kernels=mb.NAME, stream=False))
    lowered = codegen.build_program(compiled.graph, kernels=mb.NAME, target=TARGET).layers
    assert sum(type(layer.call) is mve.MvePointwiseCall for layer in lowered) == 13
    assert sum(type(layer.call) is mve.MveDepthwiseCall for layer in lowered) == 2   # 3x3 maps
    layers = [layer for layer in compiled.report["layers"] if layer["macs"] > 0]
    assert all(layer["kernel"] == mb.NAME for layer in layers)
    helium = run_qemu(compiled.out_dir, target, x.tobytes(), timeout=300)
    assert helium.output == expected

    # the same model with the DSP kernels only (as before Helium), for the comparison
    monkeypatch.setattr(mve, "lower", lambda ctx, index, node: None)
    compiled = emit(model, CompileOptions(target=TARGET, out_dir=tmp_path / "dsp",
                                          kernels=mb.NAME, stream=False))
    dsp = run_qemu(compiled.out_dir, target, x.tobytes(), timeout=300)
    assert dsp.output == expected
    print(f"\nmbv1_0.25_96 on cortex-m55 (QEMU instructions): Helium {helium.total_instructions}"
          f", DSP only {dsp.total_instructions} "
          f"({helium.total_instructions / dsp.total_instructions:.2f}x)")


@needs_arm
@pytest.mark.qemu
def test_cortex_m55_firmware_runs_helium_instructions(tmp_path):
    """The QEMU cases above prove exactness only if the MVE branch was compiled, not the
    plain-C twin: the firmware must contain the instructions the kernels are built from."""
    import shutil
    import subprocess
    from mbgen.runner import build_firmware
    objdump = shutil.which("arm-none-eabi-objdump")
    if objdump is None:
        pytest.skip("needs arm-none-eabi-objdump")
    # objdump spells VMLADAVA.S8 by its alias VMLAVA.S8
    wanted = {"pw_37_to_5_per_tensor": ("vmlava.s8", "vctp.8"),
              "dw3x3_s1_13ch_interior_and_tails": ("vldrb.s32", "vmul.i32", "vctp.32",
                                                   "vmullb.s16", "vmullt.s16")}
    for name, mnemonics in wanted.items():
        graph = build_graph(CASES[name][0])
        _generate(graph, tmp_path / name)
        elf = build_firmware(tmp_path / name, targets.get(TARGET), tmp_path / f"b-{name}").elf
        text = subprocess.run([objdump, "-d", "-m", "armv8.1-m.main", str(elf)],
                              capture_output=True, text=True, check=True).stdout
        for mnemonic in mnemonics:
            assert mnemonic in text, f"{name}: no {mnemonic} in the firmware"
