"""The ``mbgen`` kernel set: Cortex-M DSP kernels specialised per layer at generation time.

For Armv7E-M / Armv8-M cores with the DSP extension (Cortex-M4, M7, M33, M55). Every shape,
stride, padding and channel count is baked into the generated C; the weights are re-laid
out here, offline, in the order the inner loops read them:

* 1x1 convolutions, general convolutions (through an im2col gather) and fully connected
  layers are one int8 GEMM (``templates/kernels_mbgen/gemm.c.j2``): a few pixels are widened
  to int16 pairs in the order SXTB16 produces them, then a block of pixels x output channels
  accumulates with SMLAD. Weights are int16 pairs in that same order (one LDRD feeds two
  SMLADs) or, when the flash budget is tight, int8 widened by SXTB16 in the loop.
* depthwise convolutions (``depthwise.c.j2``) transpose a ring of input rows into int16
  channel-major rows, padded with the zero point, so borders need no special case and two
  taps of one channel meet in one SMLAD; 3x3 has an unrolled sweep, other shapes a loop.

Arithmetic tricks, each exact (the tests compare every case with ``mbgen.reference``):

* the input offset is folded into the bias, ``bias' = bias + input_offset * sum(w)``,
  wrapped to int32 like the accumulator: padded taps then read the zero point itself.
* requantisation is SMMLAR (``floor((2*acc*m + c*2**32 + 2**31) / 2**32)``, weights and bias
  doubled offline) then one arithmetic shift, instead of TFLite's
  SaturatingRoundingDoublingHighMul + RoundingDivideByPOT, for a layer where
  ``fast_requant`` proves it equal for every reachable accumulator of every channel; else
  with a sign fix (``signed_requant``, any range without overflow); else TFLite's sequence.
* channels are grouped by their requantisation shift, so SSAT's immediate shift does the
  shift and the saturation in one instruction; each group is a copy of the block's code.

The innermost blocks are inline assembly where GCC's allocation cannot be trusted (every
operand of a 14-register block is live at once); each has a plain-C twin with the same
arithmetic, used when not optimising and off-target (host builds of the same folder).
See ``benchmarks/kernels_mbgen.md`` for what each part costs.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from mbgen import ir
from mbgen.codegen import kernel_sets
from mbgen.codegen import records as r
from mbgen.codegen.kernels_mbgen_policy import (  # noqa: F401  (re-exported for tests)
    CODE_RESERVE_BYTES, balanced_allows_int16, choose_int16_layers)
from mbgen.codegen.kernels_mbgen_policy import gemm_shape as _gemm_shape
from mbgen.codegen.lowering import LoweringContext, nhwc
from mbgen.quantize import params
from mbgen.quantize.requant_proofs import (Requant, RequantScheme, accumulator_range,
                                          fold_input_offset, plan_requant, wrap_int32)

NAME = "mbgen"


# Taps of a 3x3 depthwise channel record: (w0,w1) and (w1,w2) int16 pairs per kernel row.
DW3_WEIGHT_WORDS = 6
# GEMM inner steps unrolled before a counted loop takes over (each step is 11 instructions).
GEMM_STEPS_PER_LOOP = 32
# int8-weight GEMM layers widen this many bytes of input columns per chunk of pixels at most;
# each channel block's weights are widened to int16 once per chunk (more pixels per chunk:
# the widening costs less per MAC; 16 KB keeps K = 256 at 32 pixels).
CHUNK_COLUMN_BYTES = 16 * 1024
# ... and at most this many 4-pixel blocks per chunk (64 pixels: widening < 2% per MAC).
MAX_CHUNK_BLOCKS = 16
# int8-weight GEMM layers whose whole int16-pair stream fits this many bytes, or fits beside
# the layer's activations under the graph's activation peak (the arena is at least that, so
# it does not grow), widen it into the scratch once per inference and then run exactly the
# int16 code (no per-chunk widening, no shared block's register-offset stores).
RAM_STREAM_BYTES = 20 * 1024
# Pointwise shift groups of fewer pairs share the mixed code: each group is a copy of the
# unrolled block. 1 keeps every group (4 costs mbv1_0.25_128 +0.7% instructions for -6 KB).
MIN_GROUP_PAIRS = 1


class WeightFormat(enum.Enum):
    """How a GEMM layer's weights sit in flash."""

    INT16_PAIRS = "int16-pairs"   # two int16 per word, SXTB16 order, read by LDRD: fastest
    INT8 = "int8"                 # as in the model, widened by SXTB16 in the loop: half flash


class Gather(enum.Enum):
    """Where a GEMM layer's columns come from."""

    CONTIGUOUS = "contiguous"   # 1x1 stride-1 convolution or fully connected: pixels in a row
    IM2COL = "im2col"           # any other convolution: receptive fields gathered per pixel


