"""TFLite frontend translations of CONCATENATION, MAX_POOL_2D, SPLIT, SPLIT_V and STRIDED_SLICE.

Each handler takes the frontend's ``_GraphBuilder`` (its checks, tensors and error messages)
while it converts one operator.

* SPLIT and SPLIT_V become one ``ir.StridedSlice`` per output, so every IR node keeps a single
  output (the reference, planner and codegen rely on it); the TFLite writer turns such runs
  of slices back into one SPLIT / SPLIT_V.
* STRIDED_SLICE: begin / end masks, negative indices and clamping as TFLite's
  ``strided_slice_logic``; positive strides only; a shrink-axis mask becomes a slice plus a
  Reshape (a view); the ellipsis and new-axis masks and ``offset`` are refused.
* CONCATENATION with a fused activation, or with an input whose scale or zero point differs
  from the output's, is refused, as TFLM refuses both (its int8 kernel only copies bytes).
"""

from __future__ import annotations

import math

import numpy as np

from mbgen import ir

# BuiltinOperator and BuiltinOptions codes of the TFLite schema.
CONCATENATION, MAX_POOL_2D, STRIDED_SLICE, SPLIT, SPLIT_V = 2, 17, 45, 49, 102
_POOL2D_OPTIONS, _CONCAT_OPTIONS, _SLICE_OPTIONS, _SPLIT_OPTIONS, _SPLIT_V_OPTIONS = \
    5, 10, 32, 35, 79

MULTI_OUTPUT = frozenset({SPLIT, SPLIT_V})
OPTIONS = {CONCATENATION: _CONCAT_OPTIONS, MAX_POOL_2D: _POOL2D_OPTIONS,
           STRIDED_SLICE: _SLICE_OPTIONS, SPLIT: _SPLIT_OPTIONS, SPLIT_V: _SPLIT_V_OPTIONS}
_MAX_RANK = 4


def concatenation(b) -> None:
    ins = list(b.op.inputs)
    b.expect(len(ins) >= 1, "CONCATENATION needs at least one input")
    xs = [b.tensor(i, const=False) for i in ins]
    out = b.output()
    out_shape = b.shape(out)
    rank = len(out_shape)
    b.expect(1 <= rank <= _MAX_RANK, f"output of rank {rank} (1 to {_MAX_RANK} supported)")
    opts = b.require_options()
    axis = opts.axis + rank if opts.axis < 0 else opts.axis
    b.expect(0 <= axis < rank, f"axis {opts.axis} out of range for rank {rank}")
    b.expect(opts.activation == 0, "a fused activation on CONCATENATION (TFLM refuses it too)")
    dtype = b.tensors[out].dtype
    total = 0
    for x in xs:
        shape = b.shape(x)
        b.expect(b.tensors[x].dtype == dtype, f"input {x!r} is {b.tensors[x].dtype}, the "
                                              f"output {dtype}")
        b.expect(len(shape) == rank and all(s == o for d, (s, o) in
                                            enumerate(zip(shape, out_shape)) if d != axis),
                 f"input {x!r} of shape {shape} does not fit output {out_shape} "
                 f"along axis {axis}")
        total += shape[axis]
    b.expect(total == out_shape[axis],
             f"inputs give {total} along axis {axis}, the output has {out_shape[axis]}")
    for x in xs:
        b.same_quant(x, out)  # TFLM copies bytes and refuses differing int8 quantisation
    b.add_node(ir.Concatenation(axis=axis), xs, [out])


def max_pool(b) -> None:
    (ix,) = b.inputs(1, 1)
    x, out = b.tensor(ix, const=False), b.output()
    channels = b.image(x)[3]
    opts = b.require_options()
    stride, _, pad = b.windowed(x, opts.filter_h, opts.filter_w, out, channels)
    b.same_quant(x, out)
    b.add_node(ir.MaxPool2D(kernel=(opts.filter_h, opts.filter_w), stride=stride,
                            padding=pad, activation=b.activation()), [x], [out])


def _axis(b, index: int, rank: int) -> int:
    values = b.attribute(index, "axis").reshape(-1)
    b.expect(values.size == 1, f"axis must be one value, not {values.tolist()}")
    axis = int(values[0])
    b.expect(-rank <= axis < rank, f"axis {axis} out of range for rank {rank}")
    return axis % rank


def _slices(b, x: str, axis: int, sizes: list[int]) -> None:
    """One StridedSlice per output: consecutive pieces of ``sizes`` along ``axis``."""
    shape = b.shape(x)
    b.expect(len(b.op.outputs) == len(sizes),
             f"{len(sizes)} pieces but {len(b.op.outputs)} outputs")
    begin = 0
    for out_index, size in zip(b.op.outputs, sizes):
        out = b.tensor(out_index, const=False)
        expected = shape[:axis] + (size,) + shape[axis + 1:]
        b.expect(b.shape(out) == expected,
                 f"output {out!r} has shape {b.shape(out)}, expected {expected}")
        b.expect(b.tensors[out].dtype == b.tensors[x].dtype, f"output {out!r} changes dtype")
        starts = tuple(begin if d == axis else 0 for d in range(len(shape)))
        b.add_node(ir.StridedSlice(begin=starts, strides=(1,) * len(shape)), [x], [out])
        begin += size


