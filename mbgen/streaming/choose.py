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
word, and per extra call the kernel set's ``call_cost_macs``: CALL_COST_MACS for portable
C; the DSP and Helium kernels pay more per call, as they re-read their input rows into a
ring and widen their weights each time) and must stay within ``max_recompute`` times the
stage's MACs.
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
# ... of an mbgen / cmsis-nn / Helium kernel. Measured on mbv1_0.25_128's 1-row stage on M7
# the real cost is higher (about 6,700 instructions per extra call: the depthwise ring refill
# and the int8 weights widened per call); 1024 halves that stage's calls (13.80 M instead of
# 14.58 M instructions, 50,752 B of SRAM instead of 50,200) while person_detect keeps its
# small windows (24,736 B, 8.15 M instead of 8.36 M). Larger values cost person_detect's
# SRAM (4096: 35.2 KB).
SIMD_CALL_COST_MACS = 1024
BAND_CHOICES = (1, 2, 4, 8)
SLACK_CHOICES = (0, 2, 6)
CHUNK_CHOICES = (1, 2, 0)


@dataclass(frozen=True)
class StreamOptions:
    enabled: bool = True
    max_recompute: float = 0.10   # extra work allowed, as a fraction of the stage's MACs
    row_align: int = 1            # every row of a stage starts this aligned (SIMD kernels)
    call_cost_macs: int = CALL_COST_MACS   # what one more kernel call costs


def layer_macs(tensors: dict[str, ir.Tensor], node: ir.Node) -> int:
    """codegen.report's MACs of a node whose tensors are in ``tensors`` (a stage's too)."""
    from mbgen.codegen.report import layer_macs as macs
    return macs(ir.Graph("", tensors, [], [], []), node)


def overhead_macs(plan: Schedule, call_cost: int = CALL_COST_MACS) -> int:
    """The stage's extra work in MAC equivalents: moved words and the calls beyond one per
    layer."""
    extra_calls = plan.calls() - len(plan.layers)
    return -(-plan.moved_bytes() // 4) + call_cost * extra_calls


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
    best = None
    for band in BAND_CHOICES:
        for slack in SLACK_CHOICES:
            for chunk in CHUNK_CHOICES:
                plan = schedule(rows, band, slack, chunk)
                cost = overhead_macs(plan, options.call_cost_macs)
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


def stages_report(graph: ir.Graph, call_cost: int = CALL_COST_MACS) -> list[dict]:
    """report.json's "streaming": each stage's layers, bands, windows and overhead."""
    out = []
    for node in graph.nodes:
        if not isinstance(node.op, ir.StreamedStage):
            continue
        op = node.op
        plan = stage_schedule(graph, op)
        tensors = stage_tensors(graph, op)
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
                    "overhead_macs": overhead_macs(plan, call_cost), "layers": layers})
    return out
