"""Torch translations of the graph-shaping ops SqueezeNet and ShuffleNetV2 code uses:
``torch.cat``, ``torch.chunk`` / ``torch.split`` (and ``aten.slice``), max pooling (with
``ceil_mode``), and the channel shuffle ``x.view(n, g, c // g, h, w).transpose(1, 2)
.contiguous().view(n, c, h, w)``.

* Tensors are NCHW in PyTorch and NHWC in the IR, so a dim becomes an IR axis through
  :data:`_NHWC_AXIS` (channels, dim 1, are axis 3).
* A chunk or split returns one ``ir.StridedSlice`` per piece (TFLite's SPLIT becomes the same);
  ``x[:, a:b:s]`` and ``aten.slice`` are StridedSlices too.
* Max pooling: PyTorch pads with -inf, so a padded pixel never wins, as in ``ir.MaxPool2D``.
  ``ceil_mode=True`` adds bottom/right rows and columns that only the last window reaches;
  the padding stored is what the windows really touch (the output shape PyTorch recorded).
* The channel shuffle goes through a rank-5 tensor the IR has no layout for. The 5-D view and
  the transpose are held back (:class:`ShuffleView`); the view back to NCHW completes the
  pattern and emits RESHAPE (1, H*W, g, C/g) -> TRANSPOSE (0, 1, 3, 2) -> RESHAPE (1, H, W,
  C), exactly TFLite's form: in NHWC the channels of each pixel are contiguous, so that
  moves channel ``i*(C/g) + j`` to ``j*g + i`` as PyTorch's shuffle does. Anything else done
  to the 5-D tensor is refused by name. ``nn.ChannelShuffle`` / ``F.channel_shuffle`` (and
  ``aten.channel_shuffle``) emit the same three nodes directly.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mbgen import ir
from mbgen.frontends.torch_values import (Builder, Call, Deferred, Value, activation_arg,
                                          pair, unsupported)

_NHWC_AXIS = {0: 0, 1: 3, 2: 1, 3: 2}


def _ir_axis(call: Call, x: Value, dim: object) -> int:
    rank = len(x.torch_shape)
    if not isinstance(dim, int) or not -rank <= dim < rank:
        raise unsupported(call, f"dim={dim!r} for a rank-{rank} tensor")
    dim %= rank
    if x.flat_from is not None:
        raise unsupported(call, "a flattened feature map (its IR order is HWC, PyTorch's CHW)")
    return _NHWC_AXIS[dim] if rank == 4 else dim


# ----------------------------------------------------------------------------- cat and split


def _cat(b: Builder, call: Call, name: str) -> Value:
    tensors = call.args.get("tensors")
    if not isinstance(tensors, (list, tuple)) or not tensors \
            or not all(isinstance(t, Value) for t in tensors):
        raise unsupported(call, "concatenation of anything but feature maps computed from "
                                "the input")
    dim = int(call.args.get("dim", 0))
    axis = _ir_axis(call, tensors[0], dim)
    rank = len(tensors[0].torch_shape)
    for t in tensors:
        if len(t.torch_shape) != rank or t.flat_from is not None or any(
                a != c for d, (a, c) in enumerate(zip(t.torch_shape, tensors[0].torch_shape))
                if d != dim % rank):
            raise unsupported(call, "concatenation of tensors whose shapes differ outside dim "
                                    f"{dim}")
    shape = list(tensors[0].torch_shape)
    shape[dim % rank] = sum(t.torch_shape[dim % rank] for t in tensors)
    return b.emit(name, ir.Concatenation(axis=axis), [t.name for t in tensors], tuple(shape))


def _piece_sizes(call: Call, total: int) -> list[int]:
    if call.op == "chunk":
        chunks = int(call.args["chunks"])
        if chunks < 1:
            raise unsupported(call, f"chunk into {chunks} pieces")
        size = math.ceil(total / chunks)
        return [min(size, total - start) for start in range(0, total, size)]
    split = next((call.args[k] for k in ("split_size", "split_sizes", "split_size_or_sections")
                  if call.args.get(k) is not None), None)
    if split is None:
        raise unsupported(call, "split without sizes")
    if isinstance(split, int):
        if split < 1:
            raise unsupported(call, f"split size {split}")
        return [min(split, total - start) for start in range(0, total, split)]
    sizes = [int(s) for s in split]
    if sum(sizes) != total or min(sizes) < 0:
        raise unsupported(call, f"split sizes {sizes} for a dim of {total}")
    return sizes


def _slice_value(b: Builder, call: Call, name: str, x: Value, dim: int, start: int,
                 count: int, step: int = 1) -> Value:
    axis = _ir_axis(call, x, dim)
    begin = [0] * len(x.torch_shape)
    strides = [1] * len(x.torch_shape)
    begin[axis], strides[axis] = start, step
    shape = list(x.torch_shape)
    shape[dim % len(shape)] = count
    return b.emit(b.unique_node_name(name), ir.StridedSlice(begin=tuple(begin),
                                                            strides=tuple(strides)),
                  [x.name], tuple(shape))


def _split(b: Builder, call: Call, name: str) -> tuple[Value, ...]:
    """chunk / split / split_with_sizes: one slice per non-empty piece, in order."""
    x = activation_arg(call, "self")
    dim = int(call.args.get("dim", 0))
    total = x.torch_shape[dim % len(x.torch_shape)]
    pieces, start = [], 0
    for i, size in enumerate(_piece_sizes(call, total)):
        if size == 0:
            raise unsupported(call, "an empty piece")
        pieces.append(_slice_value(b, call, f"{name}.{i}", x, dim, start, size))
        start += size
    return tuple(pieces)


def _slice(b: Builder, call: Call, name: str) -> Value:
    """aten.slice.Tensor: x[start:end:step] along one dim."""
    x = activation_arg(call, "self")
    dim = int(call.args.get("dim", 0))
    total = x.torch_shape[dim % len(x.torch_shape)]
    step = int(call.args.get("step", 1))
    start, end, _ = slice(call.args.get("start"), call.args.get("end"), step).indices(total)
    count = len(range(start, end, step))
    if step < 1 or count < 1:
        raise unsupported(call, f"slice [{start}:{end}:{step}] of a dim of {total}")
    if count == total:
        return x
    return _slice_value(b, call, name, x, dim, start, count, step)


def _getitem(b: Builder, call: Call, name: str) -> Value:
    """``x[:, a:b:s]`` and the like: slices of any dims (no integer indices, no negative
    steps), one StridedSlice per sliced dim."""
    x = activation_arg(call, "self")
    index = call.args.get("index")
    index = index if isinstance(index, tuple) else (index,)
    if len(index) > len(x.torch_shape) or not all(isinstance(i, slice) for i in index):
        raise unsupported(call, f"indexing with {index!r} (only slices such as x[:, a:b])")
    for dim, cut in enumerate(index):
        total = x.torch_shape[dim]
        start, end, step = cut.indices(total)
        count = len(range(start, end, step))
        if step < 1 or count < 1:
            raise unsupported(call, f"slice [{start}:{end}:{step}] of a dim of {total}")
        if count != total:
            x = _slice_value(b, call, name, x, dim, start, count, step)
    return x


# ----------------------------------------------------------------------------- max pooling


def _max_pool(b: Builder, call: Call, name: str) -> Value:
    x = activation_arg(call, "self")
    if len(x.torch_shape) != 4:
        raise unsupported(call, "max pooling of a non-NCHW tensor")
    if call.args.get("return_indices"):
        raise unsupported(call, "max pooling with return_indices=True")
    kernel = pair(call.args["kernel_size"], "kernel_size", call)
    stride_arg = call.args.get("stride")
    stride = kernel if stride_arg in (None, [], ()) else pair(stride_arg, "stride", call)
    p_h, p_w = pair(call.args.get("padding", 0), "padding", call)
    if pair(call.args.get("dilation", 1), "dilation", call) != (1, 1):
        raise unsupported(call, "max pooling with dilation")
    h, w = x.torch_shape[2:]
    out = call.out_shape[2:] if call.out_shape is not None else None
    if out is None:
        rounding = math.ceil if call.args.get("ceil_mode") else math.floor
        out = tuple(rounding((size + 2 * p - k) / s) + 1
                    for size, p, k, s in ((h, p_h, kernel[0], stride[0]),
                                          (w, p_w, kernel[1], stride[1])))
    # The padding the windows reach: ceil_mode's extra row/column, or less than asked for.
    bottom = max(0, (out[0] - 1) * stride[0] + kernel[0] - h - p_h)
    right = max(0, (out[1] - 1) * stride[1] + kernel[1] - w - p_w)
    op = ir.MaxPool2D(kernel=kernel, stride=stride, padding=ir.Padding(p_h, bottom, p_w, right))
    n, c = x.torch_shape[:2]
    return b.emit(name, op, [x.name], (n, c, int(out[0]), int(out[1])))


# ----------------------------------------------------------------------------- channel shuffle


@dataclass(frozen=True)
class ShuffleView(Deferred):
    """``x`` viewed as (N, groups, C/groups, H, W), transposed (dims 1 and 2) or not yet."""

    x: Value
    groups: int
    transposed: bool = False


def _start_shuffle(call: Call) -> ShuffleView | None:
    x = call.args.get("self")
    out = call.out_shape
    if not (isinstance(x, Value) and out is not None and len(out) == 5
            and len(x.torch_shape) == 4 and x.flat_from is None):
        return None
    n, c, h, w = x.torch_shape
    if tuple(out) != (n, out[1], c // max(out[1], 1), h, w) or out[1] * out[2] != c:
        raise unsupported(call, f"view of {list(x.torch_shape)} as {list(out)} (only the "
                                "(N, groups, C/groups, H, W) of a channel shuffle)")
    return ShuffleView(x, int(out[1]))


def _advance_shuffle(b: Builder, call: Call, name: str, view: ShuffleView) -> object:
    if call.op == "identity":
        return view
    if call.op == "transpose" and not view.transposed and \
            sorted(int(call.args.get(k)) % 5 for k in ("dim0", "dim1")) == [1, 2]:
        return replace(view, transposed=True)
    if call.op == "permute" and not view.transposed and \
            [int(d) % 5 for d in call.args.get("dims", ())] == [0, 2, 1, 3, 4]:
        return replace(view, transposed=True)
    x = view.x
    if call.op == "reshape" and view.transposed and call.out_shape is not None \
            and tuple(call.out_shape) == tuple(x.torch_shape):
        return _emit_shuffle(b, name, x, view.groups)
    raise unsupported(call, "this use of a 5-D view (mbgen takes it only in a channel shuffle "
                            "x.view(n, g, c // g, h, w).transpose(1, 2).contiguous()"
                            ".view(n, c, h, w))")


def _emit_shuffle(b: Builder, name: str, x: Value, groups: int) -> Value:
    n, c, h, w = x.torch_shape
    grouped = b.emit(b.unique_node_name(f"{name}.groups"),
                     ir.Reshape(shape=(n, h * w, groups, c // groups)), [x.name],
                     x.torch_shape, ir_shape=(n, h * w, groups, c // groups))
    swapped = b.emit(b.unique_node_name(f"{name}.shuffle"), ir.Transpose(perm=(0, 1, 3, 2)),
                     [grouped.name], x.torch_shape, ir_shape=(n, h * w, c // groups, groups))
    return b.emit(name, ir.Reshape(shape=(n, h, w, c)), [swapped.name], x.torch_shape)


def _channel_shuffle(b: Builder, call: Call, name: str) -> Value:
    """nn.ChannelShuffle / F.channel_shuffle: the same permutation in one call."""
    x = activation_arg(call, "self")
    groups = int(call.args.get("groups", 1))
    if len(x.torch_shape) != 4 or x.flat_from is not None or groups < 1 \
            or x.torch_shape[1] % groups:
        raise unsupported(call, f"channel shuffle of {list(x.torch_shape)} in {groups} groups")
    return _emit_shuffle(b, name, x, groups)


def advance(b: Builder, call: Call, name: str) -> object | None:
    """Convert ``call`` when it starts or continues a channel shuffle, else None."""
    views = [v for v in call.args.values() if isinstance(v, ShuffleView)]
    if views:
        return _advance_shuffle(b, call, name, views[0])
    if call.op == "reshape":
        return _start_shuffle(call)
    return None


# ----------------------------------------------------------------------------- vocabulary


def _transpose_outside_shuffle(b: Builder, call: Call, name: str) -> Value:
    raise unsupported(call, "transpose / permute of a feature map (mbgen takes them only in a "
                            "channel shuffle)")


HANDLERS: dict[str, Callable[[Builder, Call, str], object]] = {
    "cat": _cat,
    "chunk": _split,
    "split": _split,
    "slice": _slice,
    "getitem": _getitem,
    "channel_shuffle": _channel_shuffle,
    "max_pool2d": _max_pool,
    "transpose": _transpose_outside_shuffle,
    "permute": _transpose_outside_shuffle,
}

ATEN_OPS = {"cat": "cat", "concat": "cat", "chunk": "chunk", "split": "split",
            "split_with_sizes": "split", "slice": "slice", "max_pool2d": "max_pool2d",
            "max_pool2d_with_indices": "max_pool2d", "transpose": "transpose",
            "permute": "permute", "channel_shuffle": "channel_shuffle",
            "native_channel_shuffle": "channel_shuffle"}

# aten ops that return a tuple whose first element is the tensor (the rest: indices)
TUPLE_RESULTS = {"max_pool2d_with_indices"}

_POOL_ARGS = ("self", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
              "return_indices")

FX_FUNCTIONS: dict[object, tuple[str, tuple[str, ...]]] = {
    torch.cat: ("cat", ("tensors", "dim")),
    torch.concat: ("cat", ("tensors", "dim")),
    torch.chunk: ("chunk", ("self", "chunks", "dim")),
    torch.split: ("split", ("self", "split_size", "dim")),
    torch.transpose: ("transpose", ("self", "dim0", "dim1")),
    torch.permute: ("permute", ("self", "dims")),
    operator.getitem: ("getitem", ("self", "index")),
    torch.channel_shuffle: ("channel_shuffle", ("self", "groups")),
    F.channel_shuffle: ("channel_shuffle", ("self", "groups")),
    F.max_pool2d: ("max_pool2d", _POOL_ARGS),
    torch.max_pool2d: ("max_pool2d", _POOL_ARGS),
}

FX_METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "chunk": ("chunk", ("chunks", "dim")),
    "split": ("split", ("split_size", "dim")),
    "transpose": ("transpose", ("dim0", "dim1")),
    "permute": ("permute", ("dims",)),
}


def module_call(module: nn.Module, x: object) -> tuple[str, dict[str, object]] | None:
    if isinstance(module, nn.ChannelShuffle):
        return ("channel_shuffle", {"self": x, "groups": module.groups})
    if isinstance(module, nn.MaxPool2d):
        return ("max_pool2d", {"self": x, "kernel_size": module.kernel_size,
                               "stride": module.stride, "padding": module.padding,
                               "dilation": module.dilation, "ceil_mode": module.ceil_mode,
                               "return_indices": module.return_indices})
    return None
