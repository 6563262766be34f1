"""Static memory planner: places every activation tensor of a graph in one static arena.

Two layers:

* ``plan(buffers)`` knows nothing about models. It takes buffers with a size and an inclusive
  lifetime ``[first_use, last_use]`` (node indices) and returns aligned offsets such that no
  two buffers that are live at the same time share a byte.
* ``plan_graph(graph, scratch)`` turns an ``ir.Graph`` into such buffers (liveness, Reshape /
  Identity aliasing, caller-owned input/output, per-node scratch) and maps the offsets back.

The core placement is the greedy-by-size heuristic of TFLM's ``GreedyMemoryPlanner``: largest
buffer first, each at the lowest offset that does not collide with an already placed buffer
whose lifetime overlaps. ``plan`` runs it under several deterministic orderings (and a
best-fit variant) and keeps the smallest arena. One of those orderings is exactly TFLM's, so
the result is never larger than ``tflm_greedy_arena`` on the same buffers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from mbgen import ir
from mbgen.errors import UserError

DEFAULT_ALIGNMENT = 16  # CMSIS-NN and TFLM both keep arena buffers 16-byte aligned

# How often ``plan`` re-runs the placement with the buffers at the top of the arena moved to
# the front of the order. Each try is one O(n^2) placement; a handful is plenty in practice.
_MAX_REFINEMENTS = 8


# ----------------------------------------------------------------------------- core planner


@dataclass(frozen=True)
class Buffer:
    """A block of ``size`` bytes live from node ``first_use`` to node ``last_use`` inclusive."""

    name: str
    size: int
    first_use: int
    last_use: int

    def overlaps_in_time(self, other: "Buffer") -> bool:
        return self.first_use <= other.last_use and other.first_use <= self.last_use


@dataclass(frozen=True)
class ArenaPlan:
    """Byte offset of every buffer in the arena; ``strategy`` names the ordering that won."""

    offsets: dict[str, int]
    arena_size: int
    strategy: str


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def _check_inputs(buffers: Sequence[Buffer], alignment: int) -> None:
    if alignment < 1:
        raise ValueError(f"alignment must be >= 1, got {alignment}")
    seen: set[str] = set()
    for buf in buffers:
        if buf.name in seen:
            raise ValueError(f"duplicate buffer name {buf.name!r}")
        seen.add(buf.name)
        if buf.size < 0:
            raise ValueError(f"buffer {buf.name!r} has negative size {buf.size}")
        if buf.first_use > buf.last_use:
            raise ValueError(f"buffer {buf.name!r} is last used ({buf.last_use}) "
                             f"before it is first used ({buf.first_use})")


def lower_bound(buffers: Sequence[Buffer], alignment: int = DEFAULT_ALIGNMENT) -> int:
    """The largest sum of (aligned) sizes live at one node: no placement can beat it."""
    _check_inputs(buffers, alignment)
    # The live sum only grows where a buffer starts, so those are the only times to look at.
    peak = 0
    for t in {buf.first_use for buf in buffers}:
        live = sum(align_up(b.size, alignment) for b in buffers if b.first_use <= t <= b.last_use)
        peak = max(peak, live)
    return peak


def _place(order: Sequence[Buffer], sizes: dict[str, int], best_fit: bool) -> dict[str, int]:
    """Place buffers one by one in ``order``; each goes into a gap among the placed buffers
    whose lifetimes overlap it: the lowest gap that fits (first fit, as TFLM does) or the
    tightest one (best fit), else on top of them all."""
    placed: list[tuple[Buffer, int]] = []
    offsets: dict[str, int] = {}
    for buf in order:
        size = sizes[buf.name]
        busy = sorted((offset, offset + sizes[other.name])
                      for other, offset in placed if other.overlaps_in_time(buf))
        candidate = 0
        chosen: int | None = None
        tightest_gap: int | None = None
        for start, end in busy:
            gap = start - candidate
            if gap >= size:
                if not best_fit:
                    chosen = candidate
                    break
                if tightest_gap is None or gap < tightest_gap:
                    tightest_gap, chosen = gap, candidate
            candidate = max(candidate, end)
        offset = candidate if chosen is None else chosen
        offsets[buf.name] = offset
        placed.append((buf, offset))
    return offsets


def _arena_size(offsets: dict[str, int], sizes: dict[str, int], alignment: int) -> int:
    top = max((offsets[name] + sizes[name] for name in offsets), default=0)
    return align_up(top, alignment)


# Orderings: each returns the buffers in the order they are placed. All are deterministic; ties
# fall back to the caller's order (the position in the input list).

def _by_key(key: Callable[[int, Buffer, int], tuple[int, ...]]
            ) -> Callable[[Sequence[Buffer], dict[str, int]], list[Buffer]]:
    def order(buffers: Sequence[Buffer], sizes: dict[str, int]) -> list[Buffer]:
        ranked = sorted(enumerate(buffers), key=lambda ib: key(ib[0], ib[1], sizes[ib[1].name]))
        return [buf for _, buf in ranked]
    return order


def _lifetime(buf: Buffer) -> int:
    return buf.last_use - buf.first_use + 1


def _breadth_order(buffers: Sequence[Buffer], sizes: dict[str, int]) -> list[Buffer]:
    """Greedy by breadth (Pisarchyk & Lee, 2020): visit nodes from the one with the most live
    bytes down, and at each node take its not-yet-ordered buffers largest first."""
    times = sorted({t for b in buffers for t in (b.first_use, b.last_use)})
    live_at = {t: [b for b in buffers if b.first_use <= t <= b.last_use] for t in times}
    breadth = {t: sum(sizes[b.name] for b in live) for t, live in live_at.items()}
    index = {buf.name: i for i, buf in enumerate(buffers)}
    ordered: list[Buffer] = []
    taken: set[str] = set()
    for t in sorted(times, key=lambda t: (-breadth[t], t)):
        for buf in sorted(live_at[t], key=lambda b: (-sizes[b.name], index[b.name])):
            if buf.name not in taken:
                taken.add(buf.name)
                ordered.append(buf)
    return ordered


def _conflict_order(buffers: Sequence[Buffer], sizes: dict[str, int]) -> list[Buffer]:
    """Most constrained first: by the bytes of everything that is live alongside a buffer."""
    pressure = {b.name: sum(sizes[o.name] for o in buffers if o.overlaps_in_time(b))
                for b in buffers}
    index = {buf.name: i for i, buf in enumerate(buffers)}
    return sorted(buffers, key=lambda b: (-pressure[b.name], -sizes[b.name], index[b.name]))


_ORDERINGS: dict[str, Callable[[Sequence[Buffer], dict[str, int]], list[Buffer]]] = {
    # Tried in this order; on equal arenas the earlier one wins.
    "size": _by_key(lambda i, b, s: (-s, b.first_use, i)),
    # TFLM: size descending with a stable sort, so equal sizes keep the caller's order.
    "tflm": _by_key(lambda i, b, s: (-s, i)),
    "size_x_lifetime": _by_key(lambda i, b, s: (-s * _lifetime(b), -s, b.first_use, i)),
    "lifetime": _by_key(lambda i, b, s: (-_lifetime(b), -s, b.first_use, i)),
    "first_use": _by_key(lambda i, b, s: (b.first_use, -s, i)),
    "breadth": _breadth_order,
    "conflict": _conflict_order,
}


def tflm_greedy_plan(buffers: Sequence[Buffer], alignment: int = DEFAULT_ALIGNMENT) -> ArenaPlan:
    """TFLM's GreedyMemoryPlanner as its MicroAllocator drives it: sizes rounded up to the
    alignment, stable sort by size descending, first fit. For comparison only."""
    _check_inputs(buffers, alignment)
    sizes = {b.name: align_up(b.size, alignment) for b in buffers}
    offsets = _place(_ORDERINGS["tflm"](buffers, sizes), sizes, best_fit=False)
    return ArenaPlan(offsets, _arena_size(offsets, sizes, alignment), "tflm")


def tflm_greedy_arena(buffers: Sequence[Buffer], alignment: int = DEFAULT_ALIGNMENT) -> int:
    """The arena size TFLM's greedy planner would need for these buffers."""
    return tflm_greedy_plan(buffers, alignment).arena_size


