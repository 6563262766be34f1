"""Helium (MVE) kernels for Cortex-M55: 1x1 pointwise and depthwise convolutions.

Part of the ``mbgen`` kernel set: ``MbgenKernels.lower`` asks :func:`lower` first when the
target has ``mve``, and keeps its DSP kernels for whatever this returns None for (depthwise
layers with large maps too: see DEPTHWISE_MAX_OUTPUT_PIXELS).

* pointwise (``templates/kernels_mve/pointwise.c.j2``): 1x1, stride 1, unpadded Conv2D as an
  int8 GEMM. A block of 2 pixels x 4 output channels accumulates over the input channels 16
  at a time with VMLADAVA.S8 (16 int8 products summed into a scalar int32); the last, partial
  16 is tail-predicated (VCTP8 + zeroing loads + VMLADAVA.S8 with the predicate). The input
  offset is folded into the bias offline (``requant_proofs.fold_input_offset``): no tap is
  ever padded, so the fold is exact.
* depthwise (``depthwise.c.j2``, depth multiplier 1, any kernel, stride, dilation, padding):
  4 channels per vector, int8 widened to int32 lanes by VLDRB.S32, VMUL.I32 + VADD.I32 per
  tap (MVE has no vector-by-vector VMLA). Out-of-image taps are skipped (the tap window is
  clipped per output pixel), so the input offset is NOT folded (a folded bias assumes every
  tap present): each tap adds it with VADD.I32. The last C % 4 channels are
  tail-predicated. Interior pixels (whole window inside) with FAST requantisation take 8
  channels per step instead: int16 lanes, VMULLB/VMULLT into even / odd int32 lanes, the
  offset folded into a second bias (exact there: every tap is present).

Requantisation, 4 channels per vector, reuses the DSP set's proofs
(``quantize.requant_proofs.plan_requant``): where ``fast_requant`` proves SMMLAR(2*acc, m, c) >> R equal
to TFLite's MultiplyByQuantizedMultiplier for every reachable accumulator, VRMULH.S32
(``(a*b + 2**31) >> 32``, SMMLAR without the addend) of 2*acc, VADD of c and VSHL by -R
compute it, VMAX/VMIN clamp and VSTRB.32 narrows; FAST_SIGNED adds acc >> 31 first. Else
(EXACT) it is TFLite's scalar sequence per output (the portable set's ``_requantize``).
VQRDMULH is not used: it rounds negative ties differently from TFLite.
Off-target (no ``__ARM_FEATURE_MVE``) each kernel has a plain-C twin with the same sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mbgen import ir
from mbgen.codegen import records as r
from mbgen.codegen.lowering import LoweringContext, bias_values, nhwc
from mbgen.quantize import params
from mbgen.quantize.requant_proofs import (RequantScheme, accumulator_range, fold_input_offset,
                                          plan_requant)

# Register block of the pointwise GEMM: 2 pixels x 4 channels = 8 scalar accumulators, 2
# input vectors and 1 weight vector live at once (Helium has 8 Q registers).
BLOCK_PIXELS = 2
BLOCK_CHANNELS = 4
INPUT_CHUNK = 16   # int8 lanes of one Q register
DW_LANES = 4       # int32 lanes of one Q register
INTERIOR_LANES = 8  # int16 lanes: channels per step of the interior depthwise path
# Depthwise layers lower() takes: those of at most this many output pixels. Measured on
# QEMU's Cortex-M55 (instructions, mbv1_0.25_96 and person_detect): the Helium kernel
# (interior 8 channels per int16 step, VMULLB/VMULLT, ~0.75 instructions per MAC) loses to
# the DSP set's SMLAD ring sweeps on larger maps (1.04-1.8x from 12x12 up, 1.34x at 6x6
# stride 1, 0.93x at 6x6 stride 2) and wins on 3x3 maps (0.59x, 0.77x), where the ring's
# per-row work dominates.
DEPTHWISE_MAX_OUTPUT_PIXELS = 16


@dataclass(frozen=True)
class MvePointwiseCall:
    """A 1x1, stride-1, unpadded Conv2D as a Helium int8 GEMM over contiguous pixels."""

    template: ClassVar[str] = "kernels_mve/pointwise.c.j2"
    function: ClassVar[str] = "mve_pointwise"
    input: r.BufferRef
    output: r.BufferRef
    pixels: int
    in_c: int
    out_c: int
    weights: r.ConstArray       # int8 (out_c, in_c), row-major as in the model
    bias: r.ConstArray          # int32: bias + input_offset * sum(w), wrapped
    # requantisation (flat: constants_of only sees a call's own fields)
    scheme: RequantScheme
    multipliers: r.ConstArray   # int32 per output channel
    shifts: r.ConstArray        # int32 per channel: FAST -R (VSHL), EXACT TFLite's (> 0 left)
    offsets: r.ConstArray | None   # FAST: c (rounding + zero point << R); EXACT: None
    output_offset: int          # EXACT only; FAST has it in c
    act_min: int
    act_max: int

    @property
    def vector_requant(self) -> bool:
        return self.scheme is not RequantScheme.EXACT

    @property
    def sign_fix(self) -> bool:
        return self.scheme is RequantScheme.FAST_SIGNED

    @property
    def full_chunks(self) -> int:
        """Unpredicated 16-channel steps per dot product."""
        return self.in_c // INPUT_CHUNK

    @property
    def tail_depth(self) -> int:
        """Input channels of the final, predicated step (0: none)."""
        return self.in_c % INPUT_CHUNK

    @property
    def full_pixel_blocks(self) -> int:
        return self.pixels // BLOCK_PIXELS

    @property
    def tail_pixels(self) -> int:
        return self.pixels % BLOCK_PIXELS

    @property
    def full_channel_blocks(self) -> int:
        return self.out_c // BLOCK_CHANNELS

    @property
    def tail_channels(self) -> int:
        return self.out_c % BLOCK_CHANNELS


@dataclass(frozen=True)
class MveDepthwiseCall:
    """A depth-multiplier-1 depthwise convolution, 4 channels per Helium vector."""

    template: ClassVar[str] = "kernels_mve/depthwise.c.j2"
    function: ClassVar[str] = "mve_depthwise"
    input: r.BufferRef
    output: r.BufferRef
    in_h: int
    in_w: int
    channels: int
    out_h: int
    out_w: int
    k_h: int
    k_w: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    pad_top: int
    pad_left: int
    input_offset: int
    weights: r.ConstArray       # int8 (k_h, k_w, channels) as in the model
    bias: r.ConstArray          # int32 per channel, NOT folded (padded taps are skipped)
    # Interior pixels (whole window inside the image), FAST requantisation only: groups of
    # 8 channels as int16 lanes, VMULLB/VMULLT products into even / odd int32 lanes. Per
    # group 32 int32: folded bias, m, c, -R, each as 4 even then 4 odd channels.
    interior_groups: int
    interior: r.ConstArray | None
    # requantisation (flat: constants_of only sees a call's own fields)
    scheme: RequantScheme
    multipliers: r.ConstArray   # int32 per output channel
    shifts: r.ConstArray        # int32 per channel: FAST -R (VSHL), EXACT TFLite's (> 0 left)
    offsets: r.ConstArray | None   # FAST: c (rounding + zero point << R); EXACT: None
    output_offset: int          # EXACT only; FAST has it in c
    act_min: int
    act_max: int

    @property
    def vector_requant(self) -> bool:
        return self.scheme is not RequantScheme.EXACT

    @property
    def sign_fix(self) -> bool:
        return self.scheme is RequantScheme.FAST_SIGNED

    @property
    def full_vectors(self) -> int:
        return self.channels // DW_LANES

    @property
    def tail_channels(self) -> int:
        return self.channels % DW_LANES


MveCall = MvePointwiseCall | MveDepthwiseCall


def lower(ctx: LoweringContext, index: int, node: ir.Node) -> MveCall | None:
    """A Helium call for ``node`` (int8 in and out already checked), or None to let the
    DSP kernels take it."""
    op = node.op
    if not ir.uses_tflite_int8_arithmetic(op):
        return None  # TFLite's int8 arithmetic only
    if ctx.tensor(node.inputs[1]).dtype != "int8":
        return None
    if isinstance(op, ir.Conv2D):
        return _lower_pointwise(ctx, index, node, op)
    if isinstance(op, ir.DepthwiseConv2D):
        out_h, out_w, _ = nhwc(ctx.tensor(node.outputs[0]).shape)
        if out_h * out_w <= DEPTHWISE_MAX_OUTPUT_PIXELS:
            return _lower_depthwise(ctx, index, node, op)
    return None


def _requant_fields(ctx: LoweringContext, index: int, node: ir.Node, q: params.ConvQuant,
                    channels: int, acc_lo: np.ndarray, acc_hi: np.ndarray
                    ) -> dict[str, r.ConstArray | RequantScheme | int | None]:
    """The calls' requantisation fields for accumulators in [acc_lo, acc_hi] per channel."""
    if q.multipliers.size not in (1, channels):
        raise ir.GraphError(f"{node.name}: {q.multipliers.size} weight scales for "
                            f"{channels} output channels")
    requant, table = plan_requant(q, channels, acc_lo, acc_hi, acc_doubled=True)
    fast = requant.is_fast
    return dict(
        scheme=requant.scheme,
        multipliers=ctx.const_values(index, "multipliers", "int32_t", table[:, 0],
                                     f"{node.name}: requantisation multipliers"),
        shifts=ctx.const_values(index, "shifts", "int32_t",
                                -table[:, 2] if fast else table[:, 1],
                                f"{node.name}: " + ("-R per channel (VSHL right)" if fast
                                                    else "shifts, TFLite's (> 0: left)")),
        offsets=(ctx.const_values(index, "offsets", "int32_t", table[:, 1],
                                  f"{node.name}: c = 2**(R-1) + zero point * 2**R")
                 if fast else None),
        output_offset=q.output_offset, act_min=q.act_min, act_max=q.act_max)


