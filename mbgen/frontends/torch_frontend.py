"""PyTorch models (nn.Module via torch.fx, or torch.export .pt2 files) to float IR graphs.

Both entry points reduce every layer to one small vocabulary of "canonical calls" named like
the ATen ops they correspond to (``convolution``, ``batch_norm``, ``hardtanh``, ``add``, ...)
with arguments named as in the ATen schemas, and one converter turns those into IR nodes:

* :func:`from_module` traces with ``torch.fx.symbolic_trace``; leaf modules (``nn.Conv2d``,
  ``nn.BatchNorm2d``, ...) and functional calls (``F.relu``, ``x + y``, ``x.mean(...)``) are
  mapped to canonical calls.
* :func:`load_pt2` walks the ATen graph of a ``torch.export`` program, either as exported
  (``aten.conv2d``, ``aten.batch_norm``, ``aten.linear``) or decomposed to core ATen
  (``aten.convolution``, ``aten._native_batch_norm_legit_no_training``, ``aten.addmm``).

The output follows ``mbgen.ir``: float32, NHWC activations, TFLite weight layouts, explicit
padding, BatchNorm kept as ``ir.BatchNorm`` (the passes fold it), Dropout as ``ir.Identity``.
Tensor shapes come from running the model once on the example input (fx ShapeProp) or from
the shapes torch.export recorded, so they always agree with what PyTorch computes.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from mbgen import ir
from mbgen.errors import UserError
from mbgen.frontends.zero_pads import fold_zero_pads

SUPPORTED_LAYERS = ("Conv2d (groups 1 or depthwise), BatchNorm2d, ReLU, ReLU6, Hardtanh(0, 6), "
                    "Hardswish, AdaptiveAvgPool2d(1), AvgPool2d, Flatten, Linear, Dropout, "
                    "Identity and tensor addition")


# ----------------------------------------------------------------------------- values


@dataclass(frozen=True)
class _Activation:
    """A runtime tensor of the model, already in the IR under ``name``.

    ``torch_shape`` is PyTorch's (NCHW) shape. ``flat_from`` is set for a flat (1, N) tensor
    whose IR element order is HWC while PyTorch's is CHW: the (C, H, W) it was flattened from.
    """

    name: str
    torch_shape: tuple[int, ...]
    flat_from: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class _Call:
    """One layer reduced to a canonical op with ATen-style argument names."""

    op: str
    args: dict[str, object]
    layer: str          # module path for error messages ("features.3.conv")
    kind: str           # what the user wrote ("nn.Conv2d", "torch.add", "aten.conv2d.default")
    out_shape: tuple[int, ...] | None  # PyTorch shape of the (first) output tensor


def _contains_activation(value: object) -> bool:
    if isinstance(value, _Activation):
        return True
    if isinstance(value, (list, tuple)):
        return any(_contains_activation(v) for v in value)
    if isinstance(value, dict):
        return any(_contains_activation(v) for v in value.values())
    return False


def _pair(value: object, name: str, call: _Call) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return (int(value[0]), int(value[0]))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise _unsupported(call, f"{name}={value!r} is not a 2-D value")


def _unsupported(call: _Call, why: str) -> UserError:
    return UserError(f"unsupported layer {call.layer!r} ({call.kind}): {why}; "
                     f"mbgen supports {SUPPORTED_LAYERS}")


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).cpu().numpy().copy()


# ----------------------------------------------------------------------------- graph building


class _Builder:
    """Accumulates IR tensors and nodes while canonical calls are converted in order."""

    def __init__(self) -> None:
        self.tensors: dict[str, ir.Tensor] = {}
        self.nodes: list[ir.Node] = []
        self._node_names: set[str] = set()

    def unique_node_name(self, preferred: str) -> str:
        name, i = preferred, 1
        while name in self._node_names or name in self.tensors:
            i += 1
            name = f"{preferred}_{i}"
        self._node_names.add(name)
        return name

    def add_input(self, name: str, torch_shape: tuple[int, ...]) -> _Activation:
        self.tensors[name] = ir.Tensor(name, _ir_shape(torch_shape, name), "float32")
        return _Activation(name, torch_shape)

    def constant(self, name: str, data: np.ndarray) -> str:
        data = np.ascontiguousarray(data, dtype=np.float32)
        self.tensors[name] = ir.Tensor(name, tuple(data.shape), "float32", data)
        return name

    def emit(self, node_name: str, op: ir.OpAttrs, inputs: list[str],
             torch_shape: tuple[int, ...], flat_from: tuple[int, int, int] | None = None,
             ir_shape: tuple[int, ...] | None = None) -> _Activation:
        out = node_name
        shape = ir_shape if ir_shape is not None else _ir_shape(torch_shape, node_name)
        self.tensors[out] = ir.Tensor(out, shape, "float32")
        self.nodes.append(ir.Node(node_name, op, inputs, [out]))
        return _Activation(out, torch_shape, flat_from)


def _ir_shape(torch_shape: Sequence[int], where: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in torch_shape)
    if len(shape) == 4:
        n, c, h, w = shape
        return (n, h, w, c)
    if len(shape) == 2:
        return shape
    raise UserError(f"layer {where!r} produces a rank-{len(shape)} tensor {list(shape)}; mbgen "
                    "handles NCHW feature maps and flat (1, N) vectors")


# ----------------------------------------------------------------------------- canonical ops


def _activation_arg(call: _Call, key: str) -> _Activation:
    value = call.args.get(key)
    if not isinstance(value, _Activation):
        raise _unsupported(call, f"argument {key!r} must be a tensor computed from the input, "
                                 "not a constant")
    return value


def _const_arg(call: _Call, key: str, optional: bool = False) -> torch.Tensor | None:
    value = call.args.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, torch.Tensor):
        raise _unsupported(call, f"argument {key!r} must be a constant tensor (weights computed "
                                 "at run time are not supported)")
    return value


def _convolution(b: _Builder, call: _Call, name: str) -> _Activation:
    x = _activation_arg(call, "input")
    weight = _const_arg(call, "weight")
    bias = _const_arg(call, "bias", optional=True)
    if call.args.get("transposed"):
        raise _unsupported(call, "transposed convolution")
    if weight.dim() != 4 or len(x.torch_shape) != 4:
        raise _unsupported(call, "only 2-D convolutions on NCHW tensors")
    out_c, in_per_group, k_h, k_w = (int(d) for d in weight.shape)
    in_c = x.torch_shape[1]
    groups = int(call.args.get("groups", 1))
    stride = _pair(call.args.get("stride", 1), "stride", call)
    dilation = _pair(call.args.get("dilation", 1), "dilation", call)
    padding = _conv_padding(call.args.get("padding", 0), (k_h, k_w), dilation, call)
    inputs = [x.name, b.constant(f"{name}.weight", _ir_conv_weight(weight, groups))]
    if bias is not None:
        inputs.append(b.constant(f"{name}.bias", _to_numpy(bias)))
    if groups == 1:
        op: ir.OpAttrs = ir.Conv2D(stride=stride, padding=padding, dilation=dilation)
    elif groups == in_c and in_per_group == 1 and out_c % in_c == 0:
        op = ir.DepthwiseConv2D(stride=stride, padding=padding, dilation=dilation,
                                depth_multiplier=out_c // in_c)
    else:
        raise _unsupported(call, f"grouped convolution with groups={groups} (only 1 or "
                                 f"depthwise, groups == in_channels == {in_c})")
    return b.emit(name, op, inputs, call.out_shape)


def _ir_conv_weight(weight: torch.Tensor, groups: int) -> np.ndarray:
    w = _to_numpy(weight)  # (O, I/groups, KH, KW)
    if groups == 1:
        return w.transpose(0, 2, 3, 1)  # OHWI
    # Depthwise: torch output channel c*m+j reads input c, the same order TFLite uses in its
    # last axis, so (C*m, 1, KH, KW) -> (1, KH, KW, C*m) is a plain transpose.
    return w.transpose(1, 2, 3, 0)


def _conv_padding(padding: object, kernel: tuple[int, int], dilation: tuple[int, int],
                  call: _Call) -> ir.Padding:
    if padding == "valid":
        return ir.Padding()
    if padding == "same":
        # PyTorch puts the odd pixel of 'same' padding at the bottom/right, as TensorFlow does.
        (top, bottom), (left, right) = (
            (total // 2, total - total // 2)
            for total in (d * (k - 1) for k, d in zip(kernel, dilation)))
        return ir.Padding(top, bottom, left, right)
    p_h, p_w = _pair(padding, "padding", call)
    return ir.Padding(p_h, p_h, p_w, p_w)


def _batch_norm(b: _Builder, call: _Call, name: str) -> _Activation:
    x = _activation_arg(call, "input")
    if call.args.get("training"):
        raise UserError(f"layer {call.layer!r} ({call.kind}) is in training mode or has no "
                        "running statistics; call model.eval() before converting")
    if len(x.torch_shape) != 4:
        raise _unsupported(call, "BatchNorm on a non-NCHW tensor")
    channels = x.torch_shape[1]
    mean = _const_arg(call, "running_mean")
    var = _const_arg(call, "running_var")
    gamma = _const_arg(call, "weight", optional=True)
    beta = _const_arg(call, "bias", optional=True)
    ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    inputs = [x.name,
              b.constant(f"{name}.gamma", ones if gamma is None else _to_numpy(gamma)),
              b.constant(f"{name}.beta", zeros if beta is None else _to_numpy(beta)),
              b.constant(f"{name}.running_mean", _to_numpy(mean)),
              b.constant(f"{name}.running_var", _to_numpy(var))]
    return b.emit(name, ir.BatchNorm(eps=float(call.args["eps"])), inputs, x.torch_shape)


def _activation_op(b: _Builder, call: _Call, name: str, act: ir.Activation) -> _Activation:
    x = _activation_arg(call, "self")
    return b.emit(name, ir.ActivationOp(act), [x.name], x.torch_shape, x.flat_from)


def _clamp_activation(call: _Call, low: object, high: object) -> ir.Activation:
    low_f = None if low is None else float(low)
    high_f = None if high is None else float(high)
    if low_f == 0.0 and high_f is None:
        return ir.Activation.RELU
    if low_f == 0.0 and high_f == 6.0:
        return ir.Activation.RELU6
    raise _unsupported(call, f"clamp to [{low}, {high}] (only [0, inf) = ReLU and [0, 6] = "
                             "ReLU6)")


def _hardswish(b: _Builder, call: _Call, name: str) -> _Activation:
    x = _activation_arg(call, "self")
    return b.emit(name, ir.HardSwish(), [x.name], x.torch_shape, x.flat_from)


def _add(b: _Builder, call: _Call, name: str) -> _Activation:
    a = call.args.get("self")
    other = call.args.get("other")
    if not (isinstance(a, _Activation) and isinstance(other, _Activation)):
        raise _unsupported(call, "adding a constant (only adding two feature maps, as in "
                                 "residual connections)")
    if call.args.get("alpha", 1) != 1:
        raise _unsupported(call, f"add with alpha={call.args['alpha']}")
    if a.torch_shape != other.torch_shape or a.flat_from != other.flat_from:
        raise _unsupported(call, f"add of shapes {list(a.torch_shape)} and "
                                 f"{list(other.torch_shape)} (broadcasting is not supported)")
    return b.emit(name, ir.Add(), [a.name, other.name], a.torch_shape, a.flat_from)


def _global_mean(b: _Builder, call: _Call, name: str, x: _Activation,
                 keep_dims: bool) -> _Activation:
    n, c = x.torch_shape[:2]
    torch_shape = (n, c, 1, 1) if keep_dims else (n, c)
    return b.emit(name, ir.Mean(axes=(1, 2), keep_dims=keep_dims), [x.name], torch_shape)


def _mean(b: _Builder, call: _Call, name: str) -> _Activation:
    x = _activation_arg(call, "self")
    dims = call.args.get("dim")
    if len(x.torch_shape) != 4 or dims is None:
        raise _unsupported(call, "mean other than over H and W of an NCHW tensor")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if sorted(d % 4 for d in dims) != [2, 3]:
        raise _unsupported(call, f"mean over dims {dims} (only the spatial dims 2 and 3)")
    return _global_mean(b, call, name, x, bool(call.args.get("keepdim", False)))


def _adaptive_avg_pool(b: _Builder, call: _Call, name: str) -> _Activation:
    x = _activation_arg(call, "self")
    size = call.args.get("output_size")
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(x.torch_shape) != 4 or tuple(size) != (1, 1):
        raise _unsupported(call, f"adaptive average pooling to {size} (only to 1x1)")
    return _global_mean(b, call, name, x, keep_dims=True)


def _avg_pool(b: _Builder, call: _Call, name: str) -> _Activation:
    x = _activation_arg(call, "self")
    kernel = _pair(call.args["kernel_size"], "kernel_size", call)
    stride_arg = call.args.get("stride")
    stride = kernel if stride_arg in (None, [], ()) else _pair(stride_arg, "stride", call)
    p_h, p_w = _pair(call.args.get("padding", 0), "padding", call)
    padding = ir.Padding(p_h, p_h, p_w, p_w)
    if call.args.get("divisor_override") is not None:
        raise _unsupported(call, "avg_pool2d with divisor_override")
    if call.args.get("ceil_mode"):
        h, w = x.torch_shape[2:]
        floor_shape = ((h + 2 * p_h - kernel[0]) // stride[0] + 1,
                       (w + 2 * p_w - kernel[1]) // stride[1] + 1)
        if tuple(call.out_shape[2:]) != floor_shape:
            raise _unsupported(call, "avg_pool2d with ceil_mode=True that changes the output "
                                     "size")
    source = x
    if padding != ir.Padding() and call.args.get("count_include_pad", True):
        # PyTorch's default divides by the full window, padding included; TFLite pools
        # exclude padded pixels. An explicit zero Pad first gives PyTorch's numbers.
        n, c, h, w = x.torch_shape
        padded_shape = (n, c, h + 2 * p_h, w + 2 * p_w)
        source = b.emit(b.unique_node_name(f"{name}.pad"), ir.Pad(padding), [x.name],
                        padded_shape)
        padding = ir.Padding()
    op = ir.AveragePool2D(kernel=kernel, stride=stride, padding=padding)
    return b.emit(name, op, [source.name], call.out_shape)


def _reshape(b: _Builder, call: _Call, name: str) -> _Activation:
    x = _activation_arg(call, "self")
    old, new = tuple(x.torch_shape), tuple(call.out_shape)
    if old == new:
        return x
    if len(old) == 4 and len(new) == 2 and new[0] == old[0] == 1:
        n, c, h, w = old
        flat_from = (c, h, w) if h * w > 1 else None
        return b.emit(name, ir.Reshape(shape=(1, h * w * c)), [x.name], new, flat_from)
    if len(old) == 2 and len(new) == 4 and new[0] == 1:
        _, c, h, w = new
        if x.flat_from == (c, h, w) or (h * w == 1 and x.flat_from is None):
            return b.emit(name, ir.Reshape(shape=(1, h, w, c)), [x.name], new)
    raise _unsupported(call, f"reshape from {list(old)} to {list(new)} (only flattening a "
                             "feature map to (1, N), or its inverse)")


def _fully_connected(b: _Builder, call: _Call, name: str, x: _Activation, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> _Activation:
    if len(x.torch_shape) != 2:
        raise _unsupported(call, f"linear layer on a {list(x.torch_shape)} tensor (flatten to "
                                 "(1, N) first)")
    w = _to_numpy(weight)  # (O, I), I in PyTorch's CHW order
    if x.flat_from is not None:
        c, h, w_ = x.flat_from
        w = w.reshape(-1, c, h, w_).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    inputs = [x.name, b.constant(f"{name}.weight", w)]
    if bias is not None:
        inputs.append(b.constant(f"{name}.bias", _to_numpy(bias).reshape(-1)))
    return b.emit(name, ir.FullyConnected(), inputs, call.out_shape)


def _linear(b: _Builder, call: _Call, name: str) -> _Activation:
    return _fully_connected(b, call, name, _activation_arg(call, "input"),
                            _const_arg(call, "weight"), _const_arg(call, "bias", optional=True))


def _addmm(b: _Builder, call: _Call, name: str) -> _Activation:
    """Core-ATen linear: ``beta * bias + mat1 @ mat2`` with mat2 the transposed weight."""
    if call.args.get("beta", 1) != 1 or call.args.get("alpha", 1) != 1:
        raise _unsupported(call, "addmm with beta or alpha other than 1")
    mat2 = _const_arg(call, "mat2")
    bias = _const_arg(call, "self", optional=True) if call.op == "addmm" else None
    x = _activation_arg(call, "mat1" if call.op == "addmm" else "self")
    return _fully_connected(b, call, name, x, mat2.t(), bias)


def _zero_pad(b: _Builder, call: _Call, name: str) -> _Activation:
    """nn.ZeroPad2d, as TF-ported models pad before a stride-2 conv (asymmetric 'SAME'); a
    pad read only by a conv becomes that conv's explicit padding (zero_pads.fold_zero_pads)."""
    x = _activation_arg(call, "self")
    left, right, top, bottom = (int(v) for v in call.args["pad"])
    if len(x.torch_shape) != 4 or min(left, right, top, bottom) < 0:
        raise _unsupported(call, "padding other than non-negative zero padding of H and W")
    n, c, h, w = x.torch_shape
    return b.emit(name, ir.Pad(ir.Padding(top, bottom, left, right)), [x.name],
                  (n, c, h + top + bottom, w + left + right))


