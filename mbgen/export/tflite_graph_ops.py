"""The TFLite writer's graph-shaping operators: CONCATENATION, MAX_POOL_2D, STRIDED_SLICE,
and SPLIT / SPLIT_V for the runs of slices the frontend makes of them.

The frontend turns one SPLIT / SPLIT_V into consecutive StridedSlice nodes that cut one
axis of the same tensor into adjacent pieces; ``find_splits`` recognises such runs so the
written file has the original single operator again (same result either way).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mbgen import ir

GRAPH_OPS = (ir.Concatenation, ir.MaxPool2D, ir.StridedSlice)


@dataclass(frozen=True)
class SplitRun:
    """Consecutive slices that together split ``source`` along ``axis``, in order."""

    source: str
    axis: int
    nodes: tuple[ir.Node, ...]
    sizes: tuple[int, ...]


def _split_axis(graph: ir.Graph, node: ir.Node) -> tuple[int, int, int] | None:
    """(axis, begin, size) when ``node`` is a unit-stride slice along a single axis."""
    op = node.op
    if not isinstance(op, ir.StridedSlice) or any(s != 1 for s in op.strides):
        return None
    in_shape = graph.tensors[node.inputs[0]].shape
    out_shape = graph.tensors[node.outputs[0]].shape
    cut = [d for d, (i, o) in enumerate(zip(in_shape, out_shape)) if i != o]
    if len(cut) > 1 or any(b != 0 for d, b in enumerate(op.begin) if d not in cut):
        return None
    axis = cut[0] if cut else len(in_shape) - 1
    return axis, op.begin[axis], out_shape[axis]


def find_splits(graph: ir.Graph) -> dict[str, SplitRun]:
    """Runs of two or more slices that tile one axis of one tensor, by first node name."""
    runs: dict[str, SplitRun] = {}
    nodes = graph.nodes
    i = 0
    while i < len(nodes):
        first = _split_axis(graph, nodes[i])
        if first is None or first[1] != 0:
            i += 1
            continue
        source, axis = nodes[i].inputs[0], first[0]
        total = graph.tensors[source].shape[axis]
        members, sizes, covered = [nodes[i]], [first[2]], first[2]
        j = i + 1
        while covered < total and j < len(nodes):
            nxt = _split_axis(graph, nodes[j])
            if nxt is None or nodes[j].inputs[0] != source or nxt[0] != axis \
                    or nxt[1] != covered:
                break
            members.append(nodes[j])
            sizes.append(nxt[2])
            covered += nxt[2]
            j += 1
        if covered == total and len(members) > 1:
            runs[nodes[i].name] = SplitRun(source, axis, tuple(members), tuple(sizes))
            i = j
        else:
            i += 1
    return runs


def emit_split(writer, run: SplitRun) -> None:
    """SPLIT when the pieces are equal, else SPLIT_V."""
    s = writer.s
    B, O = s.BuiltinOperator, s.BuiltinOptions
    outputs = [writer.tensor(n.outputs[0]) for n in run.nodes]
    axis = writer.int32_const(f"{run.nodes[0].name}/axis", run.axis)
    if len(set(run.sizes)) == 1:
        opts = s.SplitOptionsT()
        opts.numSplits = len(run.nodes)
        writer.emit(B.SPLIT, 2, [axis, writer.tensor(run.source)], outputs,
                    O.SplitOptions, opts)
        return
    sizes = writer.int32_const(f"{run.nodes[0].name}/size_splits", list(run.sizes))
    opts = s.SplitVOptionsT()
    opts.numSplits = len(run.nodes)
    writer.emit(B.SPLIT_V, 2, [writer.tensor(run.source), sizes, axis], outputs,
                O.SplitVOptions, opts)


def _max_pool_input(writer, node: ir.Node, op: ir.MaxPool2D) -> tuple[int, int]:
    """(padding code, input index) of MAX_POOL_2D. Padding that is neither SAME nor VALID
    (PyTorch's symmetric padding, ceil_mode) becomes a PADV2 with the lowest value of the
    type, then VALID: a padded pixel never wins, as in ``ir.MaxPool2D``."""
    x = node.inputs[0]
    _, in_h, in_w, channels = writer.graph.tensors[x].shape
    p = op.padding
    if p == ir.Padding() or p == ir.Padding.same(in_h, in_w, *op.kernel, *op.stride, 1, 1):
        return writer.window_padding(node, x, *op.kernel, op.stride, (1, 1), p,
                                     may_pad=False)
    source = writer.graph.tensors[x]
    padded = writer.like(f"{node.name}/pad", x, (1, in_h + p.top + p.bottom,
                                                 in_w + p.left + p.right, channels))
    pads = writer.int32_const(f"{x}/paddings", [[0, 0], [p.top, p.bottom],
                                                [p.left, p.right], [0, 0]])
    lowest = np.array([np.iinfo(np.int8).min if source.dtype == "int8"
                       else np.finfo(np.float32).min], dtype=source.dtype)
    value = writer.add_tensor(writer.fresh_name(f"{node.name}/constant_values"), (1,),
                              source.dtype, lowest, source.quant)
    s = writer.s
    writer.emit(s.BuiltinOperator.PADV2, 2 if source.dtype == "int8" else 1,
                [writer.tensor(x), pads, value], [padded],
                s.BuiltinOptions.PadV2Options, s.PadV2OptionsT())
    return s.Padding.VALID, padded


def emit(writer, node: ir.Node, activation_code: int) -> None:
    """One of ``GRAPH_OPS`` (``activation_code``: TFLite's code of a MaxPool2D activation)."""
    s, op = writer.s, node.op
    B, O = s.BuiltinOperator, s.BuiltinOptions
    out = writer.tensor(node.outputs[0])
    int8 = writer.is_int8(node.inputs[0])
    if isinstance(op, ir.Concatenation):
        opts = s.ConcatenationOptionsT()
        opts.axis = op.axis
        writer.emit(B.CONCATENATION, 2 if int8 else 1,
                    [writer.tensor(n) for n in node.inputs], [out],
                    O.ConcatenationOptions, opts)
    elif isinstance(op, ir.MaxPool2D):
        code, x_index = _max_pool_input(writer, node, op)
        opts = s.Pool2DOptionsT()
        opts.padding = code
        opts.strideH, opts.strideW = op.stride
        opts.filterHeight, opts.filterWidth = op.kernel
        opts.fusedActivationFunction = activation_code
        writer.emit(B.MAX_POOL_2D, 2 if int8 else 1, [x_index], [out],
                    O.Pool2DOptions, opts)
    else:
        counts = writer.graph.tensors[node.outputs[0]].shape
        end = [b + (n - 1) * st + 1 for b, st, n in zip(op.begin, op.strides, counts)]
        operands = [writer.tensor(node.inputs[0]),
                    writer.int32_const(f"{node.name}/begin", list(op.begin)),
                    writer.int32_const(f"{node.name}/end", end),
                    writer.int32_const(f"{node.name}/strides", list(op.strides))]
        writer.emit(B.STRIDED_SLICE, 2 if int8 else 1, operands, [out],
                    O.StridedSliceOptions, s.StridedSliceOptionsT())
