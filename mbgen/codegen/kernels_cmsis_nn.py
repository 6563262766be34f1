"""The ``cmsis-nn`` kernel set: layers as calls into Arm's CMSIS-NN library (v6 or later).

* Legality: ``refusal(graph, node)`` says why CMSIS-NN cannot take a layer (TVM's cmsisnn
  pattern table in spirit); such layers, and ops CMSIS-NN has no function for (MEAN, PAD,
  MUL, ...), fall back to the portable kernels and report.json lists them.
* Parameters: every ``cmsis_nn_*`` struct of a layer is filled in one place, the
  ``_populate_*`` functions (TFLM's PopulateDwConvParams), from the int8 constants of
  ``mbgen.quantize.params``; the templates in ``templates/kernels_cmsis_nn/`` only print them.
* Rounding: CMSIS-NN's default double rounding, which is TFLite's reference arithmetic; the
  generated code refuses to build with ``CMSIS_NN_USE_SINGLE_ROUNDING``.
* Scratch: sized in Python from the documented ``*_get_buffer_size`` formulas and placed in
  the arena plan. CMSIS-NN picks its code path from the compiler's feature macros when the
  user builds the folder, so the size is the largest one over the builds a folder can meet:
  plain C, DSP (Armv7E-M / Armv8-M with DSP) with GCC, and DSP with Arm Compiler 6. Helium
  (MVE) builds take other paths and buffers and are refused.
* Building: ``cmsis_nn_library.library_build(target, root)`` lists the library's headers
  and sources a folder needs; the runner adds them to the build (root from ``--cmsis-nn``
  or ``$CMSIS_NN_PATH``). The structs and call records are in ``cmsis_nn_records``.
"""

from __future__ import annotations

import numpy as np

from mbgen import ir
from mbgen.codegen import kernel_sets
from mbgen.codegen.cmsis_nn_library import NAME
from mbgen.codegen.cmsis_nn_records import (Clamp, CmsisAddCall, CmsisAvgPoolCall,
                                            CmsisCall, CmsisConvCall,
                                            CmsisFullyConnectedCall, CmsisSoftmaxCall,
                                            Context, ConvParams, Dims, DwConvParams, FcParams,
                                            PoolParams, Tile)
from mbgen.codegen.lowering import LoweringContext, nhwc
from mbgen.codegen.records import ConstArray
from mbgen.codegen.walks import elementwise
from mbgen.quantize import params


# CMSIS-NN stores several dimensions and pads in (u)int16 locals.
_MAX_DIM = 32767


# ----------------------------------------------------------------------------- buffer sizes
# The documented *_get_buffer_size formulas of CMSIS-NN (Source/*/arm_*_get_buffer_sizes_s8.c),
# for the builds a folder may meet. tests/test_kernels_cmsis_nn.py checks them against the
# real functions when CMSIS_NN_PATH is set.


class Build:
    """How CMSIS-NN is compiled: its code paths (and buffers) follow the compiler's macros."""

    PLAIN = "plain"            # no ARM_MATH_DSP: host, Cortex-M0/M3
    DSP_GCC = "dsp-gcc"        # ARM_MATH_DSP, GCC or clang
    DSP_ARMCLANG = "dsp-armclang"  # ARM_MATH_DSP, Arm Compiler 6 (a 1x1 conv buffer too)


BUILDS = (Build.PLAIN, Build.DSP_GCC, Build.DSP_ARMCLANG)


def _is_dsp(build: str) -> bool:
    return build in (Build.DSP_GCC, Build.DSP_ARMCLANG)


