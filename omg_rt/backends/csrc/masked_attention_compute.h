/* Masked attention (Mask2Former's masked cross-attention) in one pass over the keys.
 *
 * out[b, i, h] = sum_j softmax_j(scale * q[b, i, h] . k[b, j, h] | allowed[b, i, j]) v[b, j, h]
 * with Mask2Former's empty-row rule: a query whose row allows no key attends to every key.
 * Layout (B, L, M, D) for q, k, v and out (the heads of a projection's channels, as they come
 * out of the Linear: no transposes), allowed (B or 1, Q, K) bytes, nonzero = may attend.
 *
 * The portable graph materialises the (B, M, Q, K) scores and runs a bias add, a softmax and two
 * matrix products over them: at T = 5 frames of 736 x 992 that is 550 MB per stride-8 layer,
 * written and read five times. Here one item is (batch, head, up to OMG_MA_QC queries): the
 * keys go by in tiles of OMG_MA_KT, each tile packed once for all the item's queries, the
 * tile's scores of 4 queries at a time stay in registers and L1, and an online softmax (running
 * max, running sum, rescaled accumulator) folds each tile into the output. A tile no query of a
 * 4-row block may attend is skipped (masked attention is mostly blocked).
 *
 * Vectorised with GCC/Clang vector extensions (16 floats; NEON splits them), contraction to FMA
 * allowed in this file's functions only (GCC: push/pop_options; Clang: OMG_MA_CONTRACT at the
 * top of each function body, scoped to it): the sums differ from a matrix product's by float32
 * rounding, and the other kernels of the library keep -ffp-contract=off.
 */
#ifndef OMG_MASKED_ATTENTION_COMPUTE_H
#define OMG_MASKED_ATTENTION_COMPUTE_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__clang__)
#define OMG_MA_CONTRACT _Pragma("clang fp contract(fast)")
#else
#define OMG_MA_CONTRACT
#if defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
#endif
#endif

#define OMG_MA_KT 64     /* keys per tile */
#define OMG_MA_QC 320    /* queries per item, at most (300 learned queries: one chunk) */
#define OMG_MA_RB 4      /* queries per register block */
#define OMG_MA_MAX_D 128 /* head width supported */
#define OMG_MA_ROWS (OMG_MA_QC + OMG_MA_RB) /* a chunk rounded up to whole register blocks */

typedef float omg_vf __attribute__((vector_size(64)));
typedef int32_t omg_vi __attribute__((vector_size(64)));
typedef uint8_t omg_vb __attribute__((vector_size(16)));

typedef struct {
    const float* q;         /* (B, Q, M, D) */
    const float* k;         /* (B, K, M, D) */
    const float* v;         /* (B, K, M, D) */
    const uint8_t* allowed; /* (B or 1, Q, K): one mask for every batch row when 1 */
    const uint8_t* row_any; /* (B or 1, Q): the row allows some key */
    float* out;             /* (B, Q, M, D) */
    int64_t b, nq, nk, m, d;
    int64_t mask_b;  /* the mask's batch: B, or 1 (broadcast) */
    float scale;
} MaskedAttnArgs;

static inline omg_vf omg_ma_splat(float x) {
    omg_vf r = {x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x};
    return r;
}

/* e^x for x <= 0 (larger x are not asked for), relative error ~2e-7; x below ln(FLT_MIN) gives
 * FLT_MIN, never a denormal (blocked keys are zeroed by the mask afterwards, whatever their
 * score). */
static inline omg_vf omg_ma_exp(omg_vf x) {
    OMG_MA_CONTRACT
    const omg_vf lo = omg_ma_splat(-87.33654f), magic = omg_ma_splat(12582912.0f);
    x = (omg_vf)(((omg_vi)x & (omg_vi)(x >= lo)) | ((omg_vi)lo & ~(omg_vi)(x >= lo)));
    omg_vf n = x * 1.44269504f + magic;  /* round to nearest: the magic number's ulp is 1 */
    n = n - magic;
    const omg_vf r = x - n * 0.693145752f - n * 1.42860677e-6f;
    omg_vf p = 1.0f / 720 * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const omg_vi bits = (__builtin_convertvector(n, omg_vi) + 127) << 23;
    return p * (omg_vf)bits;
}