@dataclass(frozen=True)
class ColumnWord:
    """Where word g (depths 4g..4g+3) of an interior pixel's receptive field comes from: the
    last ``take`` bytes of kernel row ``run`` from ``offset`` on, then (take < 4) the first
    4 - take bytes of row run + 1, or zero padding after the last row. Every load reads
    4 bytes inside one kernel row's run of k_w * in_c bytes, never past it."""

    run: int
    offset: int
    take: int


@dataclass(frozen=True)
class GemmCall:
    """A convolution or fully connected layer as an int8 GEMM: pixels x depth x channels."""

    template: ClassVar[str] = "kernels_mbgen/gemm.c.j2"
    function: ClassVar[str] = "mbgen_gemm"
    input: r.BufferRef
    output: r.BufferRef
    scratch_offset: int | None   # arena offset of the widened columns; None: on the stack
    gather: Gather
    pixels: int                  # output pixels (1 for fully connected)
    depth: int                   # K: k_h * k_w * in_c
    depth_padded: int            # K rounded up to a multiple of 4 (zero weights beyond K)
    out_c: int
    block_pixels: int            # pixels per register block: 4 (int16), 2 (int8), 1 (FC)
    block_channels: int          # output channels per register block
    weight_format: WeightFormat
    stream: r.ConstArray         # per channel block: biases, weights, requant constants
    requant: Requant
    # im2col geometry (Gather.IM2COL); for CONTIGUOUS only in_c matters.
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
    column_words: tuple[ColumnWord, ...] = ()   # IM2COL direct gather (empty: via bytes)
    pair_groups: tuple[ChannelGroup, ...] = ()  # asm_block: channel pairs by shift
    # int8 weights widened per chunk: 4-pixel blocks per chunk (0: weights read as they lie).
    # Each channel block's int8 record becomes an int16-pair record in RAM once per chunk and
    # the int16 block code runs on it for every 4-pixel block of the chunk.
    chunk_blocks: int = 0
    # The first int8 asm layer of its padded depth prints the shared per-depth block code.
    prints_shared_gemm: bool = False
    # int8 weights whose whole int16-pair stream is widened into the scratch at the start
    # (ram_stream): then the int16 block code runs on it, nothing is widened per chunk.
    ram_stream: bool = False

    @property
    def channel_blocks(self) -> int:
        return -(-self.out_c // self.block_channels)

    @property
    def ram_offset_bytes(self) -> int:
        """Where a ram_stream layer's widened stream sits in the scratch (after the 4-pixel
        columns and the im2col bytes)."""
        return _align(self.cols_words * 4, 8) + _align(self.gather_bytes, 8)

    @property
    def expanded(self) -> bool:
        return self.chunk_blocks > 0

    @property
    def int16_records(self) -> bool:
        """The block code reads int16-pair records (from flash, or widened into RAM)."""
        return self.weight_format is WeightFormat.INT16_PAIRS or self.expanded or self.ram_stream

    @property
    def columns_doubled(self) -> bool:
        """Widened columns hold 2x (int8 weights with the doubled-accumulator SMMLAR)."""
        return ((self.expanded or (self.ram_stream and self.pixels < self.out_c))
                and self.requant.acc_doubled)

    @property
    def ram_doubled(self) -> bool:
        """A ram_stream layer doubles its widened weights once (SADD16) rather than every
        pixel's columns, when it has at least as many output channels as pixels."""
        return self.ram_stream and self.requant.acc_doubled and not self.columns_doubled

    @property
    def record_words(self) -> int:
        """int32 words of one channel block's int16-pair record (bias, weights, constants,
        output channel numbers)."""
        q = self.block_channels
        return q + self.depth_padded // 2 * q + 3 * q + self.offset_words

    @property
    def source_record_bytes(self) -> int:
        """Bytes of one channel block in the int8 stream."""
        q = self.block_channels
        return 4 * q + self.depth_padded * q + 4 * (3 * q + self.offset_words)

    @property
    def chunk_pixels(self) -> int:
        return self.chunk_blocks * self.block_pixels

    @property
    def total_blocks(self) -> int:
        """4-pixel blocks, a partial last one included."""
        return -(-self.pixels // self.block_pixels)

    @property
    def loop_chunks(self) -> int:
        """Whole chunks before the last one (which may be partial and holds the tail)."""
        return (self.total_blocks - 1) // self.chunk_blocks if self.expanded else 0

    @property
    def last_chunk_blocks(self) -> int:
        return self.total_blocks - self.loop_chunks * self.chunk_blocks

    @property
    def gather_offset_bytes(self) -> int:
        """Where an expanded layer's im2col bytes sit in the scratch, after the record."""
        return self.record_offset_bytes + _align(self.record_words * 4, 8)

    @property
    def record_offset_bytes(self) -> int:
        """Where the widened record sits in the scratch, after every chunk's columns."""
        return _align(max(1, self.chunk_blocks) * self.cols_words * 4, 8)

    @property
    def asm_block(self) -> bool:
        """The hand-scheduled path (see _asm_block_eligible)."""
        return _asm_block_eligible(self.block_pixels, self.requant, self.out_c,
                                   self.block_channels)

    @property
    def offset_words(self) -> int:
        """Words of a block's output channel numbers (uint16 pairs) in the stream."""
        return -(-self.block_channels // 2)

    @property
    def cols_words(self) -> int:
        """int32 words of widened columns for one block of pixels."""
        return self.depth_padded // 2 * self.block_pixels

    @property
    def gather_bytes(self) -> int:
        """int8 bytes of the im2col buffer for one block of pixels (0 when contiguous)."""
        return self.depth_padded * self.block_pixels if self.gather is Gather.IM2COL else 0

    @property
    def unroll(self) -> int:
        return min(self.steps, GEMM_STEPS_PER_LOOP)

    @property
    def steps(self) -> int:
        """Inner steps per block: k-pairs for int16 records, groups of 4 for int8."""
        if self.int16_records and self.block_pixels > 1:
            return self.depth_padded // 2
        return self.depth_padded // 4

    @property
    def full_blocks(self) -> int:
        return self.pixels // self.block_pixels

    @property
    def tail_pixels(self) -> int:
        return self.pixels % self.block_pixels

    @property
    def full_channel_blocks(self) -> int:
        return self.out_c // self.block_channels

    @property
    def tail_channels(self) -> int:
        return self.out_c % self.block_channels


@dataclass(frozen=True)
class ChannelGroup:
    """Consecutive channel records sharing one requantisation shift R (FAST), so the
    sweep can saturate with SSAT's immediate shift; shift -1: R comes from each record."""

    shift: int
    first: int    # index of the group's first record
    count: int


@dataclass(frozen=True)
class DepthwiseCall:
    """A depthwise convolution over a ring of transposed, zero-point-padded int16 rows.

    Channel record (int32 words): the taps ((w0,w1), (w1,w2) int16 pairs per kernel row for
    the unrolled 3x3, else one tap per word, row-major), the folded bias, the requantisation
    triple (m, c, R) or (m, shift, 0), then the output channel it is for. Records are in
    group order (by R), not channel order.
    """

    template: ClassVar[str] = "kernels_mbgen/depthwise.c.j2"
    function: ClassVar[str] = "mbgen_depthwise"
    input: r.BufferRef
    output: r.BufferRef
    scratch_offset: int | None   # arena offset of the ring; None: on the stack
    unrolled_3x3: bool           # the 3x3, dilation-1 sweep (stride 1 or 2)
    double_rows: bool            # unrolled, stride 1: two output rows per sweep
    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    depth_multiplier: int
    k_h: int
    k_w: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    pad_top: int
    pad_left: int
    pad_value: int
    ring_rows: int               # rows a sweep spans (+1 for double-row sweeps)
    row_width: int               # int16 columns per transposed row (even)
    channel_words: int           # int32 words per channel record
    channels: r.ConstArray       # the channel records
    groups: tuple[ChannelGroup, ...]
    requant: Requant

    @property
    def ring_halfwords(self) -> int:
        return self.in_c * self.ring_rows * self.row_width

    @property
    def channel_stride(self) -> int:
        """int16 elements of one channel's rows in the ring."""
        return self.ring_rows * self.row_width

    @property
    def asm_sweep(self) -> bool:
        """The hand-scheduled 3x3 loops: FAST requantisation without an extra clamp, ring
        offsets within LDR's and output offsets within STRB's 12-bit immediate."""
        return (self.unrolled_3x3 and self.requant.scheme is RequantScheme.FAST
                and not (self.requant.clamp_min or self.requant.clamp_max)
                and 2 * self.ring_rows * self.row_width + 12 <= 4095
                and (self.out_w + 1) * self.out_c <= 4095)

    def rotations(self, rows: int) -> list[int]:
        """Ring slots of the window's top row over the sweeps covering ``rows`` output rows
        (1, or 2 for double-row sweeps)."""
        tops = [oy for oy, count in self.sweeps() if count == rows]
        return sorted({(oy * self.stride_h) % self.ring_rows for oy in tops})

    def sweeps(self) -> list[tuple[int, int]]:
        """(first output row, rows) of each sweep, in order."""
        out, oy = [], 0
        while oy < self.out_h:
            count = 2 if self.double_rows and oy + 1 < self.out_h else 1
            out.append((oy, count))
            oy += count
        return out

    @property
    def bias_word(self) -> int:
        return DW3_WEIGHT_WORDS if self.unrolled_3x3 else self.k_h * self.k_w

    @property
    def requant_word(self) -> int:
        return self.bias_word + 1

    @property
    def index_word(self) -> int:
        return self.bias_word + 4


# ----------------------------------------------------------------------------- arithmetic


def _requant_comment(requant: Requant) -> str:
    if requant.sign_fix:
        return "per channel (m, c, R) for (SMMLAR(2*acc, m, c) + (acc >> 31)) >> R"
    if requant.is_fast:
        return "per channel (m, c, R) for SMMLAR(2*acc, m, c) >> R"
    return "per channel (multiplier, shift, 0) in TFLite's convention"


# ----------------------------------------------------------------------------- layouts


def sxtb16_order(depth_padded: int) -> np.ndarray:
    """Column k of each k-pair (lo, hi) in the order SXTB16 widens a word of 4 int8:
    (k0, k2) then (k1, k3) for every group of four."""
    groups = np.arange(depth_padded // 4)[:, None] * 4
    pairs = np.stack([groups + np.array([0, 2]), groups + np.array([1, 3])], axis=1)
    return pairs.reshape(-1, 2)


def pack_int16_pairs(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """int32 words holding int16 ``lo`` in the bottom half and ``hi`` in the top half."""
    word = (lo.astype(np.int64) & 0xFFFF) | ((hi.astype(np.int64) & 0xFFFF) << 16)
    return wrap_int32(word)


def gemm_weights(w: np.ndarray, fmt: WeightFormat, block_pixels: int, block_channels: int,
                 scale: int) -> np.ndarray:
    """Weights (O, K) in the order the GEMM block reads them (see gemm.c.j2).

    INT16_PAIRS: [channel block][k-pair][channel in block] words of (w[k_lo], w[k_hi]).
    INT8: [channel block][group of 4][channel in block] words of four int8 (little endian).
    Output channels are padded with zero rows to the block, depth with zero columns to 4.
    """
    out_c, depth = w.shape
    depth_padded = -(-depth // 4) * 4
    padded_c = -(-out_c // block_channels) * block_channels
    full = np.zeros((padded_c, depth_padded), dtype=np.int64)
    full[:out_c, :depth] = w.astype(np.int64) * scale
    blocks = full.reshape(padded_c // block_channels, block_channels, depth_padded)
    if fmt is WeightFormat.INT16_PAIRS:
        order = sxtb16_order(depth_padded)              # (pairs, 2)
        lo = blocks[:, :, order[:, 0]]                  # (blocks, channels, pairs)
        hi = blocks[:, :, order[:, 1]]
        return pack_int16_pairs(lo, hi).transpose(0, 2, 1).reshape(-1)
    groups = blocks.reshape(blocks.shape[0], block_channels, depth_padded // 4, 4)
    return groups.transpose(0, 2, 1, 3).reshape(-1).astype(np.int8)


def _asm_block_eligible(block_pixels: int, requant: Requant, out_c: int,
                        block_channels: int) -> bool:
    """4x2 blocks on int16-pair records (int16 weights, or int8 ones widened per chunk),
    FAST requantisation without an extra clamp, and store offsets (channel + 3 rows of
    out_c) within STRB's 12-bit immediate."""
    return (block_pixels == 4
            and requant.scheme is RequantScheme.FAST
            and not (requant.clamp_min or requant.clamp_max)
            and 3 * out_c + block_channels <= 4095)


def direct_column_words(depth: int, run_bytes: int, runs: int) -> tuple[ColumnWord, ...]:
    """How to load an interior receptive field word by word straight from the input, when
    each of its ``runs`` kernel rows is one contiguous run of ``run_bytes`` >= 4 bytes."""
    if run_bytes < 4:
        return ()
    words = []
    for g in range(_align(depth, 4) // 4):
        run, offset = divmod(4 * g, run_bytes)
        take = min(4, run_bytes - offset)
        words.append(ColumnWord(run, offset, take))
    return tuple(words)


def gemm_stream(weights: np.ndarray, bias: np.ndarray, requant_table: np.ndarray,
                fmt: WeightFormat, block_pixels: int, block_channels: int,
                order: np.ndarray | None = None) -> np.ndarray:
    """Everything a GEMM layer reads from flash, in reading order, per channel block:
    the block's folded biases (int32), its weights (gemm_weights), then (m, c|shift, R|0)
    int32 triples per channel, then the block's output channel numbers as uint16 pairs.
    ``order`` lists the output channels in stream order (default: 0, 1, ...), padded to
    whole blocks with repeats that are never stored. One pointer walks the stream. For int8
    weights the stream is bytes (int32 values little endian; every part is a multiple of 4
    bytes, so words stay aligned).
    """
    out_c = weights.shape[0]
    padded_c = _align(out_c, block_channels)
    blocks = padded_c // block_channels
    if order is None:
        order = np.arange(out_c)
    order = np.concatenate([order, np.full(padded_c - out_c, order[-1])]).astype(np.int64)
    packed = gemm_weights(weights[order], fmt, block_pixels, block_channels, 1)
    per_block = packed.reshape(blocks, -1)
    heads = bias[order].reshape(blocks, block_channels)
    tails = requant_table[order].reshape(blocks, 3 * block_channels)
    channels = order.reshape(blocks, -1, 2) if block_channels % 2 == 0 else \
        np.concatenate([order, np.zeros(1, np.int64)]).reshape(blocks, -1, 2)
    offsets = channels[:, :, 0] | (channels[:, :, 1] << 16)
    if fmt is WeightFormat.INT16_PAIRS:
        return np.concatenate([heads, per_block.astype(np.int64), tails,
                               wrap_int32(offsets)], axis=1).reshape(-1)
    as_bytes = lambda words: wrap_int32(words).astype("<i4").view(np.int8).reshape(blocks, -1)
    return np.concatenate([as_bytes(heads), per_block, as_bytes(tails), as_bytes(offsets)],
                          axis=1).reshape(-1)


def shift_grouped_pairs(shifts: np.ndarray) -> tuple[np.ndarray, tuple[ChannelGroup, ...]]:
    """Output channels reordered into pairs of equal requantisation shift, grouped by shift
    (each group's stores saturate with SSAT's immediate shift; each group is a copy of the
    block's code, so groups under MIN_GROUP_PAIRS pairs join the rest); the remaining
    channels follow as mixed pairs (group shift -1, ASR by register), an odd one out last."""
    by_shift: dict[int, list[int]] = {}
    for channel, shift in enumerate(shifts.tolist()):
        by_shift.setdefault(int(shift), []).append(channel)
    order: list[int] = []
    groups: list[ChannelGroup] = []
    leftovers: list[int] = []
    for shift in sorted(by_shift):
        channels = by_shift[shift]
        pairs = len(channels) // 2
        if pairs < MIN_GROUP_PAIRS:
            pairs = 0
        if pairs:
            groups.append(ChannelGroup(shift, len(order) // 2, pairs))
            order += channels[:2 * pairs]
        leftovers += channels[2 * pairs:]
    if len(leftovers) >= 2:
        groups.append(ChannelGroup(-1, len(order) // 2, len(leftovers) // 2))
    order += leftovers
    return np.array(order, dtype=np.int64), tuple(groups)


# ----------------------------------------------------------------------------- the kernel set


@dataclass(frozen=True)
class _GraphChoices:
    """Whole-graph decisions taken once per generation: which layers get int16 weights."""

    dsp: bool
    int16_layers: frozenset[str]
    mve: bool = False   # Helium: kernels_mve.lower is asked first (1x1, depthwise)


def _target(ctx: LoweringContext):
    """The Target being generated for."""
    from mbgen import targets
    return targets.get(ctx.target)


class MbgenKernels:
    """Conv2D, DepthwiseConv2D and FullyConnected on DSP cores; None for everything else."""

    name = NAME

    def __init__(self) -> None:
        self._choices: tuple[LoweringContext, _GraphChoices] | None = None
        # padded depths whose shared int8 GEMM code a layer of this generation prints
        self._shared_depths: tuple[LoweringContext, set[int]] | None = None

    def _first_shared_depth(self, ctx: LoweringContext, depth_padded: int) -> bool:
        """True once per generation and depth: that layer prints the shared code."""
        if self._shared_depths is None or self._shared_depths[0] is not ctx:
            self._shared_depths = (ctx, set())
        seen = self._shared_depths[1]
        if depth_padded in seen:
            return False
        seen.add(depth_padded)
        return True

    # -- decisions for the whole graph

    def _graph_choices(self, ctx: LoweringContext) -> _GraphChoices:
        if self._choices is not None and self._choices[0] is ctx:
            return self._choices[1]
        target = _target(ctx)
        if ctx.weight_layout == "int8":
            int16_layers: frozenset[str] = frozenset()
        elif ctx.weight_layout == "int16":
            int16_layers = choose_int16_layers(ctx.graph, 0)   # no budget: every candidate
        else:
            flash = ctx.flash_budget if ctx.flash_budget is not None else target.flash_bytes
            if ctx.weight_layout == "speed":
                int16_layers = choose_int16_layers(ctx.graph, flash)
            elif balanced_allows_int16(ctx.graph, flash):   # "balanced", "auto"
                int16_layers = choose_int16_layers(ctx.graph, flash // 2)
            else:
                int16_layers = frozenset()
        choices = _GraphChoices(bool(target.dsp), int16_layers, bool(target.mve))
        self._choices = (ctx, choices)
        return choices

    def scratch_bytes(self, graph: ir.Graph, node: ir.Node) -> int:
        """The most any of our kernels for ``node`` uses (the target is not known here)."""
        op = node.op
        if ir.uses_onnxruntime_arithmetic(op):
            return 0  # TFLite fixed-point kernels only: portable takes onnxruntime layers
        if isinstance(op, (ir.Conv2D, ir.FullyConnected)):
            shape = _gemm_shape(graph, node)
            if shape is None:
                return 0
            _, depth, _ = shape
            depth_padded = -(-depth // 4) * 4
            block = 1 if isinstance(op, ir.FullyConnected) else 4
            gather = 0 if _is_contiguous(graph, node) else depth_padded * block
            if block == 1:
                return _align(depth_padded * 2 * block, 8) + _align(gather, 8)
            # int8 weights: the whole widened stream, or a chunk of columns and one widened
            # record (int16 weights need less)
            record = 2 + depth_padded + 6 + 1
            _, _, out_c = shape
            if _ram_stream_fits(graph, node, depth_padded, out_c):
                return (_align(depth_padded * 2 * block, 8) + _align(gather, 8)
                        + ram_stream_bytes(depth_padded, out_c))
            chunk = chunk_blocks(depth_padded)
            return (_align(chunk * depth_padded * 2 * block, 8) + _align(4 * record, 8)
                    + _align(gather, 8))
        if isinstance(op, ir.DepthwiseConv2D):
            geometry = _depthwise_geometry(graph, node)
            return 0 if geometry is None else _align(geometry[0] * 2, 8)
        return 0

    def lower(self, ctx: LoweringContext, index: int, node: ir.Node) -> r.CallRecord | None:
        if ir.uses_onnxruntime_arithmetic(node.op):
            return None  # TFLite fixed-point kernels only: portable takes onnxruntime layers
        choices = self._graph_choices(ctx)
        if not choices.dsp:
            return None
        for name in (node.inputs[0], node.outputs[0]):
            if ctx.tensor(name).dtype != "int8":
                return None
        op = node.op
        if choices.mve and isinstance(op, (ir.Conv2D, ir.DepthwiseConv2D)):
            from mbgen.codegen import kernels_mve   # Helium where it wins; else DSP
            call = kernels_mve.lower(ctx, index, node)
            if call is not None:
                return call
        if isinstance(op, (ir.Conv2D, ir.FullyConnected)):
            fmt = (WeightFormat.INT16_PAIRS if node.name in choices.int16_layers
                   else WeightFormat.INT8)
            call = _lower_gemm(ctx, index, node, fmt)
            if call is not None and call.expanded and call.asm_block:
                call = dataclasses.replace(
                    call, prints_shared_gemm=self._first_shared_depth(ctx, call.depth_padded))
            return call
        if isinstance(op, ir.DepthwiseConv2D):
            return _lower_depthwise(ctx, index, node, op)
        return None


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


def ram_stream_bytes(depth_padded: int, out_c: int) -> int:
    """Bytes of a 4x2 layer's int16-pair stream: per channel pair 2 biases, the pairs,
    2 (m, c, R) triples and the channel numbers."""
    return -(-out_c // 2) * 4 * (2 + depth_padded + 6 + 1)


def _activation_peak(graph: ir.Graph) -> int:
    """The most bytes any node's activation inputs and outputs take together: a lower bound
    of the arena, so scratch that fits beside a node's own activations under it is free."""
    peak = 0
    for node in graph.nodes:
        names = {n for n in (*node.inputs, *node.outputs)
                 if n and n in graph.tensors and not graph.tensors[n].is_const}
        peak = max(peak, sum(graph.tensors[n].nbytes for n in names))
    return peak


def _ram_stream_fits(graph: ir.Graph, node: ir.Node, depth_padded: int, out_c: int) -> bool:
    """Whether an int8 4x2 GEMM layer widens its whole stream into the scratch."""
    ram = ram_stream_bytes(depth_padded, out_c)
    if ram <= RAM_STREAM_BYTES:
        return True
    own = sum(graph.tensors[n].nbytes for n in {node.inputs[0], node.outputs[0]})
    columns = depth_padded * 2 * 4 * 2   # 4-pixel columns and an im2col block, at most
    return own + columns + ram <= _activation_peak(graph)


def chunk_blocks(depth_padded: int) -> int:
    """4-pixel blocks per chunk of an int8-weight GEMM layer of this padded depth."""
    per_block = depth_padded * 2 * 4   # int16 columns of 4 pixels
    return max(1, min(MAX_CHUNK_BLOCKS, CHUNK_COLUMN_BYTES // per_block))


def _is_contiguous(graph: ir.Graph, node: ir.Node) -> bool:
    """1x1, stride 1, no padding convolutions and fully connected layers read pixels as
    they lie: row p of the GEMM is input pixel p."""
    op = node.op
    if isinstance(op, ir.FullyConnected):
        return True
    w = graph.tensors[node.inputs[1]]
    return (w.shape[1:3] == (1, 1) and op.stride == (1, 1) and op.padding == ir.Padding())


# ----------------------------------------------------------------------------- GEMM layers


def _bias_values(ctx: LoweringContext, node: ir.Node, channels: int) -> np.ndarray:
    if len(node.inputs) > 2 and node.inputs[2]:
        b = ctx.tensor(node.inputs[2])
        if b.dtype != "int32" or b.size != channels:
            raise ir.GraphError(f"{node.name}: bias must be {channels} int32 values")
        return b.data.astype(np.int64).reshape(channels)
    return np.zeros(channels, dtype=np.int64)


def _scratch_offset(ctx: LoweringContext, node: ir.Node) -> int | None:
    """Arena offset of the node's planned scratch; None: the kernel uses its stack."""
    ref = ctx.scratch(node.name)
    return None if ref is None else ref.offset


def _lower_gemm(ctx: LoweringContext, index: int, node: ir.Node,
                fmt: WeightFormat) -> GemmCall | None:
    shape = _gemm_shape(ctx.graph, node)
    if shape is None:
        return None
    pixels, depth, out_c = shape
    op = node.op
    w = ctx.tensor(node.inputs[1])
    if w.dtype != "int8":
        return None
    if isinstance(op, ir.FullyConnected):
        if ctx.tensor(node.inputs[0]).size != depth or ctx.tensor(node.outputs[0]).size != out_c:
            return None
        block_pixels, block_channels = 1, 4
        geometry = dict(in_h=1, in_w=1, in_c=depth, out_w=1, k_h=1, k_w=1, stride_h=1,
                        stride_w=1, dilation_h=1, dilation_w=1, pad_top=0, pad_left=0)
    else:
        in_h, in_w, in_c = nhwc(ctx.tensor(node.inputs[0]).shape)
        _, out_w, _ = nhwc(ctx.tensor(node.outputs[0]).shape)
        _, k_h, k_w, _ = w.shape
        block_pixels, block_channels = 4, 2
        geometry = dict(in_h=in_h, in_w=in_w, in_c=in_c, out_w=out_w, k_h=k_h, k_w=k_w,
                        stride_h=op.stride[0], stride_w=op.stride[1],
                        dilation_h=op.dilation[0], dilation_w=op.dilation[1],
                        pad_top=op.padding.top, pad_left=op.padding.left)
    gather = Gather.CONTIGUOUS if _is_contiguous(ctx.graph, node) else Gather.IM2COL
    direct = ()
    if gather is Gather.IM2COL and geometry["dilation_w"] == 1:
        direct = direct_column_words(depth, geometry["k_w"] * geometry["in_c"],
                                     geometry["k_h"])
    q = params.conv_quant(ctx.graph, node)
    per_channel = q.multipliers.size > 1
    if per_channel and q.multipliers.size != out_c:
        raise ir.GraphError(f"{node.name}: {q.multipliers.size} weight scales for "
                            f"{out_c} output channels")
    weights = w.data.astype(np.int64).reshape(out_c, depth)
    bias = fold_input_offset(_bias_values(ctx, node, out_c), weights, q.input_offset)
    acc_lo, acc_hi = accumulator_range(bias, weights)
    int16 = fmt is WeightFormat.INT16_PAIRS
    depth_padded = _align(depth, 4)
    # int8 weights of a multi-pixel layer are widened per chunk; the columns are doubled
    # instead of the weights (int8 cannot hold 2w), so the accumulator is doubled too.
    chunk = 0
    ram = (not int16 and block_pixels == 4 and _scratch_offset(ctx, node) is not None
           and _ram_stream_fits(ctx.graph, node, depth_padded, out_c))
    if not int16 and block_pixels == 4 and not ram:
        # chunks of equal size: as few as the column budget allows
        blocks = -(-pixels // block_pixels)
        chunks = -(-blocks // chunk_blocks(depth_padded))
        chunk = -(-blocks // chunks)
    widened = chunk > 0 or ram
    requant, table = plan_requant(q, out_c, acc_lo, acc_hi, acc_doubled=int16 or widened)
    scale = 2 if requant.is_fast and (int16 or widened) else 1
    order, pair_groups = None, ()
    if _asm_block_eligible(block_pixels, requant, out_c, block_channels):
        order, pair_groups = shift_grouped_pairs(table[:, 2])
    stream = gemm_stream(weights * (scale if int16 else 1), wrap_int32(bias * scale), table,
                         fmt, block_pixels, block_channels, order)
    stream_array = ctx.const_values(
        index, "stream", "int32_t" if int16 else "int8_t", stream,
        f"{node.name}: per block of {block_channels} channels: bias + input_offset * sum(w), "
        f"weights as {'int16 pairs' if int16 else 'int8'}"
        f"{(' (both x2)' if int16 else ' (bias x2, columns x2)') if scale == 2 else ''}"
        f", {_requant_comment(requant)}")
    return GemmCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        scratch_offset=_scratch_offset(ctx, node), gather=gather, pixels=pixels,
        depth=depth, depth_padded=depth_padded, out_c=out_c, block_pixels=block_pixels,
        block_channels=block_channels, weight_format=fmt, stream=stream_array,
        requant=requant, pad_value=-q.input_offset, column_words=direct,
        pair_groups=pair_groups, chunk_blocks=chunk, ram_stream=ram, **geometry)


# ----------------------------------------------------------------------------- depthwise


def _depthwise_geometry(graph: ir.Graph, node: ir.Node) -> tuple[int, int, int] | None:
    """(ring halfwords, ring rows, row width) of the transposed ring of a depthwise node.

    A ring row holds one input row of one channel as int16, input column x at ring column
    pad_left + x, so output column ox's window starts at column ox * stride; every other
    column holds the zero point. The width covers every column a sweep reads, including
    the second halfword of the last pair it loads.
    """
    op = node.op
    w = graph.tensors[node.inputs[1]]
    if len(w.shape) != 4 or w.shape[0] != 1:
        return None
    in_h, in_w, in_c = nhwc(graph.tensors[node.inputs[0]].shape)
    out_h, out_w, out_c = nhwc(graph.tensors[node.outputs[0]].shape)
    _, k_h, k_w, channels = w.shape
    if channels != out_c or out_c != in_c * op.depth_multiplier:
        return None
    ring_rows = (k_h - 1) * op.dilation[0] + 1
    if _unrolled_3x3(graph, node) and op.stride[0] == 1:
        ring_rows += 1   # double-row sweeps span one more row
    last = (_align(out_w, 2) - 1) * op.stride[1] + (k_w - 1) * op.dilation[1] + 1
    width = _align(max(last + 1, op.padding.left + in_w), 2)
    return in_c * ring_rows * width, ring_rows, width


def _lower_depthwise(ctx: LoweringContext, index: int, node: ir.Node,
                     op: ir.DepthwiseConv2D) -> DepthwiseCall | None:
    geometry = _depthwise_geometry(ctx.graph, node)
    if geometry is None:
        return None
    _, ring_rows, row_width = geometry
    in_h, in_w, in_c = nhwc(ctx.tensor(node.inputs[0]).shape)
    out_h, out_w, out_c = nhwc(ctx.tensor(node.outputs[0]).shape)
    w = ctx.tensor(node.inputs[1])
    if w.dtype != "int8":
        return None
    _, k_h, k_w, _ = w.shape
    q = params.conv_quant(ctx.graph, node)
    taps = w.data.astype(np.int64).reshape(k_h * k_w, out_c).T          # (out_c, taps)
    bias = fold_input_offset(_bias_values(ctx, node, out_c), taps, q.input_offset)
    acc_lo, acc_hi = accumulator_range(bias, taps)
    requant, table = plan_requant(q, out_c, acc_lo, acc_hi, acc_doubled=True)
    scale = 2 if requant.is_fast else 1
    unrolled = _unrolled_3x3(ctx.graph, node)
    double_rows = unrolled and op.stride[0] == 1
    scaled = taps * scale
    if unrolled:
        rows = scaled.reshape(out_c, 3, 3)
        w01 = pack_int16_pairs(rows[:, :, 0], rows[:, :, 1])               # (out_c, 3)
        w12 = pack_int16_pairs(rows[:, :, 1], rows[:, :, 2])
        tap_words = np.stack([w01, w12], axis=2).reshape(out_c, DW3_WEIGHT_WORDS)
    else:
        tap_words = scaled
    folded = wrap_int32(bias * scale)
    record = np.concatenate([tap_words, folded[:, None], table,
                             np.arange(out_c, dtype=np.int64)[:, None]], axis=1)
    if requant.is_fast:
        order = np.argsort(table[:, 2], kind="stable")
        record = record[order]
        shifts = table[order, 2]
        groups, first = [], 0
        for shift in sorted(set(shifts.tolist())):
            count = int((shifts == shift).sum())
            groups.append(ChannelGroup(int(shift), first, count))
            first += count
    else:
        groups = [ChannelGroup(-1, 0, out_c)]
    channel_words = record.shape[1]
    channels = ctx.const_values(
        index, "channels", "int32_t", record,
        f"{node.name}: channel records by shift: "
        f"{'(w0,w1),(w1,w2) int16 pairs per row' if unrolled else 'taps'}"
        f"{' x2' if scale == 2 else ''}, bias + input_offset * sum(w), "
        f"{_requant_comment(requant)}, output channel")
    return DepthwiseCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        scratch_offset=_scratch_offset(ctx, node), unrolled_3x3=unrolled,
        double_rows=double_rows,
        in_h=in_h, in_w=in_w, in_c=in_c, out_h=out_h, out_w=out_w, out_c=out_c,
        depth_multiplier=op.depth_multiplier, k_h=k_h, k_w=k_w,
        stride_h=op.stride[0], stride_w=op.stride[1],
        dilation_h=op.dilation[0], dilation_w=op.dilation[1],
        pad_top=op.padding.top, pad_left=op.padding.left, pad_value=-q.input_offset,
        ring_rows=ring_rows, row_width=row_width, channel_words=channel_words,
        channels=channels, groups=tuple(groups), requant=requant)


def _unrolled_3x3(graph: ir.Graph, node: ir.Node) -> bool:
    _, k_h, k_w, _ = graph.tensors[node.inputs[1]].shape
    return ((k_h, k_w) == (3, 3) and node.op.dilation == (1, 1)
            and node.op.stride[1] in (1, 2))


kernel_sets.register(MbgenKernels())
