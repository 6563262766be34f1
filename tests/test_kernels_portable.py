"""The fixed-point primitives of the portable kernels, in C, against exact Python arithmetic.

The kernels header (requantisation, window clipping, gemmlowp-style exp and reciprocal) is
rendered from the templates, compiled with a small driver and fed thousands of cases in one
run, edge cases included (INT32_MIN, ties, every shift). The Python side computes each value
from its definition with unbounded integers or rationals, not by mirroring the C's bit tricks.
"""

from __future__ import annotations

import math
import subprocess
from fractions import Fraction

import numpy as np
import pytest

from helpers_c import build
from mbgen import reference
from mbgen.codegen.generator import environment

INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

DRIVER = r"""
#include <stdio.h>
#include <string.h>
#include "t_kernels.h"

int main(void)
{
    char op[16];
    long long a, b, c, d;
    while (scanf("%15s %lld %lld %lld %lld", op, &a, &b, &c, &d) == 5) {
        long long r = 0;
        if (!strcmp(op, "srdhm")) r = t_srdhm((int32_t)a, (int32_t)b);
        else if (!strcmp(op, "rdbpot")) r = t_rdbpot((int32_t)a, (int)b);
        else if (!strcmp(op, "mbqm")) r = t_requantize((int32_t)a, (int32_t)b, (int32_t)c);
        else if (!strcmp(op, "window")) {
            int32_t lo, hi;
            t_window((int32_t)a, (int32_t)b, (int32_t)c, (int32_t)d, &lo, &hi);
            r = (long long)lo * 1000 + hi;
        }
        else if (!strcmp(op, "exp")) r = t_exp_on_negative((int32_t)a, (int)b);
        else if (!strcmp(op, "recip")) r = t_one_over_one_plus_x((int32_t)a);
        else if (!strcmp(op, "clz")) r = t_count_leading_zeros((uint32_t)a);
        else if (!strcmp(op, "dot")) {
            int8_t x[64], w[64];
            int i;
            for (i = 0; i < (int)c; ++i) {
                x[i] = (int8_t)(((a >> (i % 8)) * 37 + i * 11) % 256 - 128);
                w[i] = (int8_t)(((b >> (i % 8)) * 53 + i * 7) % 255 - 127);
            }
            if (d == 4) {
                int32_t acc[4] = {1, -2, 3, -4};
                int8_t rows[4 * 64];
                int j;
                for (j = 0; j < 4 * (int)c; ++j) rows[j] = (int8_t)((j * 29 + a) % 255 - 127);
                t_dot4_s8(x, rows, (size_t)c, (int32_t)c, acc);
                r = (long long)acc[0] + 3 * (long long)acc[1] + 5 * (long long)acc[2]
                    + 7 * (long long)acc[3];
            } else if (d == 1) {
                r = t_sum_s8(w, (int32_t)c);
            } else {
                r = t_dot_s8(x, w, (int32_t)c);
            }
        }
        printf("%lld\n", r);
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def primitives(tmp_path_factory):
    """Run a batch of ``(op, a, b, c, d)`` queries through the C helpers."""
    out = tmp_path_factory.mktemp("primitives")
    header = environment().get_template("model_kernels.h.j2").render(
        prefix="t", PREFIX="T", version="test", kernels="portable", model_name="primitives",
        kernel_templates={})
    (out / "t_kernels.h").write_text(header)
    (out / "driver.c").write_text(DRIVER)
    exe = build([out / "driver.c"], [out], out / "driver")

    def run(queries: list[tuple]) -> list[int]:
        text = "".join(f"{q[0]} " + " ".join(str(int(v)) for v in (list(q[1:]) + [0] * 4)[:4])
                       + "\n" for q in queries)
        proc = subprocess.run([str(exe)], input=text, capture_output=True, text=True, check=True)
        results = [int(line) for line in proc.stdout.split()]
        assert len(results) == len(queries)
        return results
    return run


# ----------------------------------------------------------------------------- definitions


def round_half_away(q: Fraction) -> int:
    whole = math.floor(abs(q))
    rounded = whole + (1 if abs(q) - whole >= Fraction(1, 2) else 0)
    return rounded if q >= 0 else -rounded


def srdhm(a: int, b: int) -> int:
    """a * b / 2^31 rounded to nearest with ties towards +infinity (gemmlowp's nudge of
    1 - 2^30 for negative products, then truncation, rounds -k - 1/2 to -k); the one
    overflowing product saturates."""
    if a == b == INT32_MIN:
        return INT32_MAX
    return math.floor(Fraction(a * b, 1 << 31) + Fraction(1, 2))


def rdbpot(x: int, exponent: int) -> int:
    return round_half_away(Fraction(x, 1 << exponent))


def wrap32(x: int) -> int:
    return (x + (1 << 31)) % (1 << 32) - (1 << 31)


def mbqm(x: int, multiplier: int, shift: int) -> int:
    """TFLite's MultiplyByQuantizedMultiplier: the left shift wraps like an int32 multiply."""
    return rdbpot(srdhm(wrap32(x << max(shift, 0)), multiplier), max(-shift, 0))


def _edge_values(rng: np.random.Generator, n: int) -> list[int]:
    edges = [INT32_MIN, INT32_MIN + 1, -(1 << 30), -3, -2, -1, 0, 1, 2, 3, 1 << 30,
             INT32_MAX - 1, INT32_MAX]
    return edges + rng.integers(INT32_MIN, INT32_MAX, size=n, endpoint=True).tolist()


# ----------------------------------------------------------------------------- tests


