"""Hard sigmoid and hard swish, however the model spells them.

* ``F.hardsigmoid`` / ``nn.Hardsigmoid`` / ``aten.hardsigmoid(_)`` give a
  :class:`HardSigmoidOf` that waits for its reader: ``x * hardsigmoid(x)`` (how hand-written
  MobileNetV3 code spells hard swish) becomes one HardSwish; any other reader gets mbgen's
  hard sigmoid layers (``hard_sigmoid.py``), emitted once.
* Core ATen (``ExportedProgram.run_decompositions``) and hand-written code spell them with
  arithmetic::

      hardsigmoid(x) = div(clamp(clamp(add(x, 3), 0), None, 6), 6)
      hardswish(x)   = div(mul(x, clamp(clamp(add(x, 3), 0), None, 6)), 6)

  (the clamps may also be one ``clamp(., 0, 6)``, ``hardtanh`` or ``relu6``, the division
  ``mul(., 1/6)``). ``x + 3`` starts a :class:`PendingHardActivation` that the clamps, the
  product with x and the division advance. Anything else done to it is refused: mbgen does
  not add constants to feature maps otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch.nn.functional as F
from torch import nn

from mbgen import ir
from mbgen.frontends.hard_sigmoid import hard_sigmoid_layers
from mbgen.frontends.torch_values import (Builder, Call, Deferred, Value, activation_arg,
                                          unsupported)

_CLAMPS = {"clamp": ("min", "max"), "hardtanh": ("min_val", "max_val")}
_SIXTH = 1.0 / 6.0


@dataclass(frozen=True)
class HardSigmoidOf(Deferred):
    """hardsigmoid(x), not yet in the IR; ``name`` is the node name reserved for it."""

    x: Value
    name: str

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return self.x.torch_shape


@dataclass(frozen=True)
class PendingHardActivation(Deferred):
    """``x + 3`` clamped to [low, high], times x when ``times_x``; not yet in the IR."""

    x: Value
    low: float | None = None
    high: float | None = None
    times_x: bool = False

    @property
    def torch_shape(self) -> tuple[int, ...]:
        return self.x.torch_shape

    @property
    def is_relu6(self) -> bool:
        return self.low == 0.0 and self.high == 6.0


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def _hardsigmoid(b: Builder, call: Call, name: str) -> HardSigmoidOf:
    return HardSigmoidOf(activation_arg(call, "self"), name)


def start(call: Call) -> PendingHardActivation | None:
    """``x + 3`` (either order, alpha 1): the start of a decomposed hard activation."""
    a, other = call.args.get("self"), call.args.get("other")
    if call.args.get("alpha", 1) != 1:
        return None
    x, c = (a, other) if isinstance(a, Value) else (other, a)
    return PendingHardActivation(x) if isinstance(x, Value) and _number(c) == 3.0 else None


def involved(call: Call) -> bool:
    return any(isinstance(v, Deferred) for v in call.args.values())


def advance(b: Builder, call: Call, name: str) -> object:
    """Convert ``call``, one of whose arguments is held back (see the module docstring)."""
    p, other = call.args.get("self"), call.args.get("other")
    if call.op == "mul":  # x * hardsigmoid(x), in either order: hard swish
        for a, c in ((p, other), (other, p)):
            if isinstance(a, HardSigmoidOf) and c == a.x:
                return b.emit(name, ir.HardSwish(), [c.name], c.torch_shape, c.flat_from)
    if isinstance(p, PendingHardActivation) and not p.times_x:
        bounds = {"relu": (0.0, None), "relu6": (0.0, 6.0)}.get(call.op)
        if call.op in _CLAMPS:
            low, high = (call.args.get(k) for k in _CLAMPS[call.op])
            bounds = (_number(low), _number(high))
        if bounds is not None:
            lows = [v for v in (p.low, bounds[0]) if v is not None]
            highs = [v for v in (p.high, bounds[1]) if v is not None]
            return replace(p, low=max(lows) if lows else None,
                           high=min(highs) if highs else None)
    if isinstance(p, PendingHardActivation) and p.is_relu6 and (
            (call.op == "div" and _number(other) == 6.0)
            or (call.op == "mul" and _number(other) is not None
                and abs(_number(other) - _SIXTH) < 1e-7)):
        if p.times_x:
            return b.emit(name, ir.HardSwish(), [p.x.name], p.x.torch_shape, p.x.flat_from)
        return HardSigmoidOf(p.x, name)
    if call.op == "mul":
        a, c = (p, other) if isinstance(p, PendingHardActivation) else (other, p)
        if isinstance(a, PendingHardActivation) and a.is_relu6 and not a.times_x and c == a.x:
            return replace(a, times_x=True)
    if any(isinstance(v, PendingHardActivation) for v in call.args.values()):
        raise unsupported(call, "adding a constant to a feature map (mbgen takes x + 3 only "
                                "inside relu6(x + 3) / 6 and x * relu6(x + 3) / 6, hard "
                                "sigmoid and hard swish)")
    return None


def materialize(b: Builder, value: object) -> object:
    """``value`` with every held-back hard sigmoid in it emitted (once) as IR layers."""
    if isinstance(value, HardSigmoidOf):
        if value.name not in b.tensors:
            tensors, nodes = hard_sigmoid_layers(value.name, b.tensors[value.x.name],
                                                 value.name)
            b.extend(tensors, nodes)
        return Value(value.name, value.x.torch_shape, value.x.flat_from)
    if isinstance(value, (list, tuple)):
        return type(value)(materialize(b, v) for v in value)
    return value


HANDLERS = {"hardsigmoid": _hardsigmoid}
ATEN_OPS = {"hardsigmoid": "hardsigmoid"}
FX_FUNCTIONS: dict[object, tuple[str, tuple[str, ...]]] = {
    F.hardsigmoid: ("hardsigmoid", ("self",)),
}


def module_call(module: nn.Module, x: object) -> tuple[str, dict[str, object]] | None:
    if isinstance(module, nn.Hardsigmoid):
        return ("hardsigmoid", {"self": x})
    return None
