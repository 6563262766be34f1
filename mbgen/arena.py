"""Arena placement: aligned offsets for buffers with lifetimes, knowing nothing about models.

``plan(buffers, overlays=...)`` returns offsets such that no two buffers live at the same
time share a byte, except the pairs of an ``Overlay``: a kernel that walks its input and
output in ascending order (``mbgen.write_order``) may write its output ``delta`` bytes from
its input's start, over input it has consumed. Overlaid buffers form chains placed as one
unit with fixed relative offsets; each member keeps its own lifetime, so the bytes a member
does not use yet (or any more) stay free for the others.

The core placement is the greedy-by-size heuristic of TFLM's ``GreedyMemoryPlanner``: largest
buffer first, each at the lowest offset that does not collide with an already placed buffer
whose lifetime overlaps. ``plan`` runs it under several deterministic orderings (and a
best-fit variant) and keeps the smallest arena. One of those orderings is exactly TFLM's, so
without overlays the result is never larger than ``tflm_greedy_arena`` on the same buffers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

DEFAULT_ALIGNMENT = 16  # CMSIS-NN and TFLM both keep arena buffers 16-byte aligned

# How often ``plan`` re-runs the placement with the buffers at the top of the arena moved to
# the front of the order. Each try is one O(n^2) placement; a handful is plenty in practice.
_MAX_REFINEMENTS = 8


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
        offsets.update(_place_one(buf, placed, sizes, best_fit))
        placed.append((buf, offsets[buf.name]))
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


@dataclass(frozen=True)
class Overlay:
    """``output`` starts ``delta`` bytes after ``input``'s start (negative: before it) and may
    share its bytes: the kernel between them writes only input it has consumed."""

    input: str
    output: str
    delta: int


Unit = tuple[tuple[Buffer, int], ...]   # members and their offsets relative to the unit


def _units(buffers: Sequence[Buffer], overlays: Sequence[Overlay],
           alignment: int) -> dict[str, Unit]:
    """Overlaid buffers joined into chains (each buffer is the input of at most one overlay
    and the output of at most one), keyed by the unit's first buffer; the rest alone."""
    by_name = {b.name: b for b in buffers}
    after = {o.input: o for o in overlays}
    before = {o.output: o for o in overlays}
    if len(after) != len(overlays) or len(before) != len(overlays):
        raise ValueError("a buffer may be overlaid by one output and overlay one input")
    for o in overlays:
        if o.input not in by_name or o.output not in by_name or o.input == o.output:
            raise ValueError(f"overlay {o} names unknown buffers")
        if o.delta % alignment:
            raise ValueError(f"overlay {o} is not aligned to {alignment}")
    units: dict[str, Unit] = {}
    for buf in buffers:
        if buf.name in before:
            continue   # placed with the head of its chain
        chain, rel, name, seen = [(buf, 0)], 0, buf.name, {buf.name}
        while name in after:
            rel += after[name].delta
            name = after[name].output
            if name in seen:
                raise ValueError("overlays form a cycle")
            seen.add(name)
            chain.append((by_name[name], rel))
        low = min(r for _, r in chain)
        units[buf.name] = tuple((b, r - low) for b, r in chain)
        for i, (a, ra) in enumerate(chain):   # only neighbours may share bytes
            for b, rb in chain[i + 2:]:
                if a.overlaps_in_time(b) and ra < rb + b.size and rb < ra + a.size:
                    raise ValueError(f"overlays put {a.name} and {b.name}, live together, "
                                     "on the same bytes")
    if sum(len(u) for u in units.values()) != len(buffers):
        raise ValueError("overlays form a cycle")
    return units


def _hull(key: str, unit: Unit, sizes: dict[str, int]) -> Buffer:
    """One buffer standing for a unit in the orderings: its extent and whole lifetime."""
    if len(unit) == 1:
        return unit[0][0]
    return Buffer(key, max(r + sizes[b.name] for b, r in unit),
                  min(b.first_use for b, _ in unit), max(b.last_use for b, _ in unit))


def _lowest_base(unit: Unit, placed: list[tuple[Buffer, int]], sizes: dict[str, int]) -> int:
    """The lowest offset of a unit at which no member shares a byte with a placed buffer
    live at the same time (first fit)."""
    blocked = []   # open intervals of forbidden unit offsets
    for buf, rel in unit:
        size = sizes[buf.name]
        for other, offset in placed:
            if size and sizes[other.name] and other.overlaps_in_time(buf):
                blocked.append((offset - rel - size, offset + sizes[other.name] - rel))
    base = 0
    for low, high in sorted(blocked):
        if low >= base:
            break
        base = max(base, high)
    return base


def _place_units(order: Sequence[Buffer], units: dict[str, Unit], sizes: dict[str, int],
                 best_fit: bool) -> dict[str, int]:
    """``_place`` where a hull stands for a unit: units go to their lowest fit."""
    singles = [h for h in order if len(units[h.name]) == 1]
    if len(singles) == len(order):
        return _place(order, sizes, best_fit)
    placed: list[tuple[Buffer, int]] = []
    offsets: dict[str, int] = {}
    for hull in order:
        unit = units[hull.name]
        if len(unit) == 1:
            # the single-buffer gap search of _place, against everything placed so far
            buf = unit[0][0]
            offsets.update(_place_one(buf, placed, sizes, best_fit))
            placed.append((buf, offsets[buf.name]))
            continue
        base = _lowest_base(unit, placed, sizes)
        for buf, rel in unit:
            offsets[buf.name] = base + rel
            placed.append((buf, base + rel))
    return offsets


