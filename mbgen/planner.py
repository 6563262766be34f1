"""Static memory planner: places every activation tensor of a graph in one static arena.

``plan_graph(graph, needs)`` turns an ``ir.Graph`` into buffers (liveness, Reshape / Identity
aliasing, the caller's or the arena's input/output, per-node scratch, in-place overlays from
the kernels' declared walks) and places them with ``mbgen.arena.plan``, which knows nothing
about models (its API is re-exported here).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from mbgen import ir
from mbgen.arena import (  # noqa: F401  (the placement API, re-exported for callers)
    DEFAULT_ALIGNMENT, ArenaPlan, Buffer, Overlay, align_up, assert_valid_plan, lower_bound,
    overlay_floor, plan, tflm_greedy_arena, tflm_greedy_plan)
from mbgen.errors import UserError
from mbgen.write_order import WriteOrder


# ----------------------------------------------------------------------------- graph layer

IO_MODES = ("external", "arena")


@dataclass(frozen=True)
class NodeNeeds:
    """What one lowered node asks of the arena (from its kernel instance, never guessed):
    ``scratch_bytes`` live only while it runs, and ``overlays``: input tensors its output
    may start over, each with the walk (``WriteOrder``) that makes that safe."""

    scratch_bytes: int = 0
    overlays: tuple[tuple[str, WriteOrder], ...] = ()


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
    ``external``: tensors in the caller's buffers, as "input" (read-only) or "output";
    empty when ``io`` is "arena" (the model's input and output are arena buffers too).
    ``scratch_offsets``: arena offset of each node's scratch buffer (only nodes that asked).
    ``copies``: (src, dst) tensor pairs whose node must copy bytes rather than alias them
    (a Reshape/Identity from the caller's input straight to the caller's output).
    ``buffers``: what was handed to ``plan``, so benchmarks can compare planners.
    ``overlays``: the in-place pairs used (buffer names: the root tensors), each output
    ``delta`` bytes from its input; ``in_place``: node -> the input tensor it overwrites.
    ``io_roles``: "input"/"output" for the model's input and output tensors and their
    views, in either ``io`` mode (with "arena" they are arena buffers all the same).
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
    overlays: tuple[Overlay, ...] = ()
    in_place: dict[str, str] | None = None
    io: str = "external"
    io_roles: dict[str, str] | None = None   # the model's input/output and their views


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


def _as_needs(value: NodeNeeds | int) -> NodeNeeds:
    return value if isinstance(value, NodeNeeds) else NodeNeeds(scratch_bytes=int(value))


def plan_graph(graph: ir.Graph, needs: Mapping[str, NodeNeeds | int] | None = None,
               alignment: int = DEFAULT_ALIGNMENT, io: str = "external") -> GraphPlan:
    """Plan the arena of ``graph``: see ``GraphPlan``. Pure: the graph is only read.

    ``needs`` maps node names to their ``NodeNeeds`` (a bare int: scratch bytes only).
    ``io`` "external": the model's input and output are the caller's buffers; "arena":
    they are arena buffers like any other (the input's bytes are reused once consumed).
    """
    if io not in IO_MODES:
        raise ValueError(f"io must be one of {IO_MODES}, got {io!r}")
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise UserError(f"model {graph.name!r} has {len(graph.inputs)} inputs and "
                        f"{len(graph.outputs)} outputs; mbgen supports exactly one of each")
    graph_input, graph_output = graph.inputs[0], graph.outputs[0]
    if graph_input == graph_output:
        raise UserError(f"model {graph.name!r} returns its input unchanged: nothing to compile")
    needs = {name: _as_needs(value) for name, value in (needs or {}).items()}
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

    io_roles: dict[str, str] = {}
    copies: list[tuple[str, str]] = []
    buffers: list[Buffer] = []
    members_of: dict[str, list[str]] = {}
    for root, members in alias_sets.items():
        if graph_input in members and graph_output in members:
            # The input is distinct from the output: the view that would join them becomes
            # a copy (external: the caller's input is read-only) or shares them (arena).
            for name in members:
                io_roles[name] = "output" if views_output(name) else "input"
            if io == "external":
                copies.append((sources[graph_output], graph_output))
        elif graph_input in members:
            io_roles.update({name: "input" for name in members})
        elif graph_output in members:
            # The producer writes straight into the output buffer.
            io_roles.update({name: "output" for name in members})
        if io == "external" and root in io_roles:
            continue
        else:
            buffers.append(Buffer(
                name=root,
                size=max(graph.tensors[n].nbytes for n in members),
                first_use=min(first_use[n] for n in members),
                last_use=max(last_use[n] for n in members)))
            members_of[root] = members

    for node_name, need in needs.items():
        if node_name not in node_index:
            raise ValueError(f"scratch requested for unknown node {node_name!r}")
        nbytes = need.scratch_bytes
        if nbytes < 0:
            raise ValueError(f"node {node_name!r} asks for {nbytes} scratch bytes")
        if nbytes == 0:
            continue
        buffer_name = _SCRATCH_PREFIX + node_name
        if buffer_name in activations:
            raise ir.GraphError(f"tensor name {buffer_name!r} clashes with a scratch buffer")
        i = node_index[node_name]
        buffers.append(Buffer(buffer_name, nbytes, i, i))

    candidates = _overlay_candidates(graph, needs, {b.name: b for b in buffers}, root_of,
                                     alignment)
    arena, used = _best_arena(buffers, candidates, alignment)

    offsets: dict[str, int] = {}
    for root, members in members_of.items():
        for name in members:
            offsets[name] = arena.offsets[root]
    scratch_offsets = {node_name: arena.offsets[_SCRATCH_PREFIX + node_name]
                       for node_name, need in needs.items() if need.scratch_bytes > 0}
    lifetimes = {name: Lifetime(first_use[name], last_use[name], graph.tensors[name].nbytes,
                                offsets.get(name))
                 for name in sorted(activations, key=lambda n: (first_use[n], n))}
    return GraphPlan(
        arena_size=arena.arena_size,
        offsets=offsets,
        external=io_roles if io == "external" else {},
        scratch_offsets=scratch_offsets,
        lifetimes=lifetimes,
        peak_live_bytes=lower_bound(buffers, alignment),
        copies=copies,
        buffers=tuple(buffers),
        strategy=arena.strategy,
        alignment=alignment,
        overlays=tuple(o for o, _ in used),
        in_place={node: tensor for _, (node, tensor) in used},
        io=io,
        io_roles=io_roles,
    )


def _overlay_candidates(graph: ir.Graph, needs: dict[str, NodeNeeds],
                        buffers: dict[str, Buffer], root_of,
                        alignment: int) -> list[tuple[Overlay, tuple[str, str]]]:
    """One overlay per node that declared a walk over an arena input dying at that node,
    with its output in the arena too: (overlay, (node, input tensor))."""
    found = []
    for i, node in enumerate(graph.nodes):
        need = needs.get(node.name)
        if need is None or not need.overlays:
            continue
        out = root_of(node.outputs[0])
        for tensor, order in need.overlays:
            if tensor not in node.inputs:
                raise ValueError(f"{node.name}: declares a walk over {tensor!r}, not an input")
            if (order.input_bytes, order.output_bytes) != (
                    graph.tensors[tensor].nbytes, graph.tensors[node.outputs[0]].nbytes):
                raise ValueError(f"{node.name}: its walk has other sizes than its tensors")
            src = root_of(tensor)
            if src == out or src not in buffers or out not in buffers:
                continue
            if buffers[src].last_use != i or buffers[out].first_use != i:
                continue   # the input is read later (or the output was made earlier)
            delta = order.best_delta() // alignment * alignment   # floor keeps it safe
            found.append((Overlay(src, out, delta), (node.name, tensor)))
            break
    return found


def _best_arena(buffers: list[Buffer], candidates: list[tuple[Overlay, tuple[str, str]]],
                alignment: int) -> tuple[ArenaPlan, list[tuple[Overlay, tuple[str, str]]]]:
    """The smallest arena over a few choices of overlays: none, all, and a greedy pick.

    A chain of overlays keeps its relative offsets for the whole run, so a long chain drifts
    and its extent can cost more than the overlays save (MobileNet's whole backbone is one
    chain). The greedy pick takes overlays at the biggest layers first and keeps one only
    if ``overlay_floor`` (busiest node, widest chain) does not rise."""
    options = [[], list(candidates), _greedy_overlays(buffers, candidates, alignment)]
    best: tuple[ArenaPlan, list] | None = None
    tried: set[tuple[int, ...]] = set()
    for chosen in options:
        key = tuple(sorted(id(c) for c in chosen))
        if key in tried:
            continue
        tried.add(key)
        trial = plan(buffers, alignment, [o for o, _ in chosen])
        if best is None or trial.arena_size < best[0].arena_size:
            best = (trial, chosen)
    assert best is not None
    return best


def _greedy_overlays(buffers: list[Buffer], candidates: list[tuple[Overlay, tuple[str, str]]],
                     alignment: int) -> list[tuple[Overlay, tuple[str, str]]]:
    size = {b.name: align_up(b.size, alignment) for b in buffers}
    order = sorted(candidates, key=lambda c: -(size[c[0].input] + size[c[0].output]))
    chosen: list[tuple[Overlay, tuple[str, str]]] = []
    bound = overlay_floor(buffers, [], alignment)
    for candidate in order:
        trial = chosen + [candidate]
        floor = overlay_floor(buffers, [o for o, _ in trial], alignment)
        if floor <= bound:
            chosen, bound = trial, floor
    return chosen


def free_bytes_beside(plan: GraphPlan, graph: ir.Graph) -> dict[str, int]:
    """Per node: the largest gap of the planned arena while it runs, its own scratch taken
    out, i.e. how much scratch it could have without the arena growing if every other
    buffer stayed where it is."""
    placed = []   # (first_use, last_use, start, end) of every arena buffer
    for b in plan.buffers:
        if b.name.startswith(_SCRATCH_PREFIX):
            offset = plan.scratch_offsets.get(b.name[len(_SCRATCH_PREFIX):])
        else:
            offset = plan.offsets.get(b.name)
        if offset is not None:
            placed.append((b.first_use, b.last_use, offset, offset + b.size, b.name))
    free = {}
    for i, node in enumerate(graph.nodes):
        own = _SCRATCH_PREFIX + node.name
        spans = sorted((start, end) for first, last, start, end, name in placed
                       if first <= i <= last and name != own)
        gap, cursor = 0, 0
        for start, end in spans:
            gap = max(gap, start - cursor)
            cursor = max(cursor, end)
        free[node.name] = max(gap, plan.arena_size - cursor)
    return free
