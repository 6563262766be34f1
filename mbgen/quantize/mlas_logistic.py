"""onnxruntime's float32 logistic (MLAS ``MlasComputeLogistic``), emulated bit for bit.

QLinearSigmoid, and a Sigmoid between DequantizeLinear and QuantizeLinear, take their values
from it. MLAS evaluates Eigen's rational approximation: the input clamped to [-18, 18],
``p = x * (((a9 x^2 + a7) x^2 + a5) x^2 + a3) x^2 + a1)``,
``q = ((((b10 x^2 + b8) x^2 + b6) x^2 + b4) x^2 + b2) x^2 + b0``, result ``p / q + 0.5``.

On x86-64 with FMA3 (what onnxruntime's CPU provider dispatches to on every AVX2 machine)
each ``u * x^2 + c`` step is one fused multiply-add (a single rounding), and the result is
only clamped below at 0 (it can exceed 1 by an ulp). ``fused=False`` is MLAS's portable C
kernel as SSE2-only x86 builds run it: a float32 product and a float32 sum, result clamped
to [0, 1]. The tests compare the fused variant with onnxruntime code by code.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

_F32 = np.float32
LOWER_RANGE, UPPER_RANGE = _F32(-18.0), _F32(18.0)
# MLAS's coefficients (float32 literals, the same as Eigen's), highest power first.
NUMERATOR = tuple(_F32(c) for c in (4.37031012579801e-11, 1.15627324459942e-07,
                                    6.08574864600143e-05, 8.51377133304701e-03,
                                    2.48287947061529e-01))
DENOMINATOR = tuple(_F32(c) for c in (6.10247389755681e-13, 5.76102136993427e-09,
                                      6.29106785017040e-06, 1.70198817374094e-03,
                                      1.16817656904453e-01, 9.93151921023180e-01))


def fused_multiply_add(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    """float32 ``a * b + c`` rounded once (to nearest, ties to even), as vfmadd does.

    The exact value is rounded to float64 with round-to-odd, which then rounds to float32
    correctly (float64 carries more than 24 + 2 bits)."""
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    nearest = float(exact)
    if Fraction(nearest) != exact and int(np.float64(nearest).view(np.int64)) % 2 == 0:
        toward = math.inf if Fraction(nearest) < exact else -math.inf
        nearest = math.nextafter(nearest, toward)
    return _F32(nearest)


def _separate_multiply_add(a: np.float32, b: np.float32, c: np.float32) -> np.float32:
    return _F32(_F32(a * b) + c)


def logistic(x: np.ndarray, fused: bool = True) -> np.ndarray:
    """MlasComputeLogistic of a float32 array (element by element; order is irrelevant)."""
    multiply_add = fused_multiply_add if fused else _separate_multiply_add
    values = np.asarray(x, dtype=np.float32).reshape(-1)
    out = np.empty_like(values)
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
        for i, value in enumerate(values):
            v = _F32(min(max(value, LOWER_RANGE), UPPER_RANGE))
            squared = _F32(v * v)
            p = multiply_add(squared, NUMERATOR[0], NUMERATOR[1])
            for coefficient in NUMERATOR[2:]:
                p = multiply_add(p, squared, coefficient)
            p = _F32(v * p)
            q = multiply_add(squared, DENOMINATOR[0], DENOMINATOR[1])
            for coefficient in DENOMINATOR[2:]:
                q = multiply_add(q, squared, coefficient)
            result = _F32(_F32(p / q) + _F32(0.5))
            result = max(result, _F32(0.0))
            out[i] = result if fused else min(result, _F32(1.0))
    return out.reshape(np.shape(x))
