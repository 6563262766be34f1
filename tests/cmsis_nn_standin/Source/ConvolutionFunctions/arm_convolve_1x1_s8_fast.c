/* mbgen test stand-in for CMSIS-NN's arm_convolve_1x1_s8_fast (see ../../README.md). */
#include "arm_nnfunctions.h"
#include "standin_conv_common.h"

arm_cmsis_nn_status arm_convolve_1x1_s8_fast(const cmsis_nn_context *ctx,
                                             const cmsis_nn_conv_params *conv_params,
                                             const cmsis_nn_per_channel_quant_params *quant_params,
                                             const cmsis_nn_dims *input_dims,
                                             const int8_t *input_data,
                                             const cmsis_nn_dims *filter_dims,
                                             const int8_t *filter_data,
                                             const cmsis_nn_dims *bias_dims,
                                             const int32_t *bias_data,
                                             const cmsis_nn_dims *output_dims,
                                             int8_t *output_data)
{
    (void)ctx;
    (void)bias_dims;
    /* documented constraints: no padding, unit stride (and a 1x1 filter) */
    if (conv_params->padding.w != 0 || conv_params->padding.h != 0 ||
        conv_params->stride.w != 1 || conv_params->stride.h != 1 ||
        filter_dims->h != 1 || filter_dims->w != 1 || filter_dims->c != input_dims->c) {
        return ARM_CMSIS_NN_ARG_ERROR;
    }
    return standin_conv_1x1(conv_params, quant_params, input_dims, input_data, filter_data,
                            bias_data, output_dims, output_data);
}