def _softmax(b: _Builder, call: _Call, name: str) -> _Activation:
    x = _activation_arg(call, "self")
    if len(x.torch_shape) != 2 or call.args.get("dim") not in (1, -1):
        raise _unsupported(call, "softmax other than over the classes of a (1, N) tensor")
    return b.emit(name, ir.Softmax(beta=1.0), [x.name], x.torch_shape)


def _identity(b: _Builder, call: _Call, name: str) -> _Activation:
    x = _activation_arg(call, "self")
    return b.emit(name, ir.Identity(source=call.kind), [x.name], x.torch_shape, x.flat_from)


_HANDLERS: dict[str, Callable[[_Builder, _Call, str], _Activation]] = {
    "convolution": _convolution,
    "batch_norm": _batch_norm,
    "relu": lambda b, c, n: _activation_op(b, c, n, ir.Activation.RELU),
    "relu6": lambda b, c, n: _activation_op(b, c, n, ir.Activation.RELU6),
    "hardtanh": lambda b, c, n: _activation_op(
        b, c, n, _clamp_activation(c, c.args.get("min_val", -1.0), c.args.get("max_val", 1.0))),
    "clamp": lambda b, c, n: _activation_op(
        b, c, n, _clamp_activation(c, c.args.get("min"), c.args.get("max"))),
    "hardswish": _hardswish,
    "add": _add,
    "mean": _mean,
    "adaptive_avg_pool2d": _adaptive_avg_pool,
    "avg_pool2d": _avg_pool,
    "reshape": _reshape,
    "linear": _linear,
    "addmm": _addmm,
    "mm": _addmm,
    "identity": _identity,
    "zero_pad": _zero_pad,
    "softmax": _softmax,
}


