"""Hard sigmoid and hard swish as core ATen spells them (``ExportedProgram.run_decompositions``):

    hardsigmoid(x) = div(clamp(clamp(add(x, 3), 0), None, 6), 6)
    hardswish(x)   = div(mul(x, clamp(clamp(add(x, 3), 0), None, 6)), 6)

(the clamps may also come as one ``clamp(., 0, 6)``, ``hardtanh`` or ``relu6``, the division
as ``mul(., 1/6)``). ``x + 3`` starts a :class:`PendingHardActivation`, which the clamps, the
product with x and the final division advance; the division emits mbgen's hard sigmoid or
HardSwish. Anything else done to the pending value is refused: mbgen does not add constants
to feature maps otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mbgen import ir
from mbgen.frontends.torch_elementwise import emit_hard_sigmoid
from mbgen.frontends.torch_values import Builder, Call, Deferred, Value, unsupported

_CLAMPS = {"clamp": ("min", "max"), "hardtanh": ("min_val", "max_val")}
_SIXTH = 1.0 / 6.0


@dataclass(frozen=True)
class PendingHardActivation(Deferred):
    """``x + 3`` clamped to [low, high], times x when ``times_x``; not yet in the IR."""

    x: Value
    low: float | None = None
    high: float | None = None
    times_x: bool = False

    @property
    def is_relu6(self) -> bool:
        return self.low == 0.0 and self.high == 6.0


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def start(call: Call) -> PendingHardActivation | None:
    """``x + 3`` (either order, alpha 1): the start of a decomposed hard activation."""
    a, other = call.args.get("self"), call.args.get("other")
    if call.args.get("alpha", 1) != 1:
        return None
    x, c = (a, other) if isinstance(a, Value) else (other, a)
    return PendingHardActivation(x) if isinstance(x, Value) and _number(c) == 3.0 else None


def involved(call: Call) -> bool:
    return any(isinstance(v, PendingHardActivation) for v in call.args.values())


def advance(b: Builder, call: Call, name: str) -> PendingHardActivation | Value:
    """The next step of a pending hard activation (``call`` has one among its arguments)."""
    p, other = call.args.get("self"), call.args.get("other")
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
        return emit_hard_sigmoid(b, p.x, name)
    if call.op == "mul":
        a, c = (p, other) if isinstance(p, PendingHardActivation) else (other, p)
        if isinstance(a, PendingHardActivation) and a.is_relu6 and not a.times_x and c == a.x:
            return replace(a, times_x=True)
    raise unsupported(call, "adding a constant to a feature map (mbgen takes x + 3 only "
                            "inside relu6(x + 3) / 6 and x * relu6(x + 3) / 6, hard sigmoid "
                            "and hard swish)")
