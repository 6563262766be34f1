"""How a kernel walks its input and output, so its output may overwrite input it has consumed.

A kernel that writes its output in ascending byte order and reads its input in ascending
byte order can share bytes with its input (TinyEngine's in-place layers, MCUNetV2's
streamed stages): the output starts ``delta`` bytes from the input's start, and no step may
write over input bytes that this or a later step still reads.

A kernel declares that walk as ``WriteOrder``: step ``k`` writes output bytes below
``write_end[k]`` and, from the start of step ``k`` on, reads no input byte below
``read_start[k]``. The planner (pure arithmetic, no kernel knowledge) turns it into the
placement; a test simulates the walk on one byte array to prove the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class WriteOrder:
    """The steps of one kernel call, in the order it runs them (see the module docstring).

    ``write_end`` is non-decreasing and ends at the output's size; ``read_start`` is
    non-decreasing, starts at 0 and stays at most the input's size.
    """

    input_bytes: int
    output_bytes: int
    write_end: tuple[int, ...]
    read_start: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.write_end) != len(self.read_start) or not self.write_end:
            raise ValueError("a write order needs one read_start per write_end, at least one")
        if list(self.write_end) != sorted(self.write_end) or \
                list(self.read_start) != sorted(self.read_start):
            raise ValueError("a write order must walk both buffers in ascending order")
        if self.write_end[-1] != self.output_bytes or self.read_start[0] != 0 or \
                self.read_start[-1] > self.input_bytes:
            raise ValueError("a write order must cover the output and start at the input")

    def highest_safe_delta(self) -> int:
        """The largest output start, relative to the input start, at which no step writes
        over input bytes that it or a later step still reads (may be negative: the output
        then begins before the input)."""
        return min(r - w for w, r in zip(self.write_end, self.read_start))

    def best_delta(self) -> int:
        """The safe output start that needs the fewest bytes for both buffers together."""
        # Span of both is max(I, d + O) - min(0, d): it falls as d rises to 0 and, past
        # I - O, rises again; so take the highest safe delta, but not past max(0, I - O).
        return min(self.highest_safe_delta(), max(0, self.input_bytes - self.output_bytes))

    def span(self, delta: int) -> int:
        """Bytes covered by input and output together when the output starts at ``delta``."""
        return max(self.input_bytes, delta + self.output_bytes) - min(0, delta)
