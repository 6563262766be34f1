"""Portable lowering of the layout ops and of the uint8 interface (records in
``records_layout``). ``kernels_portable`` hands these nodes over; the loop bounds, strides
and constants are all decided here, the templates only print them.
"""

from __future__ import annotations

import math

from mbgen import ir
from mbgen.codegen import records_layout as rl
from mbgen.codegen.lowering import LoweringContext
from mbgen.errors import UserError
from mbgen.quantize import params

_RANK = 4
# The int32 sum of a mean must not overflow: |x| <= 128 per element.
_MAX_MEAN_COUNT = ((1 << 31) - 1) // 256
NCHW_TO_NHWC = (0, 2, 3, 1)


def _rank4(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    if len(shape) > _RANK:
        raise ir.GraphError(f"rank-{len(shape)} tensor: the layout kernels take rank <= 4")
    return tuple([1] * (_RANK - len(shape)) + [int(d) for d in shape])  # type: ignore[return-value]


def _strides(dims: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(math.prod(dims[k + 1:]) for k in range(len(dims)))


def _checked_shift(node: ir.Node, shift: int) -> int:
    """The C requantisation shifts an int32 left by at most 31 (more is undefined in C): a
    larger one comes from an absurd scale ratio in the file."""
    if shift > 31:
        raise UserError(f"layer {node.name!r}: the ratio of its input and output scales is "
                        f"too large (requantisation shift {shift} > 31)")
    return shift


def _int8_io(ctx: LoweringContext, node: ir.Node) -> bool:
    return all(ctx.tensor(n).dtype == "int8" for n in (node.inputs[0], node.outputs[0]))


def lower(ctx: LoweringContext, node: ir.Node) -> rl.TransposeCall | rl.PadNDCall | None:
    if isinstance(node.op, ir.Transpose):
        return transpose(ctx, node, node.op)
    if isinstance(node.op, ir.PadND):
        return pad_nd(ctx, node, node.op)
    return None


def transpose(ctx: LoweringContext, node: ir.Node, op: ir.Transpose) -> rl.TransposeCall | None:
    x = ctx.tensor(node.inputs[0])
    if not _int8_io(ctx, node) or len(op.perm) != len(x.shape) or len(x.shape) > _RANK:
        return None
    lead = _RANK - len(x.shape)
    in_strides = _strides(x.shape)
    out_strides = [0] * lead + [in_strides[p] for p in op.perm]
    return rl.TransposeCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        out_dims=_rank4(tuple(x.shape[p] for p in op.perm)),
        in_strides=tuple(out_strides))  # type: ignore[arg-type]


def pad_nd(ctx: LoweringContext, node: ir.Node, op: ir.PadND) -> rl.PadNDCall | None:
    x, out = ctx.tensor(node.inputs[0]), ctx.tensor(node.outputs[0])
    if not _int8_io(ctx, node) or len(op.pads) != len(x.shape) or len(x.shape) > _RANK:
        return None
    lead = _RANK - len(x.shape)
    before = tuple([0] * lead + [b for b, _ in op.pads])
    in_dims, out_dims = _rank4(x.shape), _rank4(out.shape)
    if any(o != i + b + a for o, i, (b, a) in zip(out.shape, x.shape, op.pads)):
        raise ir.GraphError(f"{node.name}: output shape does not match the padding")
    if not -128 <= op.value <= 127:
        raise ir.GraphError(f"{node.name}: pad value {op.value} is not int8")
    return rl.PadNDCall(input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
                        in_dims=in_dims, out_dims=out_dims, before=before,  # type: ignore
                        value=op.value, output_size=out.size)


def mean_axes(ctx: LoweringContext, node: ir.Node, op: ir.Mean) -> rl.MeanAxesCall | None:
    """Any axes of a rank <= 4 tensor (the spatial mean has its own, faster kernel)."""
    x = ctx.tensor(node.inputs[0])
    if not _int8_io(ctx, node) or len(x.shape) > _RANK:
        return None
    rank = len(x.shape)
    lead = _RANK - rank
    axes = {a % rank + lead for a in op.axes}
    dims = _rank4(x.shape)
    kept = tuple(1 if d in axes else n for d, n in enumerate(dims))
    reduced = tuple(n if d in axes else 1 for d, n in enumerate(dims))
    q = params.mean_quant(ctx.graph, node)
    if q.count > _MAX_MEAN_COUNT:
        raise UserError(f"layer {node.name!r}: MEAN over {q.count} values would overflow "
                        "its int32 sums")
    return rl.MeanAxesCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        kept=kept, reduced=reduced, strides=_strides(dims),  # type: ignore[arg-type]
        count=q.count, input_zero_point=q.input_zero_point,
        output_zero_point=q.output_zero_point, multiplier=q.multiplier,
        shift=_checked_shift(node, q.shift))


def input_is_nchw(graph: ir.Graph) -> bool:
    """True when the model file takes NCHW: its input is only read by NCHW -> NHWC
    transposes (TinyNeuralNetwork's files). The C API then takes NCHW as well."""
    readers = graph.consumers(graph.inputs[0])
    return bool(readers) and all(isinstance(n.op, ir.Transpose) and n.op.perm == NCHW_TO_NHWC
                                 for n in readers)


def boundary_requantize(ctx: LoweringContext,
                        node: ir.Node) -> rl.BoundaryRequantizeCall | None:
    """QUANTIZE between the caller's uint8 buffer and an int8 tensor (a uint8 interface)."""
    src, dst = ctx.tensor(node.inputs[0]), ctx.tensor(node.outputs[0])
    source, target = ctx.buffer(node.inputs[0]), ctx.buffer(node.outputs[0])
    graph = ctx.graph
    if (src.dtype, dst.dtype) == ("uint8", "int8") and node.inputs[0] == graph.inputs[0]:
        function = "requantize_u8_s8"
    elif (src.dtype, dst.dtype) == ("int8", "uint8") and node.outputs[0] == graph.outputs[0]:
        function = "requantize_s8_u8"
    else:
        return None  # uint8 only lives in the caller's buffers
    q = params.requantize_quant(ctx.graph, node)
    return rl.BoundaryRequantizeCall(
        function=function, input=source, output=target, size=dst.size,
        input_zero_point=q.input_zero_point, output_zero_point=q.output_zero_point,
        multiplier=q.multiplier, shift=_checked_shift(node, q.shift))
