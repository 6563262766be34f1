"""Requantisation the SIMD kernels may run instead of TFLite's, and the proofs that it is exact.

TFLite requantises an int32 accumulator with MultiplyByQuantizedMultiplier (a saturating
rounding doubling high multiply, then a rounding right shift with halves away from zero).
A Cortex-M does the first step in one SMMLAR; ``fast_requant`` and ``signed_requant`` prove,
per output channel and over the accumulator's whole reachable range (``accumulator_range``),
when SMMLAR plus a shift equals TFLite's result bit for bit. ``plan_requant`` picks the
cheapest scheme proven for every channel of a layer. Kernel sets (mbgen, Helium) read the
plan; nothing here knows about C.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from mbgen.quantize import params

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1


class RequantScheme(enum.Enum):
    FAST = "smmlar"                # SMMLAR(2*acc, m, c) >> R, proved exact for the layer
    FAST_SIGNED = "smmlar-signed"  # (SMMLAR(2*acc, m, c) + (acc >> 31)) >> R: any range
    EXACT = "tflite"               # TFLite's MultiplyByQuantizedMultiplier, always exact



@dataclass(frozen=True)
class Requant:
    """Per-layer requantisation as the kernel runs it.

    The kernel reads three int32 per output channel (``plan_requant``'s table): FAST and
    FAST_SIGNED (m, c, R) with the output zero point and the rounding of the shift inside c;
    EXACT (m, shift, 0) in TFLite's convention.
    """

    scheme: RequantScheme
    acc_doubled: bool        # FAST: the kernel's accumulator already holds 2 * acc
    output_offset: int       # EXACT only; FAST has it in c
    act_min: int
    act_max: int

    @property
    def is_fast(self) -> bool:
        """FAST or FAST_SIGNED: the (m, c, R) table and an accumulator of 2 * acc."""
        return self.scheme is not RequantScheme.EXACT

    @property
    def sign_fix(self) -> bool:
        return self.scheme is RequantScheme.FAST_SIGNED

    @property
    def clamp_min(self) -> bool:
        """FAST saturates to int8 anyway; a narrower range needs its own clamp."""
        return self.act_min > INT8_MIN

    @property
    def clamp_max(self) -> bool:
        return self.act_max < INT8_MAX


def wrap_int32(values: np.ndarray) -> np.ndarray:
    """Two's-complement int32 wrap of int64 values, as the target's adds wrap."""
    v = np.asarray(values, dtype=np.int64)
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def fold_input_offset(bias: np.ndarray, weights_per_channel: np.ndarray,
                      input_offset: int) -> np.ndarray:
    """bias + input_offset * sum(w) per output channel, wrapped to int32.

    sum((x + offset) * w) == sum(x * w) + offset * sum(w) exactly, and int32 addition is
    exact modulo 2**32, so the wrapped accumulator equals TFLite's whatever the order.
    """
    sums = weights_per_channel.astype(np.int64).reshape(len(bias), -1).sum(axis=1)
    return wrap_int32(bias.astype(np.int64) + input_offset * sums)


def accumulator_range(bias: np.ndarray, weights_per_channel: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi] of bias + sum(x * w) over every int8 input x, per output channel.

    With the input offset folded into ``bias`` this bounds the accumulator for any input,
    padded taps included (they read the zero point, an int8 too). Any partial sum lies in
    the same range because each term's minimum is <= 0 <= its maximum.
    """
    w = weights_per_channel.astype(np.int64).reshape(len(bias), -1)
    lo = np.minimum(INT8_MIN * w, INT8_MAX * w).sum(axis=1)
    hi = np.maximum(INT8_MIN * w, INT8_MAX * w).sum(axis=1)
    return bias.astype(np.int64) + lo, bias.astype(np.int64) + hi


def smmlar(a: int, b: int, c: int) -> int:
    """Arm SMMLAR: (c * 2**32 + a * b + 2**31) >> 32, the top word, wrapped to int32."""
    value = ((c << 32) + a * b + (1 << 31)) >> 32
    return int(wrap_int32(np.int64(value)))


def fast_requant(multiplier: int, shift: int, output_offset: int, act_min: int, act_max: int,
                 acc_lo: int, acc_hi: int) -> tuple[int, int] | None:
    """(c, R) such that clamp(ssat8(SMMLAR(2*acc, m, c) >> R)) equals TFLite's
    clamp(MultiplyByQuantizedMultiplier(acc, m, shift) + output_offset) for every acc in
    [acc_lo, acc_hi]; None when that cannot be proved.

    Why it holds when this returns: with |2*acc| < 2**31, SMMLAR(2*acc, m, 0) is
    floor((acc*m + 2**30) / 2**31), which is exactly SaturatingRoundingDoublingHighMul (its
    rounding is half-up; m > 0 rules out the saturating case). Adding c = 2**(R-1) + zp*2**R
    (no overflow: checked on the range) and shifting right by R gives
    floor(y / 2**R + 1/2) + zp: RoundingDivideByPOT rounds half *away from zero*, so the two
    differ only when y < 0 is exactly a half, and then by one, towards zero. Such a result is
    at most zp, so a lower clamp act_min >= zp hides it; otherwise the largest reachable
    negative half y* must already clamp to act_min on the fast path (smaller y are lower
    still, and the exact value is one below the fast one).
    """
    if shift > 0 or multiplier <= 0:
        return None
    right = -shift
    if right > 31:
        return None
    a2_lo, a2_hi = 2 * acc_lo, 2 * acc_hi
    if a2_lo < INT32_MIN or a2_hi > INT32_MAX:
        return None
    y_lo = (a2_lo * multiplier + (1 << 31)) >> 32
    y_hi = (a2_hi * multiplier + (1 << 31)) >> 32
    rounding = (1 << (right - 1)) if right > 0 else 0
    c = rounding + output_offset * (1 << right)
    if not INT32_MIN <= c <= INT32_MAX:
        return None
    if y_lo + c < INT32_MIN or y_hi + c > INT32_MAX:
        return None
    if right > 0 and act_min < output_offset:
        half, period = 1 << (right - 1), 1 << right
        top = min(y_hi, -1)
        y_star = top - ((top - half) % period)   # largest y <= top with y = half mod 2**R
        if y_star >= y_lo and ((y_star + c) >> right) > act_min:
            return None
    return c, right


def signed_requant(multiplier: int, shift: int, output_offset: int, acc_lo: int,
                   acc_hi: int) -> tuple[int, int] | None:
    """(c, R) such that ssat8((SMMLAR(2*acc, m, c) + (acc >> 31)) >> R) equals TFLite's
    MultiplyByQuantizedMultiplier(acc, m, shift) + output_offset, saturated, for every acc
    in [acc_lo, acc_hi], whatever the clamp; None on a possible overflow.

    With y = SMMLAR(2*acc, m, 0) as in ``fast_requant``, y has acc's sign (or is 0), and
    floor((y + 2**(R-1) - 1) / 2**R) rounds y / 2**R to nearest with halves away from zero
    for y < 0: subtracting one for a negative accumulator turns the half-up rounding into
    RoundingDivideByPOT's, and when y = 0 it changes nothing (2**(R-1) - 1 < 2**R).
    """
    proof = fast_requant(multiplier, shift, output_offset, INT8_MAX, INT8_MAX, acc_lo, acc_hi)
    if proof is None:
        return None
    c, right = proof
    y_lo = (2 * acc_lo * multiplier + (1 << 31)) >> 32
    if right == 0 or y_lo + c - 1 < INT32_MIN:
        return None
    return c, right


def plan_requant(q: params.ConvQuant, channels: int, acc_lo: np.ndarray, acc_hi: np.ndarray,
                 acc_doubled: bool) -> tuple[Requant, np.ndarray]:
    """FAST for the layer when every channel's proof holds, else FAST_SIGNED when it holds
    for every channel, else EXACT; with the (channels, 3) int32 table the kernel reads."""
    mults = np.broadcast_to(q.multipliers, (channels,)).astype(np.int64)
    shifts = np.broadcast_to(q.shifts, (channels,)).astype(np.int64)
    for scheme in (RequantScheme.FAST, RequantScheme.FAST_SIGNED):
        if scheme is RequantScheme.FAST:
            proofs = [fast_requant(int(mults[j]), int(shifts[j]), q.output_offset, q.act_min,
                                   q.act_max, int(acc_lo[j]), int(acc_hi[j]))
                      for j in range(channels)]
        else:
            proofs = [signed_requant(int(mults[j]), int(shifts[j]), q.output_offset,
                                     int(acc_lo[j]), int(acc_hi[j])) for j in range(channels)]
        if all(p is not None for p in proofs):
            table = np.array([(mults[j], proofs[j][0], proofs[j][1])
                              for j in range(channels)], dtype=np.int64).reshape(channels, 3)
            return Requant(scheme, acc_doubled, 0, q.act_min, q.act_max), table
    table = np.stack([mults, shifts, np.zeros(channels, np.int64)], axis=1)
    return Requant(RequantScheme.EXACT, False, q.output_offset, q.act_min, q.act_max), table
