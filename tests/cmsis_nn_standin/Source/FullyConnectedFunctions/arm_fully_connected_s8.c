/* mbgen test stand-in for CMSIS-NN's arm_fully_connected_s8 (see ../../README.md). */
#include <stddef.h>

#include "arm_nnfunctions.h"
#include "standin_arith.h"

arm_cmsis_nn_status arm_fully_connected_s8(const cmsis_nn_context *ctx,
                                           const cmsis_nn_fc_params *fc_params,
                                           const cmsis_nn_per_tensor_quant_params *quant_params,
                                           const cmsis_nn_dims *input_dims,
                                           const int8_t *input_data,
                                           const cmsis_nn_dims *filter_dims,
                                           const int8_t *filter_data,
                                           const cmsis_nn_dims *bias_dims,
                                           const int32_t *bias_data,
                                           const cmsis_nn_dims *output_dims,
                                           int8_t *output_data)
{
    /* filter_dims: n = accumulation depth, c = output depth */
    const int32_t depth = filter_dims->n;
    int32_t batch, o, i;
    (void)ctx;
    (void)bias_dims;
    if (output_dims->c != filter_dims->c) {
        return ARM_CMSIS_NN_ARG_ERROR;
    }
    for (batch = 0; batch < input_dims->n; ++batch) {
        const int8_t *x = input_data + (size_t)batch * (size_t)depth;
        for (o = 0; o < output_dims->c; ++o) {
            const int8_t *w = filter_data + (size_t)o * (size_t)depth;
            int32_t acc = bias_data != NULL ? bias_data[o] : 0;
            for (i = 0; i < depth; ++i) {
                acc += ((int32_t)x[i] + fc_params->input_offset)
                       * ((int32_t)w[i] + fc_params->filter_offset);
            }
            *output_data++ = standin_output(acc, quant_params->multiplier, quant_params->shift,
                                            fc_params->output_offset, &fc_params->activation);
        }
    }
    return ARM_CMSIS_NN_SUCCESS;
}
