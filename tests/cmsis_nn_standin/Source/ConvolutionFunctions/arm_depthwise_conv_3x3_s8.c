/* mbgen test stand-in for CMSIS-NN's arm_depthwise_conv_3x3_s8 (see ../../README.md). */
#include "arm_nnfunctions.h"
#include "standin_conv_common.h"

arm_cmsis_nn_status arm_depthwise_conv_3x3_s8(const cmsis_nn_context *ctx,
                                              const cmsis_nn_dw_conv_params *dw_conv_params,
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
    /* documented constraints: as many output as input channels, a 3x3 filter, pad_x <= 1 */
    if (input_dims->c != output_dims->c || filter_dims->w != 3 || filter_dims->h != 3 ||
        dw_conv_params->padding.w > 1 || dw_conv_params->dilation.w != 1 ||
        dw_conv_params->dilation.h != 1) {
        return ARM_CMSIS_NN_ARG_ERROR;
    }
    return standin_depthwise(dw_conv_params, quant_params, input_dims, input_data, filter_dims,
                             filter_data, bias_data, output_dims, output_data);
}
