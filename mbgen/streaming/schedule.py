"""Band arithmetic of a streamed stage: which rows each layer computes when, and where.

A stage is a chain of row-local layers (convolutions, depthwise convolutions). Only the
chain's input and its last output exist whole; every tensor in between lives in a window
of ``capacity`` rows. The last layer computes its output ``band_rows`` rows at a time; each
layer computes the rows of its output its consumer asks for, once, into its window. When a
window has no room left for new rows, the rows the consumer still needs are moved down to
the window's start (a memmove) and the rows before them are forgotten. No row is ever
computed twice, so the stage does exactly the unstreamed MACs; the price is the moves and
the extra kernel calls.

Pure arithmetic on integers: ``schedule`` returns the steps in execution order; the code
generator turns each into a kernel call or a memmove, and ``write_order`` tells the planner
how the stage walks its input and output.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from mbgen.write_order import WriteOrder

WINDOW_ALIGNMENT = 16


@dataclass(frozen=True)
class LayerRows:
    """One layer of a chain along H: what the band arithmetic needs to know."""

    in_h: int
    out_h: int
    kernel: int        # effective kernel height: (k - 1) * dilation + 1
    stride: int
    pad_top: int
    in_row_bytes: int  # W * C bytes of one input row
    out_row_bytes: int

    def input_rows(self, first: int, end: int) -> tuple[int, int]:
        """Input rows [a, b) that output rows [first, end) read (clipped to the image)."""
        top = first * self.stride - self.pad_top
        bottom = (end - 1) * self.stride - self.pad_top + self.kernel
        return max(0, top), min(self.in_h, bottom)

    def band_padding(self, first: int, end: int) -> tuple[int, int]:
        """(top, bottom) zero padding of the band call for output rows [first, end)."""
        a, b = self.input_rows(first, end)
        top = a - (first * self.stride - self.pad_top)
        bottom = (end - 1 - first) * self.stride + self.kernel - (b - a) - top
        return top, bottom


@dataclass(frozen=True)
class Band:
    """Layer ``layer`` computes its output rows [first, end) from input rows
    [in_first, in_end). ``in_row`` / ``out_row``: the row the call's pointer starts at
    inside the buffer it reads / writes (the stage input or output for the ends of the
    chain, else the window)."""

    layer: int
    first: int
    end: int
    in_first: int
    in_end: int
    in_row: int
    out_row: int


@dataclass(frozen=True)
class Move:
    """Window ``window`` (the output of layer ``window``) moves ``rows`` rows starting at
    row ``src_row`` of the window down to its start."""

    window: int
    src_row: int
    rows: int


Step = Band | Move


@dataclass(frozen=True)
class Schedule:
    layers: tuple[LayerRows, ...]
    band_rows: int
    capacities: tuple[int, ...]      # rows of each window (one per intermediate tensor)
    steps: tuple[Step, ...]

    @property
    def window_bytes(self) -> tuple[int, ...]:
        return tuple(c * self.layers[i].out_row_bytes for i, c in enumerate(self.capacities))

    @property
    def window_offsets(self) -> tuple[int, ...]:
        """Byte offset of each window inside the stage's window area (16-byte aligned)."""
        offsets, at = [], 0
        for size in self.window_bytes:
            offsets.append(at)
            at += -(-size // WINDOW_ALIGNMENT) * WINDOW_ALIGNMENT
        return tuple(offsets)

    @property
    def windows_total(self) -> int:
        if not self.capacities:
            return 0
        last = self.window_bytes[-1]
        return self.window_offsets[-1] + -(-last // WINDOW_ALIGNMENT) * WINDOW_ALIGNMENT

    def moved_bytes(self, window: int | None = None) -> int:
        return sum(s.rows * self.layers[s.window].out_row_bytes for s in self.steps
                   if isinstance(s, Move) and window in (None, s.window))

    def calls(self, layer: int | None = None) -> int:
        return sum(1 for s in self.steps if isinstance(s, Band) and layer in (None, s.layer))


# pure, and asked again for the same chains while the streaming pass compares candidates
@lru_cache(maxsize=4096)
def schedule(layers: tuple[LayerRows, ...], band_rows: int, slack_rows: int = 0,
             chunk_rows: int = 0) -> Schedule:
    """The steps that compute the chain's last output ``band_rows`` rows at a time, with
    windows ``slack_rows`` rows larger than the minimum (fewer, larger moves). The layers
    before the last compute at most ``chunk_rows`` rows per call (0: all their consumer
    asks for at once); small chunks keep the windows upstream small."""
    if band_rows < 1 or slack_rows < 0 or chunk_rows < 0 or len(layers) < 2:
        raise ValueError("a stage needs two layers, band_rows >= 1, slack_rows >= 0 "
                         "and chunk_rows >= 0")
    for producer, consumer in zip(layers, layers[1:]):
        if producer.out_h != consumer.in_h or producer.out_row_bytes != consumer.in_row_bytes:
            raise ValueError("the layers of a stage must form a chain")
    # First with windows that compact at every step: the rows each must hold at once.
    needed = _walk(layers, band_rows, chunk_rows, None)[0]
    caps = tuple(min(layers[i].out_h, n + slack_rows) for i, n in enumerate(needed))
    return Schedule(tuple(layers), band_rows, caps,
                    _walk(layers, band_rows, chunk_rows, caps)[1])


def _walk(layers: tuple[LayerRows, ...], band_rows: int, chunk_rows: int,
          caps: tuple[int, ...] | None) -> tuple[list[int], tuple[Step, ...]]:
    """Run the stage on row numbers. ``caps`` None: compact whenever rows can be dropped.
    Returns the most rows each window held at once and the steps."""
    count = len(layers) - 1
    lo, hi, most = [0] * count, [0] * count, [0] * count
    steps: list[Step] = []

    def produce(j: int, first: int, end: int, out_row: int) -> None:
        a, b = layers[j].input_rows(first, end)
        if j == 0:
            in_row = a
        else:
            ensure(j - 1, a, b)
            in_row = a - lo[j - 1]
        steps.append(Band(j, first, end, a, b, in_row, out_row))

    def ensure(i: int, a: int, b: int) -> None:
        if b <= hi[i]:
            return
        if a >= hi[i]:                      # nothing held is needed any more
            lo[i] = hi[i] = a
        while hi[i] < b:
            end = min(b, hi[i] + chunk_rows) if chunk_rows else b
            if a > lo[i] and (caps is None or end - lo[i] > caps[i]):
                steps.append(Move(i, a - lo[i], hi[i] - a))
                lo[i] = a
            if caps is not None and end - lo[i] > caps[i]:
                raise AssertionError(f"window {i} of {caps[i]} rows cannot hold "
                                     f"rows [{lo[i]}, {end})")
            most[i] = max(most[i], end - lo[i])
            start = hi[i]
            produce(i, start, end, start - lo[i])
            hi[i] = end

    last = layers[-1]
    for first in range(0, last.out_h, band_rows):
        produce(count, first, min(first + band_rows, last.out_h), first)
    return most, tuple(steps)


def write_order(plan: Schedule) -> WriteOrder:
    """How the stage walks its input and output, for the planner. Step k is everything up
    to and including the k-th call of the last layer: it writes output rows in ascending
    order up to that call's end; from its start on, the stage reads no input row below the
    lowest one the first layer reads in this or a later step."""
    first, last = plan.layers[0], plan.layers[-1]
    groups: list[list[Band]] = [[]]
    for step in plan.steps:
        if isinstance(step, Band):
            groups[-1].append(step)
            if step.layer == len(plan.layers) - 1:
                groups.append([])
    groups = [g for g in groups if g]
    write_end, read_start = [], []
    for k, group in enumerate(groups):
        reads = [s.in_first for g in groups[k:] for s in g if s.layer == 0]
        write_end.append(group[-1].end * last.out_row_bytes)
        read_start.append((min(reads) if reads else first.in_h) * first.in_row_bytes)
    return WriteOrder(first.in_h * first.in_row_bytes, last.out_h * last.out_row_bytes,
                      tuple(write_end), tuple(read_start))
