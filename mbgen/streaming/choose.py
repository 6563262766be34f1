"""The streaming pass: which chains become streamed stages, and with which bands.

``stream(graph, kernels, options, plan_of)`` is pure: it returns a new int8 graph in which some
chains of convolutions are one ``ir.StreamedStage`` node each. It works greedily on the
memory plan: each round it tries the stages around the arena's busiest node (2 to
MAX_STAGE_LAYERS layers of a chain, each with the band/slack/chunk of the smallest windows
whose overhead fits the limit), plans each, and keeps the one with the smallest arena (on
equal arenas, the one that frees most bytes over time, so the peak can move to where the next
stage takes it). At the end, every stage the final arena does not need is dropped again.

Overhead. A stage computes every row once (no recompute: windows keep the rows the next
layer still needs and move them down when full), so its MACs are the unstreamed ones. What
it adds is memmoves and kernel calls; they are counted in MAC equivalents (a moved 4-byte
word, and per extra call of a layer what that call repeats: ``call_cost_macs`` for portable
C and the library kernels, ``dsp_call_macs`` for the mbgen DSP kernels, which widen the
layer's int8 weights and refill their row ring on every call) and must stay within
``max_recompute`` times the stage's MACs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mbgen import ir, planner
from mbgen.streaming.schedule import Schedule, schedule
from mbgen.streaming.stage import fuse, layer_rows, stage_schedule, stage_tensors

MAX_STAGE_LAYERS = 12
MAX_ROUNDS = 24
CALL_COST_MACS = 64          # per extra call of a portable kernel
SIMD_CALL_COST_MACS = 1024   # ... of a cmsis-nn kernel, and the fixed part of an mbgen one
# What an extra mbgen DSP call repeats, in instructions (about MAC-eq at their ~1 MAC per
# instruction), from the kernels' code: the int8 GEMM widens every weight again (one LDR,
# two SXTB16 and half an STRD per 4 weights and channel pair: ~1.25 per weight), the
# depthwise ring transposes again the (kernel - stride) input rows the previous band's
# window already held (~1 per byte).
DSP_WIDEN_MACS_PER_WEIGHT = 1.25
DSP_RING_MACS_PER_BYTE = 1.0
BAND_CHOICES = (1, 2, 4, 8)
SLACK_CHOICES = (0, 2, 6)
CHUNK_CHOICES = (1, 2, 0)


@dataclass(frozen=True)
class StreamOptions:
    enabled: bool = True
    max_recompute: float = 0.10   # extra work allowed, as a fraction of the stage's MACs
    row_align: int = 1            # every row of a stage starts this aligned (SIMD kernels)
    call_cost_macs: int = CALL_COST_MACS   # what one more kernel call costs
    dsp_calls: bool = False       # mbgen DSP kernels: add what each call repeats (dsp_call_macs)


def layer_macs(tensors: dict[str, ir.Tensor], node: ir.Node) -> int:
    """codegen.report's MACs of a node whose tensors are in ``tensors`` (a stage's too)."""
    from mbgen.codegen.report import layer_macs as macs
    return macs(ir.Graph("", tensors, [], [], []), node)


def dsp_call_macs(tensors: dict[str, ir.Tensor], node: ir.Node) -> int:
    """What one more call of an mbgen DSP kernel for ``node`` repeats (see
    DSP_WIDEN_MACS_PER_WEIGHT), beyond the fixed SIMD_CALL_COST_MACS."""
    op = node.op
    if isinstance(op, ir.DepthwiseConv2D):
        in_shape = tensors[node.inputs[0]].shape
        k_h = tensors[node.inputs[1]].shape[1]
        reread = max(0, (k_h - 1) * op.dilation[0] + 1 - op.stride[0])
        return int(DSP_RING_MACS_PER_BYTE * reread * in_shape[2] * in_shape[3])
    if isinstance(op, (ir.Conv2D, ir.FullyConnected)):
        return int(DSP_WIDEN_MACS_PER_WEIGHT * tensors[node.inputs[1]].size)
    return 0


def call_costs(tensors: dict[str, ir.Tensor], nodes, options: StreamOptions) -> tuple[int, ...]:
    """MAC-eq of one more call of each of ``nodes`` (a stage's layers, in order)."""
    return tuple(options.call_cost_macs
                 + (dsp_call_macs(tensors, n) if options.dsp_calls else 0) for n in nodes)


def overhead_macs(plan: Schedule, costs: tuple[int, ...]) -> int:
    """The stage's extra work in MAC equivalents: moved words and, per layer, the calls
    beyond one at that layer's ``costs``."""
    extra = sum(cost * (plan.calls(j) - 1) for j, cost in enumerate(costs))
    return -(-plan.moved_bytes() // 4) + extra


# ----------------------------------------------------------------------------- candidates


def _chains(graph: ir.Graph, options: StreamOptions) -> list[list[int]]:
    """Maximal runs of consecutive streamable nodes, each reading the one before, whose
    tensors in between have no other reader and are not the graph's output."""
    chains: list[list[int]] = []
    for i, node in enumerate(graph.nodes):
        rows = layer_rows(graph.tensors, node)
        if rows is None or (options.row_align > 1 and (
                rows.in_row_bytes % options.row_align or rows.out_row_bytes % options.row_align)):
            continue
        if chains and chains[-1][-1] == i - 1:
            prev = graph.nodes[i - 1]
            link = prev.outputs[0]
            if (node.inputs[0] == link and link not in graph.outputs
                    and len(graph.consumers(link)) == 1):
                chains[-1].append(i)
                continue
        chains.append([i])
    return [c for c in chains if len(c) >= 2]


def best_bands(graph: ir.Graph, indices: list[int], options: StreamOptions
               ) -> tuple[int, int, int, Schedule] | None:
    """(band_rows, slack_rows, chunk_rows, schedule) with the smallest windows whose
    overhead fits the limit (ties: less overhead), or None when none fits."""
    rows = tuple(layer_rows(graph.tensors, graph.nodes[i]) for i in indices)
    macs = sum(layer_macs(graph.tensors, graph.nodes[i]) for i in indices)
    costs = call_costs(graph.tensors, [graph.nodes[i] for i in indices], options)
    best = None
    for band in BAND_CHOICES:
        for slack in SLACK_CHOICES:
            for chunk in CHUNK_CHOICES:
                plan = schedule(rows, band, slack, chunk)
                cost = overhead_macs(plan, costs)
                if cost > options.max_recompute * macs:
                    continue
                key = (plan.windows_total, cost)
                if best is None or key < best[0]:
                    best = (key, band, slack, chunk, plan)
    return None if best is None else best[1:]


def _live_byte_steps(arena_plan: planner.GraphPlan) -> int:
    """Bytes live summed over the nodes: on equal arenas, the stage that frees more."""
    return sum(b.size * (b.last_use - b.first_use + 1) for b in arena_plan.buffers)


def _peak_node(arena_plan: planner.GraphPlan) -> int:
    """The node at which the most arena bytes are live."""
    times = sorted({b.first_use for b in arena_plan.buffers})
    return max(times, key=lambda t: (sum(b.size for b in arena_plan.buffers
                                          if b.first_use <= t <= b.last_use), -t))


@dataclass(frozen=True)
class _Choice:
    """A stage the pass took: its nodes by name, so it can be re-applied to any graph."""

    nodes: tuple[str, ...]
    band_rows: int
    slack_rows: int
    chunk_rows: int
    name: str


def _apply(graph: ir.Graph, choices: list[_Choice]) -> ir.Graph:
    for choice in choices:
        position = {n.name: i for i, n in enumerate(graph.nodes)}
        graph = fuse(graph, [position[n] for n in choice.nodes], choice.band_rows,
                     choice.slack_rows, choice.chunk_rows, choice.name)
    return graph


def stream(graph: ir.Graph, kernels: str, options: StreamOptions,
           plan_of: Callable[[ir.Graph], planner.GraphPlan]) -> ir.Graph:
    """``graph`` with the stages that shrink its arena most (see the module docstring).
    ``plan_of``: the real memory plan of a candidate graph (codegen.program.planner_for:
    its kernels' scratch and walks, overlays, the io mode), so stages are judged together
    with in-place layers and the input in the arena."""
    if not options.enabled:
        return graph
    current, taken = graph, []
    arena = plan_of(current)
    for round_ in range(MAX_ROUNDS):
        if not arena.buffers:
            break
        peak = _peak_node(arena)
        best: tuple[tuple[int, int], _Choice, ir.Graph, planner.GraphPlan] | None = None
        for chain in _chains(current, options):
            for i in range(len(chain)):
                for j in range(i + 1, min(len(chain), i + MAX_STAGE_LAYERS)):
                    indices = chain[i:j + 1]
                    if not indices[0] - 1 <= peak <= indices[-1] + 1:
                        continue
                    bands = best_bands(current, indices, options)
                    if bands is None:
                        continue
                    nodes = tuple(current.nodes[k].name for k in indices)
                    choice = _Choice(nodes, *bands[:3], f"stream{round_}:{'+'.join(nodes)}")
                    fused = _apply(current, [choice])
                    fused_plan = plan_of(fused)
                    key = (fused_plan.arena_size, _live_byte_steps(fused_plan))
                    if best is None or key < best[0]:
                        best = (key, choice, fused, fused_plan)
        # Equal arenas too, when bytes are freed elsewhere: the peak may move to where the
        # next stage can take it. Stages that end up not helping are dropped below.
        if best is None or best[0] >= (arena.arena_size, _live_byte_steps(arena)):
            break
        _, choice, current, arena = best
        taken.append(choice)
    # Every stage costs instructions: drop each one the arena does not need, last first.
    for choice in reversed(list(taken)):
        rest = [c for c in taken if c is not choice]
        without = _apply(graph, rest)
        if plan_of(without).arena_size <= arena.arena_size:
            taken, current = rest, without
    return current


def stage_macs(graph: ir.Graph, op: ir.StreamedStage) -> int:
    """A stage's MACs: its layers' (a stage recomputes nothing)."""
    tensors = stage_tensors(graph, op)
    return sum(layer_macs(tensors, n) for n in op.nodes)


# ----------------------------------------------------------------------------- report


def stages_report(graph: ir.Graph, options: StreamOptions = StreamOptions()) -> list[dict]:
    """report.json's "streaming": each stage's layers, bands, windows and overhead."""
    out = []
    for node in graph.nodes:
        if not isinstance(node.op, ir.StreamedStage):
            continue
        op = node.op
        plan = stage_schedule(graph, op)
        tensors = stage_tensors(graph, op)
        costs = call_costs(tensors, op.nodes, options)
        layers = []
        for j, inner in enumerate(op.nodes):
            layers.append({
                "name": inner.name, "op": ir.op_name(inner.op),
                "output_shape": list(tensors[inner.outputs[0]].shape),
                "macs": layer_macs(tensors, inner), "recompute_macs": 0,
                "calls": plan.calls(j),
                "window_rows": plan.capacities[j] if j < len(plan.capacities) else None,
                "window_bytes": plan.window_bytes[j] if j < len(plan.capacities) else None,
                "moved_bytes": plan.moved_bytes(j) if j < len(plan.capacities) else 0,
            })
        out.append({"name": node.name, "band_rows": op.band_rows,
                    "slack_rows": op.slack_rows, "chunk_rows": op.chunk_rows,
                    "window_bytes": plan.windows_total,
                    "overhead_macs": overhead_macs(plan, costs), "layers": layers})
    return out
