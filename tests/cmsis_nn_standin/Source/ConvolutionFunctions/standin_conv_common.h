/* mbgen test stand-in for CMSIS-NN: the convolution loops shared by the conv entry points. */
#ifndef STANDIN_CONV_COMMON_H
#define STANDIN_CONV_COMMON_H

#include <stddef.h>

#include "arm_nnfunctions.h"
#include "standin_arith.h"

/* One output pixel's input window as int16 (x + input_offset, 0 in the padding), laid out
   [ky][kx][c] like a filter row: the im2col column CMSIS-NN builds in ctx->buf. */
static inline void standin_im2col(const cmsis_nn_conv_params *p, const cmsis_nn_dims *in,
                                  const int8_t *input, const cmsis_nn_dims *f, int32_t oy,
                                  int32_t ox, int16_t *column)
{
    int32_t ky, kx, c;
    for (ky = 0; ky < f->h; ++ky) {
        const int32_t iy = oy * p->stride.h - p->padding.h + ky * p->dilation.h;
        for (kx = 0; kx < f->w; ++kx) {
            const int32_t ix = ox * p->stride.w - p->padding.w + kx * p->dilation.w;
            const int inside = iy >= 0 && iy < in->h && ix >= 0 && ix < in->w;
            const int8_t *x = input + ((size_t)iy * (size_t)in->w + (size_t)ix) * (size_t)in->c;
            for (c = 0; c < in->c; ++c) {
                *column++ = inside ? (int16_t)(x[c] + p->input_offset) : 0;
            }
        }
    }
}

/* General convolution through an im2col column in the caller's scratch buffer. */
static inline arm_cmsis_nn_status standin_conv_im2col(
    const cmsis_nn_context *ctx, const cmsis_nn_conv_params *p,
    const cmsis_nn_per_channel_quant_params *q, const cmsis_nn_dims *in, const int8_t *input,
    const cmsis_nn_dims *f, const int8_t *filter, const int32_t *bias,
    const cmsis_nn_dims *out, int8_t *output)
{
    const int32_t column_length = f->h * f->w * in->c;
    int16_t *column = (int16_t *)ctx->buf;
    int32_t oy, ox, oc, i;
    if (column == NULL || ctx->size < column_length * (int32_t)sizeof(int16_t)) {
        return ARM_CMSIS_NN_ARG_ERROR;
    }
    for (oy = 0; oy < out->h; ++oy) {
        for (ox = 0; ox < out->w; ++ox) {
            standin_im2col(p, in, input, f, oy, ox, column);
            for (oc = 0; oc < out->c; ++oc) {
                const int8_t *w = filter + (size_t)oc * (size_t)column_length;
                int32_t acc = bias != NULL ? bias[oc] : 0;
                for (i = 0; i < column_length; ++i) {
                    acc += (int32_t)column[i] * (int32_t)w[i];
                }
                *output++ = standin_output(acc, q->multiplier[oc], q->shift[oc],
                                           p->output_offset, &p->activation);
            }
        }
    }
    return ARM_CMSIS_NN_SUCCESS;
}

/* 1x1 convolution without padding: every output pixel reads one input pixel. */
static inline arm_cmsis_nn_status standin_conv_1x1(
    const cmsis_nn_conv_params *p, const cmsis_nn_per_channel_quant_params *q,
    const cmsis_nn_dims *in, const int8_t *input, const int8_t *filter, const int32_t *bias,
    const cmsis_nn_dims *out, int8_t *output)
{
    int32_t oy, ox, oc, c;
    for (oy = 0; oy < out->h; ++oy) {
        for (ox = 0; ox < out->w; ++ox) {
            const int8_t *x = input
                + ((size_t)(oy * p->stride.h) * (size_t)in->w + (size_t)(ox * p->stride.w))
                      * (size_t)in->c;
            for (oc = 0; oc < out->c; ++oc) {
                const int8_t *w = filter + (size_t)oc * (size_t)in->c;
                int32_t acc = bias != NULL ? bias[oc] : 0;
                for (c = 0; c < in->c; ++c) {
                    acc += ((int32_t)x[c] + p->input_offset) * (int32_t)w[c];
                }
                *output++ = standin_output(acc, q->multiplier[oc], q->shift[oc],
                                           p->output_offset, &p->activation);
            }
        }
    }
    return ARM_CMSIS_NN_SUCCESS;
}

/* Depthwise convolution: output channel ic * ch_mult + m reads input channel ic. */
static inline arm_cmsis_nn_status standin_depthwise(
    const cmsis_nn_dw_conv_params *p, const cmsis_nn_per_channel_quant_params *q,
    const cmsis_nn_dims *in, const int8_t *input, const cmsis_nn_dims *f,
    const int8_t *filter, const int32_t *bias, const cmsis_nn_dims *out, int8_t *output)
{
    int32_t oy, ox, oc, ky, kx;
    if (in->c * p->ch_mult != out->c || f->c != out->c) {
        return ARM_CMSIS_NN_ARG_ERROR;
    }
    for (oy = 0; oy < out->h; ++oy) {
        for (ox = 0; ox < out->w; ++ox) {
            for (oc = 0; oc < out->c; ++oc) {
                const int32_t ic = oc / p->ch_mult;
                int32_t acc = bias != NULL ? bias[oc] : 0;
                for (ky = 0; ky < f->h; ++ky) {
                    const int32_t iy = oy * p->stride.h - p->padding.h + ky * p->dilation.h;
                    if (iy < 0 || iy >= in->h) {
                        continue;
                    }
                    for (kx = 0; kx < f->w; ++kx) {
                        const int32_t ix = ox * p->stride.w - p->padding.w + kx * p->dilation.w;
                        if (ix < 0 || ix >= in->w) {
                            continue;
                        }
                        acc += ((int32_t)input[((size_t)iy * (size_t)in->w + (size_t)ix)
                                               * (size_t)in->c + (size_t)ic]
                                + p->input_offset)
                               * (int32_t)filter[((size_t)ky * (size_t)f->w + (size_t)kx)
                                                 * (size_t)out->c + (size_t)oc];
                    }
                }
                *output++ = standin_output(acc, q->multiplier[oc], q->shift[oc],
                                           p->output_offset, &p->activation);
            }
        }
    }
    return ARM_CMSIS_NN_SUCCESS;
}

#endif /* STANDIN_CONV_COMMON_H */