static inline float omg_ma_hmax(omg_vf x) {
    float best = x[0];
    for (int i = 1; i < 16; ++i) best = x[i] > best ? x[i] : best;
    return best;
}

static inline float omg_ma_hsum(omg_vf x) {
    float total = 0.0f;
    for (int i = 0; i < 16; ++i) total += x[i];
    return total;
}

/* s[r][j] = qs[r] . kt[:, j] for 4 rows of packed scaled queries (stride d) and a packed tile */
static inline void omg_ma_scores(const float* qs, const float* kt, int64_t d, float* s) {
    OMG_MA_CONTRACT
    omg_vf a[OMG_MA_RB][4] = {{{0}}};
    for (int64_t c = 0; c < d; ++c) {
        const omg_vf* kr = (const omg_vf*)(kt + c * OMG_MA_KT);
        const omg_vf k0 = kr[0], k1 = kr[1], k2 = kr[2], k3 = kr[3];
        for (int r = 0; r < OMG_MA_RB; ++r) {
            const float x = qs[r * d + c];
            a[r][0] += x * k0;
            a[r][1] += x * k1;
            a[r][2] += x * k2;
            a[r][3] += x * k3;
        }
    }
    for (int r = 0; r < OMG_MA_RB; ++r)
        for (int t = 0; t < 4; ++t) ((omg_vf*)(s + r * OMG_MA_KT))[t] = a[r][t];
}

/* o[r] += sum_j p[r][j] vt[j] for 4 rows, dv vectors of the padded head width, two at a time
 * (6 loads per 8 multiply-adds) */
static inline void omg_ma_accumulate(const float* p, const float* vt, int64_t dv, float* o) {
    OMG_MA_CONTRACT
    const int64_t dp = dv * 16;
    for (int64_t c = 0; c < dv; c += 2) {
        const int64_t c1 = c + 1 < dv ? c + 1 : c;  /* an odd last vector is done twice, kept once */
        omg_vf a[OMG_MA_RB][2];
        for (int r = 0; r < OMG_MA_RB; ++r) {
            a[r][0] = ((omg_vf*)(o + r * dp))[c];
            a[r][1] = ((omg_vf*)(o + r * dp))[c1];
        }
        for (int j = 0; j < OMG_MA_KT; ++j) {
            const omg_vf x0 = ((const omg_vf*)(vt + j * dp))[c];
            const omg_vf x1 = ((const omg_vf*)(vt + j * dp))[c1];
            for (int r = 0; r < OMG_MA_RB; ++r) {
                const float w = p[r * OMG_MA_KT + j];
                a[r][0] += w * x0;
                a[r][1] += w * x1;
            }
        }
        for (int r = 0; r < OMG_MA_RB; ++r) {
            ((omg_vf*)(o + r * dp))[c1] = a[r][1];
            ((omg_vf*)(o + r * dp))[c] = a[r][0];
        }
    }
}

/* One row's tile: mask its scores, fold them into the running max / sum, leave its weights in p
 * (zeros where blocked) and rescale its accumulator. */
