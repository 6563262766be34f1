"""Lowering of a streamed stage (``ir.StreamedStage``) into one ``StageCall``.

Each distinct band of each inner layer (first / steady / last, see ``stage.band_shapes``)
is lowered once, by the chosen kernel set's ordinary ``lower`` (else portable), on a
one-node band graph whose input and output sit where the stage's memory plan says. Every
band call is then that record with its pointers moved to its rows; the moves between them
are memmoves inside a window. Pointers are computed here; the template only prints.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar

from mbgen import ir
from mbgen.codegen.lowering import LoweringContext
from mbgen.codegen.records import BufferKind, BufferRef, ConstArray, Layer
from mbgen.codegen.report import layer_params
from mbgen.codegen.stage_loops import LOOP_COUNTER, StepLoop, fold_loops
from mbgen.errors import UserError
from mbgen.planner import _SCRATCH_PREFIX as SCRATCH_PREFIX
from mbgen.planner import Buffer, GraphPlan
from mbgen.streaming.choose import layer_macs, stage_scratch_layout
from mbgen.streaming.schedule import Band, Move
from mbgen.streaming.stage import (BandShape, band_graph, band_shape, band_shapes,
                                   stage_schedule, stage_tensors)

# Band records get layer numbers of their own (the mbgen kernels name a static function
# after the layer): STAGE_INDEX_BASE * (stage layer + 1) + band shape number.
STAGE_INDEX_BASE = 1000


@dataclass(frozen=True)
class BandKernel:
    """One lowered band shape: what the inner template's params() prints, once."""

    index: int             # the number the inner template names its statics after
    name: str              # the inner layer and its band, for comments
    ident: str             # the params identifier
    kernel_set: str
    call: object           # the kernel set's call record


@dataclass(frozen=True)
class BandCall:
    """One call of a band kernel, at its rows (what the inner template's invoke() gets)."""

    index: int
    name: str
    ident: str
    call: object


@dataclass(frozen=True)
class MoveCall:
    """memmove(dst, src, size) inside a window."""

    dst: BufferRef
    src: BufferRef
    size: int


@dataclass(frozen=True)
class StageCall:
    template: ClassVar[str] = "kernels/stage.c.j2"
    function: ClassVar[str] = "stage"
    kernels: tuple[BandKernel, ...]
    steps: tuple[BandCall | MoveCall | StepLoop, ...]   # steady-state runs folded in loops
    counter: ClassVar[str] = LOOP_COUNTER

    @property
    def has_loops(self) -> bool:
        return any(isinstance(s, StepLoop) for s in self.steps)

    @property
    def inner_templates(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(k.call.template for k in self.kernels))


def _moved(ref: BufferRef, offset: int) -> BufferRef:
    return BufferRef(ref.kind, ref.offset + offset)


def _shared_constants(call: object, seen: dict[tuple, ConstArray]) -> object:
    """``call`` with each constant array replaced by an equal one already emitted for the
    same layer, so the band shapes of one layer share their flash."""
    changes = {}
    for f in fields(call):
        value = getattr(call, f.name)
        if isinstance(value, ConstArray):
            key = (value.ctype, value.values.dtype.str, value.values.tobytes())
            changes[f.name] = seen.setdefault(key, value)
    return replace(call, **changes) if changes else call