def _convert(b: _Builder, call: _Call, preferred_name: str) -> _Activation:
    handler = _HANDLERS.get(call.op)
    if handler is None:
        raise _unsupported(call, "this operation has no mbgen equivalent")
    return handler(b, call, b.unique_node_name(preferred_name))


_CONTAINERS = ("nn.Sequential", "nn.ModuleList", "nn.ModuleDict")


def _node_name(layer: str, module_type: str, op: str) -> str:
    """IR node name: the layer's module path, or '<enclosing module>.<op>' for functional code
    inside a composite module (e.g. the residual 'features.3.add')."""
    if not layer:
        return op
    if module_type.startswith("nn.") and module_type not in _CONTAINERS:
        return layer
    return f"{layer}.{op}"


# ----------------------------------------------------------------------------- ATen vocabulary

# ATen op name (in-place '_' stripped) -> canonical op. Arguments keep their schema names.
_ATEN_OPS = {
    "conv2d": "convolution", "convolution": "convolution",
    "batch_norm": "batch_norm", "_native_batch_norm_legit_no_training": "batch_norm",
    "relu": "relu", "relu6": "relu6", "hardtanh": "hardtanh", "clamp": "clamp",
    "clamp_min": "clamp", "hardswish": "hardswish",
    "add": "add",
    "mean": "mean", "adaptive_avg_pool2d": "adaptive_avg_pool2d",
    "_adaptive_avg_pool2d": "adaptive_avg_pool2d", "avg_pool2d": "avg_pool2d",
    "view": "reshape", "reshape": "reshape", "_unsafe_view": "reshape", "flatten": "reshape",
    "squeeze": "reshape", "unsqueeze": "reshape",
    "linear": "linear", "addmm": "addmm", "mm": "mm",
    "dropout": "identity", "native_dropout": "identity", "feature_dropout": "identity",
    "clone": "identity", "alias": "identity", "detach": "identity", "contiguous": "identity",
    "lift_fresh_copy": "identity",
}