static inline void omg_ma_softmax_row(const float* s, const uint8_t* allowed, float* p, float* m,
                                      float* l, float* o, int64_t dp) {
    OMG_MA_CONTRACT
    const omg_vf neg_inf = omg_ma_splat(-INFINITY);
    omg_vi keep[4];
    omg_vf best = neg_inf;
    for (int t = 0; t < 4; ++t) {
        omg_vb bytes;
        memcpy(&bytes, allowed + 16 * t, 16);
        keep[t] = __builtin_convertvector(bytes, omg_vi) != 0;
        const omg_vf sv = ((const omg_vf*)s)[t];
        const omg_vf masked = (omg_vf)(((omg_vi)sv & keep[t]) | ((omg_vi)neg_inf & ~keep[t]));
        best = (omg_vf)(((omg_vi)best & (omg_vi)(best >= masked)) |
                        ((omg_vi)masked & ~(omg_vi)(best >= masked)));
    }
    const float tile_max = omg_ma_hmax(best);
    const float m_new = tile_max > *m ? tile_max : *m;
    const float correction = expf(*m - m_new);  /* 0 for the first tile (m = -inf) */
    const omg_vf shift = omg_ma_splat(m_new);
    omg_vf total = omg_ma_splat(0.0f);
    for (int t = 0; t < 4; ++t) {
        const omg_vf e = (omg_vf)((omg_vi)omg_ma_exp(((const omg_vf*)s)[t] - shift) & keep[t]);
        ((omg_vf*)p)[t] = e;
        total += e;
    }
    *l = *l * correction + omg_ma_hsum(total);
    if (correction != 1.0f)
        for (int64_t c = 0; c < dp; ++c) o[c] *= correction;
    *m = m_new;
}

/* Queries per item: the fewest chunks of at most OMG_MA_QC, as even as a multiple of
 * OMG_MA_RB allows (the decoder's 300 queries: one): a key tile is packed once per chunk. */
static inline int64_t masked_attention_chunks(int64_t nq) {
    return nq > 0 ? (nq + OMG_MA_QC - 1) / OMG_MA_QC : 1;
}
static inline int64_t masked_attention_chunk(int64_t nq) {
    const int64_t chunks = masked_attention_chunks(nq), even = (nq + chunks - 1) / chunks;
    return (even + OMG_MA_RB - 1) / OMG_MA_RB * OMG_MA_RB;
}

