/* Layer normalisation of a quantized input, quantized again: the computation of the ONNX chain
 *   DequantizeLinear -> LayerNormalization (last axis) -> QuantizeLinear
 * that the INT8 ConvNeXt block puts between its depthwise convolution and its first MLP product
 * (ONNX Runtime dequantizes to float32, normalises into another float32 tensor and quantizes
 * that: three passes over four-byte values for one over bytes).
 *
 * x (rows, C) uint8 with per-tensor x_scale (> 0) and x_zero_point, gamma and beta (C,) float32,
 * epsilon, per-tensor y_scale (> 0) and y_zero_point -> out (rows, C) uint8 =
 * saturate(round_half_even(((v - mean) / sqrt(var + epsilon) * gamma + beta) / y_scale) + y_zp)
 * with v = (x - x_zp) * x_scale and the row's mean and (biased) variance, every element written.
 * The row's sums are taken over the integers, exactly; mean and variance in double; gamma and
 * beta come divided by y_scale (one product per element instead of a division): the result is
 * the exact chain's to float32 rounding, which moves a quantized value only where the exact
 * value / y_scale lies that close to a rounding boundary (by one step).
 */
#ifndef OMG_LAYERNORM_QUANTIZE_COMPUTE_H
#define OMG_LAYERNORM_QUANTIZE_COMPUTE_H

#include <math.h>
#include <stdint.h>

typedef struct {
    const uint8_t* x;
    const float* gamma;  /* gamma / y_scale */
    const float* beta;   /* beta / y_scale */
    uint8_t* out;
    int64_t rows, cols;
    float x_scale, epsilon, y_zero_point;  /* x's zero point cancels in v - mean */
} LayerNormQuantizeArgs;

/* Column blocks whose uint32 sums of x and x^2 cannot overflow (65536 * 255^2 < 2^32). */
#define OMG_LNQ_BLOCK 65536

static inline void layernorm_quantize_rows(const LayerNormQuantizeArgs* args, int64_t begin,
                                           int64_t end) {
    const int64_t cols = args->cols;
    const float* gamma = args->gamma;
    const float* beta = args->beta;
    const float y_zero_point = args->y_zero_point;
    for (int64_t r = begin; r < end; ++r) {
        const uint8_t* x = args->x + r * cols;
        uint8_t* out = args->out + r * cols;
        uint64_t sum = 0, squares = 0;  /* exact */
        for (int64_t start = 0; start < cols; start += OMG_LNQ_BLOCK) {
            const int64_t stop = start + OMG_LNQ_BLOCK < cols ? start + OMG_LNQ_BLOCK : cols;
            uint32_t block_sum = 0, block_squares = 0;
            for (int64_t c = start; c < stop; ++c) {
                const uint32_t v = x[c];
                block_sum += v;
                block_squares += v * v;
            }
            sum += block_sum;
            squares += block_squares;
        }
        /* in units of x_scale: v = (x - x_zp) * x_scale, so mean_v and var_v follow from the
         * integer moments */
        const double mean_q = (double)sum / (double)cols;
        double var_q = (double)squares / (double)cols - mean_q * mean_q;
        var_q = var_q > 0.0 ? var_q : 0.0;
        const double scale = (double)args->x_scale;
        const double inv_std = 1.0 / sqrt(var_q * scale * scale + (double)args->epsilon);
        /* (v - mean_v) * inv_std = x * a + b */
        const float a = (float)(scale * inv_std);
        const float b = (float)(-mean_q * scale * inv_std);
        for (int64_t c = 0; c < cols; ++c) {
            const float normal = fmaf((float)x[c], a, b);
            float q = rintf(fmaf(normal, gamma[c], beta[c])) + y_zero_point;
            q = q < 0.0f ? 0.0f : q;
            q = q > 255.0f ? 255.0f : q;
            out[c] = (uint8_t)(int32_t)q;
        }
    }
}

#endif
