"""--kernels mbgen: per-layer specialised DSP kernels, bit-exact with the numpy reference.

Every layer case is generated for Cortex-M7, built with arm-none-eabi-gcc, run in QEMU and
compared byte for byte with ``mbgen.reference.run_int8`` (numpy, written from the TFLite
spec, sharing nothing with the C). The requantisation proof is checked against the
reference's MultiplyByQuantizedMultiplier on the accumulators it reasons about.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from helpers_c import build_folder, run
from mbgen import codegen, ir, targets
from mbgen.codegen import kernels_mbgen as mb
from mbgen.quantize import requant_proofs as rp
from mbgen.reference import multiply_by_quantized_multiplier, run_int8

A = ir.Activation
HAVE_ARM = bool(shutil.which("arm-none-eabi-gcc") and shutil.which("qemu-system-arm"))
needs_arm = pytest.mark.skipif(not HAVE_ARM, reason="needs arm-none-eabi-gcc and qemu-system-arm")


# ----------------------------------------------------------------------------- graphs


@dataclass(frozen=True)
class Layer:
    """One int8 layer to build. ``out`` picks the output quantisation:
    "relu6" is TFLite's for a ReLU6 calibrated on [0, 6] (scale 6/255, zero point -128, so
    the activation range is all of int8: the kernels' unclamped fast path); "relu6_narrow"
    and "relu" clamp inside int8; "none" has a random zero point and negative outputs."""

    kind: str                        # "conv" | "dw" | "fc"
    hwc: tuple[int, int, int]        # input (fc: in_features in c)
    out_c: int = 0                   # conv / fc
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)   # top, bottom, left, right
    dilation: tuple[int, int] = (1, 1)
    multiplier: int = 1
    out: str = "relu6"
    gain: float = 1.0                # output scale / the one aiming at a good spread
    per_channel: bool = True
    seed: int = 0
    expect: dict = field(default_factory=dict)   # attributes the lowered call must have


def _qp(scale, zero_point, axis=None) -> ir.QuantParams:
    scale = np.atleast_1d(np.asarray(scale, dtype=np.float32))
    zero_point = np.atleast_1d(np.asarray(zero_point, dtype=np.int32))
    return ir.QuantParams(scale, zero_point, axis)


def _out_size(size: int, k: int, stride: int, dilation: int, pad: int) -> int:
    return (size + pad - dilation * (k - 1) - 1) // stride + 1


def build_graph(layer: Layer) -> ir.Graph:
    """A one-node int8 graph with random weights and quantisation aimed at a wide output
    spread (test data chosen for coverage; the expected values come from the reference)."""
    rng = np.random.default_rng(layer.seed)
    h, w, c = layer.hwc
    pt, pb, pl, pr = layer.padding
    in_scale, in_zp = 0.03, int(rng.integers(-128, 128))
    if layer.kind == "fc":
        x_shape, out_c, taps = (1, c), layer.out_c, c
        w_shape, axis = (out_c, c), 0
        out_shape = (1, out_c)
    elif layer.kind == "dw":
        x_shape = (1, h, w, c)
        out_c, taps = c * layer.multiplier, layer.kernel[0] * layer.kernel[1]
        w_shape, axis = (1, *layer.kernel, out_c), 3
    else:
        x_shape, out_c = (1, h, w, c), layer.out_c
        taps = layer.kernel[0] * layer.kernel[1] * c
        w_shape, axis = (out_c, *layer.kernel, c), 0
    if layer.kind != "fc":
        out_shape = (1, _out_size(h, layer.kernel[0], layer.stride[0], layer.dilation[0], pt + pb),
                     _out_size(w, layer.kernel[1], layer.stride[1], layer.dilation[1], pl + pr),
                     out_c)
    n_scales = out_c if layer.per_channel else 1
    weights = rng.integers(-127, 128, size=w_shape).astype(np.int8)
    w_scale = rng.uniform(0.5, 2.0, size=n_scales).astype(np.float32) * np.float32(0.01)
    bias_scale = (np.float32(in_scale) * np.broadcast_to(w_scale, (out_c,))).astype(np.float32)
    bias = (rng.integers(-40, 41, size=out_c) * 74 * 73).astype(np.int32)
    act = {"relu6": A.RELU6, "relu6_narrow": A.RELU6, "relu": A.RELU, "none": A.NONE}[layer.out]
    # real accumulator spread: sqrt(taps) * std(x - zp) * std(w) * scales
    spread = float(np.sqrt(taps) * 74 * 73 * in_scale * float(w_scale.mean()))
    if layer.out == "relu6":
        out_scale, out_zp = 6.0 / 255.0, -128
        w_scale = w_scale * np.float32(2.5 / spread)      # most outputs inside [0, 6]
        bias_scale = (np.float32(in_scale) * np.broadcast_to(w_scale, (out_c,))).astype(
            np.float32)
    elif layer.out == "none":
        out_scale, out_zp = spread / 45 * layer.gain, int(rng.integers(-30, 31))
    else:
        out_scale, out_zp = spread / 60 * layer.gain, -128
    tensors = {
        "x": ir.Tensor("x", x_shape, "int8", None, _qp(in_scale, in_zp)),
        "w": ir.Tensor("w", w_shape, "int8", weights,
                       _qp(w_scale, np.zeros(n_scales), axis if layer.per_channel else None)),
        "b": ir.Tensor("b", (out_c,), "int32", bias, _qp(bias_scale, np.zeros(out_c), 0)),
        "y": ir.Tensor("y", out_shape, "int8", None, _qp(out_scale, out_zp)),
    }
    padding = ir.Padding(pt, pb, pl, pr)
    if layer.kind == "fc":
        op = ir.FullyConnected(activation=act)
    elif layer.kind == "dw":
        op = ir.DepthwiseConv2D(stride=layer.stride, padding=padding,
                                depth_multiplier=layer.multiplier, dilation=layer.dilation,
                                activation=act)
    else:
        op = ir.Conv2D(stride=layer.stride, padding=padding, dilation=layer.dilation,
                       activation=act)
    graph = ir.Graph("case", tensors, [ir.Node("layer", op, ["x", "w", "b"], ["y"])],
                     ["x"], ["y"])
    ir.verify(graph)
    return graph


def test_inputs(graph: ir.Graph, seed: int) -> list[np.ndarray]:
    """A random input and one of extremes only (-128 / 127), which drives accumulators to
    the edges of their range."""
    rng = np.random.default_rng(seed)
    shape = graph.tensors[graph.inputs[0]].shape
    return [rng.integers(-128, 128, size=shape).astype(np.int8),
            rng.choice(np.array([-128, 127], dtype=np.int8), size=shape)]


test_inputs.__test__ = False   # a helper, not a test


# ----------------------------------------------------------------------------- layer cases

CASES = {
    # 1x1 convolutions: the GEMM with contiguous columns
    "pw_asm_block": Layer("conv", (6, 6, 64), 32, seed=1, expect={"asm_block": True}),
    "pw_odd_everything": Layer("conv", (5, 3, 13), 7, seed=2,
                               expect={"tail_pixels": 3, "tail_channels": 1}),
    "pw_long_depth_loop": Layer("conv", (3, 3, 164), 10, seed=3,
                                expect={"asm_block": True, "steps": 82}),
    "pw_relu6_clamped": Layer("conv", (4, 4, 24), 12, out="relu6_narrow", seed=4,
                              expect={"asm_block": False}),
    "pw_no_activation": Layer("conv", (4, 5, 20), 6, out="none", seed=5,
                              expect={"requant.scheme": rp.RequantScheme.FAST_SIGNED}),
    "pw_multiplier_above_one": Layer("conv", (2, 3, 8), 4, out="none", gain=0.002, seed=6,
                                     expect={"requant.scheme": rp.RequantScheme.EXACT}),
    "pw_per_tensor": Layer("conv", (4, 4, 16), 8, per_channel=False, seed=7),
    # other convolutions: im2col columns
    "conv_stem_3ch_s2": Layer("conv", (17, 15, 3), 8, (3, 3), (2, 2), (1, 1, 1, 1), seed=8),
    # 10 output columns: blocks of 4 pixels wholly inside one row and the input (the asm
    # block columns, GemmCall.asm_columns), blocks across two rows and border ones
    "conv_stem_3ch_s2_interior": Layer("conv", (9, 19, 3), 8, (3, 3), (2, 2), (1, 1, 1, 1),
                                       seed=25),
    "conv_same_one_side": Layer("conv", (9, 10, 5), 6, (3, 3), (2, 2), (0, 1, 0, 1), seed=9),
    "conv_5x3_dilated": Layer("conv", (11, 9, 4), 3, (5, 3), dilation=(1, 2),
                              padding=(2, 2, 2, 2), out="relu", seed=10),
    "conv_1x1_stride2": Layer("conv", (7, 7, 6), 5, stride=(2, 2), seed=11),
    # depthwise
    "dw3x3_s1_asm": Layer("dw", (7, 9, 12), kernel=(3, 3), padding=(1, 1, 1, 1), seed=12,
                          expect={"asm_sweep": True}),
    "dw3x3_s1_odd_width_channels": Layer("dw", (6, 7, 5), kernel=(3, 3),
                                         padding=(1, 1, 1, 1), seed=13),
    "dw3x3_s2_odd": Layer("dw", (9, 7, 10), kernel=(3, 3), stride=(2, 2),
                          padding=(1, 1, 1, 1), seed=14, expect={"asm_sweep": True}),
    "dw3x3_s2_same_one_side": Layer("dw", (8, 8, 16), kernel=(3, 3), stride=(2, 2),
                                    padding=(0, 1, 0, 1), seed=15),
    "dw3x3_valid": Layer("dw", (6, 7, 4), kernel=(3, 3), seed=16),
    "dw3x3_clamped": Layer("dw", (5, 6, 8), kernel=(3, 3), padding=(1, 1, 1, 1),
                           out="relu6_narrow", seed=17, expect={"asm_sweep": False}),
    "dw_multiplier_2": Layer("dw", (6, 5, 3), kernel=(3, 3), padding=(1, 1, 1, 1),
                             multiplier=2, seed=18),
    "dw5x5_no_activation": Layer("dw", (9, 8, 6), kernel=(5, 5), padding=(2, 2, 2, 2),
                                 out="none", seed=19,
                                 expect={"unrolled_3x3": False,
                                         "requant.scheme": rp.RequantScheme.FAST_SIGNED}),
    "dw3x3_dilated": Layer("dw", (9, 9, 4), kernel=(3, 3), dilation=(2, 2),
                           padding=(2, 2, 2, 2), seed=20, expect={"unrolled_3x3": False}),
    "dw3x1_stride_2x1": Layer("dw", (8, 5, 7), kernel=(3, 1), stride=(2, 1),
                              padding=(1, 1, 0, 0), out="relu", seed=21),
    # fully connected
    "fc": Layer("fc", (1, 1, 64), 10, out="none", per_channel=False, seed=22,
                expect={"requant.scheme": rp.RequantScheme.FAST_SIGNED}),
    "fc_odd": Layer("fc", (1, 1, 37), 7, out="none", per_channel=False, seed=23),
    "fc_relu6": Layer("fc", (1, 1, 48), 9, seed=24),
}


def _generate(graph: ir.Graph, out: Path, target: str = "cortex-m7") -> dict:
    return codegen.generate(graph, out, target=target, kernels=mb.NAME)


def _lowered_call(graph: ir.Graph, target: str = "cortex-m7"):
    return codegen.build_program(graph, kernels=mb.NAME, target=target).layers[0].call


def _attribute(call, dotted: str):
    value = call
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _expected(graph: ir.Graph, x: np.ndarray) -> bytes:
    return run_int8(graph, x)[graph.outputs[0]].tobytes()


def _check_in_qemu(graph: ir.Graph, out: Path, seed: int, target: str = "cortex-m7") -> None:
    from mbgen.runner import run_qemu
    report = _generate(graph, out, target)
    assert report["layers"][0]["kernel"] == mb.NAME
    for i, x in enumerate(test_inputs(graph, seed)):
        result = run_qemu(out, targets.get(target), x.tobytes(), timeout=60)
        expected = _expected(graph, x)
        got = np.frombuffer(result.output, np.int8)
        want = np.frombuffer(expected, np.int8)
        bad = np.flatnonzero(got != want)
        assert bad.size == 0, (f"input {i}: {bad.size} of {want.size} outputs differ, first at "
                               f"{bad[:5]}: got {got[bad[:5]]}, reference {want[bad[:5]]}")


@pytest.mark.parametrize("name", list(CASES))
def test_case_takes_the_intended_path(name):
    """Preconditions of the QEMU test below: each case reaches the code path it is for."""
    layer = CASES[name]
    call = _lowered_call(build_graph(layer))
    assert call is not None and type(call).__module__.startswith(mb.__name__)
    for attr, value in layer.expect.items():
        assert _attribute(call, attr) == value, attr


def test_block_column_loads_rebuild_every_interior_field():
    """GemmCall.field_loads, as the asm block columns and the C column code apply them
    (LDR; BFI of a second LDR at bit 8 * take, or LSR), give each interior pixel's receptive
    field word by word, depth padding zero, for every pixel of a block; no LDR reads past
    the input."""
    call = _lowered_call(build_graph(CASES["conv_stem_3ch_s2_interior"]))
    assert call.asm_columns
    loads = call.field_loads
    assert len(loads) == call.depth_padded // 4 == 7
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(call.in_h, call.in_w, call.in_c), dtype=np.uint8)
    flat = image.tobytes()

    def word(at: int) -> int:
        assert 0 <= at and at + 4 <= len(flat)
        return int.from_bytes(flat[at:at + 4], "little")

    for iy in range(call.in_h - call.k_h + 1):
        for ix in range(0, call.in_w - call.k_w + 1 - (call.block_pixels - 1) * call.stride_w):
            for p in range(call.block_pixels):
                x = ix + p * call.stride_w
                row = (iy * call.in_w + x) * call.in_c
                field = image[iy:iy + call.k_h, x:x + call.k_w].tobytes().ljust(4 * len(loads), b"\0")
                for g, load in enumerate(loads):
                    v = word(row + load.first)
                    if load.second >= 0:
                        v = (v & load.kept) | ((word(row + load.second) << (8 * load.take))
                                               & 0xFFFFFFFF)
                    v >>= load.shift
                    assert v.to_bytes(4, "little") == field[4 * g:4 * g + 4], (iy, x, g)


@needs_arm
@pytest.mark.qemu
@pytest.mark.parametrize("name", list(CASES))
def test_layer_is_bit_exact_in_qemu(name, tmp_path):
    layer = CASES[name]
    _check_in_qemu(build_graph(layer), tmp_path / name, seed=layer.seed)


@needs_arm
@pytest.mark.qemu
@pytest.mark.parametrize("name", ["pw_odd_everything", "conv_stem_3ch_s2", "fc_odd"])
def test_int8_weights_when_flash_is_tight(name, tmp_path, monkeypatch):
    """Without room for int16 pairs the GEMM widens int8 weights in the loop (2x2 blocks)."""
    monkeypatch.setattr(mb, "choose_int16_layers", lambda graph, flash: frozenset())
    graph = build_graph(CASES[name])
    assert _lowered_call(graph).weight_format is mb.WeightFormat.INT8
    _check_in_qemu(graph, tmp_path / name, seed=CASES[name].seed)


@needs_arm
@pytest.mark.qemu
@pytest.mark.parametrize("flags", ["-O0", "-Os", "-O3"])
def test_other_optimisation_levels_give_the_same_bytes(flags, tmp_path):
    """-O0 runs the asm blocks' C twins (the asm needs the frame pointer free); -Os and -O3
    schedule the same asm differently. All must equal the reference."""
    from mbgen.runner import build_firmware, run_elf
    target = targets.get("cortex-m7")
    for name in ("pw_asm_block", "dw3x3_s1_asm", "dw3x3_s2_odd", "conv_stem_3ch_s2"):
        graph = build_graph(CASES[name])
        out = tmp_path / name
        _generate(graph, out)
        elf = build_firmware(out, target, tmp_path / f"build-{name}", extra_cflags=[flags]).elf
        x = test_inputs(graph, seed=4)[0]
        assert run_elf(elf, target, x.tobytes(), timeout=60).output == _expected(graph, x)


@pytest.mark.parametrize("name", ["pw_asm_block", "pw_odd_everything", "conv_stem_3ch_s2",
                                  "dw3x3_s2_odd", "dw5x5_no_activation", "fc_odd"])
def test_folder_for_cortex_m_also_builds_on_the_host(name, tmp_path):
    """Off-target, the same folder compiles the kernels' plain-C twins: same bytes."""
    graph = build_graph(CASES[name])
    out = tmp_path / name
    _generate(graph, out)
    exe = build_folder(out)
    for x in test_inputs(graph, seed=3):
        assert run(exe, x.tobytes()) == _expected(graph, x)