# Ops that only check shapes or metadata at run time: no data flows through them.
_ATEN_CHECKS = {"_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range",
                "sym_constrain_range_for_size", "_assert_async"}

# Canonical ops whose ATen form returns a tuple (output, saved statistics...).
_TUPLE_RESULTS = {"_native_batch_norm_legit_no_training", "native_dropout"}


def _bind_aten(target: torch._ops.OpOverload, args: tuple, kwargs: dict) -> dict[str, object]:
    bound: dict[str, object] = {}
    for i, spec in enumerate(target._schema.arguments):
        if i < len(args) and not spec.kwarg_only:
            bound[spec.name] = args[i]
        elif spec.name in kwargs:
            bound[spec.name] = kwargs[spec.name]
        elif spec.has_default_value():
            bound[spec.name] = spec.default_value
    # Dialect differences: conv's input is 'input' everywhere, everything else uses 'self'.
    if "input" in bound and "self" not in bound and target._opname not in (
            "conv2d", "convolution", "batch_norm", "_native_batch_norm_legit_no_training",
            "linear"):
        bound["self"] = bound.pop("input")
    if target._opname == "dropout" and bound.get("train"):
        bound["training"] = True
    return bound


def _aten_name(target: object) -> str | None:
    if isinstance(target, torch._ops.OpOverload) and target.namespace == "aten":
        name = target._opname
        return name[:-1] if name.endswith("_") and not name.startswith("_") else name
    return None


