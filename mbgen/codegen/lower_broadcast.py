"""Broadcasting int8 ADD (TFLite's BroadcastAdd4DSlow): an operand of another shape, such as
the constant 3 of hard sigmoid ``relu6(x + 3) / 6`` in Keras-converted MobileNetV3 files;
and ``broadcast_operands``, which the broadcasting MUL (kernels_portable) shares.

Same arithmetic as the elementwise ``add_s8`` (``params.add_quant``); each operand walks the
4-D output with its own element strides, 0 along the dimensions it broadcasts, as ``mul_s8``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mbgen import ir
from mbgen.codegen.lowering import LoweringContext
from mbgen.codegen.records import BufferRef, ConstArray
from mbgen.quantize import params


@dataclass(frozen=True)
class BroadcastAddCall:
    template: ClassVar[str] = "kernels/add_broadcast.c.j2"
    function: ClassVar[str] = "add_broadcast_s8"
    input1: BufferRef | ConstArray
    input2: BufferRef | ConstArray
    output: BufferRef
    dims: tuple[int, int, int, int]
    input1_strides: tuple[int, int, int, int]
    input2_strides: tuple[int, int, int, int]
    quant: params.AddQuant


def broadcast_strides(shape: tuple[int, ...],
                      dims: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """Element strides that read a row-major ``shape`` across the 4-D output ``dims``
    (numpy/TFLite broadcasting: 0 along every dimension where ``shape`` has 1), or None
    when ``shape`` does not broadcast to ``dims``."""
    if len(shape) > 4:
        return None
    padded = (1,) * (4 - len(shape)) + tuple(int(d) for d in shape)
    strides, step = [0, 0, 0, 0], 1
    for axis in (3, 2, 1, 0):
        if padded[axis] == dims[axis]:
            strides[axis] = step if dims[axis] > 1 else 0
        elif padded[axis] != 1:
            return None
        step *= padded[axis]
    return strides[0], strides[1], strides[2], strides[3]


@dataclass(frozen=True)
class BroadcastOperands:
    """The two operands of a broadcasting int8 op, each with its strides over ``dims``."""

    dims: tuple[int, int, int, int]
    operands: tuple[BufferRef | ConstArray, BufferRef | ConstArray]
    strides: tuple[tuple[int, int, int, int], tuple[int, int, int, int]]


def broadcast_operands(ctx: LoweringContext, index: int, node: ir.Node,
                       refuse: bool = False) -> BroadcastOperands | None:
    """Operands of a two-input int8 node broadcasting to its output of rank 4 or less; None
    when a tensor is not int8, the rank is higher or (unless ``refuse``: a GraphError then)
    an operand does not broadcast. A constant operand becomes a flash array."""
    out = ctx.tensor(node.outputs[0])
    if out.dtype != "int8" or len(out.shape) > 4:
        return None
    dims = (1,) * (4 - len(out.shape)) + tuple(int(d) for d in out.shape)
    tensors = [ctx.tensor(name) for name in node.inputs[:2]]
    if any(t.dtype != "int8" for t in tensors):
        return None
    strides = [broadcast_strides(t.shape, dims) for t in tensors]
    for name, t, step in zip(node.inputs, tensors, strides):
        if step is None and refuse:
            raise ir.GraphError(f"{node.name}: {name!r} {t.shape} does not broadcast to "
                                f"{out.shape}")
        if step is None:
            return None
    operands = tuple(ctx.const_tensor(name, index, role, "int8_t") if t.is_const
                     else ctx.buffer(name)
                     for role, name, t in zip(("input1", "input2"), node.inputs, tensors))
    return BroadcastOperands(dims, operands, tuple(strides))


def add(ctx: LoweringContext, index: int, node: ir.Node) -> BroadcastAddCall | None:
    """An int8 Add whose operands broadcast to the output (rank 4 or less)."""
    if all(ctx.tensor(n).is_const for n in node.inputs[:2]):
        return None  # nothing computed at run time
    b = broadcast_operands(ctx, index, node)
    if b is None:
        return None
    return BroadcastAddCall(b.operands[0], b.operands[1], ctx.buffer(node.outputs[0]), b.dims,
                            b.strides[0], b.strides[1], params.add_quant(ctx.graph, node))