def _full_range(bias: np.ndarray, taps: np.ndarray, input_offset: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] of bias + sum((x + input_offset) * w) over every int8 x, unwrapped (a wrap
    makes the range too wide for the proofs, which then keep TFLite's sequence). Any partial
    sum of taps lies inside too: each term's range contains 0 (x = the zero point)."""
    sums = taps.astype(np.int64).reshape(len(bias), -1).sum(axis=1)
    return accumulator_range(bias.astype(np.int64) + input_offset * sums, taps)


def _lower_pointwise(ctx: LoweringContext, index: int, node: ir.Node,
                     op: ir.Conv2D) -> MvePointwiseCall | None:
    w = ctx.tensor(node.inputs[1])
    if len(w.shape) != 4 or w.shape[1:3] != (1, 1):
        return None
    if op.stride != (1, 1) or op.padding != ir.Padding():
        return None
    in_h, in_w, in_c = nhwc(ctx.tensor(node.inputs[0]).shape)
    out_h, out_w, out_c = nhwc(ctx.tensor(node.outputs[0]).shape)
    if (out_h, out_w) != (in_h, in_w) or w.shape[0] != out_c or w.shape[3] != in_c:
        return None
    q = params.conv_quant(ctx.graph, node)
    weights = w.data.astype(np.int64).reshape(out_c, in_c)
    raw_bias = bias_values(ctx, node, out_c)
    bias = fold_input_offset(raw_bias, weights, q.input_offset)
    acc_lo, acc_hi = _full_range(raw_bias, weights, q.input_offset)
    return MvePointwiseCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        pixels=in_h * in_w, in_c=in_c, out_c=out_c,
        weights=ctx.const_values(index, "weights", "int8_t", weights,
                                 f"{node.name}: weights (out_c, in_c)"),
        bias=ctx.const_values(index, "bias", "int32_t", bias,
                              f"{node.name}: bias + input_offset * sum(w)"),
        **_requant_fields(ctx, index, node, q, out_c, acc_lo, acc_hi))