@pytest.mark.parametrize("target", ["cortex-m3", "host"])
def test_cores_without_dsp_fall_back_to_portable(target, tmp_path):
    report = _generate(build_graph(CASES["pw_asm_block"]), tmp_path / target, target)
    assert report["layers"][0]["kernel"] == "portable"
    assert report["fallback_layers"] == ["layer"]


def test_non_mac_layers_are_left_to_the_portable_set():
    graph = build_graph(CASES["pw_asm_block"])
    from mbgen.codegen.lowering import LoweringContext
    x, y = graph.nodes[0].inputs[0], graph.nodes[0].outputs[0]
    node = ir.Node("pool", ir.Mean(), [x], [y])
    ctx = LoweringContext(graph, "model", "cortex-m7")
    assert mb.MbgenKernels().lower(ctx, 0, node) is None
    assert ctx.scratch_requests == {}


# ----------------------------------------------------------------------------- arithmetic


def _fast(acc: np.ndarray, m: int, c: int, right: int) -> np.ndarray:
    """The kernel's FAST requantisation, from the instructions' definitions."""
    a2 = 2 * acc.astype(np.int64)
    t = ((c << 32) + a2 * m + (1 << 31)) >> 32          # SMMLAR
    return np.clip(t >> right, -128, 127)               # ASR, SSAT #8


