"""What the torch frontend's op translations share: values, canonical calls, the IR builder.

A model's tensors become :class:`Value` (an activation already in the IR) or stay torch
tensors / Python numbers (constants); every layer is reduced to a :class:`Call` with ATen-style
argument names, which a handler turns into IR nodes through a :class:`Builder`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from mbgen import ir
from mbgen.errors import UserError

SUPPORTED_LAYERS = ("Conv2d (groups 1 or depthwise), BatchNorm2d, ReLU, ReLU6, Hardtanh(0, 6), "
                    "Hardswish, Hardsigmoid, Sigmoid, AdaptiveAvgPool2d(1), AvgPool2d, Flatten, "
                    "Linear, Dropout, Identity, MaxPool2d, torch.cat, chunk/split, channel "
                    "shuffle (view -> transpose -> view), tensor addition and multiplication "
                    "(same shape or a per-channel scale, as in squeeze-excitation)")


# ----------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Value:
    """A runtime tensor of the model, already in the IR under ``name``.

    ``torch_shape`` is PyTorch's (NCHW) shape. ``flat_from`` is set for a flat (1, N) tensor
    whose IR element order is HWC while PyTorch's is CHW: the (C, H, W) it was flattened from.
    """

    name: str
    torch_shape: tuple[int, ...]
    flat_from: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Call:
    """One layer reduced to a canonical op with ATen-style argument names."""

    op: str
    args: dict[str, object]
    layer: str          # module path for error messages ("features.3.conv")
    kind: str           # what the user wrote ("nn.Conv2d", "torch.add", "aten.conv2d.default")
    out_shape: tuple[int, ...] | None  # PyTorch shape of the (first) output tensor


class Deferred:
    """A value computed from the input that a translation holds back until a later call
    completes a pattern (e.g. the ``x + 3`` of a decomposed hard sigmoid)."""


def contains_activation(value: object) -> bool:
    if isinstance(value, (Value, Deferred)):
        return True
    if isinstance(value, (list, tuple)):
        return any(contains_activation(v) for v in value)
    if isinstance(value, dict):
        return any(contains_activation(v) for v in value.values())
    return False


def pair(value: object, name: str, call: Call) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return (int(value[0]), int(value[0]))
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return (int(value[0]), int(value[1]))
    raise unsupported(call, f"{name}={value!r} is not a 2-D value")


def unsupported(call: Call, why: str) -> UserError:
    return UserError(f"unsupported layer {call.layer!r} ({call.kind}): {why}; "
                     f"mbgen supports {SUPPORTED_LAYERS}")


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(torch.float32).cpu().numpy().copy()


# ----------------------------------------------------------------------------- graph building


class Builder:
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

    def add_input(self, name: str, torch_shape: tuple[int, ...]) -> Value:
        self.tensors[name] = ir.Tensor(name, to_ir_shape(torch_shape, name), "float32")
        return Value(name, torch_shape)

    def constant(self, name: str, data: np.ndarray) -> str:
        data = np.ascontiguousarray(data, dtype=np.float32)
        self.tensors[name] = ir.Tensor(name, tuple(data.shape), "float32", data)
        return name

    def emit(self, node_name: str, op: ir.OpAttrs, inputs: list[str],
             torch_shape: tuple[int, ...], flat_from: tuple[int, int, int] | None = None,
             ir_shape: tuple[int, ...] | None = None) -> Value:
        out = node_name
        shape = ir_shape if ir_shape is not None else to_ir_shape(torch_shape, node_name)
        self.tensors[out] = ir.Tensor(out, shape, "float32")
        self.nodes.append(ir.Node(node_name, op, inputs, [out]))
        return Value(out, torch_shape, flat_from)

    def extend(self, tensors: list[ir.Tensor], nodes: list[ir.Node]) -> None:
        """Add a ready-made run of layers (e.g. a lowering shared with another frontend)."""
        for tensor in tensors:
            if tensor.name in self.tensors:
                raise ir.GraphError(f"tensor {tensor.name!r} defined twice")
            self.tensors[tensor.name] = tensor
        self.nodes.extend(nodes)
        self._node_names.update(node.name for node in nodes)


def to_ir_shape(torch_shape: Sequence[int], where: str) -> tuple[int, ...]:
    shape = tuple(int(d) for d in torch_shape)
    if len(shape) == 4:
        n, c, h, w = shape
        return (n, h, w, c)
    if len(shape) == 2:
        return shape
    raise UserError(f"layer {where!r} produces a rank-{len(shape)} tensor {list(shape)}; mbgen "
                    "handles NCHW feature maps and flat (1, N) vectors")


def activation_arg(call: Call, key: str) -> Value:
    value = call.args.get(key)
    if not isinstance(value, Value):
        raise unsupported(call, f"argument {key!r} must be a tensor computed from the input, "
                                "not a constant")
    return value


def const_arg(call: Call, key: str, optional: bool = False) -> torch.Tensor | None:
    value = call.args.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, torch.Tensor):
        raise unsupported(call, f"argument {key!r} must be a constant tensor (weights computed "
                                "at run time are not supported)")
    return value

