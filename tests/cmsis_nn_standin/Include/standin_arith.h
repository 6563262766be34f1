/* mbgen test stand-in for CMSIS-NN: TFLite's int8 fixed-point arithmetic (gemmlowp semantics),
 * shared by the stand-in's sources. Not part of CMSIS-NN's API. */
#ifndef STANDIN_ARITH_H
#define STANDIN_ARITH_H

#include <stdint.h>

#include "arm_nn_types.h"

/* round(a * b / 2^31), ties away from zero; the one overflowing case saturates. */
static inline int32_t standin_srdhm(int32_t a, int32_t b)
{
    if (a == INT32_MIN && b == INT32_MIN) {
        return INT32_MAX;
    }
    const int64_t product = (int64_t)a * (int64_t)b;
    const int64_t nudge = product >= 0 ? (INT64_C(1) << 30) : (1 - (INT64_C(1) << 30));
    return (int32_t)((product + nudge) / (INT64_C(1) << 31)); /* C division truncates */
}

/* x / 2^exponent rounded to nearest, ties away from zero. */
static inline int32_t standin_rdbpot(int32_t x, int32_t exponent)
{
    if (exponent == 0) {
        return x;
    }
    const int32_t mask = (int32_t)((UINT32_C(1) << exponent) - 1);
    const int32_t remainder = x & mask;
    const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

/* TFLite's MultiplyByQuantizedMultiplier: shift > 0 is a left shift before the multiply. */
static inline int32_t standin_requantize(int32_t x, int32_t multiplier, int32_t shift)
{
    const int32_t left = shift > 0 ? shift : 0;
    const int32_t right = shift > 0 ? 0 : -shift;
    return standin_rdbpot(standin_srdhm((int32_t)((uint32_t)x << left), multiplier), right);
}

static inline int32_t standin_clamp(int32_t v, int32_t lo, int32_t hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* The int8 output of an accumulator: requantise, add the output zero point, clamp. */
static inline int8_t standin_output(int32_t acc, int32_t multiplier, int32_t shift,
                                    int32_t output_offset, const cmsis_nn_activation *act)
{
    const int32_t v = standin_requantize(acc, multiplier, shift) + output_offset;
    return (int8_t)standin_clamp(v, act->min, act->max);
}

#endif /* STANDIN_ARITH_H */
