"""The portable kernel set: plain C99 kernels for every op, the fallback of all other sets.

``lower`` is the one place where a node's ir attributes, the TFLite constants of
``mbgen.quantize.params`` and the memory plan become a typed call record.
"""

from __future__ import annotations

import numpy as np

from mbgen import ir
from mbgen.codegen import (kernels_layout, lower_broadcast, lower_graph_ops,
                           lowering_onnxruntime, lowering_uint8, walks)
from mbgen.codegen.lower_broadcast import broadcast_operands
from mbgen.codegen import records as r
from mbgen.codegen.lowering import LoweringContext, nhwc
from mbgen.quantize import params
from mbgen.quantize.multiplier import quantize_multiplier

NAME = "portable"


class PortableKernels:
    """Legal for every supported op; returns None only for ops it has no kernel for."""

    name = NAME

    def walks(self, call: r.CallRecord):
        """In-place declarations: see ``mbgen.codegen.walks``."""
        return walks.portable(call)

    def lower(self, ctx: LoweringContext, index: int, node: ir.Node) -> r.CallRecord | None:
        op = node.op
        if ir.uses_onnxruntime_arithmetic(op):
            return lowering_onnxruntime.lower(ctx, index, node)
        if ir.requantization_of(op) is ir.Requantization.TFLITE_UINT8:
            return lowering_uint8.lower(ctx, index, node)
        if isinstance(op, ir.Conv2D):
            return _conv(ctx, index, node, op)
        if isinstance(op, ir.DepthwiseConv2D):
            return _depthwise(ctx, index, node, op)
        if isinstance(op, ir.FullyConnected):
            return _fully_connected(ctx, index, node)
        if isinstance(op, ir.Add):
            return _add(ctx, node) or lower_broadcast.add(ctx, index, node)
        if isinstance(op, ir.Mul):
            return _mul(ctx, index, node)
        if isinstance(op, ir.HardSwish):
            return _hard_swish(ctx, node)
        if isinstance(op, ir.Logistic):
            return _logistic(ctx, node)
        if isinstance(op, ir.AveragePool2D):
            return _average_pool(ctx, node, op)
        if isinstance(op, ir.Mean):
            return _mean(ctx, node, op) or kernels_layout.mean_axes(ctx, node, op)
        if isinstance(op, ir.Softmax):
            return _softmax(ctx, node)
        if isinstance(op, ir.Pad):
            return _pad(ctx, node, op)
        if isinstance(op, (ir.Reshape, ir.Identity)):
            return _view(ctx, node)
        if isinstance(op, ir.Quantize):
            return _requantize(ctx, node) or kernels_layout.boundary_requantize(ctx, node)
        if isinstance(op, ir.ActivationOp):
            return _standalone_activation(ctx, node, op)
        if isinstance(op, ir.Concatenation):
            return lower_graph_ops.concatenation(ctx, node, op)
        if isinstance(op, ir.StridedSlice):
            return lower_graph_ops.strided_slice(ctx, node, op)
        if isinstance(op, ir.MaxPool2D):
            return lower_graph_ops.max_pool(ctx, node, op)
        return kernels_layout.lower(ctx, node)  # Transpose, PadND


# ----------------------------------------------------------------------------- helpers


def _conv_constants(ctx: LoweringContext, index: int, node: ir.Node, out_c: int,
                    weight_sums: np.ndarray) -> tuple[params.ConvQuant, bool, r.ConstArray,
                                                      r.ConstArray, r.ConstArray, r.ConstArray]:
    """Requantisation constants and flash arrays shared by conv, depthwise and FC.

    The kernels accumulate sum(x * w) and start from ``bias + input_offset * sum(w)``: the
    same int32 as TFLite's bias + sum((x + input_offset) * w), one add fewer per MAC.
    ``weight_sums`` holds sum(w) per output channel.
    """
    q = params.conv_quant(ctx.graph, node)
    per_channel = q.multipliers.size > 1
    if per_channel and q.multipliers.size != out_c:
        raise ir.GraphError(f"{node.name}: {q.multipliers.size} weight scales for "
                            f"{out_c} output channels")
    w = ctx.tensor(node.inputs[1])
    if w.dtype != "int8":
        raise ir.GraphError(f"{node.name}: weights are {w.dtype}, expected int8")
    w_array = ctx.const_tensor(node.inputs[1], index, "weights", "int8_t")
    bias = ctx.bias_values(node, out_c)
    folded = ctx.const_values(index, "bias", "int32_t",
                              bias + q.input_offset * weight_sums.astype(np.int64),
                              f"{node.name}: bias + input_offset * sum(weights)")
    mults = ctx.const_values(index, "multipliers", "int32_t", q.multipliers,
                             f"{node.name}: requantisation multipliers (Q31)")
    shifts = ctx.const_values(index, "shifts", "int32_t", q.shifts,
                              f"{node.name}: requantisation shifts (> 0: left)")
    return q, per_channel, w_array, folded, mults, shifts


