"""Depthwise lowering of the ``mbgen`` kernel set: DepthwiseCall records with their channel
records (``templates/kernels_mbgen/depthwise.c.j2`` prints them)."""

from __future__ import annotations

import numpy as np

from mbgen import ir
from mbgen.codegen.kernels_mbgen_layout import (_requant_comment,
                                                _request_scratch, pack_int16_pairs)
from mbgen.codegen.kernels_mbgen_records import (DW3_COMPACT_WORDS, DW3_WEIGHT_WORDS,
                                                 ChannelGroup, DepthwiseCall, _align)
from mbgen.codegen.lowering import LoweringContext, bias_values, nhwc
from mbgen.quantize import params
from mbgen.quantize.requant_proofs import (accumulator_range, fold_input_offset,
                                          plan_requant, wrap_int32)


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
    bias = fold_input_offset(bias_values(ctx, node, out_c), taps, q.input_offset)
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
    order = np.arange(out_c)
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
    spare = ctx.spare(node.name) if unrolled else 0
    scratch = _request_scratch(ctx, node, depthwise_scratch_bytes(ctx.graph, node, spare))
    records_offset = None
    if unrolled and scratch is not None and _records_in_ram(ctx.graph, node, spare):
        # flash keeps the int8 taps; the records above are rebuilt in the scratch per call
        records_offset = _align(geometry[0] * 2, 8)
        channels = ctx.const_values(
            index, "channels", "int32_t", compact_records(taps, folded, table, order),
            f"{node.name}: compact channel records by shift: 9 int8 taps (+3 zero bytes), "
            f"bias + input_offset * sum(w){' (x2)' if scale == 2 else ''}, "
            f"{_requant_comment(requant)} with the output channel in R's top half")
    else:
        channels = ctx.const_values(
            index, "channels", "int32_t", record,
            f"{node.name}: channel records by shift: "
            f"{'(w0,w1),(w1,w2) int16 pairs per row' if unrolled else 'taps'}"
            f"{' x2' if scale == 2 else ''}, bias + input_offset * sum(w), "
            f"{_requant_comment(requant)}, output channel")
    return DepthwiseCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        scratch=scratch, unrolled_3x3=unrolled,
        double_rows=double_rows,
        in_h=in_h, in_w=in_w, in_c=in_c, out_h=out_h, out_w=out_w, out_c=out_c,
        depth_multiplier=op.depth_multiplier, k_h=k_h, k_w=k_w,
        stride_h=op.stride[0], stride_w=op.stride[1],
        dilation_h=op.dilation[0], dilation_w=op.dilation[1],
        pad_top=op.padding.top, pad_left=op.padding.left, pad_value=-q.input_offset,
        ring_rows=ring_rows, row_width=row_width, channel_words=channel_words,
        channels=channels, groups=tuple(groups), requant=requant,
        records_offset=records_offset, taps_scale=scale)


def compact_records(taps: np.ndarray, folded: np.ndarray, table: np.ndarray,
                    order: np.ndarray) -> np.ndarray:
    """The flash form of 3x3 channel records (DW3_COMPACT_WORDS int32 words per channel, in
    ``order``): the 9 int8 taps little endian in 3 words (3 zero bytes), the folded bias,
    the (m, c|shift) pair, then R | output channel << 16 (the sweep's (R, channel) words)."""
    out_c = taps.shape[0]
    tap_bytes = np.zeros((out_c, 12), dtype=np.int8)
    tap_bytes[:, :9] = taps.astype(np.int8)
    tap_words = tap_bytes.view("<i4").astype(np.int64)                  # (out_c, 3)
    last = table[:, 2] | (np.arange(out_c, dtype=np.int64) << 16)
    compact = np.concatenate([tap_words, folded[:, None], table[:, :2], last[:, None]],
                             axis=1)[order]
    assert compact.shape[1] == DW3_COMPACT_WORDS
    return wrap_int32(compact)


def depthwise_scratch_bytes(graph: ir.Graph, node: ir.Node, spare: int = 0) -> int:
    """The ring, and for the unrolled 3x3 the channel records rebuilt from flash when they
    fit the arena's ``spare`` bytes beside the layer (else flash holds them whole)."""
    geometry = _depthwise_geometry(graph, node)
    if geometry is None:
        return 0
    ring = _align(geometry[0] * 2, 8)
    with_records = ring + _ram_records_bytes(graph, node)
    return with_records if _records_in_ram(graph, node, spare) else ring


def _ram_records_bytes(graph: ir.Graph, node: ir.Node) -> int:
    out_c = graph.tensors[node.outputs[0]].shape[-1]
    return out_c * (DW3_WEIGHT_WORDS + 5) * 4   # taps, bias, (m, c, R), channel


def _records_in_ram(graph: ir.Graph, node: ir.Node, spare: int) -> bool:
    """Whether the unrolled 3x3's channel records are rebuilt in the scratch (compact int8
    taps in flash) because the arena has that much free beside the layer anyway."""
    geometry = _depthwise_geometry(graph, node)
    if geometry is None or not _unrolled_3x3(graph, node):
        return False
    return _align(geometry[0] * 2, 8) + _ram_records_bytes(graph, node) <= spare


def _unrolled_3x3(graph: ir.Graph, node: ir.Node) -> bool:
    _, k_h, k_w, _ = graph.tensors[node.inputs[1]].shape
    return ((k_h, k_w) == (3, 3) and node.op.dilation == (1, 1)
            and node.op.stride[1] in (1, 2))
