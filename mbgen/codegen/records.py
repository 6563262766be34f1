"""Typed records the C templates print: buffers, constant arrays, one call record per op family.

Every number the generated C needs (shapes, arena offsets, requantisation constants) is
decided when a record is built (``lowering.py``); the templates in ``templates/kernels/`` only
print fields. A record's ``template`` names the kernel template whose macros declare, define
and invoke its C ``function`` (prefixed with the model name), so a new kernel set plugs in by
adding records and templates.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import ClassVar, Union

import numpy as np


class BufferKind(enum.Enum):
    """Where an activation lives at run time (TENSOR and SCRATCH: not yet planned)."""

    ARENA = "arena"    # prefix_arena + offset
    INPUT = "input"    # the caller's const input pointer
    OUTPUT = "output"  # the caller's output pointer
    TENSOR = "tensor"    # symbolic: the activation ``name``, bound from the memory plan
    SCRATCH = "scratch"  # symbolic: node ``name``'s scratch, bound from the memory plan


@dataclass(frozen=True)
class BufferRef:
    """An activation tensor as a pointer expression in ``<name>_invoke``; a kernel instance
    holds symbolic refs (``name``) until ``program.bind`` resolves them from the plan."""

    kind: BufferKind
    offset: int = 0
    name: str = ""

    @property
    def is_symbolic(self) -> bool:
        return self.kind in (BufferKind.TENSOR, BufferKind.SCRATCH)

    @property
    def is_arena(self) -> bool:
        return self.kind is BufferKind.ARENA


@dataclass(frozen=True, eq=False)
class ConstArray:
    """One ``const`` array of model_weights.c (flash): weights, biases, multipliers, shifts."""

    symbol: str          # full C name, already prefixed with the model name
    ctype: str           # "int8_t" | "int32_t"
    values: np.ndarray   # 1-D, flattened in the layout the kernel reads
    comment: str         # what it is, for a reader of the generated file

    @property
    def length(self) -> int:
        return int(self.values.size)

    @property
    def nbytes(self) -> int:
        return int(self.values.size * np.dtype(self.ctype.removesuffix("_t")).itemsize)


# ----------------------------------------------------------------------------- call records
# Dimensions are NHWC with batch 1. ``input_offset`` is -input_zero_point and
# ``output_offset`` the output zero point (CMSIS-NN / TFLM naming); shifts use TFLite's sign
# convention (> 0 shifts left).


# The window geometry several kernel sets' records start with (the same fields in the same
# order, so records stay positional): a record subclasses one and adds its own arithmetic.


@dataclass(frozen=True)
class ConvWindow:
    """A convolution's input/output buffers, shapes, kernel, strides, dilations and pads."""

    input: BufferRef
    output: BufferRef
    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int
    k_h: int
    k_w: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    pad_top: int
    pad_left: int


@dataclass(frozen=True)
class DepthwiseWindow:
    """A depthwise convolution's geometry: ConvWindow's with the depth multiplier."""

    input: BufferRef
    output: BufferRef
    in_h: int
    in_w: int
    in_c: int
    out_h: int
    out_w: int
    out_c: int                 # in_c * depth_multiplier
    depth_multiplier: int
    k_h: int
    k_w: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    pad_top: int
    pad_left: int


@dataclass(frozen=True)
class PoolWindow:
    """A 2-D pooling window over channels kept apart: shapes, kernel, strides, pads."""

    input: BufferRef
    output: BufferRef
    in_h: int
    in_w: int
    channels: int
    out_h: int
    out_w: int
    k_h: int
    k_w: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int


@dataclass(frozen=True)
class ConvCall(ConvWindow):
    template: ClassVar[str] = "kernels/conv.c.j2"
    function: ClassVar[str] = "conv_s8"
    input_offset: int
    output_offset: int
    act_min: int
    act_max: int
    per_channel: bool          # False: one multiplier/shift for every output channel
    weights: ConstArray        # (out_c, k_h, k_w, in_c)
    bias: ConstArray           # (out_c,) bias + input_offset * sum(weights of the channel)
    multipliers: ConstArray
    shifts: ConstArray


