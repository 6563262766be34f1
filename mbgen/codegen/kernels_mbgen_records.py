"""Call records of the ``mbgen`` kernel set (see kernels_mbgen): what each template prints.

Every size, offset and loop count a template needs is a field or property here, computed in
Python; the templates in ``templates/kernels_mbgen/`` only print them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from mbgen.codegen import records as r
from mbgen.quantize.requant_proofs import Requant, RequantScheme

# Taps of a 3x3 depthwise channel record: (w0,w1) and (w1,w2) int16 pairs per kernel row.
DW3_WEIGHT_WORDS = 6
# Words of a 3x3 channel record in flash when the scratch holds the records the sweeps read:
# 9 int8 taps in 3 words, the folded bias, (m, c|shift), R | channel << 16.
DW3_COMPACT_WORDS = 7
# GEMM inner steps unrolled before a counted loop takes over (each step is 11 instructions).
GEMM_STEPS_PER_LOOP = 32
# ... from this padded depth on, under --optimize size, such a layer runs the shared
# per-depth block rather than its own unrolled copy per shift group.
SHARED_MIN_DEPTH = 128


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
class FieldLoad:
    """Word g of an interior receptive field as the asm block columns load it, bytes from
    the field's top-left input pixel: one LDR at ``first``; then (``second`` >= 0) a word
    across two kernel rows takes the next row's first bytes by BFI from an LDR at
    ``second`` into bits 8 * take and up, or (``shift``) the last row's short word is
    shifted down to its ``take`` bytes. No load reads outside the input: the bytes after a
    row's run that the BFI overwrites lie before the next kernel row's."""

    first: int
    second: int
    take: int
    shift: int

    @property
    def kept(self) -> int:
        """The bits of the first load a word across two kernel rows keeps (its take bytes)."""
        return (1 << 8 * self.take) - 1


class _ArenaScratch:
    """The scratch pointer as the templates print it: an arena offset once bound."""

    scratch: r.BufferRef | None

    @property
    def scratch_offset(self) -> int | None:
        """Arena offset of the scratch; None: the kernel keeps it on its stack."""
        return None if self.scratch is None else self.scratch.offset


@dataclass(frozen=True)
class GemmRecord:
    """The layout of one channel block of a GEMM stream, read by kernels_mbgen_layout's
    gemm_stream (which writes it) and by the templates (every offset they print comes from
    here): ``block_channels`` folded biases (int32), the weights (int8 [group of 4][channel],
    or int16 pairs [k-pair][channel]), then the tail: an (m, c|shift, R|0) int32 triple per
    channel and the channels' output numbers as uint16 pairs. Offsets in bytes."""

    block_channels: int
    depth_padded: int
    weight_bytes: int          # per weight: 1 (int8 in flash) or 2 (int16 pairs)

    @property
    def bias_bytes(self) -> int:
        return 4 * self.block_channels

    @property
    def weights_bytes(self) -> int:
        return self.depth_padded * self.block_channels * self.weight_bytes

    @property
    def tail_offset(self) -> int:
        """Where the tail starts (the block code's pointer once past the weights)."""
        return self.bias_bytes + self.weights_bytes

    def m_offset(self, q: int) -> int:
        """Channel q's multiplier, from the tail; then c (+4) and R (+8)."""
        return 12 * q

    def r_offset(self, q: int) -> int:
        return 12 * q + 8

    @property
    def channel_words(self) -> int:
        """Words of output channel numbers (uint16 pairs)."""
        return -(-self.block_channels // 2)

    @property
    def channels_offset(self) -> int:
        """The output channel numbers, from the tail (channel q: word q // 2, half q % 2)."""
        return 12 * self.block_channels

    @property
    def tail_bytes(self) -> int:
        return self.channels_offset + 4 * self.channel_words

    @property
    def bytes(self) -> int:
        return self.tail_offset + self.tail_bytes

    @property
    def words(self) -> int:
        return self.bytes // 4


@dataclass(frozen=True)
class GemmCall(_ArenaScratch):
    """A convolution or fully connected layer as an int8 GEMM: pixels x depth x channels."""

    template: ClassVar[str] = "kernels_mbgen/gemm.c.j2"
    function: ClassVar[str] = "mbgen_gemm"
    input: r.BufferRef
    output: r.BufferRef
    scratch: r.BufferRef | None  # widened columns, records, im2col bytes in the arena
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

    # --optimize size: deep ram_stream layers share the per-depth block too (ram_shared)
    compact_code: bool = False

    @property
    def ram_shared(self) -> bool:
        """A ram_stream layer deep enough that, under --optimize size, the shared per-depth
        block runs it (the int16 block code per layer costs ~1.5 KB of flash per shift group,
        the shared one ~14 instructions more per 4x2 block and a call per 4 pixels)."""
        return (self.compact_code and self.ram_stream and self.asm_block
                and self.depth_padded >= SHARED_MIN_DEPTH)

    @property
    def field_loads(self) -> tuple[FieldLoad, ...]:
        """How an interior receptive field is loaded word by word, by the asm block columns
        and the C column code alike (empty without direct column words)."""
        row = self.dilation_h * self.in_w * self.in_c
        run = self.k_w * self.in_c
        loads = []
        for word in self.column_words:
            if word.take == 4:
                loads.append(FieldLoad(word.run * row + word.offset, -1, 4, 0))
            elif word.run + 1 < self.k_h:
                loads.append(FieldLoad(word.run * row + word.offset, (word.run + 1) * row,
                                       word.take, 0))
            else:
                loads.append(FieldLoad(word.run * row + run - 4, -1, word.take,
                                       8 * (4 - word.take)))
        return tuple(loads)

    @property
    def asm_columns(self) -> bool:
        """Whether the block columns run in asm: direct column words whose widened columns
        are not doubled, every LDR offset of the block's last pixel and every STRD offset
        into the columns within their immediates."""
        loads = self.field_loads
        if not loads or self.columns_doubled:
            return False
        last_pixel = (self.block_pixels - 1) * self.stride_w * self.in_c
        widest = max(max(load.first, load.second) for load in loads) + last_pixel
        last_store = 4 * ((2 * len(loads) - 1) * self.block_pixels + self.block_pixels - 2)
        return widest <= 4095 and last_store <= 1020

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
    def record(self) -> GemmRecord:
        """A channel block as the block code reads it: int16 pairs (in flash, or widened)."""
        return GemmRecord(self.block_channels, self.depth_padded, 2)

    @property
    def source_record(self) -> GemmRecord:
        """A channel block as it lies in flash."""
        int8 = self.weight_format is WeightFormat.INT8
        return GemmRecord(self.block_channels, self.depth_padded, 1 if int8 else 2)

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
        return self.record_offset_bytes + _align(self.record.bytes, 8)

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
class DepthwiseCall(_ArenaScratch):
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
    scratch: r.BufferRef | None  # the ring (and rebuilt channel records) in the arena
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
    # Scratch offset of the records the sweeps read, rebuilt from the compact flash form
    # (DW3_COMPACT_WORDS a channel) at the start of every call; None: read from flash.
    records_offset: int | None = None
    taps_scale: int = 1          # the taps in the records: 2x for the doubled accumulator

    @property
    def compact_words(self) -> int:
        """Words of one channel's compact flash record (records_offset set)."""
        return DW3_COMPACT_WORDS

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


def _asm_block_eligible(block_pixels: int, requant: Requant, out_c: int,
                        block_channels: int) -> bool:
    """4x2 blocks on int16-pair records (int16 weights, or int8 ones widened per chunk),
    FAST requantisation without an extra clamp, and store offsets (channel + 3 rows of
    out_c) within STRB's 12-bit immediate."""
    return (block_pixels == 4
            and requant.scheme is RequantScheme.FAST
            and not (requant.clamp_min or requant.clamp_max)
            and 3 * out_c + block_channels <= 4095)


def _align(n: int, to: int) -> int:
    return -(-n // to) * to
