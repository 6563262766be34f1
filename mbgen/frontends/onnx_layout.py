"""How the ONNX frontends see activations and nodes: NCHW ONNX data held NHWC in the IR
(:class:`_Layout`, see ``onnx_frontend``'s docstring) and ONNX nodes with unique labels."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mbgen.errors import UserError
from mbgen.frontends.onnx_model import _attrs, _ints

if TYPE_CHECKING:
    import onnx


class _Order(enum.Enum):
    NHWC = "nhwc"
    PLAIN = "plain"
    CHW_FLAT = "chw_flat"


@dataclass(frozen=True)
class _Layout:
    """How an activation's IR data relates to its ONNX data (see the module docstring)."""

    order: _Order
    onnx_shape: tuple[int, ...]
    chw: tuple[int, int, int] | None = None   # CHW_FLAT only: the flattened (C, H, W)

    @property
    def ir_shape(self) -> tuple[int, ...]:
        if self.order is _Order.NHWC:
            n, c, h, w = self.onnx_shape
            return (n, h, w, c)
        return self.onnx_shape

    @property
    def same_order_as_onnx(self) -> bool:
        """True when reading the IR data row-major visits elements in ONNX order."""
        if self.order is _Order.NHWC:
            _, c, h, w = self.onnx_shape
            return c == 1 or h * w == 1
        if self.order is _Order.CHW_FLAT:
            return False
        return True


def _layout_for(shape: tuple[int, ...]) -> _Layout:
    return _Layout(_Order.NHWC if len(shape) == 4 else _Order.PLAIN, shape)


@dataclass(frozen=True)
class _OnnxNode:
    """An ONNX node with a unique, never-empty name for IR nodes and messages."""

    proto: "onnx.NodeProto"
    label: str

    @property
    def op_type(self) -> str:
        return self.proto.op_type

    @property
    def inputs(self) -> list[str]:
        return list(self.proto.input)

    @property
    def attrs(self) -> dict[str, object]:
        return _attrs(self.proto)

    def where(self) -> str:
        return f"(node {self.label!r})"


def _pair(value: object, node: _OnnxNode) -> tuple[int, int]:
    values = _ints(value)
    if len(values) != 2:
        raise UserError(f"ONNX {node.op_type} {node.where()} is not 2-D (window attribute "
                        f"{list(values)})")
    return values[0], values[1]