def _lower_depthwise(ctx: LoweringContext, index: int, node: ir.Node,
                     op: ir.DepthwiseConv2D) -> MveDepthwiseCall | None:
    w = ctx.tensor(node.inputs[1])
    if op.depth_multiplier != 1 or len(w.shape) != 4 or w.shape[0] != 1:
        return None
    in_h, in_w, in_c = nhwc(ctx.tensor(node.inputs[0]).shape)
    out_h, out_w, out_c = nhwc(ctx.tensor(node.outputs[0]).shape)
    _, k_h, k_w, channels = w.shape
    if not channels == in_c == out_c:
        return None
    q = params.conv_quant(ctx.graph, node)
    bias = bias_values(ctx, node, out_c)
    taps = w.data.astype(np.int64).reshape(-1, out_c).T        # (channels, taps)
    acc_lo, acc_hi = _full_range(bias, taps, q.input_offset)
    requant = _requant_fields(ctx, index, node, q, out_c, acc_lo, acc_hi)
    return MveDepthwiseCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        in_h=in_h, in_w=in_w, channels=in_c, out_h=out_h, out_w=out_w, k_h=k_h, k_w=k_w,
        stride_h=op.stride[0], stride_w=op.stride[1],
        dilation_h=op.dilation[0], dilation_w=op.dilation[1],
        pad_top=op.padding.top, pad_left=op.padding.left, input_offset=q.input_offset,
        weights=ctx.const_values(index, "weights", "int8_t",
                                 w.data.astype(np.int64).reshape(-1),
                                 f"{node.name}: taps (k_h, k_w, channels)"),
        bias=ctx.const_values(index, "bias", "int32_t", bias,
                              f"{node.name}: bias (input offset added per tap)"),
        **requant, **_interior_fields(ctx, index, node, requant, bias, taps, q.input_offset))


def _interior_fields(ctx: LoweringContext, index: int, node: ir.Node,
                     requant: dict, bias: np.ndarray, taps: np.ndarray, input_offset: int
                     ) -> dict[str, int | r.ConstArray | None]:
    """The interior path's records (see MveDepthwiseCall); none without FAST requant."""
    groups = len(bias) // INTERIOR_LANES
    if requant["scheme"] is RequantScheme.EXACT or groups == 0:
        return dict(interior_groups=0, interior=None)
    folded = fold_input_offset(bias, taps, input_offset)   # every tap present: exact
    columns = [folded, requant["multipliers"].values, requant["offsets"].values,
               requant["shifts"].values]
    n = groups * INTERIOR_LANES
    words = np.stack([col[:n].astype(np.int64).reshape(groups, 4, 2) for col in columns],
                     axis=1)                                  # (group, column, 4, even/odd)
    record = words.transpose(0, 1, 3, 2).reshape(-1)          # even 4 then odd 4
    return dict(interior_groups=groups, interior=ctx.const_values(
        index, "interior", "int32_t", record,
        f"{node.name}: per 8 channels: bias + input_offset * sum(w), m, c, -R "
        f"(even channels, then odd)"))
