"""A streamed stage's straight list of band calls and moves, folded into counted loops.

In its steady state a stage repeats the same few calls with every pointer moved on by the
same number of bytes per repeat. ``fold_loops`` finds such runs and turns each into one
``StepLoop``: the body printed once, each pointer a ``SteppedRef`` (base offset plus a
stride per iteration of the loop counter). Pure: the steps in, the same work out.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mbgen.codegen.records import BufferRef

MIN_REPEATS = 3
MAX_PERIOD = 96
LOOP_COUNTER = "band"    # the C loop variable the template declares and SteppedRef prints


@dataclass(frozen=True)
class SteppedRef(BufferRef):
    """A pointer inside a loop: ``offset + stride * counter`` bytes from its buffer."""

    stride: int = 0
    counter: str = LOOP_COUNTER


def _pointers(step) -> tuple[str, ...]:
    """The fields of a step that hold its varying pointers."""
    return ("dst", "src") if hasattr(step, "size") else ("input", "output")


def _refs(step) -> tuple[BufferRef, ...]:
    target = step if hasattr(step, "size") else step.call
    return tuple(getattr(target, f) for f in _pointers(step))


def _signature(step) -> tuple:
    """What must be equal for two steps to be one loop body step but for their pointers."""
    kinds = tuple((ref.kind, ref.name) for ref in _refs(step))   # same buffer, symbolic too
    if hasattr(step, "size"):
        return ("move", step.size, kinds)
    return ("band", step.ident, kinds)


def _offsets(step) -> tuple[int, ...]:
    return tuple(ref.offset for ref in _refs(step))


def _repeats(steps: list, start: int, period: int) -> int:
    """How many times steps[start:start + period] repeats from ``start`` with constant
    pointer strides (1 when it does not repeat)."""
    if start + 2 * period > len(steps):
        return 1
    first = steps[start:start + period]
    second = steps[start + period:start + 2 * period]
    if any(_signature(a) != _signature(b) for a, b in zip(first, second)):
        return 1
    strides = [tuple(y - x for x, y in zip(_offsets(a), _offsets(b)))
               for a, b in zip(first, second)]
    count = 2
    while start + (count + 1) * period <= len(steps):
        block = steps[start + count * period:start + (count + 1) * period]
        if any(_signature(a) != _signature(b) or
               _offsets(b) != tuple(o + count * s for o, s in zip(_offsets(a), stride))
               for a, b, stride in zip(first, block, strides)):
            break
        count += 1
    return count


def _stepped(step, later):
    """``step`` with each pointer a SteppedRef striding to where it is in ``later``."""
    target = step if hasattr(step, "size") else step.call
    changes = {}
    for field, ref, next_ref in zip(_pointers(step), _refs(step), _refs(later)):
        changes[field] = SteppedRef(ref.kind, ref.offset, ref.name,
                                    next_ref.offset - ref.offset)
    moved = replace(target, **changes)
    return moved if hasattr(step, "size") else replace(step, call=moved)


@dataclass(frozen=True)
class StepLoop:
    count: int
    body: tuple


def fold_loops(steps: tuple) -> tuple:
    """``steps`` with every run of at least MIN_REPEATS equal blocks made one StepLoop."""
    steps = list(steps)
    folded: list = []
    at = 0
    while at < len(steps):
        best = (0, 1, 1)     # (steps saved, period, repeats)
        for period in range(1, min(MAX_PERIOD, (len(steps) - at) // MIN_REPEATS) + 1):
            if _signature(steps[at]) != _signature(steps[at + period]):
                continue
            count = _repeats(steps, at, period)
            if count >= MIN_REPEATS and (count - 1) * period > best[0]:
                best = ((count - 1) * period, period, count)
        _, period, count = best
        if count >= MIN_REPEATS:
            body = tuple(_stepped(steps[at + j], steps[at + period + j]) for j in range(period))
            folded.append(StepLoop(count, body))
            at += period * count
        else:
            folded.append(steps[at])
            at += 1
    return tuple(folded)


def unfold(steps: tuple) -> list[tuple[str, tuple[int, ...]]]:
    """Every call a folded schedule makes, as (signature text, pointer offsets): for tests."""
    out = []
    for step in steps:
        if isinstance(step, StepLoop):
            for i in range(step.count):
                for inner in step.body:
                    out.append((repr(_signature(inner)),
                                tuple(r.offset + r.stride * i for r in _refs(inner))))
        else:
            out.append((repr(_signature(step)), _offsets(step)))
    return out