def _int8(ctx: LoweringContext, node: ir.Node) -> None:
    for name in (node.inputs[0], node.outputs[0]):
        if ctx.tensor(name).dtype != "int8":
            raise ir.GraphError(f"{node.name}: activation {name!r} is "
                                f"{ctx.tensor(name).dtype}, the C kernels are int8")


# ----------------------------------------------------------------------------- ops


def _conv(ctx: LoweringContext, index: int, node: ir.Node, op: ir.Conv2D) -> r.ConvCall | None:
    _int8(ctx, node)
    in_h, in_w, in_c = nhwc(ctx.tensor(node.inputs[0]).shape)
    out_h, out_w, out_c = nhwc(ctx.tensor(node.outputs[0]).shape)
    w = ctx.tensor(node.inputs[1])
    o, k_h, k_w, i = w.shape
    if o != out_c or i != in_c:
        return None  # grouped convolution: no kernel
    q, per_channel, weights, bias, mults, shifts = _conv_constants(
        ctx, index, node, out_c, w.data.astype(np.int64).reshape(out_c, -1).sum(axis=1))
    return r.ConvCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        in_h=in_h, in_w=in_w, in_c=in_c, out_h=out_h, out_w=out_w, out_c=out_c,
        k_h=k_h, k_w=k_w, stride_h=op.stride[0], stride_w=op.stride[1],
        dilation_h=op.dilation[0], dilation_w=op.dilation[1],
        pad_top=op.padding.top, pad_left=op.padding.left,
        input_offset=q.input_offset, output_offset=q.output_offset,
        act_min=q.act_min, act_max=q.act_max, per_channel=per_channel,
        weights=weights, bias=bias, multipliers=mults, shifts=shifts)


def _depthwise(ctx: LoweringContext, index: int, node: ir.Node,
               op: ir.DepthwiseConv2D) -> r.DepthwiseCall | None:
    _int8(ctx, node)
    in_h, in_w, in_c = nhwc(ctx.tensor(node.inputs[0]).shape)
    out_h, out_w, out_c = nhwc(ctx.tensor(node.outputs[0]).shape)
    w = ctx.tensor(node.inputs[1])
    one, k_h, k_w, channels = w.shape
    if one != 1 or channels != out_c or out_c != in_c * op.depth_multiplier:
        return None
    q, per_channel, weights, bias, mults, shifts = _conv_constants(
        ctx, index, node, out_c, w.data.astype(np.int64).reshape(-1, out_c).sum(axis=0))
    return r.DepthwiseCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        in_h=in_h, in_w=in_w, in_c=in_c, out_h=out_h, out_w=out_w, out_c=out_c,
        depth_multiplier=op.depth_multiplier, k_h=k_h, k_w=k_w,
        stride_h=op.stride[0], stride_w=op.stride[1],
        dilation_h=op.dilation[0], dilation_w=op.dilation[1],
        pad_top=op.padding.top, pad_left=op.padding.left,
        input_offset=q.input_offset, output_offset=q.output_offset,
        act_min=q.act_min, act_max=q.act_max, per_channel=per_channel,
        weights=weights, bias=bias, multipliers=mults, shifts=shifts)


def _fully_connected(ctx: LoweringContext, index: int,
                     node: ir.Node) -> r.FullyConnectedCall | None:
    _int8(ctx, node)
    w = ctx.tensor(node.inputs[1])
    out_features, in_features = w.shape
    if ctx.tensor(node.inputs[0]).size != in_features or \
            ctx.tensor(node.outputs[0]).size != out_features:
        return None
    q, per_channel, weights, bias, mults, shifts = _conv_constants(
        ctx, index, node, out_features, w.data.astype(np.int64).sum(axis=1))
    return r.FullyConnectedCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        in_features=in_features, out_features=out_features,
        input_offset=q.input_offset, output_offset=q.output_offset,
        act_min=q.act_min, act_max=q.act_max, per_channel=per_channel,
        weights=weights, bias=bias, multipliers=mults, shifts=shifts)


