"""Per-layer MACs and parameter counts, and the report.json the generated folder carries."""

from __future__ import annotations

from mbgen import ir
from mbgen.output_folder import GENERATOR_TAG
from mbgen.codegen.records import ConstArray, Layer
from mbgen.planner import GraphPlan



def layer_macs(graph: ir.Graph, node: ir.Node) -> int:
    """Multiply-accumulates of the conv-like ops; 0 for everything else."""
    op = node.op
    out = graph.tensors[node.outputs[0]].shape
    if isinstance(op, ir.Conv2D):
        _, k_h, k_w, in_c = graph.tensors[node.inputs[1]].shape
        return out[1] * out[2] * out[3] * k_h * k_w * in_c
    if isinstance(op, ir.DepthwiseConv2D):
        _, k_h, k_w, _ = graph.tensors[node.inputs[1]].shape
        return out[1] * out[2] * out[3] * k_h * k_w
    if isinstance(op, ir.FullyConnected):
        out_features, in_features = graph.tensors[node.inputs[1]].shape
        return in_features * out_features
    return 0


def layer_params(graph: ir.Graph, node: ir.Node) -> int:
    """Elements of the node's constant inputs (weights + bias)."""
    return sum(graph.tensors[name].size for name in node.inputs
               if name and graph.tensors[name].is_const)


def _output_quant(graph: ir.Graph, node: ir.Node) -> dict | None:
    """The layer's output scale and zero point, and the real range int8 covers with them
    (the calibrated range, as the quantizer nudged it)."""
    quant = graph.tensors[node.outputs[0]].quant
    if quant is None or quant.scale.size != 1:
        return None
    scale, zero_point = quant.scalar_scale, quant.scalar_zero_point
    return {"scale": scale, "zero_point": zero_point,
            "min": scale * (-128 - zero_point), "max": scale * (127 - zero_point)}


def build_report(graph: ir.Graph, layers: list[Layer], constants: list[ConstArray], *,
                 name: str, target: str, kernels: str, arena_bytes: int,
                 files: list[str], build: dict, plan: GraphPlan) -> dict:
    fallbacks = [layer.name for layer in layers if layer.kernel_set != kernels]
    return {
        "generator": GENERATOR_TAG,
        "model": graph.name,
        "name": name,
        "target": target,
        "kernels": kernels,
        "arena_bytes": arena_bytes,
        "io": plan.io,
        "weights_bytes": sum(c.nbytes for c in constants),
        "macs": sum(layer.macs for layer in layers),
        "params": sum(layer.params for layer in layers),
        "input_shape": list(graph.tensors[graph.inputs[0]].shape),
        "output_shape": list(graph.tensors[graph.outputs[0]].shape),
        "fallback_layers": fallbacks,
        "files": files,
        "build": build,
        "buffers": plan_buffers(graph, plan),
        "layers": [
            {
                "name": layer.name,
                "op": layer.op,
                "kernel": layer.kernel_set,
                "input_shape": list(layer.input_shape),
                "output_shape": list(layer.output_shape),
                "macs": layer.macs,
                "params": layer.params,
                "arena_offset": layer.arena_offset,
                "output_bytes": layer.output_bytes,
                "output_quant": _output_quant(graph, node),
                "in_place_over": (plan.in_place or {}).get(layer.name),
            }
            for layer, node in zip(layers, graph.nodes, strict=True)
        ],
    }


def plan_buffers(graph: ir.Graph, plan: GraphPlan) -> list[dict]:
    """Every activation and scratch buffer of the memory plan: which layer makes it, the
    layers it lives across (inclusive), its bytes, where it is (arena offset, or the
    caller's input / output buffer) and, for a layer's output written over its input in
    place, that input (``over``)."""
    producer = {out: node.name for node in graph.nodes for out in node.outputs}
    over = {node.outputs[0]: (plan.in_place or {}).get(node.name) for node in graph.nodes}
    buffers = []
    for tensor, life in plan.lifetimes.items():
        buffers.append({
            "tensor": tensor, "layer": producer.get(tensor, "input"),
            "first_use": life.first_use, "last_use": life.last_use, "bytes": life.size,
            "offset": life.offset, "where": plan.external.get(tensor, "arena"),
            "over": over.get(tensor)})
    names = [node.name for node in graph.nodes]
    for node_name, offset in plan.scratch_offsets.items():
        index = names.index(node_name)
        size = next(b.size for b in plan.buffers if b.name.endswith(":" + node_name)
                    and b.first_use == index)
        buffers.append({
            "tensor": f"scratch of {node_name}", "layer": node_name, "first_use": index,
            "last_use": index, "bytes": size, "offset": offset, "where": "scratch"})
    return buffers
