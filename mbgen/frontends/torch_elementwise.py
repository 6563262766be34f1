"""Torch translations of the elementwise ops MobileNetV3 code uses: sigmoid and
multiplication (same shape, a (1, C, 1, 1) squeeze-excitation scale times a feature map, or a
constant that broadcasts to the feature map; ``x / c`` is ``x * (1 / c)``).

Hard sigmoid and hard swish live in ``torch_hard_activations``. The vocabularies below are
merged into the torch frontend's tables: the canonical op each
handler takes, the ATen names (in-place forms like ``hardsigmoid_`` and ``mul_`` lose their
underscore there), the functions and methods torch.fx records, and the leaf modules.
"""

from __future__ import annotations

import inspect
import operator
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
import torch.fx
from torch import nn

from mbgen import ir
from mbgen.frontends.torch_values import (Builder, Call, Value, activation_arg, to_numpy,
                                          unsupported)


def _sigmoid(b: Builder, call: Call, name: str) -> Value:
    x = activation_arg(call, "self")
    return b.emit(name, ir.Logistic(), [x.name], x.torch_shape, x.flat_from)


def _mul(b: Builder, call: Call, name: str) -> Value:
    a, other = call.args.get("self"), call.args.get("other")
    if isinstance(a, Value) and isinstance(other, Value):
        return _mul_tensors(b, call, name, a, other)
    if isinstance(a, Value) or isinstance(other, Value):
        x, k = (a, other) if isinstance(a, Value) else (other, a)
        return _mul_constant(b, call, name, x, k)
    raise unsupported(call, "multiplication of two constants")


def _div(b: Builder, call: Call, name: str) -> Value:
    """``x / c`` for a constant c: multiplication by 1 / c."""
    x, divisor = call.args.get("self"), call.args.get("other")
    if not isinstance(x, Value) or isinstance(divisor, Value) or divisor is None:
        raise unsupported(call, "division other than of a tensor by a constant")
    if call.args.get("rounding_mode") is not None:
        raise unsupported(call, f"division with rounding_mode={call.args['rounding_mode']!r}")
    k = to_numpy(torch.as_tensor(divisor, dtype=torch.float32))
    if not np.all(np.isfinite(1.0 / k)):
        raise unsupported(call, "division by zero")
    return _mul_constant(b, call, name, x, 1.0 / k)


def _mul_tensors(b: Builder, call: Call, name: str, a: Value, other: Value) -> Value:
    # The IR wants the full-size operand first; multiplication commutes.
    big, small = (other, a) if call.out_shape is not None and \
        tuple(a.torch_shape) != tuple(call.out_shape) else (a, other)
    same = big.torch_shape == small.torch_shape and big.flat_from == small.flat_from
    shape = tuple(big.torch_shape)
    per_channel = len(shape) == 4 and tuple(small.torch_shape) == (shape[0], shape[1], 1, 1)
    if not (same or per_channel) or (call.out_shape is not None
                                     and tuple(call.out_shape) != shape):
        raise unsupported(call, f"multiplication of shapes {list(a.torch_shape)} and "
                                f"{list(other.torch_shape)} (only equal shapes or a "
                                "(1, C, 1, 1) scale times a (1, C, H, W) feature map)")
    return b.emit(name, ir.Mul(), [big.name, small.name], big.torch_shape, big.flat_from)


def _mul_constant(b: Builder, call: Call, name: str, x: Value, k: object) -> Value:
    """x times a number or a constant tensor that broadcasts to x (weights of a scale layer)."""
    data = np.asarray(to_numpy(k) if isinstance(k, torch.Tensor) else k, dtype=np.float32)
    if data.size != 1:
        if data.ndim > len(x.torch_shape) or x.flat_from is not None:
            raise unsupported(call, f"multiplication by a constant of shape {list(data.shape)}")
        data = data.reshape((1,) * (len(x.torch_shape) - data.ndim) + data.shape)
        if data.ndim == 4:
            data = data.transpose(0, 2, 3, 1)  # NCHW -> NHWC, as the feature map
        try:
            fits = np.broadcast_shapes(b.tensors[x.name].shape, data.shape) == \
                b.tensors[x.name].shape
        except ValueError:
            fits = False
        if not fits:
            raise unsupported(call, f"multiplication of shape {list(x.torch_shape)} by a "
                                    f"constant that does not broadcast to it")
    else:
        data = data.reshape(1)
    constant = b.constant(f"{name}.scale", data)
    return b.emit(name, ir.Mul(), [x.name, constant], x.torch_shape, x.flat_from)


HANDLERS: dict[str, Callable[[Builder, Call, str], Value]] = {
    "sigmoid": _sigmoid,
    "mul": _mul,
    "div": _div,
}

ATEN_OPS = {"sigmoid": "sigmoid", "mul": "mul", "div": "div"}

FX_FUNCTIONS: dict[object, tuple[str, tuple[str, ...]]] = {
    F.sigmoid: ("sigmoid", ("self",)),
    torch.sigmoid: ("sigmoid", ("self",)),
    operator.mul: ("mul", ("self", "other")),
    operator.imul: ("mul", ("self", "other")),
    torch.mul: ("mul", ("self", "other")),
    operator.truediv: ("div", ("self", "other")),
    operator.itruediv: ("div", ("self", "other")),
    torch.div: ("div", ("self", "other", "rounding_mode")),
    # in-place spellings of ops the frontend already knows
    F.relu_: ("relu", ("self",)),
    torch.relu_: ("relu", ("self",)),
    F.hardtanh_: ("hardtanh", ("self", "min_val", "max_val")),
}

FX_METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mul": ("mul", ("other",)), "mul_": ("mul", ("other",)),
    "div": ("div", ("other",)), "div_": ("div", ("other",)),
    "sigmoid": ("sigmoid", ()), "sigmoid_": ("sigmoid", ()),
}


def module_call(module: nn.Module, x: object) -> tuple[str, dict[str, object]] | None:
    """The canonical call of a leaf module this file translates, else None."""
    if isinstance(module, nn.Sigmoid):
        return ("sigmoid", {"self": x})
    return None


_IN_PLACE_OPERATORS = (operator.iadd, operator.isub, operator.imul, operator.itruediv)


def fx_written_input(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """Name of the fx node whose tensor ``node`` overwrites in place, if any.

    In-place forms: methods ending in ``_`` (``x.mul_(s)``), ``torch.relu_``-style functions,
    ``x *= s``, functions called with ``inplace=True`` and modules built with ``inplace=True``.
    """
    if not node.args or not isinstance(node.args[0], torch.fx.Node):
        return None
    first = node.args[0].name
    if node.op == "call_module":
        return first if getattr(modules[node.target], "inplace", False) is True else None
    if node.op == "call_method":
        target = str(node.target)
        return first if target.endswith("_") and not target.startswith("_") else None
    if node.op != "call_function":
        return None
    name = getattr(node.target, "__name__", "")
    if node.target in _IN_PLACE_OPERATORS or (name.endswith("_") and not name.startswith("_")):
        return first
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):  # builtins without a Python signature
        return None
    return first if bound.arguments.get("inplace") is True else None