def _add(ctx: LoweringContext, node: ir.Node) -> r.AddCall | None:
    a, b, out = (ctx.tensor(n) for n in (node.inputs[0], node.inputs[1], node.outputs[0]))
    if not (a.shape == b.shape == out.shape) or a.is_const or b.is_const:
        return None  # broadcasting add: no kernel
    _int8(ctx, node)
    q = params.add_quant(ctx.graph, node)
    return r.AddCall(
        input1=ctx.buffer(node.inputs[0]), input2=ctx.buffer(node.inputs[1]),
        output=ctx.buffer(node.outputs[0]), size=out.size,
        input1_offset=q.input1_offset, input2_offset=q.input2_offset,
        output_offset=q.output_offset, left_shift=q.left_shift,
        input1_multiplier=q.input1_multiplier, input1_shift=q.input1_shift,
        input2_multiplier=q.input2_multiplier, input2_shift=q.input2_shift,
        output_multiplier=q.output_multiplier, output_shift=q.output_shift,
        act_min=q.act_min, act_max=q.act_max)


def _mul(ctx: LoweringContext, index: int, node: ir.Node) -> r.MulCall | None:
    b = broadcast_operands(ctx, index, node, refuse=True)
    if b is None:
        return None
    q = params.mul_quant(ctx.graph, node)
    return r.MulCall(
        input1=b.operands[0], input2=b.operands[1], output=ctx.buffer(node.outputs[0]),
        dims=b.dims, input1_strides=b.strides[0], input2_strides=b.strides[1],
        input1_offset=q.input1_offset, input2_offset=q.input2_offset,
        output_offset=q.output_offset, output_multiplier=q.output_multiplier,
        output_shift=q.output_shift, act_min=q.act_min, act_max=q.act_max)


def _hard_swish(ctx: LoweringContext, node: ir.Node) -> r.HardSwishCall:
    _int8(ctx, node)
    q = params.hardswish_quant(ctx.graph, node)
    return r.HardSwishCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        size=ctx.tensor(node.outputs[0]).size,
        input_zero_point=q.input_zero_point, output_zero_point=q.output_zero_point,
        output_multiplier=q.output_multiplier_fixedpoint_int16,
        output_exponent=q.output_multiplier_exponent,
        reluish_multiplier=q.reluish_multiplier_fixedpoint_int16,
        reluish_exponent=q.reluish_multiplier_exponent)


def _logistic(ctx: LoweringContext, node: ir.Node) -> r.LogisticCall:
    _int8(ctx, node)
    q = params.logistic_quant(ctx.graph, node)
    return r.LogisticCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        size=ctx.tensor(node.outputs[0]).size, input_zero_point=q.input_zero_point,
        input_range_radius=q.input_range_radius, input_multiplier=q.input_multiplier,
        input_left_shift=q.input_left_shift)


def _average_pool(ctx: LoweringContext, node: ir.Node,
                  op: ir.AveragePool2D) -> r.AveragePoolCall:
    _int8(ctx, node)
    in_h, in_w, channels = nhwc(ctx.tensor(node.inputs[0]).shape)
    out_h, out_w, out_c = nhwc(ctx.tensor(node.outputs[0]).shape)
    if out_c != channels:
        raise ir.GraphError(f"{node.name}: pooling changes the channel count")
    q = params.pool_quant(ctx.graph, node)
    return r.AveragePoolCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        in_h=in_h, in_w=in_w, channels=channels, out_h=out_h, out_w=out_w,
        k_h=op.kernel[0], k_w=op.kernel[1], stride_h=op.stride[0], stride_w=op.stride[1],
        pad_top=op.padding.top, pad_left=op.padding.left,
        act_min=q.act_min, act_max=q.act_max)


