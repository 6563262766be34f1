"""Lowering of a streamed stage (``ir.StreamedStage``) into one ``StageCall``.

Each distinct band of each inner layer (first / steady / last, see ``stage.band_shapes``)
is lowered once, by the chosen kernel set's ordinary ``lower`` (else portable), on a
one-node band graph. Its symbolic buffers are then renamed: the band's input and output
become the stage's input / output tensor or a window (row offsets into them), its scratch
the start of the stage's ONE scratch request (band kernels' largest scratch, then the
windows). Every band call is that record at its rows; the moves between them are memmoves
inside a window. Pointers stay symbolic until ``program.bind``; the template only prints.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import ClassVar

from mbgen import ir
from mbgen.codegen.lowering import LoweringContext
from mbgen.codegen.records import BufferKind, BufferRef, ConstArray, map_refs
from mbgen.codegen.stage_loops import LOOP_COUNTER, StepLoop, fold_loops
from mbgen.errors import UserError
from mbgen.streaming.schedule import WINDOW_ALIGNMENT, Band, Move
from mbgen.streaming.stage import (BandShape, band_graph, band_shape, band_shapes,
                                   stage_schedule, stage_write_order)
from mbgen.write_order import WriteOrder

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
    return replace(ref, offset=ref.offset + offset)


def _renamed(value, refs: dict[tuple[BufferKind, str], BufferRef], scratch: BufferRef):
    """``value`` (a band call record) with its tensor refs replaced by ``refs`` (plus their
    own row offsets) and every scratch ref moved into the stage's scratch."""
    def rename(ref: BufferRef) -> BufferRef:
        if ref.kind is BufferKind.SCRATCH:
            return _moved(scratch, ref.offset)
        new = refs.get((ref.kind, ref.name))
        return ref if new is None else _moved(new, ref.offset)
    return map_refs(value, rename)


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


def lower_stage(ctx: LoweringContext, index: int, node: ir.Node, chosen, fallback,
                needs_only: bool = False
                ) -> tuple[StageCall, str, tuple[tuple[str, WriteOrder], ...]]:
    """The stage node as one kernel instance's parts: its StageCall (band calls and moves,
    symbolic buffers), the kernel set that ran its bands, its walk over its input. Its one
    scratch request (``ctx.scratch(node.name, ...)``) is made here."""
    graph, op = ctx.graph, node.op
    plan = stage_schedule(graph, op)
    stage_in, stage_out = ctx.buffer(node.inputs[0]), ctx.buffer(node.outputs[0])
    symbolic_scratch = BufferRef(BufferKind.SCRATCH, name=node.name)

    kernels: dict[BandShape, tuple[BandKernel, str, str]] = {}
    shared: dict[int, dict[tuple, ConstArray]] = {}
    used_sets = set()
    kernel_scratch = 0
    # what the bands' kernels may spend on faster scratch: the stage's spare beside its windows
    band_spare = max(0, ctx.spare(node.name) - plan.windows_total - WINDOW_ALIGNMENT)
    for number, shape in enumerate(band_shapes(plan)):
        band, band_node = band_graph(graph, op, shape)
        sub_index = STAGE_INDEX_BASE * (index + 1) + number
        for kernel_set in dict.fromkeys((chosen, fallback)):
            # its own scratch requests: summed into the stage's one request below
            band_ctx = replace(ctx, graph=band, scratch_requests={},
                               spare_bytes={band_node.name: band_spare}, spare_asked=set(),
                               layout_graph=ctx.layout_graph or ctx.graph)
            call = kernel_set.lower(band_ctx, sub_index, band_node)
            if call is not None:
                break
        if call is None:
            raise UserError(f"layer {band_node.name!r}: no int8 C kernel for its row bands")
        kernel_scratch = max(kernel_scratch, sum(band_ctx.scratch_requests.values()))
        call = _shared_constants(call, shared.setdefault(shape.layer, {}))
        used_sets.add(kernel_set.name)
        kernels[shape] = (BandKernel(
            sub_index, f"{band_node.name} rows {shape.out_rows} pad {shape.pad_top}/"
            f"{shape.pad_bottom}", f"layer{index}_band{number}_params", kernel_set.name, call),
            band_node.inputs[0], band_node.outputs[0])

    kernel_scratch = -(-kernel_scratch // WINDOW_ALIGNMENT) * WINDOW_ALIGNMENT
    total = kernel_scratch + plan.windows_total
    ctx.scratch(node.name, total)
    # the chosen set when it ran any band (cmsis-nn folders need its build flags then)
    kernel_set = chosen.name if chosen.name in used_sets else fallback.name
    walks = ((node.inputs[0], stage_write_order(graph, op)),)
    if needs_only:   # a streaming candidate: its scratch and walk are all the plan reads
        return StageCall((), ()), kernel_set, walks
    windows = [_moved(symbolic_scratch, kernel_scratch + off) for off in plan.window_offsets]
    last = len(op.nodes) - 1

    def buffers(layer: int) -> tuple[BufferRef, BufferRef]:
        return (stage_in if layer == 0 else windows[layer - 1],
                stage_out if layer == last else windows[layer])

    def at(kernel: tuple[BandKernel, str, str], layer: int, in_offset: int,
           out_offset: int) -> object:
        band_kernel, x, y = kernel
        src, dst = buffers(layer)
        refs = {(BufferKind.TENSOR, x): _moved(src, in_offset),
                (BufferKind.TENSOR, y): _moved(dst, out_offset)}
        return _renamed(band_kernel.call, refs, symbolic_scratch)

    band_kernels = tuple(replace(k[0], call=at(k, shape.layer, 0, 0))
                         for shape, k in kernels.items())
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
        call = at(kernel, step.layer, step.in_row * rows.in_row_bytes,
                  step.out_row * rows.out_row_bytes)
        steps.append(BandCall(kernel[0].index, kernel[0].name, kernel[0].ident, call))

    return (StageCall(band_kernels, fold_loops(tuple(steps))), kernel_set, walks)