# ----------------------------------------------------------------------------- fx vocabulary

# Functional calls seen by symbolic_trace: target -> (canonical op, positional argument names).
_FX_FUNCTIONS: dict[object, tuple[str, tuple[str, ...]]] = {
    operator.add: ("add", ("self", "other")),
    operator.iadd: ("add", ("self", "other")),
    torch.add: ("add", ("self", "other")),
    F.relu: ("relu", ("self",)),
    torch.relu: ("relu", ("self",)),
    F.relu6: ("relu6", ("self",)),
    F.hardtanh: ("hardtanh", ("self", "min_val", "max_val")),
    torch.clamp: ("clamp", ("self", "min", "max")),
    F.hardswish: ("hardswish", ("self",)),
    torch.flatten: ("reshape", ("self",)),
    torch.reshape: ("reshape", ("self",)),
    torch.mean: ("mean", ("self", "dim", "keepdim")),
    F.adaptive_avg_pool2d: ("adaptive_avg_pool2d", ("self", "output_size")),
    F.avg_pool2d: ("avg_pool2d", ("self", "kernel_size", "stride", "padding", "ceil_mode",
                                  "count_include_pad", "divisor_override")),
    F.dropout: ("identity", ("self", "p", "training")),
    F.conv2d: ("convolution", ("input", "weight", "bias", "stride", "padding", "dilation",
                               "groups")),
    F.linear: ("linear", ("input", "weight", "bias")),
    F.batch_norm: ("batch_norm", ("input", "running_mean", "running_var", "weight", "bias",
                                  "training", "momentum", "eps")),
}

