"""The one pipeline from an int8 graph to bound call records: lower, plan, bind.

0. **Stream** (optional): ``mbgen.streaming`` fuses conv chains into streamed stages,
   judging its candidates with this pipeline's own lowering and planner (``planner_for``).
1. **Lower**: each node becomes a ``KernelInstance``: the chosen kernel set's call record
   (else the portable one) with symbolic buffers, the arena scratch it asked for
   (``LoweringContext.scratch``), the walks its kernel declares over its inputs
   (``WriteOrder``, so its output may overwrite consumed input) and its flash arrays.
2. **Plan**: ``planner.plan_graph`` places buffers from those declarations only.
3. **Bind**: the plan's offsets replace the symbolic buffers in every call record.

``build_program`` is that pipeline; ``generator.generate`` renders its result. Compile,
bench, verify and the tests all come through here, so no size is computed twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from mbgen import ir, streaming
from mbgen.codegen import kernel_sets
from mbgen.codegen.lower_stage import lower_stage
from mbgen.codegen.lowering import LoweringContext, is_valid_c_name
from mbgen.codegen.records import (AliasCall, BufferKind, BufferRef, CallRecord, CopyCall,
                                   Layer, map_refs)
from mbgen.codegen.report import layer_macs, layer_params
from mbgen.errors import UserError
from mbgen.planner import GraphPlan, NodeNeeds, free_bytes_beside, plan_graph
from mbgen.streaming import StreamOptions
from mbgen.write_order import WriteOrder


# C element type of the model's input/output: int8, or uint8 for a uint8 interface (TF2 PTQ).
IO_CTYPES = {"int8": "int8_t", "uint8": "uint8_t"}


@dataclass(frozen=True)
class KernelInstance:
    """One node lowered to one kernel, before any memory is planned.

    ``call``'s BufferRefs are symbolic (tensor names, the node's scratch). ``walks``: for
    each input the kernel may write its output over, the ``WriteOrder`` it follows.
    """

    index: int
    node: ir.Node
    kernel_set: str
    call: CallRecord
    scratch_bytes: int
    walks: tuple[tuple[str, WriteOrder], ...] = ()

    @property
    def needs(self) -> NodeNeeds:
        """What the planner reads of this instance."""
        return NodeNeeds(self.scratch_bytes, self.walks)


@dataclass(frozen=True)
class Program:
    """A graph lowered, planned and bound: what the templates render."""

    instances: tuple[KernelInstance, ...]
    plan: GraphPlan
    layers: tuple[Layer, ...]
    graph: ir.Graph | None = None   # what the C computes: the input graph, streamed


def _walks_of(kernel_set, call: CallRecord) -> tuple[tuple[str, WriteOrder], ...]:
    """The walks a kernel set declares for one of its calls, keyed by input tensor."""
    declare = getattr(kernel_set, "walks", None)
    if declare is None:
        return ()
    return tuple((ref.name, order) for ref, order in declare(call))


def lower_node(ctx: LoweringContext, index: int, node: ir.Node, kernels: str,
               needs_only: bool = False) -> KernelInstance:
    """One node's kernel instance: the chosen kernel set's, else the portable one; a
    streamed stage is one instance too (codegen.lower_stage; with ``needs_only`` without
    its band calls, for the streaming pass that only plans it)."""
    chosen = kernel_sets.get(kernels)
    fallback = kernel_sets.portable()
    if isinstance(node.op, ir.StreamedStage):
        call, used, walks = lower_stage(ctx, index, node, chosen, fallback, needs_only)
        return KernelInstance(index, node, used, call,
                              ctx.scratch_requests.get(node.name, 0), walks)
    for kernel_set in dict.fromkeys((chosen, fallback)):
        call = kernel_set.lower(ctx, index, node)
        if call is not None:
            break
        ctx.scratch_requests.pop(node.name, None)   # a refusing set's request is void
    if call is None:
        raise UserError(f"layer {node.name!r}: {ir.op_name(node.op)} with these shapes "
                        "has no int8 C kernel in mbgen")
    return KernelInstance(
        index=index, node=node, kernel_set=kernel_set.name, call=call,
        scratch_bytes=ctx.scratch_requests.get(node.name, 0),
        walks=_walks_of(kernel_set, call))


def lower(ctx: LoweringContext, kernels: str) -> list[KernelInstance]:
    """One kernel instance per node."""
    return [lower_node(ctx, index, node, kernels)
            for index, node in enumerate(ctx.graph.nodes)]


def planner_for(kernels: str, *, prefix: str = "model", target: str = "host",
                io: str = "external", flash_budget: int | None = None,
                weight_layout: str = "auto") -> Callable[[ir.Graph], GraphPlan]:
    """The real plan of any variant of one graph (the streaming pass's candidates): the
    nodes' declarations (scratch, walks) as lowering makes them, the planner with its
    overlays and io mode. A node's needs are lowered once (by name; a stage by its bands)."""
    cache: dict[tuple, NodeNeeds] = {}

    def plan_of(graph: ir.Graph) -> GraphPlan:
        ctx = LoweringContext(graph, prefix, target, flash_budget, weight_layout)
        needs = {}
        for index, node in enumerate(graph.nodes):
            op = node.op
            key = ((node.name, tuple(n.name for n in op.nodes), op.band_rows, op.slack_rows,
                    op.chunk_rows) if isinstance(op, ir.StreamedStage) else (node.name,))
            if key not in cache:
                cache[key] = lower_node(ctx, index, node, kernels, needs_only=True).needs
            needs[node.name] = cache[key]
        return plan_graph(graph, needs, io=io)
    return plan_of


def _resolve(ref: BufferRef, plan: GraphPlan) -> BufferRef:
    """A symbolic ref at its planned place; its own ``offset`` (rows into a tensor or into
    scratch) is added, and a subclass (a stage loop's SteppedRef) keeps its stride."""
    if ref.kind is BufferKind.SCRATCH:
        return replace(ref, kind=BufferKind.ARENA, name="",
                       offset=int(plan.scratch_offsets[ref.name]) + ref.offset)
    if ref.kind is not BufferKind.TENSOR:
        return ref
    offset = plan.offsets.get(ref.name)
    role = (plan.io_roles or {}).get(ref.name)
    if role is not None:
        # the model's input/output pointer (the caller's, or the arena's with io "arena")
        # (its offset counts from that pointer: rows into the input of a streamed stage)
        kind = BufferKind.INPUT if role == "input" else BufferKind.OUTPUT
        return replace(ref, kind=kind, name="")
    if offset is None:
        raise ir.GraphError(f"activation {ref.name!r} has no place in the memory plan")
    return replace(ref, kind=BufferKind.ARENA, name="", offset=int(offset) + ref.offset)


def bind(instance: KernelInstance, plan: GraphPlan) -> CallRecord:
    """The instance's call record with every buffer at its planned place; a copy whose
    two tensors the plan puts in the same bytes becomes an alias (nothing to run)."""
    call = map_refs(instance.call, lambda ref: _resolve(ref, plan))
    if isinstance(call, CopyCall) and _same_bytes(call.input, call.output, plan):
        return AliasCall(call.input, call.output)
    return call


def _same_bytes(a: BufferRef, b: BufferRef, plan: GraphPlan) -> bool:
    """Two bound pointers at the same bytes (with io "arena" the model's input and output
    pointers are arena offsets too)."""
    if a == b:
        return True
    in_arena = (BufferKind.ARENA, BufferKind.INPUT, BufferKind.OUTPUT)
    return plan.io == "arena" and a.kind in in_arena and b.kind in in_arena \
        and _arena_offset(a, plan) == _arena_offset(b, plan)


def _arena_offset(ref: BufferRef, plan: GraphPlan) -> int:
    """A bound pointer's offset from the arena (io "arena": the model's input and output
    pointers are at their tensors' planned offsets)."""
    if ref.kind is BufferKind.ARENA:
        return ref.offset
    role = "input" if ref.kind is BufferKind.INPUT else "output"
    base = next(plan.offsets[name] for name, r in plan.io_roles.items()
                if r == role and name in plan.offsets)
    return int(base) + ref.offset


def check_graph(graph: ir.Graph, name: str) -> None:
    if not is_valid_c_name(name):
        raise UserError(f"--name {name!r} is not a C identifier (letters, digits, _; "
                        "not starting with a digit)")
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UserError(f"model {graph.name!r} has {len(graph.inputs)} inputs and "
                        f"{len(graph.outputs)} outputs; mbgen supports exactly one of each")
    for role, tensor_name in (("input", graph.inputs[0]), ("output", graph.outputs[0])):
        t = graph.tensors[tensor_name]
        if t.dtype not in IO_CTYPES or t.quant is None or t.quant.scale.size != 1:
            raise UserError(f"model {graph.name!r}: {role} {tensor_name!r} is {t.dtype}; "
                            "codegen needs an int8 graph (quantize it first)")


def build_program(graph: ir.Graph, *, prefix: str = "model", kernels: str = "portable",
                  target: str = "host", io: str = "external",
                  flash_budget: int | None = None, weight_layout: str = "auto",
                  stream: StreamOptions | None = None) -> Program:
    """Stream (``stream``: the options of mbgen.streaming, None: no stages), lower every
    node, plan the arena from the instances' declarations, bind the plan."""
    check_graph(graph, prefix)
    if stream is not None and stream.enabled:
        graph = streaming.stream(graph, kernels, stream, planner_for(
            kernels, prefix=prefix, target=target, io=io, flash_budget=flash_budget,
            weight_layout=weight_layout))
    instances, plan = _lower_and_plan(graph, prefix, kernels, target, io, flash_budget,
                                      weight_layout)
    layers = []
    for instance in instances:
        node = instance.node
        out = graph.tensors[node.outputs[0]]
        layers.append(Layer(
            index=instance.index, name=node.name, op=ir.op_name(node.op),
            kernel_set=instance.kernel_set, call=bind(instance, plan),
            input_shape=tuple(graph.tensors[node.inputs[0]].shape),
            output_shape=tuple(out.shape),
            macs=_macs(graph, node), params=layer_params(graph, node),
            arena_offset=plan.offsets.get(node.outputs[0]),
            output_bytes=out.nbytes))
    return Program(tuple(instances), plan, tuple(layers), graph)


def _lower_and_plan(graph: ir.Graph, prefix: str, kernels: str, target: str, io: str,
                    flash_budget: int | None, weight_layout: str
                    ) -> tuple[list[KernelInstance], GraphPlan]:
    """Lower with the least scratch, plan; then, if a kernel would run faster with more
    (``ctx.spare``), lower again offering each node the arena's free bytes beside it and
    keep that only if the arena did not grow (with all of them, else half of them)."""
    def attempt(spare: dict[str, int], in_place: frozenset[str] = frozenset()
                ) -> tuple[LoweringContext, list, GraphPlan]:
        ctx = LoweringContext(graph, prefix, target, flash_budget, weight_layout,
                              spare_bytes=spare, in_place=in_place)
        instances = lower(ctx, kernels)
        return ctx, instances, plan_graph(graph, {i.node.name: i.needs for i in instances},
                                          io=io)

    ctx, instances, plan = attempt({})
    if not ctx.spare_asked:
        return instances, plan
    free = free_bytes_beside(plan, graph)
    for share in (1, 2):
        _, faster, faster_plan = attempt({n: free[n] // share for n in ctx.spare_asked},
                                         frozenset(plan.in_place or ()))
        if faster_plan.arena_size <= plan.arena_size:
            return faster, faster_plan
    return instances, plan


def _macs(graph: ir.Graph, node: ir.Node) -> int:
    if isinstance(node.op, ir.StreamedStage):
        return streaming.stage_macs(graph, node.op)
    return layer_macs(graph, node)