@dataclass(frozen=True)
class DepthwiseCall(DepthwiseWindow):
    template: ClassVar[str] = "kernels/depthwise.c.j2"
    function: ClassVar[str] = "depthwise_s8"
    input_offset: int
    output_offset: int
    act_min: int
    act_max: int
    per_channel: bool
    weights: ConstArray        # (k_h, k_w, out_c)
    bias: ConstArray           # bias + input_offset * sum(weights of the channel)
    multipliers: ConstArray
    shifts: ConstArray


@dataclass(frozen=True)
class FullyConnectedCall:
    template: ClassVar[str] = "kernels/fully_connected.c.j2"
    function: ClassVar[str] = "fully_connected_s8"
    input: BufferRef
    output: BufferRef
    in_features: int
    out_features: int
    input_offset: int
    output_offset: int
    act_min: int
    act_max: int
    per_channel: bool
    weights: ConstArray        # (out_features, in_features)
    bias: ConstArray           # bias + input_offset * sum(weights of the channel)
    multipliers: ConstArray
    shifts: ConstArray


@dataclass(frozen=True)
class AddCall:
    template: ClassVar[str] = "kernels/add.c.j2"
    function: ClassVar[str] = "add_s8"
    input1: BufferRef
    input2: BufferRef
    output: BufferRef
    size: int
    input1_offset: int
    input2_offset: int
    output_offset: int
    left_shift: int
    input1_multiplier: int
    input1_shift: int
    input2_multiplier: int
    input2_shift: int
    output_multiplier: int
    output_shift: int
    act_min: int
    act_max: int


@dataclass(frozen=True)
class MulCall:
    """Elementwise int8 MUL with TFLite broadcasting over an output of ``dims`` (4-D, padded
    on the left with 1s). Each input is read at ``input*_strides`` elements per step of a
    dimension, 0 where it broadcasts: a squeeze-excite scale (1, 1, 1, C) has strides
    (0, 0, 0, 1). An input is an activation buffer or a flash constant."""

    template: ClassVar[str] = "kernels/mul.c.j2"
    function: ClassVar[str] = "mul_s8"
    input1: BufferRef | ConstArray
    input2: BufferRef | ConstArray
    output: BufferRef
    dims: tuple[int, int, int, int]
    input1_strides: tuple[int, int, int, int]
    input2_strides: tuple[int, int, int, int]
    input1_offset: int
    input2_offset: int
    output_offset: int
    output_multiplier: int
    output_shift: int
    act_min: int
    act_max: int


@dataclass(frozen=True)
class HardSwishCall:
    """TFLite's int8 HARD_SWISH: x * relu6(x + 3) / 6 in int16 fixed point."""

    template: ClassVar[str] = "kernels/hardswish.c.j2"
    function: ClassVar[str] = "hardswish_s8"
    input: BufferRef
    output: BufferRef
    size: int
    input_zero_point: int
    output_zero_point: int
    output_multiplier: int     # Q15
    output_exponent: int       # <= 0
    reluish_multiplier: int    # Q15
    reluish_exponent: int


@dataclass(frozen=True)
class LogisticCall:
    """TFLite's int8 LOGISTIC: input in Q4.27, gemmlowp's logistic, output 1/256, zp -128."""

    template: ClassVar[str] = "kernels/logistic.c.j2"
    function: ClassVar[str] = "logistic_s8"
    input: BufferRef
    output: BufferRef
    size: int
    input_zero_point: int
    input_range_radius: int
    input_multiplier: int
    input_left_shift: int


@dataclass(frozen=True)
class AveragePoolCall(PoolWindow):
    template: ClassVar[str] = "kernels/pool.c.j2"
    function: ClassVar[str] = "avgpool_s8"
    act_min: int
    act_max: int


