"""Compact depthwise lowering of the ``mbgen`` kernel set (``--optimize size``).

One shared, runtime-parameterised 3x3 depthwise body (``templates/kernels_mbgen/
depthwise_compact.c.j2``, printed once per generation) runs every eligible layer; a layer
adds only a small ``const`` params struct and its per-channel constants in flash:

* flash, per channel: the 9 taps as 3 int8 words ``[w0, w1, w1, w2]`` (one per kernel row:
  SXTB16 of it is (w0, w1), of it rotated by 8 (w1, w2)), the folded bias doubled (int32),
  the multiplier m (int32), and the shift R (int8, its own array): 21 bytes. The SMMLAR
  rounding constant c = (zp << R) + ((1 << R) >> 1) is computed at run time.
* at run time: a ring of 3 transposed input rows, int16, padded with the input zero point
  (the input offset is folded into the bias, so borders need no special case), laid out
  ring[channel][block of 4 columns][slot 0..2][4 columns] so every offset the inner loop
  reads is an immediate; input row r sits in slot r % 3 and the three rotations of the
  window over the slots are three copies of the inner loop (per stride), not data moves.
* each channel's taps widened to doubled int16 pairs (A = (w0, w1), B = (w1, w2) per row),
  its bias, m, c and a loop counter fused with R (``k = R - groups * 256``: ASR by a
  register reads its low byte) are a 10-word entry, unpacked once per call into a table
  in the scratch when the arena has room beside the layer (``ctx.spare``), else per channel
  and row on the stack.

Covered: 3x3, stride 1x1 or 2x2, dilation 1, depth multiplier 1, any padding, FAST
requantisation (the clamp honoured). Anything else returns None and takes the specialised
path (kernels_mbgen_depthwise): other kernel sizes, dilations and multipliers are rare in
MobileNets, and FAST_SIGNED / EXACT need per-output sign fixes or TFLite's sequence that
the shared loop does not carry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mbgen import ir
from mbgen.codegen import records as r
from mbgen.codegen.kernels_mbgen_layout import _request_scratch
from mbgen.codegen.kernels_mbgen_records import _align
from mbgen.codegen.lowering import LoweringContext, bias_values, nhwc
from mbgen.quantize import params
from mbgen.quantize.requant_proofs import (Requant, RequantScheme, accumulator_range,
                                          fold_input_offset, plan_requant, wrap_int32)

RING_SLOTS = 3          # input rows the ring holds: the kernel's height
BLOCK_COLUMNS = 4       # columns of one ring block (2 int16 pairs per slot)
RECORD_WORDS = 5        # flash words per channel: 3 tap words, bias x2, m
ENTRY_WORDS = 10        # unpacked words per channel: A0 B0 A1 B1 A2 B2, bias, m, c, k
GROUP_OUTPUTS = 4       # output columns per iteration of the inner loop


@dataclass(frozen=True)
class CompactDepthwiseCall:
    """A 3x3 depthwise layer run by the shared compact body: what its params struct holds."""

    template: ClassVar[str] = "kernels_mbgen/depthwise_compact.c.j2"
    function: ClassVar[str] = "mb_dwc"
    input: r.BufferRef
    output: r.BufferRef
    scratch: r.BufferRef | None      # the ring, a zero-point pixel, the entry table (if any)
    in_h: int
    in_w: int
    channels: int
    out_h: int
    out_w: int
    stride: int                      # 1 or 2, both directions
    pad_top: int
    pad_left: int
    pad_value: int                   # the input zero point: what padded taps read
    out_zp: int
    requant: Requant                 # FAST; act_min / act_max clamp when narrower than int8
    blocks: int                      # ring blocks of 4 columns per channel row
    records: r.ConstArray            # RECORD_WORDS int32 per channel
    shifts: r.ConstArray             # R per channel, int8
    table_offset: int = -1           # scratch offset of the unpacked table; -1: none
    tail_offset: int = -1            # scratch offset of the last group's 4 columns; -1: none

    # the fields the depthwise walk (kernels_mbgen_walks.depthwise_write_order) reads
    k_h: ClassVar[int] = 3
    dilation_h: ClassVar[int] = 1
    double_rows: ClassVar[bool] = False

    @property
    def in_c(self) -> int:
        return self.channels

    @property
    def out_c(self) -> int:
        return self.channels

    @property
    def stride_h(self) -> int:
        return self.stride

    @property
    def groups(self) -> int:
        """Iterations of the inner loop per output row (4 columns each) straight into the
        output; the last out_w % 4 columns run one more iteration into the tail buffer."""
        return self.out_w // GROUP_OUTPUTS

    @property
    def clamped(self) -> bool:
        return self.requant.clamp_min or self.requant.clamp_max

    @property
    def ring_bytes(self) -> int:
        return ring_bytes(self.channels, self.blocks)

    @property
    def zero_offset(self) -> int:
        """Scratch offset of one pixel of the input zero point (read for padding)."""
        return _align(self.ring_bytes + tail_slack_bytes(self.out_w, self.stride, self.blocks), 8)


def ring_bytes(channels: int, blocks: int) -> int:
    return channels * blocks * RING_SLOTS * BLOCK_COLUMNS * 2


def tail_slack_bytes(out_w: int, stride: int, blocks: int) -> int:
    """Bytes past the ring the tail group of the last channel may read: its 4 columns
    reach beyond the ring's columns, whose values only feed outputs never stored (a
    channel before the last reads the next one's row there). The loop reads up to
    byte 20 of block stride * (groups + 1), counted from the group's first block."""
    if not out_w % GROUP_OUTPUTS:
        return 0
    block = BLOCK_COLUMNS * RING_SLOTS * 2
    last = (stride * (out_w // GROUP_OUTPUTS) + stride) * block + 20
    return max(0, last - blocks * block)


def table_bytes(channels: int) -> int:
    return channels * ENTRY_WORDS * 4


def ring_blocks(in_w: int, out_w: int, stride: int, pad_left: int) -> int:
    """Blocks per ring row: every input column at pad_left + x, and every column a read
    touches: the inner loop's last iteration (with the second halfword of its last pair)
    and the C columns after it (window start + 2)."""
    groups = out_w // GROUP_OUTPUTS
    last = stride * (out_w - 1) + 2
    if groups:
        last = max(last, GROUP_OUTPUTS * stride * groups + 1)
    return -(-max(last + 1, pad_left + in_w) // BLOCK_COLUMNS)


def eligible(graph: ir.Graph, node: ir.Node) -> bool:
    """3x3, equal strides of 1 or 2, dilation 1, multiplier 1, int8 weights (1, 3, 3, C)."""
    op = node.op
    if not isinstance(op, ir.DepthwiseConv2D):
        return False
    w = graph.tensors[node.inputs[1]]
    if w.dtype != "int8" or len(w.shape) != 4 or tuple(w.shape[:3]) != (1, 3, 3):
        return False
    _, _, in_c = nhwc(graph.tensors[node.inputs[0]].shape)
    _, _, out_c = nhwc(graph.tensors[node.outputs[0]].shape)
    return (op.depth_multiplier == 1 and op.dilation == (1, 1) and in_c == out_c == w.shape[3]
            and op.stride in ((1, 1), (2, 2)))


def tap_words(taps: np.ndarray) -> np.ndarray:
    """(C, 3) int32 words, one per kernel row: bytes [w0, w1, w1, w2] little endian."""
    rows = taps.reshape(-1, 3, 3).astype(np.int8)
    packed = np.stack([rows[:, :, 0], rows[:, :, 1], rows[:, :, 1], rows[:, :, 2]], axis=2)
    return np.ascontiguousarray(packed).view("<i4").reshape(-1, 3).astype(np.int64)


def lower_compact_depthwise(ctx: LoweringContext, index: int,
                            node: ir.Node) -> CompactDepthwiseCall | None:
    """The compact record for an eligible node with FAST requantisation; else None."""
    if not eligible(ctx.graph, node):
        return None
    op = node.op
    in_h, in_w, channels = nhwc(ctx.tensor(node.inputs[0]).shape)
    out_h, out_w, _ = nhwc(ctx.tensor(node.outputs[0]).shape)
    q = params.conv_quant(ctx.graph, node)
    taps = ctx.tensor(node.inputs[1]).data.astype(np.int64).reshape(9, channels).T
    bias = fold_input_offset(bias_values(ctx, node, channels), taps, q.input_offset)
    acc_lo, acc_hi = accumulator_range(bias, taps)
    requant, table = plan_requant(q, channels, acc_lo, acc_hi, acc_doubled=True)
    if requant.scheme is not RequantScheme.FAST:
        return None
    stride = op.stride[0]
    blocks = ring_blocks(in_w, out_w, stride, op.padding.left)
    ring = (_align(ring_bytes(channels, blocks) + tail_slack_bytes(out_w, stride, blocks), 8)
            + _align(channels, 8))   # + a zero pixel
    tail = _align(GROUP_OUTPUTS * channels, 8) if out_w % GROUP_OUTPUTS else 0
    with_table = ring + tail + table_bytes(channels)
    use_table = with_table <= ctx.spare(node.name)
    scratch = _request_scratch(ctx, node, with_table if use_table else ring + tail)
    record = np.concatenate([tap_words(taps), wrap_int32(2 * bias)[:, None], table[:, :1]],
                            axis=1)
    assert record.shape[1] == RECORD_WORDS
    records = ctx.const_values(
        index, "dw_records", "int32_t", record,
        f"{node.name}: per channel: taps [w0,w1,w1,w2] per kernel row (int8), "
        f"(bias + input_offset * sum(w)) x2, SMMLAR multiplier")
    shifts = ctx.const_values(index, "dw_shifts", "int8_t", table[:, 2],
                              f"{node.name}: per channel: right shift after SMMLAR")
    return CompactDepthwiseCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        scratch=scratch, in_h=in_h, in_w=in_w, channels=channels, out_h=out_h, out_w=out_w,
        stride=stride, pad_top=op.padding.top, pad_left=op.padding.left,
        pad_value=-q.input_offset, out_zp=q.output_offset, requant=requant, blocks=blocks,
        records=records, shifts=shifts, table_offset=ring + tail if use_table else -1,
        tail_offset=ring if tail else -1)
