"""The torch frontend's translations of the classic MobileNet layers: canonical call -> IR.

Each handler takes a canonical call (``torch_values.Call``, ATen-style argument names) and
emits IR nodes through the builder; :data:`HANDLERS` maps every canonical op, including the
squeeze-excitation ops of ``torch_elementwise`` and ``torch_hard_activations``, to its handler.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from mbgen import ir
from mbgen.errors import UserError
from mbgen.frontends import torch_elementwise, torch_graph_ops, torch_hard_activations
from mbgen.frontends.torch_values import (Builder, Call, Value, activation_arg, const_arg,
                                          pair, to_numpy, unsupported)


def _convolution(b: Builder, call: Call, name: str) -> Value:
    x = activation_arg(call, "input")
    weight = const_arg(call, "weight")
    bias = const_arg(call, "bias", optional=True)
    if call.args.get("transposed"):
        raise unsupported(call, "transposed convolution")
    if weight.dim() != 4 or len(x.torch_shape) != 4:
        raise unsupported(call, "only 2-D convolutions on NCHW tensors")
    out_c, in_per_group, k_h, k_w = (int(d) for d in weight.shape)
    in_c = x.torch_shape[1]
    groups = int(call.args.get("groups", 1))
    stride = pair(call.args.get("stride", 1), "stride", call)
    dilation = pair(call.args.get("dilation", 1), "dilation", call)
    padding = _conv_padding(call.args.get("padding", 0), (k_h, k_w), dilation, call)
    inputs = [x.name, b.constant(f"{name}.weight", _ir_conv_weight(weight, groups))]
    if bias is not None:
        inputs.append(b.constant(f"{name}.bias", to_numpy(bias)))
    if groups == 1:
        op: ir.OpAttrs = ir.Conv2D(stride=stride, padding=padding, dilation=dilation)
    elif groups == in_c and in_per_group == 1 and out_c % in_c == 0:
        op = ir.DepthwiseConv2D(stride=stride, padding=padding, dilation=dilation,
                                depth_multiplier=out_c // in_c)
    else:
        raise unsupported(call, f"grouped convolution with groups={groups} (only 1 or "
                                f"depthwise, groups == in_channels == {in_c})")
    return b.emit(name, op, inputs, call.out_shape)


def _ir_conv_weight(weight: torch.Tensor, groups: int) -> np.ndarray:
    w = to_numpy(weight)  # (O, I/groups, KH, KW)
    if groups == 1:
        return w.transpose(0, 2, 3, 1)  # OHWI
    # Depthwise: torch output channel c*m+j reads input c, the same order TFLite uses in its
    # last axis, so (C*m, 1, KH, KW) -> (1, KH, KW, C*m) is a plain transpose.
    return w.transpose(1, 2, 3, 0)


def _conv_padding(padding: object, kernel: tuple[int, int], dilation: tuple[int, int],
                  call: Call) -> ir.Padding:
    if padding == "valid":
        return ir.Padding()
    if padding == "same":
        # PyTorch puts the odd pixel of 'same' padding at the bottom/right, as TensorFlow does.
        (top, bottom), (left, right) = (
            (total // 2, total - total // 2)
            for total in (d * (k - 1) for k, d in zip(kernel, dilation)))
        return ir.Padding(top, bottom, left, right)
    p_h, p_w = pair(padding, "padding", call)
    return ir.Padding(p_h, p_h, p_w, p_w)


def _batch_norm(b: Builder, call: Call, name: str) -> Value:
    x = activation_arg(call, "input")
    if call.args.get("training"):
        raise UserError(f"layer {call.layer!r} ({call.kind}) is in training mode or has no "
                        "running statistics; call model.eval() before converting")
    if len(x.torch_shape) != 4:
        raise unsupported(call, "BatchNorm on a non-NCHW tensor")
    channels = x.torch_shape[1]
    mean = const_arg(call, "running_mean")
    var = const_arg(call, "running_var")
    gamma = const_arg(call, "weight", optional=True)
    beta = const_arg(call, "bias", optional=True)
    ones, zeros = np.ones(channels, np.float32), np.zeros(channels, np.float32)
    inputs = [x.name,
              b.constant(f"{name}.gamma", ones if gamma is None else to_numpy(gamma)),
              b.constant(f"{name}.beta", zeros if beta is None else to_numpy(beta)),
              b.constant(f"{name}.running_mean", to_numpy(mean)),
              b.constant(f"{name}.running_var", to_numpy(var))]
    return b.emit(name, ir.BatchNorm(eps=float(call.args["eps"])), inputs, x.torch_shape)


def _activation_op(b: Builder, call: Call, name: str, act: ir.Activation) -> Value:
    x = activation_arg(call, "self")
    return b.emit(name, ir.ActivationOp(act), [x.name], x.torch_shape, x.flat_from)


def _clamp_activation(call: Call, low: object, high: object) -> ir.Activation:
    low_f = None if low is None else float(low)
    high_f = None if high is None else float(high)
    if low_f == 0.0 and high_f is None:
        return ir.Activation.RELU
    if low_f == 0.0 and high_f == 6.0:
        return ir.Activation.RELU6
    raise unsupported(call, f"clamp to [{low}, {high}] (only [0, inf) = ReLU and [0, 6] = "
                            "ReLU6)")


def _hardswish(b: Builder, call: Call, name: str) -> Value:
    x = activation_arg(call, "self")
    return b.emit(name, ir.HardSwish(), [x.name], x.torch_shape, x.flat_from)


def _add(b: Builder, call: Call, name: str) -> Value:
    a = call.args.get("self")
    other = call.args.get("other")
    pending = torch_hard_activations.start(call)
    if pending is not None:
        return pending  # x + 3 of a core-ATen hard sigmoid / hard swish
    if not (isinstance(a, Value) and isinstance(other, Value)):
        raise unsupported(call, "adding a constant (only adding two feature maps, as in "
                                "residual connections)")
    if call.args.get("alpha", 1) != 1:
        raise unsupported(call, f"add with alpha={call.args['alpha']}")
    if a.torch_shape != other.torch_shape or a.flat_from != other.flat_from:
        raise unsupported(call, f"add of shapes {list(a.torch_shape)} and "
                                f"{list(other.torch_shape)} (broadcasting is not supported)")
    return b.emit(name, ir.Add(), [a.name, other.name], a.torch_shape, a.flat_from)


def _global_mean(b: Builder, call: Call, name: str, x: Value,
                 keep_dims: bool) -> Value:
    n, c = x.torch_shape[:2]
    torch_shape = (n, c, 1, 1) if keep_dims else (n, c)
    return b.emit(name, ir.Mean(axes=(1, 2), keep_dims=keep_dims), [x.name], torch_shape)


def _mean(b: Builder, call: Call, name: str) -> Value:
    x = activation_arg(call, "self")
    dims = call.args.get("dim")
    if len(x.torch_shape) != 4 or dims is None:
        raise unsupported(call, "mean other than over H and W of an NCHW tensor")
    dims = [dims] if isinstance(dims, int) else list(dims)
    if sorted(d % 4 for d in dims) != [2, 3]:
        raise unsupported(call, f"mean over dims {dims} (only the spatial dims 2 and 3)")
    return _global_mean(b, call, name, x, bool(call.args.get("keepdim", False)))


def _adaptive_avg_pool(b: Builder, call: Call, name: str) -> Value:
    x = activation_arg(call, "self")
    size = call.args.get("output_size")
    size = (size, size) if isinstance(size, int) else tuple(size)
    if len(x.torch_shape) != 4 or tuple(size) != (1, 1):
        raise unsupported(call, f"adaptive average pooling to {size} (only to 1x1)")
    return _global_mean(b, call, name, x, keep_dims=True)


def _avg_pool(b: Builder, call: Call, name: str) -> Value:
    x = activation_arg(call, "self")
    kernel = pair(call.args["kernel_size"], "kernel_size", call)
    stride_arg = call.args.get("stride")
    stride = kernel if stride_arg in (None, [], ()) else pair(stride_arg, "stride", call)
    p_h, p_w = pair(call.args.get("padding", 0), "padding", call)
    padding = ir.Padding(p_h, p_h, p_w, p_w)
    if call.args.get("divisor_override") is not None:
        raise unsupported(call, "avg_pool2d with divisor_override")
    if call.args.get("ceil_mode"):
        h, w = x.torch_shape[2:]
        floor_shape = ((h + 2 * p_h - kernel[0]) // stride[0] + 1,
                       (w + 2 * p_w - kernel[1]) // stride[1] + 1)
        if tuple(call.out_shape[2:]) != floor_shape:
            raise unsupported(call, "avg_pool2d with ceil_mode=True that changes the output "
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


def _reshape(b: Builder, call: Call, name: str) -> Value:
    x = activation_arg(call, "self")
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
    raise unsupported(call, f"reshape from {list(old)} to {list(new)} (only flattening a "
                            "feature map to (1, N), or its inverse)")


def _fully_connected(b: Builder, call: Call, name: str, x: Value, weight: torch.Tensor,
                     bias: torch.Tensor | None) -> Value:
    if len(x.torch_shape) != 2:
        raise unsupported(call, f"linear layer on a {list(x.torch_shape)} tensor (flatten to "
                                "(1, N) first)")
    w = to_numpy(weight)  # (O, I), I in PyTorch's CHW order
    if x.flat_from is not None:
        c, h, w_ = x.flat_from
        w = w.reshape(-1, c, h, w_).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    inputs = [x.name, b.constant(f"{name}.weight", w)]
    if bias is not None:
        inputs.append(b.constant(f"{name}.bias", to_numpy(bias).reshape(-1)))
    return b.emit(name, ir.FullyConnected(), inputs, call.out_shape)


def _linear(b: Builder, call: Call, name: str) -> Value:
    return _fully_connected(b, call, name, activation_arg(call, "input"),
                            const_arg(call, "weight"), const_arg(call, "bias", optional=True))


def _addmm(b: Builder, call: Call, name: str) -> Value:
    """Core-ATen linear: ``beta * bias + mat1 @ mat2`` with mat2 the transposed weight."""
    if call.args.get("beta", 1) != 1 or call.args.get("alpha", 1) != 1:
        raise unsupported(call, "addmm with beta or alpha other than 1")
    mat2 = const_arg(call, "mat2")
    bias = const_arg(call, "self", optional=True) if call.op == "addmm" else None
    x = activation_arg(call, "mat1" if call.op == "addmm" else "self")
    return _fully_connected(b, call, name, x, mat2.t(), bias)


def _zero_pad(b: Builder, call: Call, name: str) -> Value:
    """nn.ZeroPad2d, as TF-ported models pad before a stride-2 conv (asymmetric 'SAME'); a
    pad read only by a conv becomes that conv's explicit padding (zero_pads.fold_zero_pads)."""
    x = activation_arg(call, "self")
    left, right, top, bottom = (int(v) for v in call.args["pad"])
    if len(x.torch_shape) != 4 or min(left, right, top, bottom) < 0:
        raise unsupported(call, "padding other than non-negative zero padding of H and W")
    n, c, h, w = x.torch_shape
    return b.emit(name, ir.Pad(ir.Padding(top, bottom, left, right)), [x.name],
                  (n, c, h + top + bottom, w + left + right))


def _softmax(b: Builder, call: Call, name: str) -> Value:
    x = activation_arg(call, "self")
    if len(x.torch_shape) != 2 or call.args.get("dim") not in (1, -1):
        raise unsupported(call, "softmax other than over the classes of a (1, N) tensor")
    return b.emit(name, ir.Softmax(beta=1.0), [x.name], x.torch_shape)


def _identity(b: Builder, call: Call, name: str) -> Value:
    x = activation_arg(call, "self")
    return b.emit(name, ir.Identity(source=call.kind), [x.name], x.torch_shape, x.flat_from)


HANDLERS: dict[str, Callable[[Builder, Call, str], object]] = {
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
    **torch_elementwise.HANDLERS,
    **torch_hard_activations.HANDLERS,
    **torch_graph_ops.HANDLERS,
}