def convolve_s8_buffer_size(input_dims: Dims, filter_dims: Dims) -> int:
    """arm_convolve_s8_get_buffer_size (not Helium): two im2col columns of int16, the
    column length rounded up to a multiple of 4."""
    rhs_cols = filter_dims.w * filter_dims.h * input_dims.c
    aligned = -(-rhs_cols // 4) * 4
    return 2 * aligned * 2


def is_convolve_1x1(p: ConvParams, input_dims: Dims, filter_dims: Dims) -> bool:
    """arm_nn_is_convolve_1x1: the wrapper's 1x1 path."""
    return (p.padding.w == 0 and p.padding.h == 0 and filter_dims.w == 1 and filter_dims.h == 1
            and p.dilation.w == 1 and p.dilation.h == 1 and input_dims.c == filter_dims.c)


def is_convolve_1x1_fast(p: ConvParams) -> bool:
    return p.stride.w == 1 and p.stride.h == 1


def is_convolve_1_x_n(p: ConvParams, input_dims: Dims, filter_dims: Dims) -> bool:
    return (input_dims.h == 1 and p.dilation.w == 1 and filter_dims.h == 1
            and (p.stride.w * input_dims.c) % 4 == 0 and input_dims.c == filter_dims.c)


def convolve_wrapper_buffer_size(build: str, p: ConvParams, input_dims: Dims,
                                 filter_dims: Dims, output_dims: Dims) -> int:
    """arm_convolve_wrapper_s8_get_buffer_size (plain) / ..._dsp."""
    if is_convolve_1x1(p, input_dims, filter_dims):
        if is_convolve_1x1_fast(p) and build == Build.DSP_ARMCLANG:
            return 2 * input_dims.c * 2
        return 0
    # arm_convolve_1_x_n_s8_get_buffer_size is the general one outside Helium
    return convolve_s8_buffer_size(input_dims, filter_dims)


def uses_depthwise_3x3(p: DwConvParams, filter_dims: Dims) -> bool:
    """The wrapper's arm_depthwise_conv_3x3_s8 path (outside Helium)."""
    return (p.ch_mult == 1 and p.dilation.w == 1 and p.dilation.h == 1 and filter_dims.w == 3
            and filter_dims.h == 3 and p.padding.h <= 1 and p.padding.w <= 1)


def depthwise_wrapper_buffer_size(build: str, p: DwConvParams, input_dims: Dims,
                                  filter_dims: Dims, output_dims: Dims) -> int:
    """arm_depthwise_conv_wrapper_s8_get_buffer_size (plain) / ..._dsp."""
    if input_dims.c != output_dims.c or input_dims.n != 1 or p.dilation.w != 1 \
            or p.dilation.h != 1:
        return 0  # arm_depthwise_conv_s8
    if filter_dims.w == 3 and filter_dims.h == 3 and p.padding.h <= 1 and p.padding.w <= 1:
        return 0  # arm_depthwise_conv_3x3_s8
    # arm_depthwise_conv_s8_opt_get_buffer_size: int16 im2col of one output pixel with DSP
    return input_dims.c * filter_dims.w * filter_dims.h * 2 if _is_dsp(build) else 0


def fully_connected_buffer_size(build: str, filter_dims: Dims) -> int:
    """arm_fully_connected_s8_get_buffer_size: kernel sums on Helium only."""
    return 0


def avgpool_buffer_size(build: str, output_w: int, channels: int) -> int:
    """arm_avgpool_s8_get_buffer_size: an int32 sum per channel with DSP."""
    return channels * 4 if _is_dsp(build) else 0


# ----------------------------------------------------------------------------- legality


def _int8_activation(graph: ir.Graph, name: str) -> bool:
    t = graph.tensors[name]
    return t.dtype == "int8" and not t.is_const and t.quant is not None \
        and t.quant.scale.size == 1


def _symmetric_int8(t: ir.Tensor) -> bool:
    return t.dtype == "int8" and t.is_const and t.quant is not None \
        and not np.any(t.quant.zero_point)


def _bias_ok(graph: ir.Graph, node: ir.Node, channels: int) -> bool:
    if len(node.inputs) < 3 or not node.inputs[2]:
        return True
    b = graph.tensors[node.inputs[2]]
    return b.is_const and b.dtype == "int32" and b.size == channels


def _windowed_refusal(graph: ir.Graph, node: ir.Node, stride: tuple[int, int],
                      dilation: tuple[int, int], padding: ir.Padding) -> str | None:
    x, y = graph.tensors[node.inputs[0]], graph.tensors[node.outputs[0]]
    if len(x.shape) != 4 or len(y.shape) != 4 or x.shape[0] != 1 or y.shape[0] != 1:
        return "not a batch-1 NHWC image"
    if max(*x.shape, *y.shape, *stride, *dilation) > _MAX_DIM:
        return f"a dimension exceeds CMSIS-NN's 16-bit range ({_MAX_DIM})"
    if min(*stride, *dilation) < 1 or min(padding.top, padding.left) < 0:
        return "stride/dilation below 1 or negative padding"
    if max(padding.top, padding.left) > _MAX_DIM:
        return "padding exceeds CMSIS-NN's 16-bit range"
    return None


def refusal(graph: ir.Graph, node: ir.Node) -> str | None:
    """Why CMSIS-NN cannot run ``node`` (then the portable kernel does), or None if it can."""
    op = node.op
    if not isinstance(op, (ir.Conv2D, ir.DepthwiseConv2D, ir.FullyConnected, ir.AveragePool2D,
                           ir.Add, ir.Softmax)):
        return f"CMSIS-NN has no int8 {ir.op_name(op)} function"
    if not ir.uses_tflite_int8_arithmetic(op):
        return "CMSIS-NN computes TFLite's int8 arithmetic, not this layer's"
    if not all(_int8_activation(graph, n) for n in (*node.inputs[:1], *node.outputs)):
        return "input and output must be int8 activations with per-tensor quantisation"
    if isinstance(op, (ir.Conv2D, ir.DepthwiseConv2D, ir.FullyConnected)):
        w = graph.tensors[node.inputs[1]]
        if not _symmetric_int8(w):
            return "weights must be constant symmetric int8"
    if isinstance(op, ir.Conv2D):
        w_shape = graph.tensors[node.inputs[1]].shape
        x_shape = graph.tensors[node.inputs[0]].shape
        if len(w_shape) != 4 or len(x_shape) != 4 or w_shape[3] != x_shape[3]:
            return "grouped convolution"
        if not _bias_ok(graph, node, w_shape[0]):
            return "bias must be int32 per output channel"
        why = _windowed_refusal(graph, node, op.stride, op.dilation, op.padding)
        if why is not None:
            return why
        conv, x, f, y = _populate_conv(graph, node, op)
        if is_convolve_1x1(conv, x, f) and ((y.h - 1) * op.stride[0] >= x.h
                                            or (y.w - 1) * op.stride[1] >= x.w):
            # the 1x1 paths (the wrapper's pick too) read every output pixel's input unchecked
            return "CMSIS-NN's 1x1 convolutions cannot take bottom/right padding"
        return None
    if isinstance(op, ir.DepthwiseConv2D):
        w_shape = graph.tensors[node.inputs[1]].shape
        x_shape = graph.tensors[node.inputs[0]].shape
        if len(w_shape) != 4 or w_shape[0] != 1 or len(x_shape) != 4 \
                or w_shape[3] != x_shape[3] * op.depth_multiplier:
            return "depthwise weights must be (1, KH, KW, C * multiplier)"
        if not _bias_ok(graph, node, w_shape[3]):
            return "bias must be int32 per output channel"
        why = _windowed_refusal(graph, node, op.stride, op.dilation, op.padding)
        if why is not None:
            return why
        dw, _, f, y = _populate_dw_conv(graph, node, op)
        if uses_depthwise_3x3(dw, f) and \
                (y.w - 1) * op.stride[1] - op.padding.left + 1 >= x_shape[2]:
            # the 3x3 kernel (the wrapper's pick too) reads the middle column unchecked
            return "arm_depthwise_conv_3x3_s8 cannot take more than 1 column of right padding"
        return None
    if isinstance(op, ir.FullyConnected):
        w = graph.tensors[node.inputs[1]]
        if len(w.shape) != 2 or graph.tensors[node.inputs[0]].size != w.shape[1] \
                or graph.tensors[node.outputs[0]].size != w.shape[0]:
            return "fully connected shapes do not match its weights"
        if w.quant.scale.size != 1:
            return "arm_fully_connected_s8 takes per-tensor weight scales only"
        if not _bias_ok(graph, node, w.shape[0]):
            return "bias must be int32 per output channel"
        return None
    if isinstance(op, ir.AveragePool2D):
        try:
            params.pool_quant(graph, node)
        except ValueError as err:
            return str(err)
        return _windowed_refusal(graph, node, op.stride, (1, 1), op.padding)
    if isinstance(op, ir.Add):
        a, b = (graph.tensors[n] for n in node.inputs[:2])
        out = graph.tensors[node.outputs[0]]
        if a.is_const or b.is_const or not (a.shape == b.shape == out.shape):
            return "arm_elementwise_add_s8 adds two activations of one shape (no broadcast)"
        if not _int8_activation(graph, node.inputs[1]):
            return "input and output must be int8 activations with per-tensor quantisation"
        return None
    # Softmax
    try:
        q = params.softmax_quant(graph, node)
    except ValueError as err:
        return str(err)
    if not 0 <= q.input_left_shift <= 31:
        return "softmax input shift outside [0, 31]"
    return None


# ----------------------------------------------------------------------------- populate
# The one place where a node's attributes and TFLite constants become CMSIS-NN parameters.


def _activation_dims(shape: tuple[int, ...]) -> Dims:
    h, w, c = nhwc(shape)
    return Dims(1, h, w, c)


def _populate_conv(graph: ir.Graph, node: ir.Node, op: ir.Conv2D
                   ) -> tuple[ConvParams, Dims, Dims, Dims]:
    q = params.conv_quant(graph, node)
    input_dims = _activation_dims(graph.tensors[node.inputs[0]].shape)
    o, k_h, k_w, i = graph.tensors[node.inputs[1]].shape
    conv = ConvParams(
        input_offset=q.input_offset, output_offset=q.output_offset,
        stride=Tile(op.stride[1], op.stride[0]),
        padding=Tile(op.padding.left, op.padding.top),
        dilation=Tile(op.dilation[1], op.dilation[0]),
        activation=Clamp(q.act_min, q.act_max))
    return conv, input_dims, Dims(o, k_h, k_w, i), _activation_dims(
        graph.tensors[node.outputs[0]].shape)


def _populate_dw_conv(graph: ir.Graph, node: ir.Node, op: ir.DepthwiseConv2D
                      ) -> tuple[DwConvParams, Dims, Dims, Dims]:
    q = params.conv_quant(graph, node)
    input_dims = _activation_dims(graph.tensors[node.inputs[0]].shape)
    one, k_h, k_w, channels = graph.tensors[node.inputs[1]].shape
    dw = DwConvParams(
        input_offset=q.input_offset, output_offset=q.output_offset, ch_mult=op.depth_multiplier,
        stride=Tile(op.stride[1], op.stride[0]),
        padding=Tile(op.padding.left, op.padding.top),
        dilation=Tile(op.dilation[1], op.dilation[0]),
        activation=Clamp(q.act_min, q.act_max))
    return dw, input_dims, Dims(one, k_h, k_w, channels), _activation_dims(
        graph.tensors[node.outputs[0]].shape)


def _populate_fc(graph: ir.Graph, node: ir.Node) -> tuple[FcParams, int, int, Dims, Dims, Dims]:
    q = params.conv_quant(graph, node)
    out_features, in_features = graph.tensors[node.inputs[1]].shape
    fc = FcParams(input_offset=q.input_offset, filter_offset=0, output_offset=q.output_offset,
                  activation=Clamp(q.act_min, q.act_max))
    return (fc, int(q.multipliers[0]), int(q.shifts[0]), Dims(1, 1, 1, in_features),
            Dims(in_features, 1, 1, out_features), Dims(1, 1, 1, out_features))


def _populate_pool(graph: ir.Graph, node: ir.Node, op: ir.AveragePool2D
                   ) -> tuple[PoolParams, Dims, Dims, Dims]:
    q = params.pool_quant(graph, node)
    pool = PoolParams(stride=Tile(op.stride[1], op.stride[0]),
                      padding=Tile(op.padding.left, op.padding.top),
                      activation=Clamp(q.act_min, q.act_max))
    input_dims = _activation_dims(graph.tensors[node.inputs[0]].shape)
    return pool, input_dims, Dims(1, op.kernel[0], op.kernel[1], 1), _activation_dims(
        graph.tensors[node.outputs[0]].shape)


def scratch_by_build(graph: ir.Graph, node: ir.Node) -> dict[str, int]:
    """Scratch bytes ``node`` needs in each build (all 0 for layers CMSIS-NN does not take)."""
    op = node.op
    if refusal(graph, node) is not None:
        return {build: 0 for build in BUILDS}
    if isinstance(op, ir.Conv2D):
        conv, x, f, y = _populate_conv(graph, node, op)
        return {b: convolve_wrapper_buffer_size(b, conv, x, f, y) for b in BUILDS}
    if isinstance(op, ir.DepthwiseConv2D):
        dw, x, f, y = _populate_dw_conv(graph, node, op)
        return {b: depthwise_wrapper_buffer_size(b, dw, x, f, y) for b in BUILDS}
    if isinstance(op, ir.FullyConnected):
        filter_dims = _populate_fc(graph, node)[4]
        return {b: fully_connected_buffer_size(b, filter_dims) for b in BUILDS}
    if isinstance(op, ir.AveragePool2D):
        _, x, _, y = _populate_pool(graph, node, op)
        return {b: avgpool_buffer_size(b, y.w, x.c) for b in BUILDS}
    return {build: 0 for build in BUILDS}


# ----------------------------------------------------------------------------- lowering


def _context(ctx: LoweringContext, node: ir.Node, needed: int) -> Context:
    """The layer's scratch buffer, asked of the arena with the size the library's
    ``*_get_buffer_size`` gives (``scratch_by_build``)."""
    return Context(ctx.scratch(node.name, needed), needed)


def _bias(ctx: LoweringContext, index: int, node: ir.Node, channels: int) -> ConstArray:
    if len(node.inputs) > 2 and node.inputs[2]:
        return ctx.const_tensor(node.inputs[2], index, "bias", "int32_t")
    return ctx.const_values(index, "bias", "int32_t", np.zeros(channels, np.int32),
                            f"{node.name}: no bias (zeros for CMSIS-NN)")


def _requant_arrays(ctx: LoweringContext, index: int, node: ir.Node,
                    channels: int) -> tuple[ConstArray, ConstArray]:
    q = params.conv_quant(ctx.graph, node)
    mults = np.broadcast_to(q.multipliers, (channels,))
    shifts = np.broadcast_to(q.shifts, (channels,))
    return (ctx.const_values(index, "multipliers", "int32_t", mults,
                             f"{node.name}: requantisation multipliers (Q31)"),
            ctx.const_values(index, "shifts", "int32_t", shifts,
                             f"{node.name}: requantisation shifts (> 0: left)"))


def _lower_conv(ctx: LoweringContext, index: int, node: ir.Node,
                op: ir.Conv2D) -> CmsisConvCall:
    conv, x, f, y = _populate_conv(ctx.graph, node, op)
    function = ("arm_convolve_1x1_s8_fast"
                if is_convolve_1x1(conv, x, f) and is_convolve_1x1_fast(conv)
                else "arm_convolve_wrapper_s8")
    mults, shifts = _requant_arrays(ctx, index, node, y.c)
    return CmsisConvCall(
        function=function, context=_context(ctx, node, max_scratch(ctx.graph, node)),
        conv_params=conv, input=ctx.buffer(node.inputs[0]), input_dims=x, filter_dims=f,
        weights=ctx.const_tensor(node.inputs[1], index, "weights", "int8_t"),
        bias_dims=Dims(1, 1, 1, y.c), bias=_bias(ctx, index, node, y.c), output_dims=y,
        output=ctx.buffer(node.outputs[0]), multipliers=mults, shifts=shifts)


def _lower_depthwise(ctx: LoweringContext, index: int, node: ir.Node,
                     op: ir.DepthwiseConv2D) -> CmsisConvCall:
    dw, x, f, y = _populate_dw_conv(ctx.graph, node, op)
    # What the wrapper would pick outside Helium, called directly.
    function = ("arm_depthwise_conv_3x3_s8" if uses_depthwise_3x3(dw, f)
                else "arm_depthwise_conv_wrapper_s8")
    mults, shifts = _requant_arrays(ctx, index, node, y.c)
    return CmsisConvCall(
        function=function, context=_context(ctx, node, max_scratch(ctx.graph, node)),
        conv_params=dw, input=ctx.buffer(node.inputs[0]), input_dims=x, filter_dims=f,
        weights=ctx.const_tensor(node.inputs[1], index, "weights", "int8_t"),
        bias_dims=Dims(1, 1, 1, y.c), bias=_bias(ctx, index, node, y.c), output_dims=y,
        output=ctx.buffer(node.outputs[0]), multipliers=mults, shifts=shifts)


def _lower_fully_connected(ctx: LoweringContext, index: int,
                           node: ir.Node) -> CmsisFullyConnectedCall:
    fc, multiplier, shift, x, f, y = _populate_fc(ctx.graph, node)
    return CmsisFullyConnectedCall(
        context=_context(ctx, node, max_scratch(ctx.graph, node)), fc_params=fc,
        multiplier=multiplier, shift=shift, input=ctx.buffer(node.inputs[0]), input_dims=x,
        filter_dims=f, weights=ctx.const_tensor(node.inputs[1], index, "weights", "int8_t"),
        bias_dims=Dims(1, 1, 1, y.c), bias=_bias(ctx, index, node, y.c), output_dims=y,
        output=ctx.buffer(node.outputs[0]))


def _lower_average_pool(ctx: LoweringContext, node: ir.Node,
                        op: ir.AveragePool2D) -> CmsisAvgPoolCall:
    pool, x, f, y = _populate_pool(ctx.graph, node, op)
    return CmsisAvgPoolCall(
        context=_context(ctx, node, max_scratch(ctx.graph, node)), pool_params=pool,
        input=ctx.buffer(node.inputs[0]), input_dims=x, filter_dims=f, output_dims=y,
        output=ctx.buffer(node.outputs[0]))


def _lower_add(ctx: LoweringContext, node: ir.Node) -> CmsisAddCall:
    q = params.add_quant(ctx.graph, node)
    return CmsisAddCall(
        input1=ctx.buffer(node.inputs[0]), input2=ctx.buffer(node.inputs[1]),
        output=ctx.buffer(node.outputs[0]),
        input1_offset=q.input1_offset, input1_multiplier=q.input1_multiplier,
        input1_shift=q.input1_shift, input2_offset=q.input2_offset,
        input2_multiplier=q.input2_multiplier, input2_shift=q.input2_shift,
        left_shift=q.left_shift, output_offset=q.output_offset,
        output_multiplier=q.output_multiplier, output_shift=q.output_shift,
        act_min=q.act_min, act_max=q.act_max,
        block_size=ctx.tensor(node.outputs[0]).size)


def _lower_softmax(ctx: LoweringContext, node: ir.Node) -> CmsisSoftmaxCall:
    q = params.softmax_quant(ctx.graph, node)
    x = ctx.tensor(node.inputs[0])
    depth = int(x.shape[-1])
    return CmsisSoftmaxCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        num_rows=x.size // depth, row_size=depth, multiplier=q.input_multiplier,
        shift=q.input_left_shift, diff_min=q.diff_min)


