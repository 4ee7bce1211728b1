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
 * keys go by in tiles of OMG_MA_KT, each tile packed once for all the item's queries, and an
 * online softmax (running max, per-lane running sums, rescaled accumulator) folds each tile into
 * the output. A tile is worked on only for the queries that may attend some key of it: those
 * rows are gathered into register blocks of 4 (masked attention is mostly blocked, and a mask's
 * region is where its query's object is, so neighbouring queries rarely share tiles: blocks of
 * 4 consecutive rows did 2.4x the needed work on the benchmark's 10 % masks), whose scores stay
 * in registers and L1.
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
#define OMG_MA_ROWS (OMG_MA_QC + OMG_MA_RB) /* a chunk, and the last row for padding blocks */

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

/* e^x for x <= 0 (larger x are not asked for), relative error ~2e-7; 0 below ln(FLT_MIN) (a
 * blocked key's -inf score included), never a denormal. */
static inline omg_vf omg_ma_exp(omg_vf x) {
    OMG_MA_CONTRACT
    const omg_vf lo = omg_ma_splat(-87.33654f), magic = omg_ma_splat(12582912.0f);
    const omg_vi in_range = (omg_vi)(x >= lo);
    x = (omg_vf)(((omg_vi)x & in_range) | ((omg_vi)lo & ~in_range));
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
    return (omg_vf)((omg_vi)(p * (omg_vf)bits) & in_range);
}

/* x with its lanes moved down by `by` (the upper ones wrapping round): a tree reduction's step */
#if defined(__clang__)
#define OMG_MA_ROTATE(x, by) __builtin_shufflevector(x, x, (by) % 16, (1 + (by)) % 16, \
    (2 + (by)) % 16, (3 + (by)) % 16, (4 + (by)) % 16, (5 + (by)) % 16, (6 + (by)) % 16, \
    (7 + (by)) % 16, (8 + (by)) % 16, (9 + (by)) % 16, (10 + (by)) % 16, (11 + (by)) % 16, \
    (12 + (by)) % 16, (13 + (by)) % 16, (14 + (by)) % 16, (15 + (by)) % 16)
#else
#define OMG_MA_ROTATE(x, by) __builtin_shuffle(x, (omg_vi){(by) % 16, (1 + (by)) % 16, \
    (2 + (by)) % 16, (3 + (by)) % 16, (4 + (by)) % 16, (5 + (by)) % 16, (6 + (by)) % 16, \
    (7 + (by)) % 16, (8 + (by)) % 16, (9 + (by)) % 16, (10 + (by)) % 16, (11 + (by)) % 16, \
    (12 + (by)) % 16, (13 + (by)) % 16, (14 + (by)) % 16, (15 + (by)) % 16})
#endif

static inline omg_vf omg_ma_max(omg_vf a, omg_vf b) {
    return (omg_vf)(((omg_vi)a & (omg_vi)(a >= b)) | ((omg_vi)b & ~(omg_vi)(a >= b)));
}

static inline float omg_ma_hsum(omg_vf x) {
    float total = 0.0f;
    for (int i = 0; i < 16; ++i) total += x[i];
    return total;
}