def lower_stage(ctx: LoweringContext, index: int, node: ir.Node, chosen, fallback
                ) -> Layer:
    """The stage node's Layer: a StageCall of band calls and moves."""
    graph, op = ctx.graph, node.op
    plan = stage_schedule(graph, op)
    tensors = stage_tensors(graph, op)
    kernel_scratch, needed = stage_scratch_layout(graph, op, chosen.name)
    scratch = ctx.scratch(node.name)
    planned = {b.name: b.size for b in ctx.plan.buffers}.get(SCRATCH_PREFIX + node.name, 0)
    if scratch is None or planned < needed:
        raise ir.GraphError(f"{node.name}: the stage needs {needed} scratch bytes but the "
                            f"memory plan has {planned}; plan with "
                            "codegen.scratch_requirements(graph, kernels)")
    base = BufferRef(BufferKind.ARENA, scratch.offset)
    windows = [_moved(base, kernel_scratch + off) for off in plan.window_offsets]
    stage_in, stage_out = ctx.buffer(node.inputs[0]), ctx.buffer(node.outputs[0])
    last = len(op.nodes) - 1

    def buffers(layer: int) -> tuple[BufferRef, BufferRef]:
        return (stage_in if layer == 0 else windows[layer - 1],
                stage_out if layer == last else windows[layer])

    kernels: dict[BandShape, BandKernel] = {}
    shared: dict[int, dict[tuple, ConstArray]] = {}
    used_sets = set()
    for number, shape in enumerate(band_shapes(plan)):
        band, band_node = band_graph(graph, op, shape)
        x, y = band_node.inputs[0], band_node.outputs[0]
        src, dst = buffers(shape.layer)
        external = {name: ref.kind.value for name, ref in ((x, src), (y, dst))
                    if not ref.is_arena}
        offsets = {name: ref.offset for name, ref in ((x, src), (y, dst)) if ref.is_arena}
        band_plan = GraphPlan(arena_size=ctx.plan.arena_size, offsets=offsets,
                              external=external,
                              scratch_offsets={band_node.name: base.offset},
                              lifetimes={}, peak_live_bytes=0, copies=[],
                              # what a kernel set may check its scratch against
                              buffers=(Buffer(SCRATCH_PREFIX + band_node.name,
                                              kernel_scratch, 0, 0),),
                              strategy="stage", alignment=ctx.plan.alignment)
        band_ctx = replace(ctx, graph=band, plan=band_plan)
        sub_index = STAGE_INDEX_BASE * (index + 1) + number
        call, used = chosen.lower(band_ctx, sub_index, band_node), chosen.name
        if call is None and chosen is not fallback:
            call, used = fallback.lower(band_ctx, sub_index, band_node), fallback.name
        if call is None:
            raise UserError(f"layer {band_node.name!r}: no int8 C kernel for its row bands")
        call = _shared_constants(call, shared.setdefault(shape.layer, {}))
        used_sets.add(used)
        kernels[shape] = BandKernel(
            sub_index, f"{band_node.name} rows {shape.out_rows} pad {shape.pad_top}/"
            f"{shape.pad_bottom}", f"layer{index}_band{number}_params", used, call)

    steps: list[BandCall | MoveCall] = []
    for step in plan.steps:
        if isinstance(step, Move):
            row = plan.layers[step.window].out_row_bytes
            steps.append(MoveCall(windows[step.window],
                                  _moved(windows[step.window], step.src_row * row),
                                  step.rows * row))
            continue
        assert isinstance(step, Band)
        kernel = kernels[band_shape(plan, step)]
        rows = plan.layers[step.layer]
        src, dst = buffers(step.layer)
        call = replace(kernel.call, input=_moved(src, step.in_row * rows.in_row_bytes),
                       output=_moved(dst, step.out_row * rows.out_row_bytes))
        steps.append(BandCall(kernel.index, kernel.name, kernel.ident, call))

    out = graph.tensors[node.outputs[0]]
    # the chosen set when it ran any band (cmsis-nn folders need its build flags then)
    kernel_set = chosen.name if chosen.name in used_sets else fallback.name
    return Layer(
        index=index, name=node.name, op=ir.op_name(op), kernel_set=kernel_set,
        call=StageCall(tuple(kernels.values()), fold_loops(tuple(steps))),
        input_shape=tuple(graph.tensors[node.inputs[0]].shape),
        output_shape=tuple(out.shape),
        macs=sum(layer_macs(tensors, n) for n in op.nodes),
        params=layer_params(graph, node),
        arena_offset=ctx.plan.offsets.get(node.outputs[0]), output_bytes=out.nbytes)

