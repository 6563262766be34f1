"""Portable lowering of Concatenation, StridedSlice and MaxPool2D into call records.

Copies are planned here, in Python: each block gets four (count, source stride, destination
stride) dimensions, with adjacent dimensions merged wherever both sides are contiguous so
the C kernel copies the longest runs it can with one memcpy.
"""

from __future__ import annotations

import math

from mbgen import ir
from mbgen.codegen.lowering import LoweringContext, nhwc
from mbgen.codegen.records_graph_ops import COPY_RANK, CopyBlock, MaxPoolCall, StridedCopyCall
from mbgen.quantize import params, params_graph_ops


def _row_major_strides(shape: tuple[int, ...]) -> list[int]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return strides[::-1]


def _check_int8(ctx: LoweringContext, node: ir.Node) -> None:
    for name in (*node.inputs, *node.outputs):
        if ctx.tensor(name).dtype != "int8":
            raise ir.GraphError(f"{node.name}: activation {name!r} is "
                                f"{ctx.tensor(name).dtype}, the C kernels are int8")


def copy_block(ctx: LoweringContext, source: str, src_offset: int, dst_offset: int,
               counts: list[int], src_strides: list[int], dst_strides: list[int]) -> CopyBlock:
    """A block of up to four dimensions, contiguous neighbours merged, padded with ones."""
    dims = [(n, s, d) for n, s, d in zip(counts, src_strides, dst_strides) if n != 1]
    merged: list[tuple[int, int, int]] = []
    for n, s, d in dims:
        if merged:
            outer_n, outer_s, outer_d = merged[-1]
            if outer_s == s * n and outer_d == d * n:
                merged[-1] = (outer_n * n, s, d)
                continue
        merged.append((n, s, d))
    if len(merged) > COPY_RANK:
        raise ir.GraphError(f"copy of {source!r} needs {len(merged)} dimensions")
    merged = [(1, 0, 0)] * (COPY_RANK - len(merged)) + merged
    return CopyBlock(ctx.buffer(source), src_offset, dst_offset,
                     tuple(m[0] for m in merged), tuple(m[1] for m in merged),
                     tuple(m[2] for m in merged))


def concatenation(ctx: LoweringContext, node: ir.Node,
                  op: ir.Concatenation) -> StridedCopyCall:
    """One block per input: its rows land at the running offset along the axis."""
    _check_int8(ctx, node)
    try:
        params_graph_ops.check_concat_quant(ctx.graph, node)
    except ValueError as err:
        raise ir.GraphError(str(err)) from None
    out_shape = ctx.tensor(node.outputs[0]).shape
    dst_strides = _row_major_strides(out_shape)
    blocks, position = [], 0
    for name in node.inputs:
        shape = ctx.tensor(name).shape
        if len(shape) != len(out_shape) or any(
                a != b for d, (a, b) in enumerate(zip(shape, out_shape)) if d != op.axis):
            raise ir.GraphError(f"{node.name}: input {name!r} {shape} does not fit "
                                f"output {out_shape} along axis {op.axis}")
        if math.prod(shape):
            blocks.append(copy_block(ctx, name, 0, position * dst_strides[op.axis],
                                     list(shape), _row_major_strides(shape), dst_strides))
        position += shape[op.axis]
    if position != out_shape[op.axis]:
        raise ir.GraphError(f"{node.name}: inputs give {position} along axis {op.axis}, "
                            f"the output has {out_shape[op.axis]}")
    return StridedCopyCall(ctx.buffer(node.outputs[0]), tuple(blocks))


def strided_slice(ctx: LoweringContext, node: ir.Node,
                  op: ir.StridedSlice) -> StridedCopyCall:
    _check_int8(ctx, node)
    in_shape = ctx.tensor(node.inputs[0]).shape
    out_shape = ctx.tensor(node.outputs[0]).shape
    if not len(in_shape) == len(out_shape) == len(op.begin) == len(op.strides):
        raise ir.GraphError(f"{node.name}: slice rank does not match its tensors")
    src = _row_major_strides(in_shape)
    offset = sum(b * s for b, s in zip(op.begin, src))
    return StridedCopyCall(ctx.buffer(node.outputs[0]), (copy_block(
        ctx, node.inputs[0], offset, 0, list(out_shape),
        [s * step for s, step in zip(src, op.strides)], _row_major_strides(out_shape)),))


def max_pool(ctx: LoweringContext, node: ir.Node, op: ir.MaxPool2D) -> MaxPoolCall:
    _check_int8(ctx, node)
    in_h, in_w, channels = nhwc(ctx.tensor(node.inputs[0]).shape)
    out_h, out_w, out_c = nhwc(ctx.tensor(node.outputs[0]).shape)
    if out_c != channels:
        raise ir.GraphError(f"{node.name}: pooling changes the channel count")
    q = params.pool_quant(ctx.graph, node)
    return MaxPoolCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        in_h=in_h, in_w=in_w, channels=channels, out_h=out_h, out_w=out_w,
        k_h=op.kernel[0], k_w=op.kernel[1], stride_h=op.stride[0], stride_w=op.stride[1],
        pad_top=op.padding.top, pad_left=op.padding.left,
        act_min=q.act_min, act_max=q.act_max)