def plan(buffers: Sequence[Buffer], alignment: int = DEFAULT_ALIGNMENT) -> ArenaPlan:
    """Aligned offsets for ``buffers`` in the smallest arena our deterministic heuristics find.

    Never larger than ``tflm_greedy_arena(buffers, alignment)``; never below ``lower_bound``.
    """
    _check_inputs(buffers, alignment)
    buffers = list(buffers)
    # Rounding every size up keeps every offset (a sum of sizes) aligned.
    sizes = {b.name: align_up(b.size, alignment) for b in buffers}
    floor = lower_bound(buffers, alignment)

    best: tuple[int, str, list[Buffer], dict[str, int]] | None = None

    def consider(strategy: str, order: list[Buffer], best_fit: bool) -> None:
        nonlocal best
        offsets = _place(order, sizes, best_fit)
        arena = _arena_size(offsets, sizes, alignment)
        if best is None or arena < best[0]:
            best = (arena, strategy, order, offsets)

    for name, ordering in _ORDERINGS.items():
        order = ordering(buffers, sizes)
        for best_fit in (False, True):
            consider(name + ("+best_fit" if best_fit else ""), order, best_fit)
            if best is not None and best[0] == floor:
                break
        if best is not None and best[0] == floor:
            break

    # Refinement: the buffers touching the top of the arena decide its size, so place them
    # first (lowest) and let the rest fill in around them; repeat from the new placement.
    assert best is not None
    _, strategy, order, offsets = best
    base = strategy.split("+")[0]
    seen_orders: set[tuple[str, ...]] = set()
    for _ in range(_MAX_REFINEMENTS):
        if best[0] == floor:
            break
        top = max(offsets[b.name] + sizes[b.name] for b in order)
        on_top = [b for b in order if offsets[b.name] + sizes[b.name] == top]
        order = on_top + [b for b in order if b not in on_top]
        key = tuple(b.name for b in order)
        if key in seen_orders:
            break
        seen_orders.add(key)
        placements = [_place(order, sizes, best_fit) for best_fit in (False, True)]
        arenas = [_arena_size(p, sizes, alignment) for p in placements]
        pick = 0 if arenas[0] <= arenas[1] else 1
        offsets = placements[pick]
        if arenas[pick] < best[0]:
            best = (arenas[pick], f"{base}+promote" + ("+best_fit" if pick else ""),
                    order, offsets)

    assert best is not None
    arena, strategy, _, offsets = best
    result = ArenaPlan(dict(offsets), arena, strategy)
    if __debug__:
        assert_valid_plan(buffers, result, alignment)
    return result


