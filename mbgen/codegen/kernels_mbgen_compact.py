"""The compact GEMM of the ``mbgen`` kernel set: ``--optimize size`` code that does not grow
per layer.

Every 1x1 convolution, im2col convolution and fully connected layer of a generation runs
ONE shared kernel (``templates/kernels_mbgen/gemm_compact.c.j2``) parameterised at run time
by a small ``const`` struct per layer (this module's ``CompactGemmCall``, printed by the
template's ``params``). The arithmetic is the specialised GEMM's (kernels_mbgen): the input
offset folded into the bias, FAST requantisation (SMMLAR(2*acc, m, c) >> R, SSAT) where
``plan_requant`` proves it, else the sign-fixed or TFLite sequence in C.

Flash per layer (``compact_stream``): per output channel pair the two folded biases (int32,
doubled for FAST) then, per group of 4 depths, 4 int8 weights of each channel; an odd last
channel alone (bias, weights). Natural output channel order; depth padded to 4 only. Beside
it one int32 multiplier and one int8 shift per channel (one each when the layer has a single
scale): c = (zp << R) + ((1 << R) >> 1) is rebuilt at run time. That is never more than the
portable kernels' int8 weights + int32 bias, multiplier and shift.

Run time, per chunk of up to ``chunk_blocks`` x 4 output pixels: each pixel's receptive
field is widened into int16 pairs (SXTB16 order) in the scratch columns, then for each
channel pair its int8 record is widened into RAM (int16 pairs, the (m, c, R) rebuilt) and
the 4x2 SMLAD block runs over every 4-pixel block of the chunk; or (``ram_records``, when the
arena's spare bytes hold them) every pair's record is widened once per call and each block
of columns meets them all (with the asm store, 4 pixels are widened and then run at a time,
no chunk loop); when only some fit, in passes over the pixels of ``record_group`` records
each, the columns widened again every pass (never for a layer laid over its input: a pass
reads the input again). The 3x3 RGB stem's fields (3 rows of 9 bytes) are widened
straight-line, border ones gathered first. One-pixel layers (fully connected) read int8
weights straight from flash, 1 pixel x 4 channels. Every requantisation scheme and clamp
runs (the asm store for FAST and FAST_SIGNED, a clamp inside int8 then one SSUB8/SEL pass
over the output; a C store for EXACT): only a layer whose geometry does not fit the
struct's 8/16-bit fields falls back to the specialised GEMM.

Depth order (``depth_order``): a receptive field is ``runs`` runs of ``run_bytes``
contiguous input bytes (a kernel row, or one tap when dilated along x); each run's whole
words are widened where they lie and its last ``run_bytes % 4`` bytes are gathered into
words of their own as they come. Weights are stored in that same order.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np

from mbgen import ir
from mbgen.codegen import records as r
from mbgen.codegen.kernels_mbgen_layout import _request_scratch
from mbgen.codegen.kernels_mbgen_policy import gemm_shape
from mbgen.codegen.kernels_mbgen_records import _align
from mbgen.codegen.lowering import LoweringContext, bias_values, nhwc
from mbgen.quantize import params
from mbgen.quantize.requant_proofs import (Requant, RequantScheme, accumulator_range,
                                          fold_input_offset, plan_requant, wrap_int32)

# Widened columns of one chunk take at most this many bytes, and a chunk at most this many
# 4-pixel blocks; both only as far as the arena's free bytes beside the layer allow
# (``ctx.spare``): the least scratch is one block, the arena never grows for speed.
CHUNK_COLUMN_BYTES = 16 * 1024
MAX_CHUNK_BLOCKS = 16

# The largest R (= -shift) the asm store's tables take; a FAST layer shifting further
# requantises in C (gemm_compact_asm.c.j2's max_shift is this number).
ASM_STORE_MAX_SHIFT = 15

# Bits of the params struct's ``flags`` (the template prints them by these names).
FLAGS = {
    "PER_CHANNEL": 1,      # a multiplier and shift per output channel (else one)
    "SIGNED": 2,           # FAST_SIGNED: SMMLAR + (acc >> 31), then >> R
    "EXACT": 4,            # TFLite's MultiplyByQuantizedMultiplier (accumulator not doubled)
    "ASM_STORE": 8,        # FAST(_SIGNED): the asm requantise-and-store (then the clamp pass)
    "DOUBLE_COLUMNS": 16,  # FAST: the widened columns hold 2x (SADD16)
    "DOUBLE_WEIGHTS": 32,  # FAST: the widened weight records hold 2x
    "CONTIGUOUS": 64,      # pixel p's field is the input's bytes p * in_c .. (1x1 or FC)
    "ONE_PIXEL": 128,      # one output pixel: 1x4 blocks on int8 weights from flash
    "RAM_RECORDS": 256,    # every channel pair's record widened once per call
}

# Fields of the struct limited to 8 or 16 bits (the template's struct declares them so).
_U8_FIELDS = ("k_h", "k_w", "taps", "dilation_h", "dilation_w", "stride_h", "stride_w",
              "pad_top", "pad_left", "chunk_blocks")
_U16_FIELDS = ("depth_padded", "out_c", "in_h", "in_w", "in_c", "out_w", "run_bytes",
               "tap_step", "flags")


@dataclass(frozen=True)
class CompactGemmCall:
    """One GEMM layer as the shared compact kernel's parameters."""

    template: ClassVar[str] = "kernels_mbgen/gemm_compact.c.j2"
    function: ClassVar[str] = "mb_cgemm"
    input: r.BufferRef
    output: r.BufferRef
    scratch: r.BufferRef | None
    stream: r.ConstArray         # per channel pair: biases, int8 weights (compact_stream)
    multipliers: r.ConstArray    # int32 Q31, per channel or one
    shifts: r.ConstArray         # int8, TFLite convention (FAST: -R), per channel or one
    requant: Requant
    pixels: int
    depth: int                   # K = k_h * k_w * in_c
    out_c: int
    in_h: int
    in_w: int
    in_c: int
    out_w: int
    k_h: int
    k_w: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    pad_top: int
    pad_left: int
    pad_value: int               # what padded taps read: the input zero point
    out_zp: int                  # the output zero point (c is rebuilt from it)
    contiguous: bool             # 1x1 stride-1 unpadded convolution or fully connected
    per_channel: bool
    chunk_blocks: int            # 4-pixel blocks per chunk (0: one-pixel layer)
    double_columns: bool         # FAST: columns doubled (else the weight records are)
    ram_records: bool = False    # every pair's record widened once per call (else per chunk)
    record_group: int = 0        # ram_records: channel pairs widened per pass (0: all, one pass)
    largest_shift: int = 0       # FAST: the largest R of the layer's channels

    # -- the receptive field's runs (see depth_order)

    @property
    def depth_padded(self) -> int:
        return _align(self.depth, 4)

    @property
    def out_h(self) -> int:
        return self.pixels // self.out_w

    @property
    def taps(self) -> int:
        """Runs per kernel row: one (the row is contiguous) unless dilated along x."""
        return 1 if self.dilation_w == 1 else self.k_w

    @property
    def run_bytes(self) -> int:
        return self.k_w * self.in_c if self.dilation_w == 1 else self.in_c

    @property
    def row_step(self) -> int:
        """Input bytes from one kernel row's run to the next (interior pixels)."""
        return self.dilation_h * self.in_w * self.in_c

    @property
    def tap_step(self) -> int:
        return self.dilation_w * self.in_c

    # -- the run-time plan

    @property
    def one_pixel(self) -> bool:
        return self.chunk_blocks == 0

    @property
    def chunk_pixels(self) -> int:
        return 4 * self.chunk_blocks if self.chunk_blocks else 1

    @property
    def column_bytes(self) -> int:
        """Widened columns: a chunk's 4-pixel blocks (8 bytes per depth), or one pixel."""
        if self.one_pixel:
            return 2 * self.depth_padded
        return self.chunk_blocks * 8 * self.depth_padded

    @property
    def record_offset(self) -> int:
        return _align(self.column_bytes, 8)

    @property
    def record_bytes(self) -> int:
        """A channel pair widened: 2 biases, int16 pairs [k-pair][channel], 2 (m, c, R)."""
        return 0 if self.one_pixel else 4 * (2 + self.depth_padded + 6)

    @property
    def pairs(self) -> int:
        return -(-self.out_c // 2)

    @property
    def group_pairs(self) -> int:
        """Records widened at a time: a pass's (ram_records: every pair's, or a group's).
        The kernel reads it back from the scratch layout: the records between the columns
        and the field are one pass's."""
        if not self.ram_records:
            return 1
        return self.record_group or self.pairs

    @property
    def passes(self) -> int:
        """Passes over the pixels, one per group of records (their columns widened each)."""
        return -(-self.pairs // self.group_pairs) if self.ram_records else 1

    @property
    def records_bytes(self) -> int:
        """Widened records in the scratch: a pass's (ram_records) or one."""
        return self.record_bytes * self.group_pairs

    @property
    def field_offset(self) -> int:
        return self.record_offset + _align(self.records_bytes, 8)

    @property
    def field_bytes(self) -> int:
        """A receptive field gathered (border windows, runs not whole words)."""
        return 0 if self.contiguous else self.depth_padded

    @property
    def scratch_bytes(self) -> int:
        return self.field_offset + self.field_bytes

    @property
    def flags(self) -> int:
        rq = self.requant
        names = [name for name, on in (
            ("PER_CHANNEL", self.per_channel),
            ("SIGNED", rq.scheme is RequantScheme.FAST_SIGNED),
            ("EXACT", rq.scheme is RequantScheme.EXACT),
            ("ASM_STORE", rq.scheme in (RequantScheme.FAST, RequantScheme.FAST_SIGNED)
             and self.largest_shift <= ASM_STORE_MAX_SHIFT),
            ("DOUBLE_COLUMNS", rq.is_fast and self.double_columns),
            ("DOUBLE_WEIGHTS", rq.is_fast and not self.double_columns),
            ("CONTIGUOUS", self.contiguous),
            ("ONE_PIXEL", self.one_pixel),
            ("RAM_RECORDS", self.ram_records)) if on]
        return sum(FLAGS[name] for name in names)

    @property
    def flag_names(self) -> tuple[str, ...]:
        return tuple(name for name, bit in FLAGS.items() if self.flags & bit)


# ----------------------------------------------------------------------------- layouts


def depth_order(runs: int, run_bytes: int) -> np.ndarray:
    """Natural depth index (ky, kx, c order) of each padded depth as the kernel widens a
    receptive field, -1 for padding: per run its whole words where they lie, its last
    ``run_bytes % 4`` bytes appended to a word of leftovers, written out whenever it is
    full (gemm_compact.c.j2, cg_fields)."""
    whole = run_bytes // 4 * 4
    order: list[int] = []
    pending: list[int] = []
    for run in range(runs):
        start = run * run_bytes
        order += range(start, start + whole)
        for k in range(start + whole, start + run_bytes):
            pending.append(k)
            if len(pending) == 4:
                order += pending
                pending = []
    if pending:
        order += pending + [-1] * (4 - len(pending))
    return np.array(order, dtype=np.int64)


def compact_stream(weights: np.ndarray, bias: np.ndarray, order: np.ndarray) -> np.ndarray:
    """The layer's int8 flash stream: per channel pair the two biases (int32 little endian),
    then per group of 4 depths (in ``order``, zeros for -1) 4 weights of each channel; a
    last odd channel alone: its bias, its weights."""
    out_c = weights.shape[0]
    padded = np.zeros((out_c, order.size), dtype=np.int64)
    padded[:, order >= 0] = weights[:, order[order >= 0]]
    as_bytes = lambda words: wrap_int32(words).astype("<i4").view(np.int8)
    parts = []
    for first in range(0, out_c, 2):
        rows = padded[first:first + 2]
        groups = rows.reshape(len(rows), -1, 4).transpose(1, 0, 2).reshape(-1)
        parts += [as_bytes(bias[first:first + 2]), groups.astype(np.int8)]
    return np.concatenate(parts)


# ----------------------------------------------------------------------------- lowering


def _geometry(ctx: LoweringContext, node: ir.Node, depth: int) -> dict | None:
    op = node.op
    if isinstance(op, ir.FullyConnected):
        return dict(in_h=1, in_w=1, in_c=depth, out_w=1, k_h=1, k_w=1, stride_h=1,
                    stride_w=1, dilation_h=1, dilation_w=1, pad_top=0, pad_left=0,
                    contiguous=True)
    in_h, in_w, in_c = nhwc(ctx.tensor(node.inputs[0]).shape)
    _, out_w, _ = nhwc(ctx.tensor(node.outputs[0]).shape)
    _, k_h, k_w, _ = ctx.tensor(node.inputs[1]).shape
    contiguous = ((k_h, k_w) == (1, 1) and op.stride == (1, 1)
                  and op.padding == ir.Padding() and in_w == out_w)
    return dict(in_h=in_h, in_w=in_w, in_c=in_c, out_w=out_w, k_h=k_h, k_w=k_w,
                stride_h=op.stride[0], stride_w=op.stride[1], dilation_h=op.dilation[0],
                dilation_w=op.dilation[1], pad_top=op.padding.top, pad_left=op.padding.left,
                contiguous=contiguous)


def chunk_plan(pixels: int, depth_padded: int, fixed_bytes: int, spare: int) -> int:
    """4-pixel blocks per chunk: one, or as many as ``spare`` arena bytes hold beside the
    ``fixed_bytes`` (record, field), in chunks of equal size."""
    per_block = 8 * depth_padded
    blocks = -(-pixels // 4)
    most = max(1, min(MAX_CHUNK_BLOCKS, CHUNK_COLUMN_BYTES // per_block,
                      (spare - fixed_bytes) // per_block, blocks))
    chunks = -(-blocks // most)
    return -(-blocks // chunks)


# Rough instruction costs (QEMU profile, mbv1 on M7) that choose between re-widening records
# per chunk and re-widening columns per pass: a channel pair's record widened, with its
# per-chunk calls, and the columns of one input byte.
RECORD_WIDENING_COST = 200
RECORD_WIDENING_COST_PER_DEPTH = 2
COLUMN_COST_PER_BYTE = 2


def widening_plan(draft: CompactGemmCall, spare: int, in_place: bool = False
                  ) -> CompactGemmCall:
    """Chunks and where the weight records are widened, within ``spare`` arena bytes: when
    chunks would widen every record more than once, every pair's record once per call if
    they fit beside one block of columns, else (when it costs less, and the output is not
    ``in_place`` over the input, which a second pass reads again) in passes of as many
    records as fit, each pass widening the columns again; otherwise one record per pair per
    chunk. Then where the doubled accumulator's SADD16 costs least (every column pair, or
    every weight pair once per record widening)."""
    if draft.one_pixel:
        return replace(draft, double_columns=True)
    one = replace(draft, chunk_blocks=1)
    chunk = chunk_plan(draft.pixels, draft.depth_padded,
                       _align(one.record_bytes, 8) + one.field_bytes, spare)
    chunks = -(-draft.pixels // (4 * chunk))
    plan, widenings = replace(draft, chunk_blocks=chunk), chunks
    if chunks > 1:
        grouped = record_groups(replace(one, ram_records=True), spare)
        if grouped is not None and (grouped.passes == 1 or not in_place and _passes_cost(
                grouped) < (chunks - 1) * _records_cost(draft)):
            plan, widenings = grouped, 1
    return replace(plan, double_columns=draft.pixels <= widenings * draft.out_c)


def record_groups(ram: CompactGemmCall, spare: int) -> CompactGemmCall | None:
    """``ram`` with records widened in as few passes as ``spare`` bytes allow (groups of
    equal size), or None when not even one record fits beside a block of columns."""
    fits = (spare - replace(ram, record_group=1).scratch_bytes) // ram.record_bytes + 1
    if fits < 1:
        return None
    passes = -(-ram.pairs // fits)
    group = -(-ram.pairs // passes)
    return replace(ram, record_group=0 if passes == 1 else group)


def _records_cost(call: CompactGemmCall) -> int:
    """Instructions to widen every channel pair's record once more."""
    return call.pairs * (RECORD_WIDENING_COST + RECORD_WIDENING_COST_PER_DEPTH * call.depth_padded)


def _passes_cost(call: CompactGemmCall) -> int:
    """Instructions to widen the columns in every pass but the first."""
    return (call.passes - 1) * call.pixels * call.depth_padded * COLUMN_COST_PER_BYTE


def _fits_struct(call: CompactGemmCall) -> bool:
    return (all(0 <= getattr(call, f) <= 0xFF for f in _U8_FIELDS)
            and all(0 <= getattr(call, f) <= 0xFFFF for f in _U16_FIELDS)
            and call.row_step < 2**31 and call.pixels < 2**31)


def lower_compact_gemm(ctx: LoweringContext, index: int,
                       node: ir.Node) -> CompactGemmCall | None:
    """A Conv2D or FullyConnected node as a CompactGemmCall; None when it cannot be one
    (then the specialised GEMM takes it)."""
    shape = gemm_shape(ctx.graph, node)
    w = ctx.tensor(node.inputs[1])
    if shape is None or w.dtype != "int8":
        return None
    pixels, depth, out_c = shape
    if isinstance(node.op, ir.FullyConnected) and (
            ctx.tensor(node.inputs[0]).size != depth or ctx.tensor(node.outputs[0]).size != out_c):
        return None
    geometry = _geometry(ctx, node, depth)
    q = params.conv_quant(ctx.graph, node)
    if q.multipliers.size not in (1, out_c):
        return None   # the specialised path reports it
    weights = w.data.astype(np.int64).reshape(out_c, depth)
    bias = fold_input_offset(bias_values(ctx, node, out_c), weights, q.input_offset)
    acc_lo, acc_hi = accumulator_range(bias, weights)
    requant, table = plan_requant(q, out_c, acc_lo, acc_hi, acc_doubled=True)
    mults = np.broadcast_to(q.multipliers, (out_c,)).astype(np.int64)
    shifts = np.broadcast_to(q.shifts, (out_c,)).astype(np.int64)
    if requant.is_fast:   # the kernel rebuilds (c, R) from the shift and the zero point
        right = -shifts
        assert np.array_equal(table[:, 2], right)
        assert np.array_equal(table[:, 1], (q.output_offset << right) + ((1 << right) >> 1))
    per_channel = bool(np.any(mults != mults[0]) or np.any(shifts != shifts[0]))
    one_pixel = pixels == 1
    draft = CompactGemmCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]), scratch=None,
        stream=None, multipliers=None, shifts=None, requant=requant, pixels=pixels,
        depth=depth, out_c=out_c, pad_value=-q.input_offset, out_zp=q.output_offset,
        per_channel=per_channel, largest_shift=int(-shifts.min()) if requant.is_fast else 0,
        chunk_blocks=0 if one_pixel else 1, double_columns=True, **geometry)
    if not _fits_struct(draft):
        return None
    plan = widening_plan(draft, 0 if one_pixel else ctx.spare(node.name),
                         in_place=node.name in ctx.in_place)
    scale = 2 if requant.is_fast else 1
    order = depth_order(plan.k_h * plan.taps, plan.run_bytes)
    stream = ctx.const_values(
        index, "stream", "int8_t", compact_stream(weights, wrap_int32(bias * scale), order),
        f"{node.name}: per channel pair: bias + input_offset * sum(w)"
        f"{' (x2)' if scale == 2 else ''}, int8 weights [group of 4 depths][channel][4]")
    quant = slice(None) if per_channel else slice(0, 1)
    multipliers = ctx.const_values(index, "mult", "int32_t", mults[quant],
                                   f"{node.name}: Q31 multipliers")
    shift_array = ctx.const_values(index, "shift", "int8_t", shifts[quant],
                                   f"{node.name}: shifts (TFLite convention)")
    call = replace(plan, stream=stream, multipliers=multipliers, shifts=shift_array)
    # the kernel counts a pass's records from the offsets around them
    assert call.field_offset - call.record_offset == call.group_pairs * call.record_bytes
    return replace(call, scratch=_request_scratch(ctx, node, call.scratch_bytes))