/* items [begin, end) of (batch, head, chunk of queries) */
static void masked_attention_items(const MaskedAttnArgs* a, int64_t begin, int64_t end) {
    OMG_MA_CONTRACT
    const int64_t d = a->d, dv = (d + 15) / 16, dp = dv * 16;
    const int64_t chunks = masked_attention_chunks(a->nq), qc = masked_attention_chunk(a->nq);
    /* packed scaled queries, keys (D x KT), values (KT x DP), scores, weights, accumulators */
    const size_t floats = OMG_MA_ROWS * d + d * OMG_MA_KT + OMG_MA_KT * dp +
                          2 * OMG_MA_RB * OMG_MA_KT + OMG_MA_ROWS * dp + 2 * OMG_MA_ROWS;
    float* work = (float*)aligned_alloc(64, ((floats * sizeof(float) + 63) / 64) * 64 + 64 * 4);
    if (!work) {  /* out of memory: these items' outputs are NaN, never stale */
        for (int64_t item = begin; item < end; ++item) {
            const int64_t bh = item / chunks, q0 = (item % chunks) * qc;
            const int64_t b = bh / a->m, h = bh % a->m;
            for (int64_t i = q0; i < a->nq && i < q0 + qc; ++i)
                for (int64_t c = 0; c < d; ++c) a->out[((b * a->nq + i) * a->m + h) * d + c] = NAN;
        }
        return;
    }
    float* kt = work;                      /* 64-byte aligned blocks first */
    float* vt = kt + d * OMG_MA_KT;
    float* s = vt + OMG_MA_KT * dp;
    float* p = s + OMG_MA_RB * OMG_MA_KT;
    float* o = p + OMG_MA_RB * OMG_MA_KT;
    float* qs = o + OMG_MA_ROWS * dp;
    float* m = qs + OMG_MA_ROWS * d;
    float* l = m + OMG_MA_ROWS;
    uint8_t masks[OMG_MA_ROWS][OMG_MA_KT];
    int need[OMG_MA_ROWS];
    for (int64_t item = begin; item < end; ++item) {
        const int64_t bh = item / chunks, chunk = item % chunks;
        const int64_t b = bh / a->m, h = bh % a->m;
        const int64_t q0 = chunk * qc;
        const int64_t rows = a->nq - q0 < qc ? a->nq - q0 : qc;
        const int64_t blocks = (rows + OMG_MA_RB - 1) / OMG_MA_RB;
        memset(qs, 0, sizeof(float) * OMG_MA_ROWS * d);
        for (int64_t i = 0; i < rows; ++i) {
            const float* src = a->q + ((b * a->nq + q0 + i) * a->m + h) * d;
            for (int64_t c = 0; c < d; ++c) qs[i * d + c] = src[c] * a->scale;
        }
        memset(o, 0, sizeof(float) * OMG_MA_ROWS * dp);
        for (int64_t i = 0; i < OMG_MA_ROWS; ++i) { m[i] = -INFINITY; l[i] = 0.0f; }
        for (int64_t j0 = 0; j0 < a->nk; j0 += OMG_MA_KT) {
            const int64_t kt_n = a->nk - j0 < OMG_MA_KT ? a->nk - j0 : OMG_MA_KT;
            int any_row = 0;
            for (int64_t i = 0; i < blocks * OMG_MA_RB; ++i) {
                uint64_t words[OMG_MA_KT / 8] = {0};
                memset(masks[i], 0, OMG_MA_KT);
                if (i < rows) {
                    const int64_t qi = (a->mask_b == 1 ? 0 : b) * a->nq + q0 + i;
                    if (a->row_any[qi]) memcpy(masks[i], a->allowed + qi * a->nk + j0, kt_n);
                    else memset(masks[i], 1, kt_n);  /* the empty-row rule */
                }
                memcpy(words, masks[i], OMG_MA_KT);
                uint64_t seen = 0;
                for (int w = 0; w < OMG_MA_KT / 8; ++w) seen |= words[w];
                need[i] = seen != 0;
                any_row |= need[i];
            }
            if (!any_row) continue;
            for (int64_t c = 0; c < d; ++c)
                for (int64_t j = 0; j < OMG_MA_KT; ++j)
                    kt[c * OMG_MA_KT + j] =
                        j < kt_n ? a->k[((b * a->nk + j0 + j) * a->m + h) * d + c] : 0.0f;
            for (int64_t j = 0; j < OMG_MA_KT; ++j) {
                float* dst = vt + j * dp;
                if (j < kt_n) memcpy(dst, a->v + ((b * a->nk + j0 + j) * a->m + h) * d,
                                     sizeof(float) * d);
                else memset(dst, 0, sizeof(float) * d);
                for (int64_t c = d; c < dp; ++c) dst[c] = 0.0f;
            }
            for (int64_t blk = 0; blk < blocks; ++blk) {
                const int64_t r0 = blk * OMG_MA_RB;
                int block_needed = 0;
                for (int r = 0; r < OMG_MA_RB; ++r) block_needed |= need[r0 + r];
                if (!block_needed) continue;
                omg_ma_scores(qs + r0 * d, kt, d, s);
                for (int r = 0; r < OMG_MA_RB; ++r) {
                    if (need[r0 + r])
                        omg_ma_softmax_row(s + r * OMG_MA_KT, masks[r0 + r], p + r * OMG_MA_KT,
                                           m + r0 + r, l + r0 + r, o + (r0 + r) * dp, dp);
                    else
                        memset(p + r * OMG_MA_KT, 0, sizeof(float) * OMG_MA_KT);
                }
                omg_ma_accumulate(p, vt, dv, o + r0 * dp);
            }
        }
        for (int64_t i = 0; i < rows; ++i) {
            float* dst = a->out + ((b * a->nq + q0 + i) * a->m + h) * d;
            const float inv = 1.0f / l[i];
            for (int64_t c = 0; c < d; ++c) dst[c] = o[i * dp + c] * inv;
        }
    }
    free(work);
}

/* row_any[b * Q + i] = the row allows some key, for rows [begin, end) */
static void masked_attention_row_any(const uint8_t* allowed, int64_t k, uint8_t* row_any,
                                     int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
        const uint8_t* bytes = allowed + r * k;
        uint8_t seen = 0;
        for (int64_t j = 0; j < k; ++j) seen |= bytes[j];
        row_any[r] = seen != 0;
    }
}

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

#endif