def _place_one(buf: Buffer, placed: list[tuple[Buffer, int]], sizes: dict[str, int],
               best_fit: bool) -> dict[str, int]:
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
    return {buf.name: candidate if chosen is None else chosen}


def _units_lower_bound(units: dict[str, Unit], sizes: dict[str, int]) -> int:
    """``lower_bound`` where each unit counts the extent of its members live at a time."""
    peak = 0
    for t in {b.first_use for unit in units.values() for b, _ in unit}:
        live = 0
        for unit in units.values():
            spans = [(r, r + sizes[b.name]) for b, r in unit
                     if b.first_use <= t <= b.last_use and sizes[b.name]]
            if spans:
                live += max(e for _, e in spans) - min(s for s, _ in spans)
        peak = max(peak, live)
    return peak


def overlay_floor(buffers: Sequence[Buffer], overlays: Sequence[Overlay],
                  alignment: int = DEFAULT_ALIGNMENT) -> int:
    """A lower bound of ``plan(buffers, alignment, overlays).arena_size``: the bytes live at
    the busiest node, and the whole extent of every unit (a unit's members keep their
    places for the whole run, so the arena holds all of them at once)."""
    sizes = {b.name: align_up(b.size, alignment) for b in buffers}
    units = _units(buffers, overlays, alignment)
    hull = max((max(r + sizes[b.name] for b, r in unit) for unit in units.values()), default=0)
    return max(hull, _units_lower_bound(units, sizes))


def plan(buffers: Sequence[Buffer], alignment: int = DEFAULT_ALIGNMENT,
         overlays: Sequence[Overlay] = ()) -> ArenaPlan:
    """Aligned offsets for ``buffers`` in the smallest arena our deterministic heuristics find.

    Without overlays never larger than ``tflm_greedy_arena(buffers, alignment)``; never
    below ``lower_bound`` (with overlays: below the live extent of every unit).
    """
    _check_inputs(buffers, alignment)
    buffers = list(buffers)
    # Rounding every size up keeps every offset (a sum of sizes) aligned.
    sizes = {b.name: align_up(b.size, alignment) for b in buffers}
    units = _units(buffers, overlays, alignment)
    hulls = [_hull(key, unit, sizes) for key, unit in units.items()]
    units = {h.name: units[key] for h, key in zip(hulls, units)}
    hull_sizes = {h.name: align_up(h.size, alignment) for h in hulls}
    floor = _units_lower_bound(units, sizes)

    best: tuple[int, str, list[Buffer], dict[str, int]] | None = None

    def consider(strategy: str, order: list[Buffer], best_fit: bool) -> None:
        nonlocal best
        offsets = _place_units(order, units, sizes, best_fit)
        arena = _arena_size(offsets, sizes, alignment)
        if best is None or arena < best[0]:
            best = (arena, strategy, order, offsets)

    for name, ordering in _ORDERINGS.items():
        order = ordering(hulls, hull_sizes)
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

    def top_of(hull: Buffer, offsets: dict[str, int]) -> int:
        return max(offsets[b.name] + sizes[b.name] for b, _ in units[hull.name])

    for _ in range(_MAX_REFINEMENTS):
        if best[0] == floor:
            break
        top = max(top_of(h, offsets) for h in order)
        on_top = [h for h in order if top_of(h, offsets) == top]
        order = on_top + [h for h in order if h not in on_top]
        key = tuple(h.name for h in order)
        if key in seen_orders:
            break
        seen_orders.add(key)
        placements = [_place_units(order, units, sizes, best_fit) for best_fit in (False, True)]
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
        assert_valid_plan(buffers, result, alignment, overlays)
    return result


def assert_valid_plan(buffers: Sequence[Buffer], arena_plan: ArenaPlan,
                      alignment: int = DEFAULT_ALIGNMENT,
                      overlays: Sequence[Overlay] = ()) -> None:
    """Raise AssertionError unless every buffer is placed, aligned, inside the arena and
    disjoint from every buffer live at the same time, except an overlay's pair, which must
    sit exactly ``delta`` apart."""
    offsets = arena_plan.offsets
    assert arena_plan.arena_size % alignment == 0, "arena size is not aligned"
    for buf in buffers:
        offset = offsets[buf.name]
        assert offset % alignment == 0, f"{buf.name} at unaligned offset {offset}"
        assert 0 <= offset and offset + buf.size <= arena_plan.arena_size, \
            f"{buf.name} [{offset}, {offset + buf.size}) outside arena {arena_plan.arena_size}"
    declared = set()
    for o in overlays:
        assert offsets[o.output] - offsets[o.input] == o.delta, f"{o} not at its delta"
        declared |= {(o.input, o.output), (o.output, o.input)}
    for i, a in enumerate(buffers):
        for b in buffers[i + 1:]:
            if a.size and b.size and a.overlaps_in_time(b) and (a.name, b.name) not in declared:
                a_off, b_off = offsets[a.name], offsets[b.name]
                assert a_off + a.size <= b_off or b_off + b.size <= a_off, \
                    f"{a.name} and {b.name} are live together and share bytes"