_FX_METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "add": ("add", ("self", "other")), "add_": ("add", ("self", "other")),
    "relu": ("relu", ()), "relu_": ("relu", ()),
    "clamp": ("clamp", ("min", "max")), "clamp_": ("clamp", ("min", "max")),
    "mean": ("mean", ("dim", "keepdim")),
    "view": ("reshape", ()), "reshape": ("reshape", ()), "flatten": ("reshape", ()),
    "squeeze": ("reshape", ()), "unsqueeze": ("reshape", ()),
    "contiguous": ("identity", ()), "clone": ("identity", ()), "detach": ("identity", ()),
}

_FX_DEFAULTS = {"eps": 1e-5, "keepdim": False, "count_include_pad": True, "ceil_mode": False}


def _module_call(module: nn.Module, x: object) -> tuple[str, dict[str, object]] | None:
    """The canonical call a leaf module stands for, or None if mbgen has no equivalent."""
    train_error = None
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros":
            return ("unsupported-padding-mode", {})
        return ("convolution", {"input": x, "weight": module.weight, "bias": module.bias,
                                "stride": module.stride, "padding": module.padding,
                                "dilation": module.dilation, "groups": module.groups})
    if isinstance(module, nn.BatchNorm2d):
        train_error = module.training or module.running_mean is None
        return ("batch_norm", {"input": x, "weight": module.weight, "bias": module.bias,
                               "running_mean": module.running_mean,
                               "running_var": module.running_var,
                               "training": train_error, "eps": module.eps})
    if isinstance(module, nn.ReLU):
        return ("relu", {"self": x})
    if isinstance(module, nn.Hardtanh):  # nn.ReLU6 is a Hardtanh(0, 6)
        return ("hardtanh", {"self": x, "min_val": module.min_val, "max_val": module.max_val})
    if isinstance(module, nn.Hardswish):
        return ("hardswish", {"self": x})
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return ("adaptive_avg_pool2d", {"self": x, "output_size": module.output_size})
    if isinstance(module, nn.AvgPool2d):
        return ("avg_pool2d", {"self": x, "kernel_size": module.kernel_size,
                               "stride": module.stride, "padding": module.padding,
                               "ceil_mode": module.ceil_mode,
                               "count_include_pad": module.count_include_pad,
                               "divisor_override": module.divisor_override})
    if isinstance(module, nn.Flatten):
        return ("reshape", {"self": x})
    if isinstance(module, nn.Linear):
        return ("linear", {"input": x, "weight": module.weight, "bias": module.bias})
    if isinstance(module, nn.ZeroPad2d):
        return ("zero_pad", {"self": x, "pad": module.padding})
    if isinstance(module, nn.Softmax):
        return ("softmax", {"self": x, "dim": module.dim})
    if isinstance(module, (nn.Dropout, nn.Identity)):
        return ("identity", {"self": x, "training": module.training
                             and isinstance(module, nn.Dropout) and module.p > 0})
    return None


def _type_label(cls_path: str) -> str:
    """'torch.nn.modules.activation.LeakyReLU' -> 'nn.LeakyReLU'; user classes stay qualified."""
    if cls_path.startswith("torch.nn.modules."):
        return "nn." + cls_path.rsplit(".", 1)[-1]
    return cls_path