def _exact(acc: np.ndarray, m: int, shift: int, zp: int, lo: int, hi: int) -> np.ndarray:
    return np.clip(multiply_by_quantized_multiplier(acc, m, shift) + zp, lo, hi)


def _probe_accumulators(lo: int, hi: int, rng: np.random.Generator) -> np.ndarray:
    """The ends of [lo, hi], a dense stretch around 0 and random points in between."""
    dense = np.arange(max(lo, -5000), min(hi, 5000) + 1)
    return np.unique(np.concatenate([dense, [lo, hi], rng.integers(lo, hi + 1, 20000)]))


def _provable_draw(rng: np.random.Generator):
    """Random requantisation constants, activation range and accumulator range that
    fast_requant accepts (drawn again until it does)."""
    while True:
        m = int(rng.integers(1 << 30, 1 << 31))
        shift = int(rng.integers(-12, 1))
        zp = int(rng.integers(-128, 128))
        lo_act = int(rng.choice([-128, zp, min(zp + 5, 127)]))
        hi_act = int(rng.choice([127, max(lo_act, 100)]))
        span = int(rng.integers(1, 1 << 22))
        acc_lo = int(rng.integers(-span, 1))
        acc_hi = acc_lo + span
        proof = rp.fast_requant(m, shift, zp, lo_act, hi_act, acc_lo, acc_hi)
        if proof is not None:
            return m, shift, zp, lo_act, hi_act, acc_lo, acc_hi, proof


