"""Flash layouts of the ``mbgen`` kernel set: weights and streams in the order the kernels
read them, and the small lowering helpers both GEMM and depthwise lowering share."""

from __future__ import annotations

import numpy as np

from mbgen import ir
from mbgen.codegen import records as r
from mbgen.codegen.kernels_mbgen_records import (ChannelGroup, ColumnWord, GemmRecord,
                                                 WeightFormat, _align)
from mbgen.codegen.lowering import LoweringContext
from mbgen.quantize.requant_proofs import Requant, wrap_int32

# Pointwise shift groups of fewer pairs share the mixed code: each group is a copy of the
# unrolled block. 1 keeps every group (4 costs mbv1_0.25_128 +0.7% instructions for -6 KB).
MIN_GROUP_PAIRS = 1


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
    record = GemmRecord(block_channels, _align(weights.shape[1], 4),
                        2 if fmt is WeightFormat.INT16_PAIRS else 1)
    if fmt is WeightFormat.INT16_PAIRS:
        stream = np.concatenate([heads, per_block.astype(np.int64), tails,
                                 wrap_int32(offsets)], axis=1)
        assert stream.shape[1] == record.words   # the layout the templates read
        return stream.reshape(-1)
    as_bytes = lambda words: wrap_int32(words).astype("<i4").view(np.int8).reshape(blocks, -1)
    stream = np.concatenate([as_bytes(heads), per_block, as_bytes(tails), as_bytes(offsets)],
                            axis=1)
    assert stream.shape[1] == record.bytes
    return stream.reshape(-1)


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


def ram_stream_bytes(depth_padded: int, out_c: int) -> int:
    """Bytes of a 4x2 layer's int16-pair stream: per channel pair 2 biases, the pairs,
    2 (m, c, R) triples and the channel numbers."""
    return -(-out_c // 2) * 4 * (2 + depth_padded + 6 + 1)



# ----------------------------------------------------------------------------- lowering helpers


def _request_scratch(ctx: LoweringContext, node: ir.Node, nbytes: int) -> r.BufferRef | None:
    """Ask the plan for the arena scratch the kernel uses; None (zero bytes): its stack."""
    return ctx.scratch(node.name, nbytes)