def _innermost_module(node: torch.fx.Node) -> tuple[str, str]:
    """(module path, type label) of the innermost module that made ``node``, if recorded."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, cls = list(stack.values())[-1]
    cls_name = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    return str(path), _type_label(cls_name)


def _fx_shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    if meta is not None and hasattr(meta, "shape"):
        return tuple(int(d) for d in meta.shape)
    return None


def _target_label(target: object) -> str:
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    return f"{module}.{name}" if module else name


# ----------------------------------------------------------------------------- entry points


def _check_training_flags(call: _Call) -> None:
    if call.op == "identity" and call.args.get("training"):
        raise UserError(f"layer {call.layer!r} ({call.kind}) is in training mode; call "
                        "model.eval() before converting")


def _finish(b: _Builder, name: str, input_name: str, results: list[object],
            source: str) -> ir.Graph:
    outputs: list[str] = []
    for value in results:
        if not isinstance(value, _Activation) or value.name == input_name:
            raise UserError(f"{source}: every model output must be a tensor computed from the "
                            f"input, got {type(value).__name__}")
        if value.flat_from is not None:
            raise UserError(f"{source}: output {value.name!r} is a flattened {value.flat_from} "
                            "feature map; mbgen stores it in HWC order, which PyTorch does not")
        outputs.append(value.name)
    b.nodes = fold_zero_pads(b.nodes, b.tensors, outputs)
    graph = ir.Graph(name=name, tensors=b.tensors, nodes=b.nodes, inputs=[input_name],
                     outputs=outputs, metadata={"source": source})
    ir.verify(graph)
    return graph


def _flatten_outputs(value: object) -> list[object]:
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flatten_outputs(item)]
    return [value]


def from_module(module: nn.Module, example_input: torch.Tensor, name: str) -> ir.Graph:
    """Trace ``module`` with torch.fx and convert it to a float NHWC IR graph.

    ``example_input`` is an NCHW float tensor; its first image sets every shape (the graph is
    batch 1). The module should be in eval mode; BatchNorm or Dropout in training mode is a
    UserError, since their eval-mode meaning is what gets compiled.
    """
    if not isinstance(example_input, torch.Tensor) or example_input.dim() != 4:
        raise UserError("example input must be an NCHW torch.Tensor, e.g. torch.zeros(1, 3, H, W)")
    example = example_input[:1].to(torch.float32)
    try:
        traced = torch.fx.symbolic_trace(module)
    except Exception as exc:  # torch.fx raises many types; any of them means "not traceable"
        raise UserError(f"cannot trace model {name!r} with torch.fx ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}); export it with "
                        "torch.export.save and pass the .pt2 file instead") from None
    with torch.no_grad():
        try:
            ShapeProp(traced).propagate(example)
        except Exception as exc:
            raise UserError(f"model {name!r} fails on an input of shape "
                            f"{list(example.shape)}: {exc}") from None
    modules = dict(traced.named_modules())

    b = _Builder()
    values: dict[str, object] = {}
    input_name = "input"
    results: list[object] = []
    for node in traced.graph.nodes:
        args = torch.fx.node.map_arg(node.args, lambda n: values[n.name])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: values[n.name])
        if node.op == "placeholder":
            if input_name in b.tensors:
                raise UserError(f"model {name!r} takes several inputs; mbgen models take one "
                                "image")
            values[node.name] = b.add_input(input_name, tuple(example.shape))
            continue
        if node.op == "output":
            results = _flatten_outputs(args[0])
            continue
        if node.op == "get_attr":
            values[node.name] = _fetch_attr(traced, node.target)
            continue
        values[node.name] = _convert_fx_node(b, node, args, kwargs, modules)
    return _finish(b, name, input_name, results, f"torch module {type(module).__name__}")


def _fetch_attr(root: nn.Module, target: str) -> object:
    value: object = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _convert_fx_node(b: _Builder, node: torch.fx.Node, args: tuple, kwargs: dict,
                     modules: dict[str, nn.Module]) -> object:
    layer, module_type = _innermost_module(node)
    if not _contains_activation((args, kwargs)):
        return _evaluate_constant(node, args, kwargs, modules)
    if node.op == "call_module":
        module = modules[node.target]
        kind = _type_label(f"{type(module).__module__}.{type(module).__qualname__}")
        canonical = _module_call(module, args[0] if args else None)
        call = _Call(canonical[0] if canonical else "", canonical[1] if canonical else {},
                     node.target, kind, _fx_shape(node))
        if canonical is None:
            raise _unsupported(call, "this layer type has no mbgen equivalent")
        if call.op == "unsupported-padding-mode":
            raise _unsupported(call, f"padding_mode={module.padding_mode!r} (only 'zeros')")
        if len(args) != 1 or kwargs:
            raise _unsupported(call, "called with more than one input")
        _check_training_flags(call)
        return _convert(b, call, node.target)
    if node.op == "call_method":
        if node.target == "size":
            shape = args[0].torch_shape
            return shape[args[1]] if len(args) > 1 else torch.Size(shape)
        spec = _FX_METHODS.get(node.target)
        kind = f"Tensor.{node.target}"
        positional = (args[0],) + tuple(args[1:])
        names = ("self",) + (spec[1] if spec else ())
    else:  # call_function
        if node.target is getattr and args[1] == "shape":
            return torch.Size(args[0].torch_shape)
        if node.target is operator.getitem and not isinstance(args[0], _Activation):
            return args[0][args[1]]
        spec = _FX_FUNCTIONS.get(node.target)
        kind = _target_label(node.target)
        positional = tuple(args)
        names = spec[1] if spec else ()
    bound = dict(_FX_DEFAULTS)
    bound.update(zip(names, positional))
    bound.update(kwargs)
    call = _Call(spec[0] if spec else "", bound, layer or node.name, kind, _fx_shape(node))
    if spec is None:
        raise _unsupported(call, "this operation has no mbgen equivalent")
    _check_training_flags(call)
    return _convert(b, call, _node_name(layer, module_type, node.name))


def _evaluate_constant(node: torch.fx.Node, args: tuple, kwargs: dict,
                       modules: dict[str, nn.Module]) -> object:
    """Run a node whose inputs are all constants (weight reshapes, size arithmetic, ...)."""
    with torch.no_grad():
        if node.op == "call_module":
            return modules[node.target](*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return node.target(*args, **kwargs)


def load_pt2(path: str | Path) -> ir.Graph:
    """Load a ``torch.export.save`` file and convert its ATen graph to a float NHWC IR graph."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file {str(path)!r} does not exist")
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        raise UserError(f"{str(path)!r} is not a readable torch.export .pt2 file "
                        f"({type(exc).__name__})") from None
    return _from_exported(program, path.stem, f"torch.export file {path.name}")


