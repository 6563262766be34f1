/* mbgen test stand-in for CMSIS-NN's arm_elementwise_add_s8 (see ../../README.md). */
#include "arm_nnfunctions.h"
#include "standin_arith.h"

/* TFLite's int8 ADD: both inputs offset, shifted left by left_shift, rescaled to a common
   scale, summed and rescaled to the output. Shifts > 0 are left shifts. */
arm_cmsis_nn_status arm_elementwise_add_s8(const int8_t *input_1_vect,
                                           const int8_t *input_2_vect,
                                           const int32_t input_1_offset,
                                           const int32_t input_1_mult,
                                           const int32_t input_1_shift,
                                           const int32_t input_2_offset,
                                           const int32_t input_2_mult,
                                           const int32_t input_2_shift,
                                           const int32_t left_shift,
                                           int8_t *output,
                                           const int32_t out_offset,
                                           const int32_t out_mult,
                                           const int32_t out_shift,
                                           const int32_t out_activation_min,
                                           const int32_t out_activation_max,
                                           const int32_t block_size)
{
    int32_t i;
    for (i = 0; i < block_size; ++i) {
        const int32_t a = (int32_t)((uint32_t)(input_1_vect[i] + input_1_offset) << left_shift);
        const int32_t b = (int32_t)((uint32_t)(input_2_vect[i] + input_2_offset) << left_shift);
        const int32_t sum = standin_requantize(a, input_1_mult, input_1_shift)
                            + standin_requantize(b, input_2_mult, input_2_shift);
        const int32_t v = standin_requantize(sum, out_mult, out_shift) + out_offset;
        output[i] = (int8_t)standin_clamp(v, out_activation_min, out_activation_max);
    }
    return ARM_CMSIS_NN_SUCCESS;
}
