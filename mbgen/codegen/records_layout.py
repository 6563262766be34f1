"""Call records of the layout ops (Transpose, PadND, Mean over any axes) and of the uint8
interface's boundary requantisation; see ``records.py`` for the conventions.

Shapes are padded to rank 4 with leading 1s, so one 4-deep loop nest serves every rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mbgen.codegen.records import BufferRef, ElementwiseRequant


@dataclass(frozen=True)
class TransposeCall:
    """out (row-major over ``out_dims``) = input[sum(i_k * in_strides[k])]."""

    template: ClassVar[str] = "kernels/transpose.c.j2"
    function: ClassVar[str] = "transpose_s8"
    input: BufferRef
    output: BufferRef
    out_dims: tuple[int, int, int, int]
    in_strides: tuple[int, int, int, int]   # input element stride of each output dimension


@dataclass(frozen=True)
class PadNDCall:
    """Fill the output with ``value``, then copy each innermost input row into place."""

    template: ClassVar[str] = "kernels/pad_nd.c.j2"
    function: ClassVar[str] = "pad_nd_s8"
    input: BufferRef
    output: BufferRef
    in_dims: tuple[int, int, int, int]
    out_dims: tuple[int, int, int, int]
    before: tuple[int, int, int, int]
    value: int
    output_size: int


@dataclass(frozen=True)
class MeanAxesCall:
    """TFLM's integer mean over any axes: int32 sums, 1/count folded into the multiplier."""

    template: ClassVar[str] = "kernels/mean_axes.c.j2"
    function: ClassVar[str] = "mean_axes_s8"
    input: BufferRef
    output: BufferRef
    kept: tuple[int, int, int, int]      # extent of each kept dim (1 where reduced)
    reduced: tuple[int, int, int, int]   # extent of each reduced dim (1 where kept)
    strides: tuple[int, int, int, int]   # input element strides
    count: int
    input_zero_point: int
    output_zero_point: int
    multiplier: int
    shift: int


@dataclass(frozen=True)
class BoundaryRequantizeCall(ElementwiseRequant):
    """QUANTIZE uint8 -> int8 (first op) or int8 -> uint8 (last op), TFLM's Requantize."""

    template: ClassVar[str] = "kernels/requantize_u8.c.j2"
    function: str        # "requantize_u8_s8" | "requantize_s8_u8"