def assert_valid_plan(buffers: Sequence[Buffer], arena_plan: ArenaPlan,
                      alignment: int = DEFAULT_ALIGNMENT) -> None:
    """Raise AssertionError unless every buffer is placed, aligned, inside the arena and
    disjoint from every buffer live at the same time."""
    offsets = arena_plan.offsets
    assert arena_plan.arena_size % alignment == 0, "arena size is not aligned"
    for buf in buffers:
        offset = offsets[buf.name]
        assert offset % alignment == 0, f"{buf.name} at unaligned offset {offset}"
        assert 0 <= offset and offset + buf.size <= arena_plan.arena_size, \
            f"{buf.name} [{offset}, {offset + buf.size}) outside arena {arena_plan.arena_size}"
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if a.size and b.size and a.overlaps_in_time(b):
                a_off, b_off = offsets[a.name], offsets[b.name]
                assert a_off + a.size <= b_off or b_off + b.size <= a_off, \
                    f"{a.name} and {b.name} are live together and share bytes"


# ----------------------------------------------------------------------------- graph layer


class Lifetime(NamedTuple):
    """One activation tensor, for reports: arena ``offset`` is None when it lives outside."""

    first_use: int
    last_use: int
    size: int
    offset: int | None


@dataclass(frozen=True)
class GraphPlan:
    """Where each activation tensor of a graph lives.

    ``offsets``: arena byte offset of every tensor placed in the arena (aliases share one).
    ``external``: tensors in the caller's buffers, as "input" (read-only) or "output".
    ``scratch_offsets``: arena offset of each node's scratch buffer (only nodes that asked).
    ``copies``: (src, dst) tensor pairs whose node must copy bytes rather than alias them
    (a Reshape/Identity from the caller's input straight to the caller's output).
    ``buffers``: what was handed to ``plan``, so benchmarks can compare planners.
    """

    arena_size: int
    offsets: dict[str, int]
    external: dict[str, str]
    scratch_offsets: dict[str, int]
    lifetimes: dict[str, Lifetime]
    peak_live_bytes: int
    copies: list[tuple[str, str]]
    buffers: tuple[Buffer, ...]
    strategy: str
    alignment: int


_ALIASING_OPS = (ir.Reshape, ir.Identity)
_SCRATCH_PREFIX = "scratch:"


def _view_sources(graph: ir.Graph, activations: set[str]) -> dict[str, str]:
    """tensor -> the tensor it is a byte-for-byte view of (outputs of Reshape / Identity)."""
    sources: dict[str, str] = {}
    for node in graph.nodes:
        if not isinstance(node.op, _ALIASING_OPS) or len(node.outputs) != 1 or not node.inputs:
            continue
        src, dst = node.inputs[0], node.outputs[0]
        # A view of a constant would point into flash; leave that to the node to copy.
        if src in activations and graph.tensors[src].nbytes == graph.tensors[dst].nbytes:
            sources[dst] = src
    return sources


