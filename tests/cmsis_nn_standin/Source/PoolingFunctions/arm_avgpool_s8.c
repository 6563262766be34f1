/* mbgen test stand-in for CMSIS-NN's arm_avgpool_s8 (see ../../README.md). */
#include <stddef.h>

#include "arm_nnfunctions.h"
#include "standin_arith.h"

/* Per output pixel: one int32 sum per channel in ctx->buf (as CMSIS-NN's DSP build keeps
   them), then the rounded mean over the window's pixels inside the image. */
arm_cmsis_nn_status arm_avgpool_s8(const cmsis_nn_context *ctx,
                                   const cmsis_nn_pool_params *pool_params,
                                   const cmsis_nn_dims *input_dims,
                                   const int8_t *input_data,
                                   const cmsis_nn_dims *filter_dims,
                                   const cmsis_nn_dims *output_dims,
                                   int8_t *output_data)
{
    const int32_t channels = input_dims->c;
    int32_t *sums = (int32_t *)ctx->buf;
    int32_t oy, ox, ky, kx, c;
    if (input_dims->n < 1 || sums == NULL || ctx->size < channels * (int32_t)sizeof(int32_t)) {
        return ARM_CMSIS_NN_ARG_ERROR;
    }
    for (oy = 0; oy < output_dims->h; ++oy) {
        for (ox = 0; ox < output_dims->w; ++ox) {
            const int32_t y0 = oy * pool_params->stride.h - pool_params->padding.h;
            const int32_t x0 = ox * pool_params->stride.w - pool_params->padding.w;
            int32_t count = 0;
            for (c = 0; c < channels; ++c) {
                sums[c] = 0;
            }
            for (ky = 0; ky < filter_dims->h; ++ky) {
                for (kx = 0; kx < filter_dims->w; ++kx) {
                    const int32_t iy = y0 + ky, ix = x0 + kx;
                    if (iy < 0 || iy >= input_dims->h || ix < 0 || ix >= input_dims->w) {
                        continue;
                    }
                    for (c = 0; c < channels; ++c) {
                        sums[c] += input_data[((size_t)iy * (size_t)input_dims->w + (size_t)ix)
                                              * (size_t)channels + (size_t)c];
                    }
                    ++count;
                }
            }
            if (count == 0) {
                return ARM_CMSIS_NN_ARG_ERROR;
            }
            for (c = 0; c < channels; ++c) {
                /* round half away from zero */
                const int32_t mean = sums[c] > 0 ? (sums[c] + count / 2) / count
                                                 : (sums[c] - count / 2) / count;
                *output_data++ = (int8_t)standin_clamp(mean, pool_params->activation.min,
                                                       pool_params->activation.max);
            }
        }
    }
    return ARM_CMSIS_NN_SUCCESS;
}
