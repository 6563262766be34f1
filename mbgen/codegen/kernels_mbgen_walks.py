"""How the mbgen kernel set's templates walk their buffers: one ``WriteOrder`` per op.

Each function follows the loop of its template (templates/kernels_mbgen/*.c.j2 and, for the
Helium calls, templates/kernels_mve/*.c.j2) from the record's fields. The DSP kernels copy
what a step reads into scratch (widened columns, the ring of transposed rows) before the
step writes, so their step k is "write what the previous block/row made, then read the
next one's input"; the Helium ones read and write one block of pixels at a time.
"""

from __future__ import annotations

import numpy as np

from mbgen.codegen import records as r
from mbgen.codegen.kernels_mbgen import DepthwiseCall, Gather, GemmCall
from mbgen.codegen.kernels_mbgen_compact import CompactGemmCall
from mbgen.codegen.kernels_mbgen_compact_dw import CompactDepthwiseCall
from mbgen.codegen.kernels_mve import BLOCK_PIXELS, MveDepthwiseCall, MvePointwiseCall
from mbgen.codegen.walks import from_steps, pixel_blocks, window_starts, windows
from mbgen.write_order import WriteOrder

# Word loads of the direct column path start at most this far before a window run.
_WORD_SLACK = 3


def gemm_write_order(c: GemmCall) -> WriteOrder:
    """gemm.c.j2 / gemm_int8.c.j2: per block of ``block_pixels`` pixels (per chunk of
    ``chunk_pixels`` for int8 weights widened per chunk; the tail last), the step's input is
    widened (or gathered) into the scratch columns, then all its outputs are written."""
    input_bytes = c.in_h * c.in_w * c.in_c if c.gather is Gather.IM2COL else c.pixels * c.depth
    if c.gather is Gather.IM2COL:
        out_h = c.pixels // c.out_w
        pixel_reads = np.maximum(window_starts(out_h, c.out_w, c.stride_h, c.stride_w,
                                               c.pad_top, c.pad_left, c.in_w, c.in_c)
                                 - _WORD_SLACK, 0)
    else:
        pixel_reads = np.arange(c.pixels) * c.depth
    # int8 weights widened per chunk: every pixel of a chunk is read before it writes
    step = c.chunk_pixels if c.expanded else c.block_pixels
    blocks = -(-c.pixels // step)
    block_reads = [int(pixel_reads[b * step:(b + 1) * step].min()) for b in range(blocks)]
    write_end = [min(b * step, c.pixels) * c.out_c for b in range(blocks)]
    output_bytes = c.pixels * c.out_c
    return from_steps(write_end + [output_bytes], block_reads + [input_bytes], input_bytes,
                      output_bytes)


def compact_gemm_write_order(c: CompactGemmCall) -> WriteOrder:
    """gemm_compact.c.j2: per chunk of ``chunk_pixels`` pixels, every pixel's receptive
    field is widened into the scratch columns (word loads inside the window's runs, border
    taps inside the image), then all the chunk's outputs are written. Passes of record
    groups read the input again from its start after the first pass wrote every pixel."""
    input_bytes = c.in_h * c.in_w * c.in_c
    pixel_reads = window_starts(c.out_h, c.out_w, c.stride_h, c.stride_w, c.pad_top,
                                c.pad_left, c.in_w, c.in_c)
    step = c.chunk_pixels
    starts = range(0, c.pixels, step)
    reads = [int(pixel_reads[s:s + step].min()) for s in starts]
    write_end = [s * c.out_c for s in starts]
    if c.passes > 1:
        reads.append(0)
        write_end.append(c.pixels * c.out_c)
    output_bytes = c.pixels * c.out_c
    return from_steps(write_end + [output_bytes], reads + [input_bytes], input_bytes,
                      output_bytes)


def depthwise_write_order(c: DepthwiseCall | CompactDepthwiseCall) -> WriteOrder:
    """depthwise.c.j2 and depthwise_compact.c.j2 (single-row sweeps): per sweep of ``rows`` output rows, the input rows the window needs
    and the ring lacks are transposed into the ring, then the sweep writes its rows."""
    row_bytes = c.in_w * c.in_c
    out_row_bytes = c.out_w * c.out_c
    write_end, reads = [], []
    oy = next_row = 0
    while oy < c.out_h:
        first = oy * c.stride_h
        rows = 2 if c.double_rows and oy + 1 < c.out_h else 1
        next_row = max(next_row, first)
        last = first + (rows - 1) * c.stride_h + (c.k_h - 1) * c.dilation_h
        loaded = [row - c.pad_top for row in range(next_row, last + 1)
                  if 0 <= row - c.pad_top < c.in_h]
        write_end.append(oy * out_row_bytes)
        reads.append(min(loaded) * row_bytes if loaded else c.in_h * row_bytes)
        next_row = max(next_row, last + 1)
        oy += rows
    input_bytes, output_bytes = c.in_h * row_bytes, c.out_h * out_row_bytes
    return from_steps(write_end + [output_bytes], reads + [input_bytes], input_bytes,
                      output_bytes)


def mve_pointwise_write_order(c: MvePointwiseCall) -> WriteOrder:
    """kernels_mve/pointwise.c.j2: per block of BLOCK_PIXELS pixels, per block of output
    channels, both pixels' inputs are read and the block's outputs written (predicated
    tail loads touch no inactive lane)."""
    return pixel_blocks(c.pixels, BLOCK_PIXELS, c.in_c, c.out_c)


def mve_depthwise_write_order(c: MveDepthwiseCall) -> WriteOrder:
    """kernels_mve/depthwise.c.j2: for oy, for ox, the clipped window (or, inside the
    image, the whole window from its top-left pixel), 8 or 4 channels at a time."""
    return windows(c.out_h, c.out_w, c.channels, c.in_h, c.in_w, c.channels, c.stride_h,
                   c.stride_w, c.pad_top, c.pad_left)


def walks(call) -> tuple[tuple[r.BufferRef, WriteOrder], ...]:
    """The mbgen kernel set's declarations (``KernelSet.walks``), Helium calls included."""
    if isinstance(call, GemmCall):
        return ((call.input, gemm_write_order(call)),)
    if isinstance(call, CompactGemmCall):
        return ((call.input, compact_gemm_write_order(call)),)
    if isinstance(call, (DepthwiseCall, CompactDepthwiseCall)):
        return ((call.input, depthwise_write_order(call)),)
    if isinstance(call, MvePointwiseCall):
        return ((call.input, mve_pointwise_write_order(call)),)
    if isinstance(call, MveDepthwiseCall):
        return ((call.input, mve_depthwise_write_order(call)),)
    return ()