def plan_graph(graph: ir.Graph, scratch: dict[str, int] | None = None,
               alignment: int = DEFAULT_ALIGNMENT) -> GraphPlan:
    """Plan the arena of ``graph``: see ``GraphPlan``. Pure: the graph is only read."""
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UserError(f"model {graph.name!r} has {len(graph.inputs)} inputs and "
                        f"{len(graph.outputs)} outputs; mbgen supports exactly one of each")
    graph_input, graph_output = graph.inputs[0], graph.outputs[0]
    if graph_input == graph_output:
        raise UserError(f"model {graph.name!r} returns its input unchanged: nothing to compile")
    scratch = dict(scratch or {})
    node_index = {node.name: i for i, node in enumerate(graph.nodes)}

    # Liveness: from the producing node to the last reading node, inclusive.
    first_use: dict[str, int] = {graph_input: 0}
    last_use: dict[str, int] = {graph_input: 0}
    for i, node in enumerate(graph.nodes):
        for name in node.outputs:
            if not graph.tensors[name].is_const:
                first_use[name] = i
                last_use[name] = i
        for name in node.inputs:
            if name in first_use:
                last_use[name] = i
    last_node = max(len(graph.nodes) - 1, 0)
    last_use[graph_output] = last_node
    activations = set(first_use)

    # Alias sets: every view joins the set of the tensor it views, rooted at a real tensor.
    sources = _view_sources(graph, activations)

    def root_of(name: str) -> str:
        while name in sources:
            name = sources[name]
        return name

    def views_output(name: str) -> bool:
        """True if ``name`` is the graph output or a view of it."""
        while True:
            if name == graph_output:
                return True
            if name not in sources:
                return False
            name = sources[name]

    alias_sets: dict[str, list[str]] = {}
    for name in sorted(activations, key=lambda n: (first_use[n], n)):
        alias_sets.setdefault(root_of(name), []).append(name)

    external: dict[str, str] = {}
    copies: list[tuple[str, str]] = []
    buffers: list[Buffer] = []
    members_of: dict[str, list[str]] = {}
    for root, members in alias_sets.items():
        if graph_input in members and graph_output in members:
            # The caller's input is read-only and distinct from its output: the view that
            # would join them becomes a copy into the output.
            for name in members:
                external[name] = "output" if views_output(name) else "input"
            copies.append((sources[graph_output], graph_output))
        elif graph_input in members:
            external.update({name: "input" for name in members})
        elif graph_output in members:
            # The producer writes straight into the caller's output buffer.
            external.update({name: "output" for name in members})
        else:
            buffers.append(Buffer(
                name=root,
                size=max(graph.tensors[n].nbytes for n in members),
                first_use=min(first_use[n] for n in members),
                last_use=max(last_use[n] for n in members)))
            members_of[root] = members

    for node_name, nbytes in scratch.items():
        if node_name not in node_index:
            raise ValueError(f"scratch requested for unknown node {node_name!r}")
        if nbytes < 0:
            raise ValueError(f"node {node_name!r} asks for {nbytes} scratch bytes")
        if nbytes == 0:
            continue
        buffer_name = _SCRATCH_PREFIX + node_name
        if buffer_name in activations:
            raise ir.GraphError(f"tensor name {buffer_name!r} clashes with a scratch buffer")
        i = node_index[node_name]
        buffers.append(Buffer(buffer_name, nbytes, i, i))

    arena = plan(buffers, alignment)

    offsets: dict[str, int] = {}
    for root, members in members_of.items():
        for name in members:
            offsets[name] = arena.offsets[root]
    scratch_offsets = {node_name: arena.offsets[_SCRATCH_PREFIX + node_name]
                       for node_name, nbytes in scratch.items() if nbytes > 0}
    lifetimes = {name: Lifetime(first_use[name], last_use[name], graph.tensors[name].nbytes,
                                offsets.get(name))
                 for name in sorted(activations, key=lambda n: (first_use[n], n))}
    return GraphPlan(
        arena_size=arena.arena_size,
        offsets=offsets,
        external=external,
        scratch_offsets=scratch_offsets,
        lifetimes=lifetimes,
        peak_live_bytes=lower_bound(buffers, alignment),
        copies=copies,
        buffers=tuple(buffers),
        strategy=arena.strategy,
        alignment=alignment,
    )