@pytest.mark.parametrize("seed", range(30))
def test_fast_requant_equals_tflite_wherever_it_is_accepted(seed):
    rng = np.random.default_rng(seed)
    m, shift, zp, lo_act, hi_act, acc_lo, acc_hi, (c, right) = _provable_draw(rng)
    acc = _probe_accumulators(acc_lo, acc_hi, rng)
    fast = np.clip(_fast(acc, m, c, right), lo_act, hi_act)
    np.testing.assert_array_equal(fast, _exact(acc, m, shift, zp, lo_act, hi_act))


@pytest.mark.parametrize("seed", range(20))
def test_signed_requant_equals_tflite_with_negative_outputs_kept(seed):
    """Where the plain fast path must refuse (negative halves reachable, no clamp at the
    zero point), the sign-fixed one still equals TFLite on every probed accumulator."""
    rng = np.random.default_rng(100 + seed)
    while True:
        m = int(rng.integers(1 << 30, 1 << 31))
        shift = int(rng.integers(-12, 0))
        zp = int(rng.integers(-128, 128))
        span = int(rng.integers(1000, 1 << 22))
        acc_lo = int(rng.integers(-span, 0))
        acc_hi = acc_lo + span
        if rp.fast_requant(m, shift, zp, -128, 127, acc_lo, acc_hi) is None:
            proof = rp.signed_requant(m, shift, zp, acc_lo, acc_hi)
            if proof is not None:
                break
    c, right = proof
    acc = _probe_accumulators(acc_lo, acc_hi, rng)
    a2 = 2 * acc.astype(np.int64)
    t = (((c << 32) + a2 * m + (1 << 31)) >> 32) + (acc < 0)* -1   # SMMLAR, + (acc >> 31)
    fast = np.clip(t >> right, -128, 127)
    exact = _exact(acc, m, shift, zp, -128, 127)
    np.testing.assert_array_equal(fast, exact)
    assert np.any(_fast(acc, m, c, right) != exact)   # the fix is needed here