def split(b) -> None:
    iaxis, ix = b.inputs(2, 2)
    x = b.tensor(ix, const=False)
    shape = b.shape(x)
    b.expect(1 <= len(shape) <= _MAX_RANK, f"input of rank {len(shape)}")
    axis = _axis(b, iaxis, len(shape))
    count = b.require_options().num_splits
    b.expect(count >= 1 and shape[axis] % count == 0,
             f"cannot split {shape[axis]} along axis {axis} into {count} equal pieces")
    _slices(b, x, axis, [shape[axis] // count] * count)


def split_v(b) -> None:
    ix, isizes, iaxis = b.inputs(3, 3)
    x = b.tensor(ix, const=False)
    shape = b.shape(x)
    b.expect(1 <= len(shape) <= _MAX_RANK, f"input of rank {len(shape)}")
    axis = _axis(b, iaxis, len(shape))
    sizes = [int(v) for v in b.attribute(isizes, "size_splits").reshape(-1)]
    count = b.require_options().num_splits
    b.expect(count == len(sizes), f"num_splits {count} but {len(sizes)} sizes")
    unknown = [i for i, v in enumerate(sizes) if v == -1]
    b.expect(len(unknown) <= 1 and all(v >= 0 or v == -1 for v in sizes),
             f"invalid size_splits {sizes}")
    if unknown:
        sizes[unknown[0]] = shape[axis] - (sum(sizes) + 1)
    b.expect(all(v >= 1 for v in sizes) and sum(sizes) == shape[axis],
             f"size_splits {sizes} do not add up to {shape[axis]} along axis {axis}")
    _slices(b, x, axis, sizes)


def strided_slice(b) -> None:
    ix, ibegin, iend, istrides = b.inputs(4, 4)
    x, out = b.tensor(ix, const=False), b.output()
    shape = b.shape(x)
    rank = len(shape)
    b.expect(1 <= rank <= _MAX_RANK, f"input of rank {rank}")
    opts = b.require_options()
    begin_mask, end_mask, ellipsis, new_axis, shrink = opts.slice_masks
    b.expect(ellipsis == 0 and new_axis == 0 and not opts.slice_offset,
             "ellipsis and new-axis masks and offset are not supported")
    b.expect(0 <= shrink < 1 << rank, f"shrink-axis mask {shrink} for rank {rank}")
    vectors = [b.attribute(i, what).reshape(-1)
               for i, what in ((ibegin, "begin"), (iend, "end"), (istrides, "strides"))]
    b.expect(all(v.size == rank for v in vectors), f"begin, end and strides need {rank} values")
    begins, ends, strides = (np.asarray(v, dtype=np.int64) for v in vectors)
    b.expect(bool(np.all(strides >= 1)), f"strides {strides.tolist()}: only positive strides "
                                         "are supported")
    starts, counts = [], []
    for d, dim in enumerate(shape):
        start = 0 if begin_mask >> d & 1 else int(begins[d])
        stop = dim if end_mask >> d & 1 else int(ends[d])
        start = min(max(start + dim if start < 0 else start, 0), dim)
        stop = min(max(stop + dim if stop < 0 else stop, 0), dim)
        if shrink >> d & 1:  # one index, and the dimension disappears from the output
            start = int(begins[d]) + dim if begins[d] < 0 else int(begins[d])
            b.expect(0 <= start < dim, f"shrink-axis index {int(begins[d])} out of range")
            stop = start + 1
        starts.append(start)
        counts.append(max(0, math.ceil((stop - start) / int(strides[d]))))
    b.expect(all(n >= 1 for n in counts), f"the slice of {shape} is empty")
    kept = tuple(n for d, n in enumerate(counts) if not shrink >> d & 1)
    b.expect(b.shape(out) == kept,
             f"output shape {b.shape(out)} does not match the expected {kept}")
    b.expect(b.tensors[out].dtype == b.tensors[x].dtype, "STRIDED_SLICE changes the dtype")
    sliced = out if kept == tuple(counts) else b.derived_tensor(out, f"{out}/unshrunk",
                                                                tuple(counts))
    b.add_node(ir.StridedSlice(begin=tuple(starts), strides=tuple(int(s) for s in strides)),
               [x], [sliced])
    if sliced != out:  # the shrunk dimensions are all 1: a view
        b.add_node(ir.Reshape(kept), [sliced], [out])


HANDLERS = {CONCATENATION: concatenation, MAX_POOL_2D: max_pool, SPLIT: split,
            SPLIT_V: split_v, STRIDED_SLICE: strided_slice}
