/* mbgen test stand-in for CMSIS-NN's arm_softmax_s8 (see ../../README.md).
 *
 * TFLite's int8 softmax in gemmlowp fixed point: differences to the row maximum, scaled by
 * (mult, shift) into Q5.26, exp() in Q0.31, a Q12.19 sum, its reciprocal, output scale 1/256
 * with zero point -128. */
#include <stddef.h>

#include "arm_nnfunctions.h"
#include "standin_arith.h"

#define ACCUMULATION_INTEGER_BITS 12
#define DIFF_INTEGER_BITS 5

static int32_t mask_if(int condition)
{
    return condition ? -1 : 0;
}

static int32_t select_bits(int32_t mask, int32_t if_set, int32_t if_clear)
{
    return (int32_t)(((uint32_t)mask & (uint32_t)if_set) | (~(uint32_t)mask & (uint32_t)if_clear));
}

/* x * 2^exponent with saturation (exponent > 0), as gemmlowp's SaturatingRoundingMultiplyByPOT. */
static int32_t saturating_shift_left(int32_t x, int exponent)
{
    const int32_t limit = (int32_t)(INT32_MAX >> exponent);
    if (x > limit) {
        return INT32_MAX;
    }
    if (x < -limit - 1) {
        return INT32_MIN;
    }
    return (int32_t)((uint32_t)x << exponent);
}

/* exp(a) for a in [-1/4, 0), Q0.31 in and out: Taylor series around -1/8. */
static int32_t exp_on_interval_around_minus_eighth(int32_t a)
{
    const int32_t exp_minus_eighth = 1895147668;  /* exp(-1/8) in Q0.31 */
    const int32_t one_third = 715827883;          /* 1/3 in Q0.31 */
    const int32_t x = a + (1 << 28);              /* a + 1/8 */
    const int32_t x2 = standin_srdhm(x, x);
    const int32_t x3 = standin_srdhm(x2, x);
    const int32_t x4 = standin_srdhm(x2, x2);
    const int32_t x4_over_4 = standin_rdbpot(x4, 2);
    const int32_t poly = standin_rdbpot(standin_srdhm(x4_over_4 + x3, one_third) + x2, 1);
    return exp_minus_eighth + standin_srdhm(exp_minus_eighth, x + poly);
}

/* exp(a) for a <= 0 given in Q5.26; result in Q0.31. */
static int32_t exp_on_negative_values(int32_t a)
{
    const int fractional_bits = 31 - DIFF_INTEGER_BITS;
    const int32_t one_quarter = (int32_t)1 << (fractional_bits - 2);
    const int32_t mask = one_quarter - 1;
    const int32_t a_mod_quarter_minus_quarter = (a & mask) - one_quarter;
    int32_t result = exp_on_interval_around_minus_eighth(
        saturating_shift_left(a_mod_quarter_minus_quarter, DIFF_INTEGER_BITS));
    const int32_t remainder = a_mod_quarter_minus_quarter - a;
    /* exp(-2^k) in Q0.31 for k = -2 .. 4, applied for each set bit of the remainder */
    static const int32_t exp_of_minus_power_of_two[7] = {
        1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
    int k;
    for (k = -2; k <= 4; ++k) {
        const int shift = fractional_bits + k;
        if (k < DIFF_INTEGER_BITS && shift >= 0 && shift < 31) {
            const int32_t bit_set = mask_if((remainder & ((int32_t)1 << shift)) != 0);
            result = select_bits(bit_set, standin_srdhm(result, exp_of_minus_power_of_two[k + 2]),
                                 result);
        }
    }
    return select_bits(mask_if(a == 0), INT32_MAX, result);
}

/* 1 / (1 + x) for x in [0, 1), Q0.31 in and out: Newton-Raphson on 1/d, d = (1 + x) / 2. */
static int32_t one_over_one_plus_x(int32_t a)
{
    const int64_t sum = (int64_t)a + INT32_MAX;
    const int32_t half_denominator = (int32_t)((sum + (sum >= 0 ? 1 : -1)) / 2);  /* Q0.31 */
    const int32_t c48_over_17 = 1515870810;       /* Q2.29 */
    const int32_t cminus32_over_17 = -1010580540; /* Q2.29 */
    const int32_t one_q2_29 = (int32_t)1 << 29;
    int32_t x = c48_over_17 + standin_srdhm(half_denominator, cminus32_over_17);  /* Q2.29 */
    int i;
    for (i = 0; i < 3; ++i) {
        const int32_t d_times_x = standin_srdhm(half_denominator, x);
        const int32_t one_minus_d_times_x = one_q2_29 - d_times_x;
        x = x + saturating_shift_left(standin_srdhm(x, one_minus_d_times_x), 2);
    }
    /* x is 1/d = 2 / (1 + x) in Q2.29; halve it into Q0.31 */
    return saturating_shift_left(x, 1);
}

static int count_leading_zeros(uint32_t x)
{
    int n = 0;
    if (x == 0) {
        return 32;
    }
    while ((x & 0x80000000u) == 0) {
        x <<= 1;
        ++n;
    }
    return n;
}

static int32_t scaled_difference(int32_t diff, int32_t mult, int32_t shift)
{
    return standin_srdhm((int32_t)((uint32_t)diff << shift), mult);
}

void arm_softmax_s8(const int8_t *input,
                    const int32_t num_rows,
                    const int32_t row_size,
                    const int32_t mult,
                    const int32_t shift,
                    const int32_t diff_min,
                    int8_t *output)
{
    int32_t row, c;
    for (row = 0; row < num_rows; ++row) {
        const int8_t *x = input + (size_t)row * (size_t)row_size;
        int8_t *y = output + (size_t)row * (size_t)row_size;
        int32_t max_value = INT8_MIN;
        int32_t sum_of_exps = 0; /* Q12.19 */
        for (c = 0; c < row_size; ++c) {
            max_value = x[c] > max_value ? x[c] : max_value;
        }
        for (c = 0; c < row_size; ++c) {
            const int32_t diff = (int32_t)x[c] - max_value;
            if (diff >= diff_min) {
                const int32_t e = exp_on_negative_values(scaled_difference(diff, mult, shift));
                sum_of_exps += standin_rdbpot(e, ACCUMULATION_INTEGER_BITS);
            }
        }
        {
            /* 1 / sum: the sum normalised into [1, 2) as 1 + x, and the power of two apart */
            const int headroom = count_leading_zeros((uint32_t)sum_of_exps);
            const int bits_over_unit = ACCUMULATION_INTEGER_BITS - headroom;
            const int32_t reciprocal = one_over_one_plus_x(
                (int32_t)(((uint32_t)sum_of_exps << headroom) - 0x80000000u));
            for (c = 0; c < row_size; ++c) {
                const int32_t diff = (int32_t)x[c] - max_value;
                if (diff >= diff_min) {
                    const int32_t e = exp_on_negative_values(scaled_difference(diff, mult, shift));
                    const int32_t unsaturated = standin_rdbpot(standin_srdhm(reciprocal, e),
                                                               bits_over_unit + 31 - 8);
                    y[c] = (int8_t)standin_clamp(unsaturated - 128, INT8_MIN, INT8_MAX);
                } else {
                    y[c] = INT8_MIN;
                }
            }
        }
    }
}