def test_fast_requant_refuses_a_range_with_a_negative_half():
    """With negative outputs kept (act_min < zp), SMMLAR's half-up rounding differs from
    RoundingDivideByPOT's half-away on exact negative halves: the proof must refuse, and
    the difference must really be there."""
    m, shift, zp = 1 << 30, -3, 0          # y = acc / 2, then / 8
    acc = np.arange(-200, 201)
    fast = _fast(acc, m, (1 << 2) + zp * 8, 3)
    exact = _exact(acc, m, shift, zp, -128, 127)
    assert np.any(fast != exact)           # e.g. acc = -8: y = -4, -0.5 -> 0 vs -1
    assert rp.fast_requant(m, shift, zp, -128, 127, -200, 200) is None
    # a lower clamp at the zero point hides every such case
    assert rp.fast_requant(m, shift, zp, zp, 127, -200, 200) is not None
    clamped = np.clip(fast, zp, 127)
    np.testing.assert_array_equal(clamped, _exact(acc, m, shift, zp, zp, 127))


def test_fast_requant_refuses_overflow_and_left_shifts():
    assert rp.fast_requant(1 << 30, 1, 0, -128, 127, -10, 10) is None       # multiplier > 1
    assert rp.fast_requant(1 << 30, -2, 0, -128, 127, 0, 1 << 30) is None   # 2*acc overflows


