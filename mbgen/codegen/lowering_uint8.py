"""Call records for TFLite's legacy uint8 layers (``ir.Requantization.TFLITE_UINT8``):
convolutions whose weights keep a zero point, and the average pool that rounds uint8 sums
half up. Portable C in ``templates/kernels/legacy_uint8.c.j2``; constants from
``mbgen.quantize.uint8_params``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Union

from mbgen import ir
from mbgen.codegen.lowering import LoweringContext, nhwc
from mbgen.codegen.records import ConstArray, DepthwiseWindow, PoolWindow
from mbgen.quantize import uint8_params

TEMPLATE = "kernels/legacy_uint8.c.j2"


@dataclass(frozen=True)
class LegacyConvCall(DepthwiseWindow):
    """Conv2D (``depthwise`` False: weights (out_c, k_h, k_w, in_c)) or DepthwiseConv2D
    (weights (k_h, k_w, out_c)): acc = bias + sum((x - x_zp) * (w - w_zp))."""

    template: ClassVar[str] = TEMPLATE
    function: ClassVar[str] = "legacy_conv_u8"
    depthwise: bool
    weights: ConstArray
    bias: ConstArray
    quant: uint8_params.LegacyConvQuant


@dataclass(frozen=True)
class LegacyAveragePoolCall(PoolWindow):
    template: ClassVar[str] = TEMPLATE
    function: ClassVar[str] = "legacy_avgpool_u8"
    act_min: int
    act_max: int


LegacyCall = Union[LegacyConvCall, LegacyAveragePoolCall]


def lower(ctx: LoweringContext, index: int, node: ir.Node) -> LegacyCall | None:
    op = node.op
    try:
        if isinstance(op, (ir.Conv2D, ir.DepthwiseConv2D)):
            return _conv(ctx, index, node, op)
        if isinstance(op, ir.AveragePool2D):
            return _average_pool(ctx, node, op)
    except ValueError as exc:  # constants the frontend should have refused
        raise ir.GraphError(str(exc)) from None
    return None


def _conv(ctx: LoweringContext, index: int, node: ir.Node,
          op: ir.Conv2D | ir.DepthwiseConv2D) -> LegacyConvCall | None:
    in_h, in_w, in_c = nhwc(ctx.tensor(node.inputs[0]).shape)
    out_h, out_w, out_c = nhwc(ctx.tensor(node.outputs[0]).shape)
    w = ctx.tensor(node.inputs[1])
    depthwise = isinstance(op, ir.DepthwiseConv2D)
    multiplier = op.depth_multiplier if depthwise else 1
    if depthwise and (w.shape[0] != 1 or w.shape[3] != out_c or out_c != in_c * multiplier):
        return None
    if not depthwise and (w.shape[0] != out_c or w.shape[3] != in_c):
        return None
    q = uint8_params.conv_quant(ctx.graph, node)
    weights = ctx.const_tensor(node.inputs[1], index, "weights", "int8_t")
    bias = ctx.const_values(index, "bias", "int32_t", ctx.bias_values(node, out_c),
                            f"{node.name}: int32 bias")
    return LegacyConvCall(
        ctx.buffer(node.inputs[0]), ctx.buffer(node.outputs[0]), in_h, in_w, in_c, out_h,
        out_w, out_c, multiplier, w.shape[1], w.shape[2], op.stride[0], op.stride[1],
        op.dilation[0], op.dilation[1], op.padding.top, op.padding.left, depthwise, weights,
        bias, q)


def _average_pool(ctx: LoweringContext, node: ir.Node,
                  op: ir.AveragePool2D) -> LegacyAveragePoolCall | None:
    in_h, in_w, channels = nhwc(ctx.tensor(node.inputs[0]).shape)
    out_h, out_w, out_c = nhwc(ctx.tensor(node.outputs[0]).shape)
    if out_c != channels:
        return None
    act_min, act_max = uint8_params.average_pool_range(ctx.graph, node)
    return LegacyAveragePoolCall(
        ctx.buffer(node.inputs[0]), ctx.buffer(node.outputs[0]), in_h, in_w, channels, out_h,
        out_w, op.kernel[0], op.kernel[1], op.stride[0], op.stride[1], op.padding.top,
        op.padding.left, act_min, act_max)