def _mean(ctx: LoweringContext, node: ir.Node, op: ir.Mean) -> r.MeanCall | None:
    _int8(ctx, node)
    x, out = ctx.tensor(node.inputs[0]), ctx.tensor(node.outputs[0])
    if len(x.shape) != 4 or tuple(sorted(op.axes)) != (1, 2):
        return None  # only the global average pool
    in_h, in_w, channels = nhwc(x.shape)
    if out.size != channels:
        raise ir.GraphError(f"{node.name}: mean over H, W must keep {channels} channels")
    q = params.mean_quant(ctx.graph, node)
    return r.MeanCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        in_h=in_h, in_w=in_w, channels=channels,
        input_zero_point=q.input_zero_point, output_zero_point=q.output_zero_point,
        multiplier=q.multiplier, shift=q.shift)


def _softmax(ctx: LoweringContext, node: ir.Node) -> r.SoftmaxCall:
    _int8(ctx, node)
    x = ctx.tensor(node.inputs[0])
    q = params.softmax_quant(ctx.graph, node)
    depth = int(x.shape[-1])
    return r.SoftmaxCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        rows=x.size // depth, depth=depth, input_multiplier=q.input_multiplier,
        input_left_shift=q.input_left_shift, diff_min=q.diff_min)


def _pad(ctx: LoweringContext, node: ir.Node, op: ir.Pad) -> r.PadCall:
    _int8(ctx, node)
    in_h, in_w, channels = nhwc(ctx.tensor(node.inputs[0]).shape)
    out_h, out_w, out_c = nhwc(ctx.tensor(node.outputs[0]).shape)
    p = op.padding
    if out_c != channels or out_h != in_h + p.top + p.bottom or out_w != in_w + p.left + p.right:
        raise ir.GraphError(f"{node.name}: output shape does not match the padding")
    return r.PadCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        in_h=in_h, in_w=in_w, channels=channels, out_h=out_h, out_w=out_w,
        pad_top=p.top, pad_left=p.left,
        # TFLM pads int8 with the output zero point: the quantised real 0.
        pad_value=ctx.tensor(node.outputs[0]).quant.scalar_zero_point)


def _view(ctx: LoweringContext, node: ir.Node) -> r.CopyCall:
    """A copy; binding makes it an AliasCall where the plan gives both tensors one place."""
    src, dst = ctx.buffer(node.inputs[0]), ctx.buffer(node.outputs[0])
    size = ctx.tensor(node.outputs[0]).nbytes
    if ctx.tensor(node.inputs[0]).nbytes != size:
        raise ir.GraphError(f"{node.name}: reshape changes the byte size")
    return r.CopyCall(src, dst, size)


def _requantize_call(ctx: LoweringContext, node: ir.Node,
                     q: params.RequantizeQuant) -> r.RequantizeCall:
    return r.RequantizeCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        size=ctx.tensor(node.outputs[0]).size,
        input_zero_point=q.input_zero_point, output_zero_point=q.output_zero_point,
        multiplier=q.multiplier, shift=q.shift, act_min=q.act_min, act_max=q.act_max)


def _requantize(ctx: LoweringContext, node: ir.Node) -> r.RequantizeCall | None:
    """int8 -> int8 QUANTIZE (TFLM's Requantize)."""
    if ctx.tensor(node.inputs[0]).dtype != "int8" or ctx.tensor(node.outputs[0]).dtype != "int8":
        return None  # float <-> int8 stay outside; uint8 <-> int8: kernels_layout
    return _requantize_call(ctx, node, params.requantize_quant(ctx.graph, node))


# The identity rescale: QuantizeMultiplier(1.0) == (2**30, 1), exact for every int32.
_UNIT_MULTIPLIER, _UNIT_SHIFT = quantize_multiplier(1.0)


def _standalone_activation(ctx: LoweringContext, node: ir.Node,
                           op: ir.ActivationOp) -> r.RequantizeCall | None:
    """TFLM's RELU requantises then clamps; its RELU6 only clamps in the input's scale."""
    _int8(ctx, node)
    if op.activation is ir.Activation.RELU:
        return _requantize_call(ctx, node, params.relu_quant(ctx.graph, node))
    if op.activation is ir.Activation.RELU6:
        q6 = params.relu6_quant(ctx.graph, node)
        return _requantize_call(ctx, node, params.RequantizeQuant(
            0, 0, _UNIT_MULTIPLIER, _UNIT_SHIFT, q6.lower, q6.upper))
    return _requantize_call(ctx, node, params.RequantizeQuant(
        0, 0, _UNIT_MULTIPLIER, _UNIT_SHIFT, params.INT8_MIN, params.INT8_MAX))
