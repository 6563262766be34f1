"""Small helpers the passes share for rewriting a graph copy without touching the original.

Every helper edits the graph it is given in place, so passes call them only on their own
``graph.copy()``; numpy arrays are never written to (new constants get new arrays).
"""

from __future__ import annotations

import numpy as np

from mbgen import ir


def sole_consumer(graph: ir.Graph, tensor_name: str) -> ir.Node | None:
    """The one node reading ``tensor_name``, or None if it has several readers or is an output."""
    if tensor_name in graph.outputs:
        return None
    readers = graph.consumers(tensor_name)
    return readers[0] if len(readers) == 1 else None


def redirect_uses(graph: ir.Graph, old: str, new: str) -> None:
    """Make every node (and the graph outputs) read ``new`` where they read ``old``."""
    for node in graph.nodes:
        node.inputs = [new if name == old else name for name in node.inputs]
    graph.outputs = [new if name == old else name for name in graph.outputs]


def rename_tensor(graph: ir.Graph, old: str, new: str) -> None:
    """Rename an activation everywhere it is produced or read (``new`` must not exist yet)."""
    tensor = graph.tensors.pop(old)
    graph.tensors[new] = ir.Tensor(new, tensor.shape, tensor.dtype, tensor.data, tensor.quant)
    for node in graph.nodes:
        node.outputs = [new if name == old else name for name in node.outputs]
    redirect_uses(graph, old, new)


def add_constant(graph: ir.Graph, preferred_name: str, data: np.ndarray) -> str:
    """Add a float32 constant under a name no other tensor has; returns the name used."""
    name, i = preferred_name, 1
    while name in graph.tensors:
        i += 1
        name = f"{preferred_name}_{i}"
    array = np.ascontiguousarray(data, dtype=np.float32)
    graph.tensors[name] = ir.Tensor(name, tuple(array.shape), "float32", array)
    return name


def drop_unused_tensors(graph: ir.Graph) -> None:
    """Forget tensors no node reads or writes and that are not graph inputs/outputs."""
    used = set(graph.inputs) | set(graph.outputs)
    for node in graph.nodes:
        used.update(node.inputs)
        used.update(node.outputs)
    for name in [n for n in graph.tensors if n not in used]:
        del graph.tensors[name]


def same_quantization(a: ir.Tensor, b: ir.Tensor) -> bool:
    """True when both tensors hold numbers the same way (same dtype, scale and zero point)."""
    if a.dtype != b.dtype:
        return False
    if a.quant is None or b.quant is None:
        return a.quant is None and b.quant is None
    return (a.quant.axis == b.quant.axis
            and np.array_equal(a.quant.scale, b.quant.scale)
            and np.array_equal(a.quant.zero_point, b.quant.zero_point))
