"""Remove ops that do not change values, and put flattening into one canonical form.

* **Identity** (Dropout, clone, ... in eval mode) is removed: its readers read its input.
* **Reshape to the same shape** is removed; a Reshape of a Reshape becomes one Reshape.
* **Canonical flatten before a classifier**: FullyConnected always reads a flat ``(1, I)``
  tensor (``ir.FullyConnected``'s contract). A global average pool that keeps dims,
  ``Mean(keep_dims=True) -> (1,1,1,C)``, followed by a Reshape to ``(1, C)`` becomes a single
  ``Mean(keep_dims=False)`` producing ``(1, C)``. Any other Reshape that changes the shape is
  kept: it is where an NHWC map really becomes a vector, and costs nothing in C.

Graph output names are preserved: when a removed op wrote a graph output, the op before it is
made to write that name instead. An Identity from the graph input straight to a graph output is
kept (there is no earlier op to rename).

In int8 graphs an op is removed only when its input and output are quantised identically;
otherwise it also requantises and stays.
"""

from __future__ import annotations

import dataclasses

from mbgen import ir
from mbgen.passes.graph_edit import (drop_unused_tensors, rename_tensor, same_quantization,
                                     sole_consumer)


def _bypass(graph: ir.Graph, node: ir.Node) -> bool:
    """Remove a single-input node whose output equals its input; False if it must stay."""
    source, result = node.inputs[0], node.outputs[0]
    if result in graph.outputs:
        if graph.producer(source) is None or source in graph.outputs:
            return False
        graph.nodes = [n for n in graph.nodes if n is not node]
        graph.tensors.pop(result)
        rename_tensor(graph, source, result)  # the earlier op now writes the output's name
        return True
    graph.nodes = [n for n in graph.nodes if n is not node]
    for reader in graph.nodes:
        reader.inputs = [source if name == result else name for name in reader.inputs]
    return True


def _is_value_preserving(graph: ir.Graph, node: ir.Node) -> bool:
    src, dst = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    if not same_quantization(src, dst):
        return False
    if isinstance(node.op, ir.Identity):
        return src.shape == dst.shape
    return isinstance(node.op, ir.Reshape) and src.shape == dst.shape


def _merge_reshape_into_producer(graph: ir.Graph, node: ir.Node) -> bool:
    """Mean(keep_dims) -> Reshape(1, C), or Reshape -> Reshape: one node instead of two."""
    if not isinstance(node.op, ir.Reshape):
        return False
    producer = graph.producer(node.inputs[0])
    if producer is None or sole_consumer(graph, node.inputs[0]) is not node:
        return False
    src, dst = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    if not same_quantization(src, dst):
        return False
    if isinstance(producer.op, ir.Reshape):
        new_op: ir.OpAttrs = ir.Reshape(shape=dst.shape)
    elif (isinstance(producer.op, ir.Mean) and producer.op.keep_dims
          and tuple(producer.op.axes) == (1, 2) and len(dst.shape) == 2
          and src.shape == (1, 1, 1, dst.shape[1])):
        new_op = dataclasses.replace(producer.op, keep_dims=False)  # keeps its arithmetic
    else:
        return False
    merged = ir.Node(producer.name, new_op, list(producer.inputs), list(node.outputs))
    graph.nodes = [merged if n is producer else n for n in graph.nodes if n is not node]
    return True


def remove_noops(graph: ir.Graph) -> ir.Graph:
    """A new graph without Identity and redundant Reshape nodes (see the module docstring)."""
    out = graph.copy()
    changed = True
    while changed:
        changed = False
        for node in list(out.nodes):
            if isinstance(node.op, (ir.Identity, ir.Reshape)) and _is_value_preserving(out, node):
                changed = _bypass(out, node)
            else:
                changed = _merge_reshape_into_producer(out, node)
            if changed:
                break
    drop_unused_tensors(out)
    return out