/* s[r][j] = q[r] . kt[:, j] for 4 rows of packed scaled queries and a packed tile */
static inline void omg_ma_scores(const float* const q[OMG_MA_RB], const float* kt, int64_t d,
                                 float* s) {
    OMG_MA_CONTRACT
    omg_vf a[OMG_MA_RB][4] = {{{0}}};
    for (int64_t c = 0; c < d; ++c) {
        const omg_vf* kr = (const omg_vf*)(kt + c * OMG_MA_KT);
        const omg_vf k0 = kr[0], k1 = kr[1], k2 = kr[2], k3 = kr[3];
        for (int r = 0; r < OMG_MA_RB; ++r) {
            const float x = q[r][c];
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
static inline void omg_ma_accumulate(const float* p, const float* vt, int64_t dv,
                                     float* const o[OMG_MA_RB]) {
    OMG_MA_CONTRACT
    const int64_t dp = dv * 16;
    for (int64_t c = 0; c < dv; c += 2) {
        const int64_t c1 = c + 1 < dv ? c + 1 : c;  /* an odd last vector is done twice, kept once */
        omg_vf a[OMG_MA_RB][2];
        for (int r = 0; r < OMG_MA_RB; ++r) {
            a[r][0] = ((omg_vf*)o[r])[c];
            a[r][1] = ((omg_vf*)o[r])[c1];
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
        for (int r = 0; r < OMG_MA_RB; ++r) {  /* a repeated (padding) row: its last store wins */
            ((omg_vf*)o[r])[c1] = a[r][1];
            ((omg_vf*)o[r])[c] = a[r][0];
        }
    }
}

/* The tile of a register block's 4 rows (indices row[r]): mask the scores (blocked keys -inf),
 * fold them into each row's running max and per-lane running sum, leave the weights in p and
 * rescale the rows' accumulators. The rows go through each step together (independent chains
 * for the out-of-order core), the max by a tree over the lanes, the sum kept per lane until
 * the item ends. */
static inline void omg_ma_softmax_block(float* s, uint8_t (*masks)[OMG_MA_KT],
                                        const int64_t row[OMG_MA_RB], float* p, float* m,
                                        omg_vf* lsum, float* const o[OMG_MA_RB], int64_t dp) {
    OMG_MA_CONTRACT
    const omg_vf neg_inf = omg_ma_splat(-INFINITY);
    omg_vf best[OMG_MA_RB];
    for (int r = 0; r < OMG_MA_RB; ++r) {
        best[r] = neg_inf;
        for (int t = 0; t < 4; ++t) {
            omg_vb bytes;
            memcpy(&bytes, masks[row[r]] + 16 * t, 16);
            const omg_vi keep = __builtin_convertvector(bytes, omg_vi) != 0;
            omg_vf* sv = (omg_vf*)(s + r * OMG_MA_KT) + t;
            *sv = (omg_vf)(((omg_vi)*sv & keep) | ((omg_vi)neg_inf & ~keep));
            best[r] = omg_ma_max(best[r], *sv);
        }
    }
    for (int r = 0; r < OMG_MA_RB; ++r) best[r] = omg_ma_max(best[r], OMG_MA_ROTATE(best[r], 8));
    for (int r = 0; r < OMG_MA_RB; ++r) best[r] = omg_ma_max(best[r], OMG_MA_ROTATE(best[r], 4));
    for (int r = 0; r < OMG_MA_RB; ++r) best[r] = omg_ma_max(best[r], OMG_MA_ROTATE(best[r], 2));
    for (int r = 0; r < OMG_MA_RB; ++r) best[r] = omg_ma_max(best[r], OMG_MA_ROTATE(best[r], 1));
    for (int r = 0; r < OMG_MA_RB; ++r) {
        const int64_t i = row[r];
        const float m_new = best[r][0] > m[i] ? best[r][0] : m[i];
        if (m_new == -INFINITY) {  /* a padding row (all blocked): weights 0, its state kept */
            memset(p + r * OMG_MA_KT, 0, sizeof(float) * OMG_MA_KT);
            continue;
        }
        const float correction = expf(m[i] - m_new);  /* 0 for a row's first tile (m = -inf) */
        const omg_vf shift = omg_ma_splat(m_new);
        omg_vf total = omg_ma_splat(0.0f);
        for (int t = 0; t < 4; ++t) {
            const omg_vf e = omg_ma_exp(((const omg_vf*)(s + r * OMG_MA_KT))[t] - shift);
            ((omg_vf*)(p + r * OMG_MA_KT))[t] = e;
            total += e;
        }
        lsum[i] = lsum[i] * correction + total;
        if (correction != 1.0f)
            for (int64_t c = 0; c < dp; ++c) o[r][c] *= correction;
        m[i] = m_new;
    }
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
    const int64_t pad = OMG_MA_ROWS - 1;  /* beyond any chunk: the padding row of a last block */
    /* keys (D x KT), values (KT x DP), scores, weights, accumulators, per-lane sums (64-byte
     * aligned blocks first), packed scaled queries, running maxima */
    const size_t floats = d * OMG_MA_KT + OMG_MA_KT * dp + 2 * OMG_MA_RB * OMG_MA_KT +
                          OMG_MA_ROWS * dp + 16 * OMG_MA_ROWS + OMG_MA_ROWS * d + OMG_MA_ROWS;
    float* work = (float*)aligned_alloc(64, ((floats * sizeof(float) + 63) / 64) * 64);
    if (!work) {  /* out of memory: these items' outputs are NaN, never stale */
        for (int64_t item = begin; item < end; ++item) {
            const int64_t bh = item / chunks, q0 = (item % chunks) * qc;
            const int64_t b = bh / a->m, h = bh % a->m;
            for (int64_t i = q0; i < a->nq && i < q0 + qc; ++i)
                for (int64_t c = 0; c < d; ++c) a->out[((b * a->nq + i) * a->m + h) * d + c] = NAN;
        }
        return;
    }
    float* kt = work;
    float* vt = kt + d * OMG_MA_KT;
    float* s = vt + OMG_MA_KT * dp;
    float* p = s + OMG_MA_RB * OMG_MA_KT;
    float* o = p + OMG_MA_RB * OMG_MA_KT;
    omg_vf* lsum = (omg_vf*)(o + OMG_MA_ROWS * dp);
    float* qs = (float*)(lsum + OMG_MA_ROWS);
    float* m = qs + OMG_MA_ROWS * d;
    uint8_t masks[OMG_MA_ROWS][OMG_MA_KT];
    int64_t sel[OMG_MA_ROWS];  /* the rows a tile is worked on for, padded to whole blocks */
    memset(masks[pad], 0, OMG_MA_KT);
    for (int64_t item = begin; item < end; ++item) {
        const int64_t bh = item / chunks, chunk = item % chunks;
        const int64_t b = bh / a->m, h = bh % a->m;
        const int64_t q0 = chunk * qc;
        const int64_t rows = a->nq - q0 < qc ? a->nq - q0 : qc;
        memset(qs, 0, sizeof(float) * OMG_MA_ROWS * d);
        for (int64_t i = 0; i < rows; ++i) {
            const float* src = a->q + ((b * a->nq + q0 + i) * a->m + h) * d;
            for (int64_t c = 0; c < d; ++c) qs[i * d + c] = src[c] * a->scale;
        }
        memset(o, 0, sizeof(float) * OMG_MA_ROWS * dp);
        for (int64_t i = 0; i < OMG_MA_ROWS; ++i) {
            m[i] = -INFINITY;
            lsum[i] = omg_ma_splat(0.0f);
        }
        for (int64_t j0 = 0; j0 < a->nk; j0 += OMG_MA_KT) {
            const int64_t kt_n = a->nk - j0 < OMG_MA_KT ? a->nk - j0 : OMG_MA_KT;
            int64_t selected = 0;
            for (int64_t i = 0; i < rows; ++i) {
                const int64_t qi = (a->mask_b == 1 ? 0 : b) * a->nq + q0 + i;
                uint64_t words[OMG_MA_KT / 8] = {0};
                memset(masks[i], 0, OMG_MA_KT);
                if (a->row_any[qi]) memcpy(masks[i], a->allowed + qi * a->nk + j0, kt_n);
                else memset(masks[i], 1, kt_n);  /* the empty-row rule */
                memcpy(words, masks[i], OMG_MA_KT);
                uint64_t seen = 0;
                for (int w = 0; w < OMG_MA_KT / 8; ++w) seen |= words[w];
                if (seen) sel[selected++] = i;
            }
            if (!selected) continue;
            while (selected % OMG_MA_RB) sel[selected++] = pad;
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
            for (int64_t r0 = 0; r0 < selected; r0 += OMG_MA_RB) {
                const int64_t* row = sel + r0;
                const float* q[OMG_MA_RB];
                float* acc[OMG_MA_RB];
                for (int r = 0; r < OMG_MA_RB; ++r) {
                    q[r] = qs + row[r] * d;
                    acc[r] = o + row[r] * dp;
                }
                omg_ma_scores(q, kt, d, s);
                omg_ma_softmax_block(s, masks, row, p, m, lsum, acc, dp);
                omg_ma_accumulate(p, vt, dv, acc);
            }
        }
        for (int64_t i = 0; i < rows; ++i) {
            float* dst = a->out + ((b * a->nq + q0 + i) * a->m + h) * d;
            const float inv = 1.0f / omg_ma_hsum(lsum[i]);
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