def _from_exported(program: torch.export.ExportedProgram, name: str, source: str) -> ir.Graph:
    from torch.export.graph_signature import InputKind, OutputKind

    sig = program.graph_signature
    specs = {spec.arg.name: spec for spec in sig.input_specs if hasattr(spec.arg, "name")}
    b = _Builder()
    values: dict[str, object] = {}
    input_name = "input"
    results: list[object] = []
    for node in program.graph.nodes:
        if node.op == "placeholder":
            values[node.name] = _exported_placeholder(b, program, node, specs.get(node.name),
                                                      input_name, InputKind, source)
            continue
        if node.op == "output":
            user = [i for i, spec in enumerate(sig.output_specs)
                    if spec.kind == OutputKind.USER_OUTPUT]
            outs = _flatten_outputs(node.args[0])
            results = [values[outs[i].name] for i in user]
            continue
        if node.op != "call_function":
            raise UserError(f"{source}: unexpected graph node {node.op} {node.target}")
        args = torch.fx.node.map_arg(node.args, lambda n: values[n.name])
        kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: values[n.name])
        values[node.name] = _convert_aten_node(b, node, args, kwargs)
    if input_name not in b.tensors:
        raise UserError(f"{source}: the exported program takes no input tensor")
    return _finish(b, name, input_name, results, source)


def _exported_placeholder(b: _Builder, program: torch.export.ExportedProgram,
                          node: torch.fx.Node, spec: object, input_name: str,
                          input_kinds: type, source: str) -> object:
    kind = getattr(spec, "kind", None)
    if kind in (input_kinds.PARAMETER, input_kinds.BUFFER, input_kinds.CONSTANT_TENSOR):
        # Non-persistent buffers and lifted constants live in .constants, not .state_dict.
        if spec.target in program.state_dict:
            return program.state_dict[spec.target]
        return program.constants[spec.target]
    if kind != input_kinds.USER_INPUT:
        raise UserError(f"{source}: unsupported program input {node.name!r} ({kind})")
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise UserError(f"{source}: program input {node.name!r} is not a tensor")
    if input_name in b.tensors:
        raise UserError(f"{source}: the program takes several inputs; mbgen models take one "
                        "image")
    try:
        shape = tuple(int(d) for d in val.shape)
    except (TypeError, RuntimeError):
        raise UserError(f"{source}: input shape {list(val.shape)} is dynamic; export with "
                        "static shapes") from None
    if len(shape) != 4 or shape[0] != 1:
        raise UserError(f"{source}: input shape {list(shape)} is not a batch-1 NCHW image; "
                        "export with an example input like torch.zeros(1, 3, H, W)")
    return b.add_input(input_name, shape)


def _exported_shape(node: torch.fx.Node) -> tuple[int, ...] | None:
    val = node.meta.get("val")
    if isinstance(val, (tuple, list)):
        val = val[0] if val else None
    if isinstance(val, torch.Tensor):
        return tuple(int(d) for d in val.shape)
    return None


def _convert_aten_node(b: _Builder, node: torch.fx.Node, args: tuple, kwargs: dict) -> object:
    target = node.target
    if target is operator.getitem:
        return args[0][args[1]]
    op_name = _aten_name(target)
    if op_name in _ATEN_CHECKS:
        return None
    if not _contains_activation((args, kwargs)):
        with torch.no_grad():
            return target(*args, **kwargs)  # constant folding: weight transposes etc.
    layer, module_type = _innermost_module(node)
    canonical = _ATEN_OPS.get(op_name or "")
    bound = _bind_aten(target, args, kwargs) if canonical else {}
    kind = f"{module_type}, {target}" if module_type else str(target)
    call = _Call(canonical or "", bound, layer or node.name, kind, _exported_shape(node))
    if canonical is None:
        raise _unsupported(call, "this operation has no mbgen equivalent")
    _check_training_flags(call)
    result = _convert(b, call, _node_name(layer, module_type, canonical))
    if op_name in _TUPLE_RESULTS:
        return (result, None, None)
    return result