def max_scratch(graph: ir.Graph, node: ir.Node) -> int:
    """Scratch bytes that serve every build of the folder (see the module docstring)."""
    return max(scratch_by_build(graph, node).values())


class CmsisNNKernels:
    """CMSIS-NN for every layer it can take (``refusal`` is None); None for the rest."""

    name = NAME

    def walks(self, call):
        """arm_elementwise_add_s8 reads each block of 1 (plain C), 4 (DSP: one word of each
        input) or 4 (MVE: predicated loads) elements before it writes that block, in
        ascending order, so its output may start on either input. The convolutions walk
        output channels in the outer loop (arm_nn_mat_mult_nt_t_s8 re-reads every pixel for
        each channel pair), so they declare nothing."""
        if isinstance(call, CmsisAddCall):
            order = elementwise(call.block_size)
            return ((call.input1, order), (call.input2, order))
        return ()

    def lower(self, ctx: LoweringContext, index: int, node: ir.Node) -> CmsisCall | None:
        if refusal(ctx.graph, node) is not None:
            return None
        op = node.op
        if isinstance(op, ir.Conv2D):
            return _lower_conv(ctx, index, node, op)
        if isinstance(op, ir.DepthwiseConv2D):
            return _lower_depthwise(ctx, index, node, op)
        if isinstance(op, ir.FullyConnected):
            return _lower_fully_connected(ctx, index, node)
        if isinstance(op, ir.AveragePool2D):
            return _lower_average_pool(ctx, node, op)
        if isinstance(op, ir.Add):
            return _lower_add(ctx, node)
        if isinstance(op, ir.Softmax):
            return _lower_softmax(ctx, node)
        return None


kernel_sets.register(CmsisNNKernels())


def fallbacks(graph: ir.Graph) -> dict[str, str]:
    """Layers the portable kernels run instead, with the reason: node name -> why."""
    return {node.name: why for node in graph.nodes
            if (why := refusal(graph, node)) is not None}


