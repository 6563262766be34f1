"""A streamed stage as IR: which nodes may join one, the stage node, and its band nodes.

``fuse`` replaces a chain of nodes by one ``ir.StreamedStage`` node (pure: a new graph).
``band_graph`` makes the one-node graph of a band call: the layer's own op with the band's
height and explicit top/bottom padding, so any kernel set's ordinary ``lower`` and
``scratch_bytes`` see a normal convolution.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mbgen import ir
from mbgen.streaming.schedule import Band, LayerRows, Schedule, schedule
from mbgen.write_order import WriteOrder

STREAMABLE_OPS = (ir.Conv2D, ir.DepthwiseConv2D)


def layer_rows(tensors: dict[str, ir.Tensor], node: ir.Node) -> LayerRows | None:
    """The layer along H, or None when it cannot be computed in row bands."""
    op = node.op
    if not isinstance(op, STREAMABLE_OPS) or ir.uses_onnxruntime_arithmetic(op):
        return None
    if len(node.outputs) != 1 or not node.inputs or op.dilation[0] != 1:
        return None
    x, y = tensors[node.inputs[0]], tensors[node.outputs[0]]
    if x.is_const or x.dtype != "int8" or y.dtype != "int8":
        return None
    if len(x.shape) != 4 or len(y.shape) != 4 or x.shape[0] != 1:
        return None
    k_h = tensors[node.inputs[1]].shape[1]
    return LayerRows(in_h=int(x.shape[1]), out_h=int(y.shape[1]), kernel=int(k_h),
                     stride=int(op.stride[0]), pad_top=int(op.padding.top),
                     in_row_bytes=int(x.shape[2] * x.shape[3]),
                     out_row_bytes=int(y.shape[2] * y.shape[3]))


def stage_tensors(graph: ir.Graph, op: ir.StreamedStage) -> dict[str, ir.Tensor]:
    """Every tensor the stage's inner nodes name."""
    tensors = dict(graph.tensors)
    tensors.update({t.name: t for t in op.tensors})
    return tensors


def stage_schedule(graph: ir.Graph, op: ir.StreamedStage) -> Schedule:
    tensors = stage_tensors(graph, op)
    rows = tuple(layer_rows(tensors, node) for node in op.nodes)
    assert all(r is not None for r in rows), "a stage holds only streamable layers"
    return schedule(rows, op.band_rows, op.slack_rows, op.chunk_rows)


def stage_write_order(graph: ir.Graph, op: ir.StreamedStage) -> WriteOrder:
    """The one place a stage's WriteOrder is made (see mbgen/write_order.py)."""
    from mbgen.streaming.schedule import write_order
    return write_order(stage_schedule(graph, op))


def fuse(graph: ir.Graph, indices: list[int], band_rows: int, slack_rows: int,
         chunk_rows: int, name: str) -> ir.Graph:
    """``graph`` with its nodes ``indices`` (a chain, consecutive in execution order)
    replaced by one stage node called ``name``."""
    inner = [graph.nodes[i] for i in indices]
    middle = [n.outputs[0] for n in inner[:-1]]
    constants = [t for n in inner for t in n.inputs[1:]
                 if t and graph.tensors[t].is_const]
    node = ir.Node(name, ir.StreamedStage(
        nodes=tuple(ir.Node(n.name, n.op, list(n.inputs), list(n.outputs)) for n in inner),
        tensors=tuple(graph.tensors[t] for t in middle),
        band_rows=band_rows, slack_rows=slack_rows, chunk_rows=chunk_rows),
        [inner[0].inputs[0], *dict.fromkeys(constants)], [inner[-1].outputs[0]])
    fused = graph.copy()
    for t in middle:
        del fused.tensors[t]
    fused.nodes = (fused.nodes[:indices[0]] + [node] + fused.nodes[indices[-1] + 1:])
    ir.verify(fused)
    return fused


@dataclass(frozen=True)
class BandShape:
    """What makes two band calls of one layer the same call but for their pointers."""

    layer: int
    in_rows: int
    out_rows: int
    pad_top: int
    pad_bottom: int


def band_shape(plan: Schedule, band: Band) -> BandShape:
    top, bottom = plan.layers[band.layer].band_padding(band.first, band.end)
    return BandShape(band.layer, band.in_end - band.in_first, band.end - band.first,
                     top, bottom)


def band_graph(graph: ir.Graph, op: ir.StreamedStage, shape: BandShape
               ) -> tuple[ir.Graph, ir.Node]:
    """A one-node graph computing one band: the layer's op with the band's padding, its
    input and output cut to the band's rows (same names, so constants keep their arrays)."""
    tensors = stage_tensors(graph, op)
    node = op.nodes[shape.layer]
    x, y = tensors[node.inputs[0]], tensors[node.outputs[0]]
    band_x = ir.Tensor(x.name, (1, shape.in_rows, *x.shape[2:]), x.dtype, None, x.quant)
    band_y = ir.Tensor(y.name, (1, shape.out_rows, *y.shape[2:]), y.dtype, None, y.quant)
    padding = replace(node.op.padding, top=shape.pad_top, bottom=shape.pad_bottom)
    band_node = ir.Node(node.name, replace(node.op, padding=padding),
                        list(node.inputs), list(node.outputs))
    band_tensors = {t: tensors[t] for t in node.inputs if t}
    band_tensors.update({x.name: band_x, y.name: band_y})
    return (ir.Graph(graph.name, band_tensors, [band_node], [x.name], [y.name],
                     dict(graph.metadata)), band_node)


def band_shapes(plan: Schedule) -> dict[BandShape, None]:
    """The distinct band calls of a stage, in first-use order."""
    return dict.fromkeys(band_shape(plan, s) for s in plan.steps if isinstance(s, Band))
