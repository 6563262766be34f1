"""The ``mbgen`` kernel set: Cortex-M DSP kernels specialised at generation time.

For Armv7E-M / Armv8-M cores with the DSP extension (Cortex-M4, M7, M33, M55). Every shape,
stride, padding and channel count is baked into the generated C; the weights are re-laid
out here, offline, in the order the inner loops read them:

* 1x1 convolutions, general convolutions (through an im2col gather) and fully connected
  layers are one int8 GEMM (``templates/kernels_mbgen/gemm.c.j2``): a few pixels are widened
  to int16 pairs in the order SXTB16 produces them, then a block of pixels x output channels
  accumulates with SMLAD. Weights are int16 pairs in that same order (one LDRD feeds two
  SMLADs), or int8 in flash (the default layout, kernels_mbgen_policy) widened by one SXTB16
  pair per weight word into int16-pair records in RAM, then run by the same 4x2 block:
  the whole stream once per inference when it fits the scratch (``ram_stream``), else each
  channel pair once per chunk of up to 64 pixels (``chunk_blocks``), the block code then
  shared by every layer of the same padded depth (``gemm_shared.c.j2``; the per-layer
  int8 C in ``gemm_int8.c.j2``).
* depthwise convolutions (``depthwise.c.j2``) transpose a ring of input rows into int16
  channel-major rows, padded with the zero point, so borders need no special case and two
  taps of one channel meet in one SMLAD; 3x3 has an unrolled sweep, other shapes a loop.

Arithmetic tricks, each exact (the tests compare every case with ``mbgen.reference``):

* the input offset is folded into the bias, ``bias' = bias + input_offset * sum(w)``,
  wrapped to int32 like the accumulator: padded taps then read the zero point itself.
* requantisation is SMMLAR (``floor((2*acc*m + c*2**32 + 2**31) / 2**32)``, weights and bias
  doubled offline) then one arithmetic shift, instead of TFLite's
  SaturatingRoundingDoublingHighMul + RoundingDivideByPOT, for a layer where
  ``fast_requant`` proves it equal for every reachable accumulator of every channel; else
  with a sign fix (``signed_requant``, any range without overflow); else TFLite's sequence.
* channels are grouped by their requantisation shift, so SSAT's immediate shift does the
  shift and the saturation in one instruction; each group is a copy of the block's code.

The innermost blocks are inline assembly where GCC's allocation cannot be trusted (every
operand of a 14-register block is live at once); each has a plain-C twin with the same
arithmetic, used when not optimising and off-target (host builds of the same folder).
Modules: kernels_mbgen_records (the call records: every loop plan and offset the templates
print), kernels_mbgen_layout (weights and streams in reading order), kernels_mbgen_depthwise
(depthwise lowering), kernels_mbgen_policy (int8 or int16 weights). See
``benchmarks/kernels_mbgen.md`` for what each part costs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from mbgen import ir
from mbgen.codegen import kernel_sets
from mbgen.codegen import records as r
from mbgen.codegen.kernels_mbgen_compact_dw import lower_compact_depthwise
from mbgen.codegen.kernels_mbgen_depthwise import _lower_depthwise
from mbgen.codegen.kernels_mbgen_compact import lower_compact_gemm
from mbgen.codegen.kernels_mbgen_layout import (  # noqa: F401  (re-exported)
    MIN_GROUP_PAIRS, _request_scratch, _requant_comment, direct_column_words,
    gemm_stream, gemm_weights, pack_int16_pairs, ram_stream_bytes, shift_grouped_pairs,
    sxtb16_order)
from mbgen.codegen.kernels_mbgen_records import (  # noqa: F401  (re-exported)
    DW3_WEIGHT_WORDS, GEMM_STEPS_PER_LOOP, SHARED_MIN_DEPTH, ChannelGroup, ColumnWord,
    DepthwiseCall, Gather, GemmCall, WeightFormat, _align, _asm_block_eligible)
from mbgen.codegen.kernels_mbgen_policy import (  # noqa: F401  (re-exported for tests)
    CODE_RESERVE_BYTES, balanced_allows_int16, choose_int16_layers, shares_code,
    specialised_layers)
from mbgen.codegen.kernels_mbgen_policy import gemm_shape as _gemm_shape
from mbgen.codegen.lowering import LoweringContext, bias_values, nhwc
from mbgen.quantize import params
from mbgen.quantize.requant_proofs import (accumulator_range, fold_input_offset,
                                          plan_requant, wrap_int32)

NAME = "mbgen"


# int8-weight GEMM layers widen this many bytes of input columns per chunk of pixels at most;
# each channel block's weights are widened to int16 once per chunk (more pixels per chunk:
# the widening costs less per MAC; 16 KB keeps K = 256 at 32 pixels).
CHUNK_COLUMN_BYTES = 16 * 1024
# ... and at most this many 4-pixel blocks per chunk (64 pixels: widening < 2% per MAC).
MAX_CHUNK_BLOCKS = 16
# Both only as far as the arena's free bytes beside the layer allow (``ctx.spare``): bigger
# chunks, or the whole int16-pair stream widened into the scratch once per inference
# (``ram_stream``: then exactly the int16 code runs), never a bigger arena.






# ----------------------------------------------------------------------------- the kernel set


@dataclass(frozen=True)
class _GraphChoices:
    """Whole-graph decisions taken once per generation: which layers get int16 weights."""

    dsp: bool
    int16_layers: frozenset[str]
    mve: bool = False   # Helium: kernels_mve.lower is asked first (1x1, depthwise)
    compact: bool = False   # the shared compact GEMM and depthwise (kernels_mbgen_policy.shares_code)
    # under compact, the shallow GEMM layers that keep per-layer code (specialised_layers)
    specialised: frozenset[str] = frozenset()


def _target(ctx: LoweringContext):
    """The Target being generated for."""
    from mbgen import targets
    return targets.get(ctx.target)


class MbgenKernels:
    """Conv2D, DepthwiseConv2D and FullyConnected on DSP cores; None for everything else."""

    name = NAME

    def __init__(self) -> None:
        self._choices: tuple[LoweringContext, _GraphChoices] | None = None

    # -- decisions for the whole graph

    def _graph_choices(self, ctx: LoweringContext) -> _GraphChoices:
        if self._choices is not None and self._choices[0] is ctx:
            return self._choices[1]
        target = _target(ctx)
        flash = ctx.flash_budget if ctx.flash_budget is not None else target.flash_bytes
        model = ctx.layout_graph or ctx.graph   # a stage's bands follow the whole model
        compact = shares_code(model, ctx.weight_layout, flash)
        if ctx.weight_layout in ("int8", "size") or compact:
            int16_layers: frozenset[str] = frozenset()
        elif ctx.weight_layout == "int16":
            int16_layers = choose_int16_layers(model, 0)   # no budget: every candidate
        else:
            if ctx.weight_layout == "speed":
                int16_layers = choose_int16_layers(model, flash)
            elif balanced_allows_int16(model, flash):   # "balanced", "auto"
                int16_layers = choose_int16_layers(model, flash // 2)
            else:
                int16_layers = frozenset()
        choices = _GraphChoices(bool(target.dsp), int16_layers, bool(target.mve), compact,
                                specialised_layers(model, ctx.weight_layout, flash))
        self._choices = (ctx, choices)
        return choices

    def walks(self, call: r.CallRecord):
        """In-place declarations: see ``kernels_mbgen_walks``."""
        from mbgen.codegen import kernels_mbgen_walks
        return kernels_mbgen_walks.walks(call)

    def lower(self, ctx: LoweringContext, index: int, node: ir.Node) -> r.CallRecord | None:
        if not ir.uses_tflite_int8_arithmetic(node.op):
            return None  # TFLite fixed-point kernels only: portable takes onnxruntime layers
        choices = self._graph_choices(ctx)
        if not choices.dsp:
            return None
        for name in (node.inputs[0], node.outputs[0]):
            if ctx.tensor(name).dtype != "int8":
                return None
        op = node.op
        if choices.mve and isinstance(op, (ir.Conv2D, ir.DepthwiseConv2D)):
            from mbgen.codegen import kernels_mve   # Helium where it wins; else DSP
            call = kernels_mve.lower(ctx, index, node)
            if call is not None:
                return call
        if (isinstance(op, (ir.Conv2D, ir.FullyConnected)) and choices.compact
                and node.name not in choices.specialised):
            # one shared runtime-parameterised GEMM: code does not grow per layer
            call = lower_compact_gemm(ctx, index, node)
            if call is not None:
                return call
        if isinstance(op, (ir.Conv2D, ir.FullyConnected)):
            fmt = (WeightFormat.INT16_PAIRS if node.name in choices.int16_layers
                   else WeightFormat.INT8)
            call = _lower_gemm(ctx, index, node, fmt)
            if call is not None and choices.compact:
                call = dataclasses.replace(call, compact_code=True)
            if call is not None and (call.expanded or call.ram_shared) and call.asm_block:
                shared = f"shared int8 GEMM k{call.depth_padded}"
                call = dataclasses.replace(call, prints_shared_gemm=ctx.prints_first(shared))
            return call
        if isinstance(op, ir.DepthwiseConv2D):
            if choices.compact:   # one shared body, per-layer params only
                call = lower_compact_depthwise(ctx, index, node)
                if call is not None:
                    return call
            return _lower_depthwise(ctx, index, node, op)
        return None


def gemm_scratch_bytes(graph: ir.Graph, node: ir.Node, spare: int = 0) -> int:
    """Arena bytes the GEMM kernel for ``node`` uses: widened columns, the widened record or
    whole stream, im2col bytes; the int8 layers' chunks and stream only as ``spare`` bytes
    of the arena allow."""
    op = node.op
    if not ir.uses_tflite_int8_arithmetic(op):
        return 0  # TFLite fixed-point kernels only: portable takes onnxruntime layers
    if isinstance(op, (ir.Conv2D, ir.FullyConnected)):
        shape = _gemm_shape(graph, node)
        if shape is None:
            return 0
        _, depth, out_c = shape
        depth_padded = -(-depth // 4) * 4
        block = 1 if isinstance(op, ir.FullyConnected) else 4
        gather = _align(0 if _is_contiguous(graph, node) else depth_padded * block, 8)
        if block == 1:
            return _align(depth_padded * 2 * block, 8) + gather
        ram, chunk = int8_widening(depth_padded, out_c, gather, spare)
        if ram:
            return _align(depth_padded * 2 * block, 8) + gather + ram_stream_bytes(
                depth_padded, out_c)
        # int8 weights: a chunk of columns and one widened record (int16 weights need less)
        return _align(chunk * depth_padded * 2 * block, 8) + _record_bytes(depth_padded) + gather
    return 0


def _record_bytes(depth_padded: int) -> int:
    """One channel pair's widened record in the scratch."""
    return _align(4 * (2 + depth_padded + 6 + 1), 8)


