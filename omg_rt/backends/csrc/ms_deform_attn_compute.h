/* Multi-scale deformable attention on the CPU: the computation of
 * kernels.reference.ms_deform_attn_reference (grid_sample form, bilinear, zero padding,
 * align_corners=False), one (batch, query) pair at a time, the channels of a head contiguous.
 *
 * value (N, S, M, D) float32, spatial_shapes (L, 2) int32 (H_l, W_l), level_start_index (L,) int32,
 * sampling_locations (N, Lq, M, L, P, 2) float32 normalised (x, y), attention_weights
 * (N, Lq, M, L, P) float32 -> out (N, Lq, M, D) float32 (every element written).
 */
#ifndef OMG_MS_DEFORM_ATTN_COMPUTE_H
#define OMG_MS_DEFORM_ATTN_COMPUTE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#define OMG_MSDA_MAX_D 1024

typedef struct {
    const float* value;
    const int32_t* shapes;
    const int32_t* starts;
    const float* locations;
    const float* weights;
    float* out;
    int64_t n, s, m, d, lq, l, p;
} MsdaArgs;

/* The source coordinate of grid_sample (align_corners=False) for a normalised location:
 * grid = 2 loc - 1, then ((grid + 1) size - 1) / 2, in float32 as PyTorch computes it. */
static inline float msda_source(float location, int64_t size) {
    float grid = 2.0f * location - 1.0f;
    return ((grid + 1.0f) * (float)size - 1.0f) / 2.0f;
}

/* Items [begin, end) of the N * Lq (batch, query) pairs. */
static void msda_items(const MsdaArgs* a, int64_t begin, int64_t end) {
    const int64_t M = a->m, D = a->d, L = a->l, P = a->p, S = a->s, Lq = a->lq;
    float level[OMG_MSDA_MAX_D];
    float zero_row[OMG_MSDA_MAX_D];
    memset(zero_row, 0, sizeof(float) * (size_t)D);
    for (int64_t item = begin; item < end; ++item) {
        const int64_t n = item / Lq;
        for (int64_t m = 0; m < M; ++m) {
            float* out = a->out + (item * M + m) * D;
            memset(out, 0, sizeof(float) * (size_t)D);
            const int64_t head = (item * M + m) * L;  /* (n, q, m) row of L levels */
            for (int64_t l = 0; l < L; ++l) {
                const int64_t h = a->shapes[2 * l], w = a->shapes[2 * l + 1];
                const float* base = a->value + ((n * S + a->starts[l]) * M + m) * D;
                const int64_t row = w * M * D, col = M * D;  /* strides of y and x */
                memset(level, 0, sizeof(float) * (size_t)D);
                for (int64_t p = 0; p < P; ++p) {
                    const int64_t at = (head + l) * P + p;
                    const float weight = a->weights[at];
                    const float x = msda_source(a->locations[2 * at], w);
                    const float y = msda_source(a->locations[2 * at + 1], h);
                    if (!(x > -1.0f && x < (float)w && y > -1.0f && y < (float)h)) {
                        continue;  /* every corner outside (or NaN): zero padding adds nothing */
                    }
                    const float x0f = floorf(x), y0f = floorf(y);
                    const int64_t x0 = (int64_t)x0f, y0 = (int64_t)y0f;
                    const float x1f = x0f + 1.0f, y1f = y0f + 1.0f;
                    /* PyTorch's corner weights: nw, ne, sw, se */
                    float wnw = (x1f - x) * (y1f - y), wne = (x - x0f) * (y1f - y);
                    float wsw = (x1f - x) * (y - y0f), wse = (x - x0f) * (y - y0f);
                    const int in_x0 = x0 >= 0, in_x1 = x0 + 1 < w;
                    const int in_y0 = y0 >= 0, in_y1 = y0 + 1 < h;
                    const float* vnw = (in_y0 && in_x0) ? base + y0 * row + x0 * col : zero_row;
                    const float* vne = (in_y0 && in_x1) ? base + y0 * row + (x0 + 1) * col : zero_row;
                    const float* vsw = (in_y1 && in_x0) ? base + (y0 + 1) * row + x0 * col : zero_row;
                    const float* vse = (in_y1 && in_x1) ? base + (y0 + 1) * row + (x0 + 1) * col
                                                        : zero_row;
                    for (int64_t c = 0; c < D; ++c) {
                        float sample = vnw[c] * wnw + vne[c] * wne + vsw[c] * wsw + vse[c] * wse;
                        level[c] += sample * weight;
                    }
                }
                for (int64_t c = 0; c < D; ++c) {
                    out[c] += level[c];
                }
            }
        }
    }
}

#endif
