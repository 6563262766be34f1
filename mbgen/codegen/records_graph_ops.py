"""Call records of the graph-shaping ops (Concatenation, StridedSlice, MaxPool2D).

Concatenation and StridedSlice both move int8 bytes without arithmetic (TFLM's int8
CONCATENATION copies, see ``mbgen.reference_graph_ops``), so both lower to strided block
copies: a slice is one block, a concatenation one block per input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mbgen.codegen.records import BufferRef, PoolWindow

COPY_RANK = 4  # every block is described in four dimensions (leading ones are 1)


@dataclass(frozen=True)
class CopyBlock:
    """dst[dst_offset + sum(i_d * dst_strides[d])] = src[src_offset + sum(i_d * src_strides[d])]
    for every index i with 0 <= i_d < counts[d]; offsets and strides in elements (bytes)."""

    input: BufferRef
    src_offset: int
    dst_offset: int
    counts: tuple[int, int, int, int]
    src_strides: tuple[int, int, int, int]
    dst_strides: tuple[int, int, int, int]

    @property
    def contiguous_rows(self) -> bool:
        """The innermost dimension is one memcpy on both sides."""
        return self.src_strides[-1] == 1 and self.dst_strides[-1] == 1


@dataclass(frozen=True)
class StridedCopyCall:
    """Concatenation (one block per input) or StridedSlice (one block)."""

    template: ClassVar[str] = "kernels/strided_copy.c.j2"
    function: ClassVar[str] = "strided_copy_s8"
    output: BufferRef
    blocks: tuple[CopyBlock, ...]

    @property
    def input(self) -> BufferRef:
        return self.blocks[0].input


@dataclass(frozen=True)
class MaxPoolCall(PoolWindow):
    """MAX_POOL_2D: max over the window clipped to the image, then the activation clamp."""

    template: ClassVar[str] = "kernels/maxpool.c.j2"
    function: ClassVar[str] = "maxpool_s8"
    act_min: int
    act_max: int
