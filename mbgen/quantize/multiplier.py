"""TFLite's encoding of a real multiplier as a Q31 integer and a power-of-two shift.

One implementation, used by every stage that needs requantisation constants (the reference
interpreter, codegen, exporters), so they cannot drift apart. Mirrors TFLite's
``QuantizeMultiplier`` in ``quantization_util.cc``.
"""

from __future__ import annotations

import math


def round_half_away(x: float) -> int:
    """std::round: halves go away from zero (Python's round() would go to even).

    Exact for every double: ``floor(x + 0.5)`` is not (0.49999999999999994 + 0.5 rounds up
    to 1.0 in floating point), so the fraction is compared instead; ``x - floor(x)`` is exact.
    """
    magnitude = abs(x)
    whole = math.floor(magnitude)
    rounded = whole + 1 if magnitude - whole >= 0.5 else whole
    return int(rounded) if x >= 0 else -int(rounded)


def quantize_multiplier(real_multiplier: float) -> tuple[int, int]:
    """Return (q31_multiplier, shift) with real ~= q31 * 2**(shift - 31).

    ``shift`` > 0 is a left shift. Multipliers below ~2**-31 flush to (0, 0) as TFLite does.
    The mantissa is rounded half away from zero (TfLiteRound); one that rounds up to 2**31
    becomes 2**30 with the shift one higher.
    """
    if real_multiplier < 0:
        raise ValueError(f"negative multiplier {real_multiplier}")
    if real_multiplier == 0.0:
        return 0, 0
    mantissa, shift = math.frexp(real_multiplier)
    q_fixed = round_half_away(mantissa * (1 << 31))
    assert q_fixed <= (1 << 31)
    if q_fixed == (1 << 31):  # the mantissa rounded up to 1.0
        q_fixed //= 2
        shift += 1
    if shift < -31:  # every bit would be shifted out
        return 0, 0
    # No upper bound on shift: TFLite (double rounding) returns e.g. (2**31 - 1, 31) for
    # 2**31 - 1, and its quantization_util_test documents that for softmax scaling.
    return int(q_fixed), int(shift)


def quantize_multiplier_smaller_than_one(real_multiplier: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplierSmallerThanOneExp: 0 < m < 1, shift <= 0."""
    if not 0.0 < real_multiplier < 1.0:
        raise ValueError(f"multiplier {real_multiplier} not in (0, 1)")
    q, shift = quantize_multiplier(real_multiplier)
    assert shift <= 0
    return q, shift


def quantize_multiplier_greater_than_one(real_multiplier: float) -> tuple[int, int]:
    """TFLite's QuantizeMultiplierGreaterThanOne: m > 1, shift >= 0."""
    if not real_multiplier > 1.0:
        raise ValueError(f"multiplier {real_multiplier} not > 1")
    q, shift = quantize_multiplier(real_multiplier)
    assert shift >= 0
    return q, shift
