"""Call records for layers with onnxruntime's float requantisation (portable C kernels).

The portable kernel set hands every ``requantization=ONNXRUNTIME`` node to ``lower`` here.
Scales are float32 values computed by ``mbgen.quantize.onnxruntime_params`` and stored in
flash as their IEEE bit patterns (``uint32_t``), so no decimal literal can change a bit;
the kernels in ``templates/kernels/onnxruntime.c.j2`` read them back with memcpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

import numpy as np

from mbgen import ir
from mbgen.codegen.lowering import LoweringContext, nhwc
from mbgen.codegen.records import (BufferRef, ConstArray, ConvWindow, DepthwiseWindow,
                                   PoolWindow)
from mbgen.quantize import onnxruntime_params as ort

TEMPLATE = "kernels/onnxruntime.c.j2"


def float_bits(value: float | np.floating) -> int:
    """The IEEE-754 bit pattern of a float32 value."""
    return int(np.asarray(value, dtype=np.float32).reshape(1).view(np.uint32)[0])


@dataclass(frozen=True)
class OrtConvCall(ConvWindow):
    """Conv2D, and FullyConnected as a 1x1 convolution on a 1x1 image (weights (O, 1, 1, I))."""

    template: ClassVar[str] = TEMPLATE
    function: ClassVar[str] = "ort_conv_s8"
    input_zero_point: int
    output_zero_point: int
    per_channel: bool
    weights: ConstArray        # (out_c, k_h, k_w, in_c) int8
    bias: ConstArray           # (out_c,) int32, as stored
    full_bias: ConstArray      # (out_c,) bias - input_zero_point * sum(weights of the channel)
    scales: ConstArray         # float32 bit patterns, out_c or 1


@dataclass(frozen=True)
class OrtDepthwiseCall(DepthwiseWindow):
    template: ClassVar[str] = TEMPLATE
    function: ClassVar[str] = "ort_depthwise_s8"
    input_zero_point: int
    output_zero_point: int
    per_channel: bool
    weights: ConstArray        # (k_h, k_w, out_c) int8
    bias: ConstArray
    scales: ConstArray


@dataclass(frozen=True)
class OrtAddCall:
    """QLinearAdd: fma(a, ratio1, fma(b, ratio2, fixed)), exact in double (checked here)."""

    template: ClassVar[str] = TEMPLATE
    function: ClassVar[str] = "ort_add_s8"
    input1: BufferRef
    input2: BufferRef
    output: BufferRef
    size: int
    offset: int                # added to the int8 values: 128 when onnxruntime stores uint8
    ratio1_bits: int
    ratio2_bits: int
    fixed_bits: int


@dataclass(frozen=True)
class OrtMulCall:
    """QLinearMul; input2 repeats every ``input2_size`` elements (per-channel broadcast)."""

    template: ClassVar[str] = TEMPLATE
    function: ClassVar[str] = "ort_mul_s8"
    input1: BufferRef
    input2: BufferRef
    output: BufferRef
    size: int
    input2_size: int
    input1_zero_point: int
    input2_zero_point: int
    ratio_bits: int
    stored_zero_point: int
    offset: int


@dataclass(frozen=True)
class OrtMeanCall:
    """QLinearGlobalAveragePool over H and W."""

    template: ClassVar[str] = TEMPLATE
    function: ClassVar[str] = "ort_mean_hw_s8"
    input: BufferRef
    output: BufferRef
    in_h: int
    in_w: int
    channels: int
    bias: int
    scale_bits: int
    output_zero_point: int


@dataclass(frozen=True)
class OrtAveragePoolCall(PoolWindow):
    """QLinearAveragePool: float32 sums of table-dequantised inputs, in row order."""

    template: ClassVar[str] = TEMPLATE
    function: ClassVar[str] = "ort_avgpool_s8"
    table: ConstArray          # 256 float32 bit patterns: x_scale * (q - x_zp), q = index - 128
    y_scale_bits: int
    stored_zero_point: int
    offset: int


@dataclass(frozen=True)
class OrtTableCall:
    """DequantizeLinear -> HardSigmoid / HardSwish -> QuantizeLinear: one lookup per byte."""

    template: ClassVar[str] = "kernels/onnxruntime_table.c.j2"
    function: ClassVar[str] = "ort_table_s8"
    input: BufferRef
    output: BufferRef
    size: int
    table: ConstArray          # 256 int8 results, indexed by the input code + 128


@dataclass(frozen=True)
class OrtDequantizedMeanCall:
    """DequantizeLinear -> ReduceMean (H, W) -> QuantizeLinear: float32 row sums in Eigen's
    order (kernels/onnxruntime_mean.c.j2, rendered within onnxruntime.c.j2)."""

    template: ClassVar[str] = TEMPLATE
    function: ClassVar[str] = "ort_dq_mean_s8"
    input: BufferRef
    output: BufferRef
    pixels: int
    channels: int
    table: ConstArray          # 256 float32 bit patterns: float32(q - x_zp) * x_scale
    y_scale_bits: int
    output_zero_point: int


OrtCall = Union[OrtConvCall, OrtDepthwiseCall, OrtAddCall, OrtMulCall, OrtMeanCall,
                OrtAveragePoolCall, OrtTableCall, OrtDequantizedMeanCall]


def lower(ctx: LoweringContext, index: int, node: ir.Node) -> OrtCall | None:
    op = node.op
    for name in (node.inputs[0], node.outputs[0]):
        if ctx.tensor(name).dtype != "int8":
            return None  # float <-> int8 conversions stay outside the generated model
    try:
        if isinstance(op, ir.Conv2D):
            return _conv(ctx, index, node, op)
        if isinstance(op, ir.FullyConnected):
            return _fully_connected(ctx, index, node)
        if isinstance(op, ir.DepthwiseConv2D):
            return _depthwise(ctx, index, node, op)
        if isinstance(op, ir.Add):
            return _add(ctx, node)
        if isinstance(op, ir.Mul):
            return _mul(ctx, node)
        if isinstance(op, ir.Mean):
            return _mean(ctx, node)
        if isinstance(op, ir.AveragePool2D):
            return _average_pool(ctx, index, node, op)
        if isinstance(op, ir.DequantizedActivation):
            return _table(ctx, index, node)
        if isinstance(op, ir.DequantizedMean):
            return _dequantized_mean(ctx, index, node)
    except ValueError as exc:  # constants onnxruntime itself would refuse
        raise ir.GraphError(str(exc)) from None
    return None


def _constants(ctx: LoweringContext, index: int, node: ir.Node, out_c: int,
               weights: np.ndarray) -> tuple[ort.OrtConvQuant, ConstArray, ConstArray,
                                             ConstArray]:
    q = ort.conv_quant(ctx.graph, node)
    if q.scales.size not in (1, out_c):
        raise ir.GraphError(f"{node.name}: {q.scales.size} scales for {out_c} channels")
    w = ctx.const_tensor(node.inputs[1], index, "weights", "int8_t", weights)
    bias = ctx.bias_values(node, out_c)
    bias_array = ctx.const_values(index, "bias", "int32_t", bias, f"{node.name}: int32 bias")
    scales = ctx.const_values(index, "scales", "uint32_t", q.scales.view(np.uint32),
                              f"{node.name}: float32 scales x*w/y (IEEE bit patterns)")
    return q, w, bias_array, scales


def _conv(ctx: LoweringContext, index: int, node: ir.Node, op: ir.Conv2D) -> OrtConvCall | None:
    in_h, in_w, in_c = nhwc(ctx.tensor(node.inputs[0]).shape)
    out_h, out_w, out_c = nhwc(ctx.tensor(node.outputs[0]).shape)
    w = ctx.tensor(node.inputs[1])
    o, k_h, k_w, i = w.shape
    if o != out_c or i != in_c:
        return None
    q, weights, bias, scales = _constants(ctx, index, node, out_c, w.data)
    return OrtConvCall(
        ctx.buffer(node.inputs[0]), ctx.buffer(node.outputs[0]), in_h, in_w, in_c,
        out_h, out_w, out_c, k_h, k_w, op.stride[0], op.stride[1], op.dilation[0],
        op.dilation[1], op.padding.top, op.padding.left, q.input_zero_point,
        q.output_zero_point, q.scales.size > 1, weights, bias,
        _full_bias(ctx, index, node, bias, w.data, q), scales)


def _fully_connected(ctx: LoweringContext, index: int, node: ir.Node) -> OrtConvCall | None:
    w = ctx.tensor(node.inputs[1])
    out_features, in_features = w.shape
    if ctx.tensor(node.inputs[0]).size != in_features or \
            ctx.tensor(node.outputs[0]).size != out_features:
        return None
    q, weights, bias, scales = _constants(ctx, index, node, out_features, w.data)
    return OrtConvCall(
        ctx.buffer(node.inputs[0]), ctx.buffer(node.outputs[0]), 1, 1, in_features,
        1, 1, out_features, 1, 1, 1, 1, 1, 1, 0, 0, q.input_zero_point, q.output_zero_point,
        q.scales.size > 1, weights, bias, _full_bias(ctx, index, node, bias, w.data, q),
        scales)


def _full_bias(ctx: LoweringContext, index: int, node: ir.Node, bias: ConstArray,
               weights: np.ndarray, q: ort.OrtConvQuant) -> ConstArray:
    """bias - input_zero_point * sum(weights) per output channel: the accumulator's start
    for windows inside the image (the kernel then adds sum(x * w))."""
    sums = weights.astype(np.int64).reshape(weights.shape[0], -1).sum(axis=1)
    return ctx.const_values(index, "full_bias", "int32_t",
                            bias.values.astype(np.int64) - q.input_zero_point * sums,
                            f"{node.name}: bias - input_zero_point * sum(weights)")


def _depthwise(ctx: LoweringContext, index: int, node: ir.Node,
               op: ir.DepthwiseConv2D) -> OrtDepthwiseCall | None:
    in_h, in_w, in_c = nhwc(ctx.tensor(node.inputs[0]).shape)
    out_h, out_w, out_c = nhwc(ctx.tensor(node.outputs[0]).shape)
    w = ctx.tensor(node.inputs[1])
    one, k_h, k_w, channels = w.shape
    if one != 1 or channels != out_c or out_c != in_c * op.depth_multiplier:
        return None
    q, weights, bias, scales = _constants(ctx, index, node, out_c, w.data)
    return OrtDepthwiseCall(
        ctx.buffer(node.inputs[0]), ctx.buffer(node.outputs[0]), in_h, in_w, in_c,
        out_h, out_w, out_c, op.depth_multiplier, k_h, k_w, op.stride[0], op.stride[1],
        op.dilation[0], op.dilation[1], op.padding.top, op.padding.left, q.input_zero_point,
        q.output_zero_point, q.scales.size > 1, weights, bias, scales)


def _add(ctx: LoweringContext, node: ir.Node) -> OrtAddCall | None:
    a, b, out = (ctx.tensor(n) for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
    if not (a.shape == b.shape == out.shape) or a.is_const or b.is_const:
        return None
    q = ort.add_quant(ctx.graph, node)
    return OrtAddCall(ctx.buffer(node.inputs[0]), ctx.buffer(node.inputs[1]),
                      ctx.buffer(node.outputs[0]), out.size, q.offset, float_bits(q.ratio_a),
                      float_bits(q.ratio_b), float_bits(q.fixed))


def _mul(ctx: LoweringContext, node: ir.Node) -> OrtMulCall | None:
    a, b, out = (ctx.tensor(n) for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
    if a.is_const or b.is_const or a.size != out.size:
        return None
    if b.size != out.size and (b.size != out.shape[-1] or b.shape[-1] != out.shape[-1]):
        return None  # only elementwise or per-channel (squeeze-excite) broadcasting
    q = ort.mul_quant(ctx.graph, node)
    return OrtMulCall(ctx.buffer(node.inputs[0]), ctx.buffer(node.inputs[1]),
                      ctx.buffer(node.outputs[0]), out.size, b.size, q.a_zero_point,
                      q.b_zero_point, float_bits(q.ratio), q.stored_zero_point, q.offset)


def _mean(ctx: LoweringContext, node: ir.Node) -> OrtMeanCall | None:
    in_h, in_w, channels = nhwc(ctx.tensor(node.inputs[0]).shape)
    if ctx.tensor(node.outputs[0]).size != channels:
        return None
    q = ort.mean_quant(ctx.graph, node)
    return OrtMeanCall(ctx.buffer(node.inputs[0]), ctx.buffer(node.outputs[0]), in_h, in_w,
                       channels, q.bias, float_bits(q.scale), q.output_zero_point)


def _average_pool(ctx: LoweringContext, index: int, node: ir.Node,
                  op: ir.AveragePool2D) -> OrtAveragePoolCall | None:
    in_h, in_w, channels = nhwc(ctx.tensor(node.inputs[0]).shape)
    out_h, out_w, out_c = nhwc(ctx.tensor(node.outputs[0]).shape)
    if out_c != channels:
        return None
    q = ort.average_pool_quant(ctx.graph, node)
    table = ctx.const_values(index, "dequantize", "uint32_t", q.table.view(np.uint32),
                             f"{node.name}: x_scale * (q - x_zp), float32 bit patterns")
    return OrtAveragePoolCall(
        ctx.buffer(node.inputs[0]), ctx.buffer(node.outputs[0]), in_h, in_w, channels,
        out_h, out_w, op.kernel[0], op.kernel[1], op.stride[0], op.stride[1],
        op.padding.top, op.padding.left, table, float_bits(q.y_scale), q.stored_zero_point,
        q.offset)


def _table(ctx: LoweringContext, index: int, node: ir.Node) -> OrtTableCall | None:
    size = ctx.tensor(node.inputs[0]).size
    if ctx.tensor(node.outputs[0]).size != size:
        return None
    table = ctx.const_values(index, "table", "int8_t", ort.activation_table(ctx.graph, node),
                             f"{node.name}: onnxruntime's {node.op.function} of each int8 "
                             "code (index = code + 128)")
    return OrtTableCall(ctx.buffer(node.inputs[0]), ctx.buffer(node.outputs[0]), size, table)


def _dequantized_mean(ctx: LoweringContext, index: int,
                      node: ir.Node) -> OrtDequantizedMeanCall | None:
    in_h, in_w, channels = nhwc(ctx.tensor(node.inputs[0]).shape)
    if ctx.tensor(node.outputs[0]).size != channels:
        return None
    q = ort.dequantized_mean_quant(ctx.graph, node)
    table = ctx.const_values(index, "dequantize", "uint32_t", q.table.view(np.uint32),
                             f"{node.name}: float32(q - x_zp) * x_scale, float32 bit patterns")
    return OrtDequantizedMeanCall(ctx.buffer(node.inputs[0]), ctx.buffer(node.outputs[0]),
                                  in_h * in_w, channels, table, float_bits(q.y_scale),
                                  q.output_zero_point)
