"""How the portable kernels walk their buffers: the ``WriteOrder`` each declares.

Each function reads the fields of one call record, the same fields its template loops over,
and states the kernel's steps: the output bytes written by the end of a step, and the
lowest input byte the step reads. ``from_steps`` turns that into a ``WriteOrder`` (a step
must not read below what any later step reads, so the read starts are suffix minima).
Only kernels whose loops were read are declared; anything else declares nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mbgen.codegen import records as r
from mbgen.write_order import WriteOrder


def from_steps(write_end: Sequence[int], lowest_read: Sequence[int], input_bytes: int,
               output_bytes: int) -> WriteOrder:
    """The WriteOrder of steps that each write output below ``write_end[k]`` and read
    nothing below ``lowest_read[k]`` (input_bytes or more: reads nothing)."""
    reads = np.minimum(np.asarray(lowest_read, dtype=np.int64), input_bytes)
    starts = np.minimum.accumulate(reads[::-1])[::-1]
    starts[0] = 0   # a walk starts at the input; lower is always the safe side
    return WriteOrder(input_bytes, output_bytes, tuple(int(w) for w in write_end),
                      tuple(int(s) for s in starts))


def window_starts(out_h: int, out_w: int, stride_h: int, stride_w: int, pad_top: int,
                  pad_left: int, in_w: int, in_c: int) -> np.ndarray:
    """Per output pixel (row-major), a byte at or below every input byte its window reads:
    the window's top-left corner clamped into the image."""
    y0 = np.maximum(np.arange(out_h) * stride_h - pad_top, 0)
    x0 = np.maximum(np.arange(out_w) * stride_w - pad_left, 0)
    return ((y0[:, None] * in_w + x0[None, :]) * in_c).reshape(-1)


def windows(out_h: int, out_w: int, out_c: int, in_h: int, in_w: int, in_c: int,
            stride_h: int, stride_w: int, pad_top: int, pad_left: int) -> WriteOrder:
    """Output pixels in row-major order, each from its window (read again per block of
    channels) and written before the next pixel starts."""
    pixels = out_h * out_w
    write_end = (np.arange(pixels) + 1) * out_c
    reads = window_starts(out_h, out_w, stride_h, stride_w, pad_top, pad_left, in_w, in_c)
    return from_steps(write_end, reads, in_h * in_w * in_c, pixels * out_c)


def pixel_blocks(pixels: int, block: int, in_c: int, out_c: int) -> WriteOrder:
    """A 1x1 GEMM over contiguous pixels, ``block`` pixels at a time: each block's outputs
    are written while its own input pixels are (re)read, then the next block."""
    starts = np.arange(0, pixels, block)
    write_end = np.minimum(starts + block, pixels) * out_c
    return from_steps(write_end, starts * in_c, pixels * in_c, pixels * out_c)


def pixel_by_pixel(call: r.ConvWindow | r.DepthwiseWindow) -> WriteOrder:
    """Portable conv and depthwise (kernels/conv.c.j2, depthwise.c.j2): for oy, for ox,
    every output channel of the pixel, four at a time, each block reading the window."""
    return windows(call.out_h, call.out_w, call.out_c, call.in_h, call.in_w, call.in_c,
                   call.stride_h, call.stride_w, call.pad_top, call.pad_left)


def elementwise(size: int) -> WriteOrder:
    """``for i: output[i] = f(inputs[i])``: byte i is read before it is written, so step k
    writes bytes below k and reads from k on (the output may start on the input)."""
    steps = np.arange(size + 1)
    return from_steps(steps, steps, size, size)


def portable(call) -> tuple[tuple[r.BufferRef, WriteOrder], ...]:
    """The portable kernel set's declarations (``KernelSet.walks``)."""
    if isinstance(call, (r.ConvCall, r.DepthwiseCall)):
        return ((call.input, pixel_by_pixel(call)),)
    if isinstance(call, r.AddCall):
        order = elementwise(call.size)
        return ((call.input1, order), (call.input2, order))
    return ()