@dataclass(frozen=True)
class MeanCall:
    """Mean over H and W, as TFLM's integer Mean: the 1/(H*W) is folded into the multiplier."""

    template: ClassVar[str] = "kernels/pool.c.j2"
    function: ClassVar[str] = "mean_hw_s8"
    input: BufferRef
    output: BufferRef
    in_h: int
    in_w: int
    channels: int
    input_zero_point: int
    output_zero_point: int
    multiplier: int
    shift: int


@dataclass(frozen=True)
class SoftmaxCall:
    template: ClassVar[str] = "kernels/softmax.c.j2"
    function: ClassVar[str] = "softmax_s8"
    input: BufferRef
    output: BufferRef
    rows: int
    depth: int
    input_multiplier: int
    input_left_shift: int
    diff_min: int


@dataclass(frozen=True)
class PadCall:
    template: ClassVar[str] = "kernels/pad.c.j2"
    function: ClassVar[str] = "pad_s8"
    input: BufferRef
    output: BufferRef
    in_h: int
    in_w: int
    channels: int
    out_h: int
    out_w: int
    pad_top: int
    pad_left: int
    pad_value: int


@dataclass(frozen=True)
class ElementwiseRequant:
    """The fields of out = MBQM(x - in_zp) + out_zp over ``size`` elements, which the int8
    and the uint8-boundary requantisations share."""

    input: BufferRef
    output: BufferRef
    size: int
    input_zero_point: int
    output_zero_point: int
    multiplier: int
    shift: int


@dataclass(frozen=True)
class RequantizeCall(ElementwiseRequant):
    """out = clamp(MBQM(x - in_zp) + out_zp): int8 QUANTIZE and standalone ReLU/ReLU6."""

    template: ClassVar[str] = "kernels/requantize.c.j2"
    function: ClassVar[str] = "requantize_s8"
    act_min: int
    act_max: int


@dataclass(frozen=True)
class CopyCall:
    """A Reshape (or Identity) whose output cannot share its input's bytes."""

    template: ClassVar[str] = "kernels/copy.c.j2"
    function: ClassVar[str] = "copy"
    input: BufferRef
    output: BufferRef
    size: int


@dataclass(frozen=True)
class AliasCall:
    """A Reshape (or Identity) whose output is its input's bytes: nothing to run."""

    template: ClassVar[str] = "kernels/copy.c.j2"
    function: ClassVar[str] = "alias"
    input: BufferRef
    output: BufferRef


CallRecord = Union[ConvCall, DepthwiseCall, FullyConnectedCall, AddCall, MulCall,
                   HardSwishCall, LogisticCall, AveragePoolCall, MeanCall, SoftmaxCall, PadCall,
                   RequantizeCall, CopyCall, AliasCall]


def constants_of(call: CallRecord) -> list[ConstArray]:
    """The flash arrays a call reads, in field order."""
    return [value for f in fields(call)
            if isinstance(value := getattr(call, f.name), ConstArray)]


@dataclass(frozen=True)
class Layer:
    """One node of the graph as generated: its call record plus what report.json says."""

    index: int
    name: str            # the graph node's name
    op: str              # ir.op_name of the node
    kernel_set: str      # which kernel set produced ``call`` ("portable", ...)
    call: CallRecord
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    macs: int
    params: int
    arena_offset: int | None   # of the output; None when it is the caller's buffer
    output_bytes: int


def map_refs(value, change):
    """``value`` (a call record, or a tuple or field of one) with every BufferRef in it
    replaced by ``change(ref)``; unchanged parts stay the same objects (constants shared)."""
    if isinstance(value, BufferRef):
        return change(value)
    if isinstance(value, tuple):
        mapped = tuple(map_refs(v, change) for v in value)
        return mapped if any(a is not b for a, b in zip(mapped, value)) else value
    if is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in fields(value):
            if f.init:
                old = getattr(value, f.name)
                new = map_refs(old, change)
                if new is not old:
                    changes[f.name] = new
        return replace(value, **changes) if changes else value
    return value