def test_saturating_rounding_doubling_high_mul(primitives):
    rng = np.random.default_rng(1)
    values = _edge_values(rng, 60)
    pairs = [(a, b) for a in values[:20] for b in values[:20]]
    pairs += list(zip(values, rng.permutation(values).tolist()))
    # exact ties: a * b = (2k + 1) * 2^30
    pairs += [(3 << 15, 1 << 15), (-(3 << 15), 1 << 15), (1, 1 << 30), (-1, 1 << 30)]
    got = primitives([("srdhm", a, b) for a, b in pairs])
    assert got == [srdhm(a, b) for a, b in pairs]


def test_rounding_divide_by_power_of_two(primitives):
    rng = np.random.default_rng(2)
    xs = _edge_values(rng, 40) + [5, -5, 6, -6, 7, -7, 12, -12]  # ties for exponent 1, 2
    cases = [(x, e) for x in xs for e in range(0, 32)]
    got = primitives([("rdbpot", x, e) for x, e in cases])
    assert got == [rdbpot(x, e) for x, e in cases]


def test_multiply_by_quantized_multiplier(primitives):
    rng = np.random.default_rng(3)
    cases = []
    for shift in range(-31, 8):
        for _ in range(40):
            multiplier = int(rng.integers(1 << 30, 1 << 31))  # normalised Q31, as TFLite makes
            x = int(rng.integers(-(1 << (31 - max(shift, 0))), 1 << (31 - max(shift, 0))))
            cases.append((x, multiplier, shift))
    cases += [(x, m, s) for x in (INT32_MIN, INT32_MAX, -1, 0, 1)
              for m in (0, 1 << 30, INT32_MAX) for s in (-31, -1, 0, 1)]
    got = primitives([("mbqm", *c) for c in cases])
    assert got == [mbqm(*c) for c in cases]


def test_window_clips_kernel_taps_to_the_image(primitives):
    cases = [(origin, dilation, taps, size)
             for origin in range(-7, 9) for dilation in (1, 2, 3)
             for taps in (1, 2, 3, 5) for size in (1, 2, 4, 7)]
    got = primitives([("window", *c) for c in cases])
    for (origin, dilation, taps, size), packed in zip(cases, got):
        inside = [k for k in range(taps) if 0 <= origin + k * dilation < size]
        lo, hi = divmod(packed, 1000)
        assert hi - lo == len(inside)
        if inside:
            assert (lo, hi) == (inside[0], inside[-1] + 1)


def test_dot_products_and_weight_sums(primitives):
    """dot (mode 0), weight sum (mode 1) and the four-row dot (mode 4) of the conv/FC core."""
    cases = [(a, b, n, mode) for a, b in ((5, 9), (200, 77)) for n in (0, 1, 3, 4, 17, 64)
             for mode in (0, 1, 4)]
    got = primitives([("dot", *c) for c in cases])
    for (a, b, n, mode), value in zip(cases, got):
        x = [((a >> (i % 8)) * 37 + i * 11) % 256 - 128 for i in range(n)]
        w = [((b >> (i % 8)) * 53 + i * 7) % 255 - 127 for i in range(n)]
        if mode == 0:
            assert value == sum(xi * wi for xi, wi in zip(x, w))
        elif mode == 1:
            assert value == sum(w)
        else:
            rows = [(j * 29 + a) % 255 - 127 for j in range(4 * n)]
            acc = [1 + sum(x[i] * rows[i] for i in range(n)),
                   -2 + sum(x[i] * rows[n + i] for i in range(n)),
                   3 + sum(x[i] * rows[2 * n + i] for i in range(n)),
                   -4 + sum(x[i] * rows[3 * n + i] for i in range(n))]
            assert value == acc[0] + 3 * acc[1] + 5 * acc[2] + 7 * acc[3]


def test_count_leading_zeros(primitives):
    xs = [0, 1, 2, 3, 255, 1 << 19, (1 << 31) - 1, 1 << 31, (1 << 32) - 1]
    got = primitives([("clz", x) for x in xs])
    assert got == [32 - x.bit_length() for x in xs]


@pytest.mark.parametrize("integer_bits", [4, 5])
def test_exp_on_negative_values(primitives, integer_bits: int):
    """Against the numpy reference bit for bit, and against exp() to gemmlowp's accuracy."""
    rng = np.random.default_rng(integer_bits)
    fractional = 31 - integer_bits
    raws = [0, -1, -(1 << (fractional - 2)), -(1 << fractional), -(1 << 30), INT32_MIN + 1,
            INT32_MIN] + rng.integers(INT32_MIN, 1, size=400).tolist()
    got = primitives([("exp", a, integer_bits) for a in raws])
    want = reference.exp_on_negative_values(np.array(raws, dtype=np.int64), integer_bits)
    assert got == want.tolist()
    for a, value in zip(raws, got):
        assert abs(value / 2**31 - math.exp(a / 2**fractional)) < 1e-6


def test_one_over_one_plus_x(primitives):
    rng = np.random.default_rng(9)
    raws = [0, 1, 1 << 30, INT32_MAX - 1, INT32_MAX] + rng.integers(0, INT32_MAX,
                                                                     size=400).tolist()
    got = primitives([("recip", a) for a in raws])
    want = reference.one_over_one_plus_x_for_x_in_0_1(np.array(raws, dtype=np.int64))
    assert got == want.tolist()
    for a, value in zip(raws, got):
        assert abs(value / 2**31 - 1 / (1 + a / 2**31)) < 1e-8