def int8_widening(depth_padded: int, out_c: int, gather: int, spare: int) -> tuple[bool, int]:
    """How an int8 4x2 GEMM layer widens its weights within ``spare`` arena bytes (its
    ``gather`` bytes of im2col counted): (the whole stream once per inference, 0) when it
    fits beside the 4-pixel columns, else (False, 4-pixel blocks per chunk)."""
    columns = _align(depth_padded * 2 * 4, 8)
    if columns + gather + ram_stream_bytes(depth_padded, out_c) <= spare:
        return True, 0
    return False, chunk_blocks(depth_padded, spare - _record_bytes(depth_padded) - gather)


def chunk_blocks(depth_padded: int, room: int) -> int:
    """4-pixel blocks per chunk of an int8-weight GEMM layer of this padded depth whose
    columns may take ``room`` bytes (at least one block)."""
    per_block = depth_padded * 2 * 4   # int16 columns of 4 pixels
    return max(1, min(MAX_CHUNK_BLOCKS, CHUNK_COLUMN_BYTES // per_block, room // per_block))



def _is_contiguous(graph: ir.Graph, node: ir.Node) -> bool:
    """1x1, stride 1, no padding convolutions and fully connected layers read pixels as
    they lie: row p of the GEMM is input pixel p."""
    op = node.op
    if isinstance(op, ir.FullyConnected):
        return True
    w = graph.tensors[node.inputs[1]]
    return (w.shape[1:3] == (1, 1) and op.stride == (1, 1) and op.padding == ir.Padding())


# ----------------------------------------------------------------------------- GEMM layers


def _lower_gemm(ctx: LoweringContext, index: int, node: ir.Node,
                fmt: WeightFormat) -> GemmCall | None:
    shape = _gemm_shape(ctx.graph, node)
    if shape is None:
        return None
    pixels, depth, out_c = shape
    op = node.op
    w = ctx.tensor(node.inputs[1])
    if w.dtype != "int8":
        return None
    if isinstance(op, ir.FullyConnected):
        if ctx.tensor(node.inputs[0]).size != depth or ctx.tensor(node.outputs[0]).size != out_c:
            return None
        block_pixels, block_channels = 1, 4
        geometry = dict(in_h=1, in_w=1, in_c=depth, out_w=1, k_h=1, k_w=1, stride_h=1,
                        stride_w=1, dilation_h=1, dilation_w=1, pad_top=0, pad_left=0)
    else:
        in_h, in_w, in_c = nhwc(ctx.tensor(node.inputs[0]).shape)
        _, out_w, _ = nhwc(ctx.tensor(node.outputs[0]).shape)
        _, k_h, k_w, _ = w.shape
        block_pixels, block_channels = 4, 2
        geometry = dict(in_h=in_h, in_w=in_w, in_c=in_c, out_w=out_w, k_h=k_h, k_w=k_w,
                        stride_h=op.stride[0], stride_w=op.stride[1],
                        dilation_h=op.dilation[0], dilation_w=op.dilation[1],
                        pad_top=op.padding.top, pad_left=op.padding.left)
    gather = Gather.CONTIGUOUS if _is_contiguous(ctx.graph, node) else Gather.IM2COL
    direct = ()
    if gather is Gather.IM2COL and geometry["dilation_w"] == 1:
        direct = direct_column_words(depth, geometry["k_w"] * geometry["in_c"],
                                     geometry["k_h"])
    q = params.conv_quant(ctx.graph, node)
    per_channel = q.multipliers.size > 1
    if per_channel and q.multipliers.size != out_c:
        raise ir.GraphError(f"{node.name}: {q.multipliers.size} weight scales for "
                            f"{out_c} output channels")
    weights = w.data.astype(np.int64).reshape(out_c, depth)
    bias = fold_input_offset(bias_values(ctx, node, out_c), weights, q.input_offset)
    acc_lo, acc_hi = accumulator_range(bias, weights)
    int16 = fmt is WeightFormat.INT16_PAIRS
    depth_padded = _align(depth, 4)
    # int8 weights of a multi-pixel layer are widened per chunk; the columns are doubled
    # instead of the weights (int8 cannot hold 2w), so the accumulator is doubled too.
    chunk = 0
    widens = not int16 and block_pixels == 4   # int8 weights widened to int16 pairs in RAM
    spare = ctx.spare(node.name) if widens else 0
    scratch = _request_scratch(ctx, node, gemm_scratch_bytes(ctx.graph, node, spare))
    gather_bytes = _align(depth_padded * 4, 8) if gather is Gather.IM2COL else 0
    ram, most_blocks = (int8_widening(depth_padded, out_c, gather_bytes, spare) if widens
                        else (False, 0))
    if widens and not ram:
        # chunks of equal size: as few as the columns the scratch holds allow
        blocks = -(-pixels // block_pixels)
        chunks = -(-blocks // most_blocks)
        chunk = -(-blocks // chunks)
    widened = chunk > 0 or ram
    requant, table = plan_requant(q, out_c, acc_lo, acc_hi, acc_doubled=int16 or widened)
    scale = 2 if requant.is_fast and (int16 or widened) else 1
    order, pair_groups = None, ()
    if _asm_block_eligible(block_pixels, requant, out_c, block_channels):
        order, pair_groups = shift_grouped_pairs(table[:, 2])
    stream = gemm_stream(weights * (scale if int16 else 1), wrap_int32(bias * scale), table,
                         fmt, block_pixels, block_channels, order)
    stream_array = ctx.const_values(
        index, "stream", "int32_t" if int16 else "int8_t", stream,
        f"{node.name}: per block of {block_channels} channels: bias + input_offset * sum(w), "
        f"weights as {'int16 pairs' if int16 else 'int8'}"
        f"{(' (both x2)' if int16 else ' (bias x2, columns x2)') if scale == 2 else ''}"
        f", {_requant_comment(requant)}")
    return GemmCall(
        input=ctx.buffer(node.inputs[0]), output=ctx.buffer(node.outputs[0]),
        scratch=scratch, gather=gather, pixels=pixels,
        depth=depth, depth_padded=depth_padded, out_c=out_c, block_pixels=block_pixels,
        block_channels=block_channels, weight_format=fmt, stream=stream_array,
        requant=requant, pad_value=-q.input_offset, column_words=direct,
        pair_groups=pair_groups, chunk_blocks=chunk, ram_stream=ram, **geometry)


kernel_sets.register(MbgenKernels())