def test_folding_the_input_offset_wraps_like_int32():
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, size=(4, 9))
    bias = np.array([2**31 - 5, -2**31 + 3, 0, 7])
    folded = rp.fold_input_offset(bias, w, 128)
    x = rng.integers(-128, 128, size=9)
    direct = rp.wrap_int32(bias + ((x + 128) * w).sum(axis=1))
    np.testing.assert_array_equal(rp.wrap_int32(folded + (x * w).sum(axis=1)), direct)


def test_sxtb16_order_pairs_match_the_widened_columns():
    """Weight pair j must meet the column pair SXTB16 makes for the same depths."""
    order = mb.sxtb16_order(8)
    np.testing.assert_array_equal(order, [[0, 2], [1, 3], [4, 6], [5, 7]])


def test_int16_weights_fill_the_flash_budget_by_pixels_per_weight():
    graph = build_graph(CASES["pw_asm_block"])
    assert mb.choose_int16_layers(graph, 0) == {"layer"}
    budget = mb.CODE_RESERVE_BYTES + sum(t.nbytes for t in graph.tensors.values() if t.is_const)
    assert mb.choose_int16_layers(graph, budget) == frozenset()
    assert mb.choose_int16_layers(graph, budget + 64 * 32) == {"layer"}


# ----------------------------------------------------------------------------- whole models

# Cortex-M55: Armv8.1-M low-overhead loops take LR, which the asm blocks need (regression).
MODELS = [("mbv1_0.25_128", "cortex-m7"), ("mbv1_0.25_96", "cortex-m4"),
          ("mbv1_0.25_96", "cortex-m55")]
# mbv1_0.25_96 fills the STM32F411's 512 KB with the portable kernels alone (weights 489 KB);
# ours need more (unrolled code, per-channel records), so that case runs with QEMU's flash.
FLASH_OVERRIDE = {"cortex-m4": 4 * 1024 * 1024}


@needs_arm
@pytest.mark.qemu
@pytest.mark.slow
@pytest.mark.parametrize("model_name,target_name", MODELS)
def test_model_is_bit_exact_in_qemu(model_name, target_name, prepared, tmp_path):
    from mbgen.compiler import CompileOptions, emit
    from mbgen.quantize.calibration import synthetic_inputs
    from mbgen.images import quantize_input
    from mbgen.runner import run_qemu

    model = prepared(model_name)
    compiled = emit(model, CompileOptions(target=target_name, out_dir=tmp_path / "out",
                                          kernels=mb.NAME,
                                          flash_bytes=FLASH_OVERRIDE.get(target_name)))
    macs_layers = [layer for layer in compiled.report["layers"] if layer["macs"] > 0]
    assert all(layer["kernel"] == mb.NAME for layer in macs_layers)
    graph = model.graph
    qp = graph.tensors[graph.inputs[0]].quant
    shape = graph.tensors[graph.inputs[0]].shape
    x = quantize_input(synthetic_inputs(shape, count=1, seed=5)[0], qp.scalar_scale,
                       qp.scalar_zero_point)
    result = run_qemu(compiled.out_dir, targets.get(target_name), x.tobytes(), timeout=300)
    assert result.output == run_int8(graph, x)[graph.outputs[0]].tobytes()
