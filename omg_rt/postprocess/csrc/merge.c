/* omg-rt's host post-processing of mask logits on the CPU, from the stride-4 logits a band of
 * output rows at a time, without ever holding the (Q, H, W) logits at the image size:
 * - omg_upsample: the logits at the image size themselves;
 * - omg_instance_masks: binary masks (logit > 0), their sigmoid sums, areas and boxes;
 * - omg_panoptic_merge: per output pixel, the kept query with the largest
 *   score * sigmoid(mask logit), whether that sigmoid is >= 0.5, and per query its
 *   sigmoid >= 0.5 area;
 * - omg_id_masks: the segments of a finished id map (panoptic, semantic, VOS) as binary masks
 *   with their boxes, in one pass over the map.
 *
 * The logits at the image size are the official two bilinear resizes (align_corners=False):
 * stride 4 -> the padded input, cropped to the resized image, -> the original image. Each resize
 * is separable with PyTorch's CPU arithmetic, which is bit for bit (checked against
 * F.interpolate by tests/omg_rt/test_postprocess_native.py)
 *     along W: w = fmaf(x[i0], l0, x[i1] * l1)      then along H: y = fmaf(w[r0], m0, w[r1] * m1)
 * with the taps of omg_rt.postprocess.masks.linear_taps. Built with -ffp-contract=off, so that
 * no other product is fused.
 *
 * The merge visits the queries in descending score order. A query cannot beat the current
 * winner where its score is below the winner's value (its value is at most its score; a NaN
 * logit excepted), nor where its logit is below the winner's (its score and its sigmoid are
 * both no larger, and float32 rounding is monotone), and it cannot tie it there either -- a
 * tie needs scores within ~2**-23 of each other (such a query is flagged "near" and evaluated
 * everywhere) or values so small that float32 loses its relative precision (below OMG_TINY the
 * pixel evaluates every query). PyTorch's resize is on every mask of a real image (output
 * H + W > 128); smaller outputs take another PyTorch kernel, within float32 rounding of this.
 * Only the other pixels pay for the sigmoid, 1 / (1 + expf(-x)) as scipy's float32 expit.
 * Ties go to the lower slot (the kept query that comes first), a NaN value wins its pixel (the
 * first NaN), as numpy's argmax.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define OMG_TINY 1e-30f
#define OMG_BAND 16 /* output rows merged at once: the per-pixel state stays in cache */

typedef struct {
    const int32_t *i0, *i1; /* (n,) source indices of each output (int32: faster gathers) */
    const float *l0, *l1;   /* (n,) their weights */
    int64_t n;              /* outputs along this axis */
} omg_taps;

typedef struct {
    int64_t h4, w4;     /* stride-4 logits */
    omg_taps rows1;     /* stride 4 -> padded rows, cut to the resized image's hr rows */
    omg_taps cols1;     /* ... and its wr columns */
    omg_taps rows2;     /* resized -> original rows (h outputs) */
    omg_taps cols2;     /* ... and columns (w outputs) */
    int32_t copy;       /* the resized image is the original: no second resize */
} omg_resize;

static void resize_along_w(const float *x, const omg_taps *t, float *out) {
    for (int64_t d = 0; d < t->n; ++d)
        out[d] = fmaf(x[t->i0[d]], t->l0[d], x[t->i1[d]] * t->l1[d]);
}

static void blend_rows(const float *a, const float *b, float wa, float wb, int64_t n, float *out) {
    for (int64_t d = 0; d < n; ++d) out[d] = fmaf(a[d], wa, b[d] * wb);
}

static int64_t min_index(const omg_taps *t, int64_t a, int64_t b) {
    int64_t m = t->i0[a];
    for (int64_t d = a; d < b; ++d) m = t->i0[d] < m ? t->i0[d] : m;
    return m;
}

static int64_t max_index(const omg_taps *t, int64_t a, int64_t b) {
    int64_t m = t->i1[a];
    for (int64_t d = a; d < b; ++d) m = t->i1[d] > m ? t->i1[d] : m;
    return m;
}

/* The crop and stride-4 rows output rows [y, end) read. */
static void reads(const omg_resize *r, int64_t y, int64_t end, int64_t *c0, int64_t *c1,
                  int64_t *a0, int64_t *a1) {
    *c0 = y;
    *c1 = end - 1;
    if (!r->copy) {
        *c0 = min_index(&r->rows2, y, end);
        *c1 = max_index(&r->rows2, y, end);
    }
    *a0 = min_index(&r->rows1, *c0, *c1 + 1);
    *a1 = max_index(&r->rows1, *c0, *c1 + 1);
}

/* Scratch of one band: the W-resized stride-4 rows, the padded (cropped) rows, the W-resized
 * cropped rows, and the band's logits. */
typedef struct {
    float *stage1_w, *cropped, *stage2_w, *logits;
} omg_scratch;

/* Rows [top, stop) of one query's logits at the original size into s->logits ((stop - top) x w).
 * Rows [c0, c1] of the crop and [a0, a1] of the stride-4 map are the ones they read. */
static const float *band_logits(const float *q, const omg_resize *r, int64_t top, int64_t stop,
                                int64_t c0, int64_t c1, int64_t a0, int64_t a1,
                                omg_scratch *s) {
    const int64_t wr = r->cols1.n, w = r->cols2.n;
    for (int64_t a = a0; a <= a1; ++a)
        resize_along_w(q + a * r->w4, &r->cols1, s->stage1_w + (a - a0) * wr);
    for (int64_t c = c0; c <= c1; ++c)
        blend_rows(s->stage1_w + (r->rows1.i0[c] - a0) * wr,
                   s->stage1_w + (r->rows1.i1[c] - a0) * wr, r->rows1.l0[c], r->rows1.l1[c], wr,
                   s->cropped + (c - c0) * wr);
    if (r->copy) return s->cropped + (top - c0) * wr;
    for (int64_t c = c0; c <= c1; ++c)
        resize_along_w(s->cropped + (c - c0) * wr, &r->cols2, s->stage2_w + (c - c0) * w);
    for (int64_t y = top; y < stop; ++y)
        blend_rows(s->stage2_w + (r->rows2.i0[y] - c0) * w, s->stage2_w + (r->rows2.i1[y] - c0) * w,
                   r->rows2.l0[y], r->rows2.l1[y], w, s->logits + (y - top) * w);
    return s->logits;
}

/* What to do with each band of output rows [y, end): begin (may be NULL), then query() with
 * each query's logits there ((end - y) x w, in the scratch: valid until the next call), then
 * finish (may be NULL). nonpositive (may be NULL) replaces query() where every stride-4 logit
 * the band reads is <= 0 or NaN: the bilinear weights are >= 0, so every resized logit there is
 * too (a product of a value <= 0 and a weight >= 0 is <= 0, and so is a sum of two, rounded),
 * and the band is not resized at all (most of an instance mask's image, most instances). */
typedef struct {
    void (*begin)(void *ctx, int64_t y, int64_t end);
    void (*query)(void *ctx, int64_t k, int64_t y, int64_t end, const float *x);
    void (*finish)(void *ctx, int64_t y, int64_t end);
    void *ctx;
    void (*nonpositive)(void *ctx, int64_t k, int64_t y, int64_t end);
} omg_visitor;

/* Whether rows [a0, a1] of one query's stride-4 logits hold a value > 0. */
static int any_positive(const float *q, int64_t a0, int64_t a1, int64_t w4) {
    int found = 0;
    for (int64_t i = a0 * w4; i < (a1 + 1) * w4; ++i) found |= q[i] > 0.0f;
    return found;
}

/* Rows [top, stop) of the logits at the original size of the n queries queries[0..n) of the
 * stride-4 logits (Q, h4, w4), OMG_BAND rows at a time, to the visitor (k: the place in
 * queries). Returns 0, or -1 when out of memory. */
static int visit_bands(const float *logits, const int64_t *queries, int64_t n,
                       const omg_resize *r, int64_t top, int64_t stop, const omg_visitor *v) {
    const int64_t wr = r->cols1.n, w = r->cols2.n;
    int64_t crop_rows = OMG_BAND, source_rows = 0; /* the most one band reads */
    for (int64_t y = top; y < stop; y += OMG_BAND) {
        const int64_t end = y + OMG_BAND < stop ? y + OMG_BAND : stop;
        int64_t c0, c1, a0, a1;
        reads(r, y, end, &c0, &c1, &a0, &a1);
        if (c1 - c0 + 1 > crop_rows) crop_rows = c1 - c0 + 1;
        if (a1 - a0 + 1 > source_rows) source_rows = a1 - a0 + 1;
    }
    float *buffer = malloc(sizeof(float) * (size_t)(source_rows * wr + crop_rows * wr
                                                    + crop_rows * w + OMG_BAND * w));
    if (buffer == NULL) return -1;
    omg_scratch s = {buffer, buffer + source_rows * wr, buffer + (source_rows + crop_rows) * wr,
                     buffer + (source_rows + crop_rows) * wr + crop_rows * w};
    for (int64_t y = top; y < stop; y += OMG_BAND) {
        const int64_t end = y + OMG_BAND < stop ? y + OMG_BAND : stop;
        int64_t c0, c1, a0, a1;
        reads(r, y, end, &c0, &c1, &a0, &a1);
        if (v->begin != NULL) v->begin(v->ctx, y, end);
        for (int64_t k = 0; k < n; ++k) {
            const float *q = logits + queries[k] * r->h4 * r->w4;
            if (v->nonpositive != NULL && !any_positive(q, a0, a1, r->w4))
                v->nonpositive(v->ctx, k, y, end);
            else
                v->query(v->ctx, k, y, end, band_logits(q, r, y, end, c0, c1, a0, a1, &s));
        }
        if (v->finish != NULL) v->finish(v->ctx, y, end);
    }
    free(buffer);
    return 0;
}

/* ---- omg_upsample: the resized logits themselves ---- */

typedef struct {
    float *out;
    int64_t top, rows, w;
} omg_copy;

static void copy_query(void *ctx, int64_t k, int64_t y, int64_t end, const float *x) {
    const omg_copy *c = ctx;
    memcpy(c->out + (k * c->rows + (y - c->top)) * c->w, x,
           sizeof(float) * (size_t)((end - y) * c->w));
}

/* logits: (Q, h4, w4) stride-4 logits of all queries; queries: (n,) those to use, in that order
 * (in each entry point below). */

/* Rows [top, stop) of the n queries' logits at the original size: out is (n, stop - top, w).
 * Returns 0, or -1 when out of memory. */
int omg_upsample(const float *logits, const int64_t *queries, int64_t n, const omg_resize *r,
                 int64_t top, int64_t stop, float *out) {
    omg_copy c = {out, top, stop - top, r->cols2.n};
    omg_visitor v = {NULL, copy_query, NULL, &c, NULL};
    return visit_bands(logits, queries, n, r, top, stop, &v);
}

/* ---- omg_instance_masks: binary masks, their sigmoid sums, areas and boxes ---- */

typedef struct {
    uint8_t *masks;
    double *sums;
    int64_t *area, *box; /* box: (n, 4) first row, last row, first column, last column */
    int64_t rows, w;
    float saturated;
} omg_instances;

static void instance_query(void *ctx, int64_t k, int64_t y, int64_t end, const float *x) {
    const omg_instances *c = ctx;
    const int64_t w = c->w, pixels = (end - y) * w;
    const float saturated = c->saturated;
    uint8_t *restrict mask = c->masks + (k * c->rows + y) * w;
    int64_t ones = 0, area = 0;
    double sum = 0.0;
    for (int64_t p = 0; p < pixels; ++p) {
        mask[p] = x[p] > 0.0f;
        ones += x[p] >= saturated;
        area += x[p] > 0.0f;
    }
    c->area[k] += area;
    if (area == 0) return;
    for (int64_t p = 0; p < pixels; ++p)
        if (mask[p] && x[p] < saturated) sum += 1.0f / (1.0f + expf(-x[p]));
    c->sums[k] += sum + (double)ones;
    int64_t *box = c->box + 4 * k;
    for (int64_t row = 0; row < end - y; ++row) {
        const uint8_t *line = mask + row * w;
        int64_t first = 0, last = w - 1;
        while (first < w && !line[first]) ++first;
        if (first == w) continue;
        while (!line[last]) --last;
        if (y + row < box[0]) box[0] = y + row;
        if (y + row > box[1]) box[1] = y + row;
        if (first < box[2]) box[2] = first;
        if (last > box[3]) box[3] = last;
    }
}

/* A band where the query's mask is empty: no pixel, no sum, no box. */
static void instance_empty(void *ctx, int64_t k, int64_t y, int64_t end) {
    const omg_instances *c = ctx;
    memset(c->masks + (k * c->rows + y) * c->w, 0, (size_t)((end - y) * c->w));
}

/* Rows [top, stop) of the n queries' binary masks (logit > 0) into masks, (n, rows, w) with
 * rows the image's height (row top of each query's mask is written from masks + top * w); per
 * query sums[k] += the float64 sum of the sigmoid over its mask's pixels (exact in any order:
 * float32 values in [0.5, 1], fewer than 2**29 of them), area[k] += its pixels, and box[k]
 * (first row, last row, first column, last column; start at (rows, -1, w, -1)) widened to them.
 * The sigmoid is 1 from `saturated` on (the smallest float32 logit whose sigmoid is 1.0f),
 * 1 / (1 + expf(-x)) below. Returns 0, or -1 when out of memory. */
int omg_instance_masks(const float *logits, const int64_t *queries, int64_t n,
                       const omg_resize *r, int64_t top, int64_t stop, int64_t rows,
                       float saturated, uint8_t *masks, double *sums, int64_t *area,
                       int64_t *box) {
    omg_instances c = {masks, sums, area, box, rows, r->cols2.n, saturated};
    omg_visitor v = {NULL, instance_query, NULL, &c, instance_empty};
    return visit_bands(logits, queries, n, r, top, stop, &v);
}

/* ---- omg_panoptic_merge ---- */

/* The merge's inputs and per-pixel state. gate: a logit below it cannot change the pixel's
 * winner (the winner's logit; -inf where every query must be evaluated; NaN once a NaN won);
 * open: the pixels where the current query might win (8 more, zero past the band). */
typedef struct {
    const float *scores;
    const int64_t *slots;
    const uint8_t *near;
    float threshold;
    int64_t top, w;
    int64_t *winner, *above;
    uint8_t *confident, *open;
    float *gate, *best_logit, *best_value;
    int64_t *best_slot;
} omg_merge;

static void consider(const omg_merge *st, int64_t p, float x, float score, int64_t slot) {
    float value = score * (1.0f / (1.0f + expf(-x)));
    float best = st->best_value[p];
    if (isnan(best)) { /* a NaN won: only an earlier NaN takes it */
        if (isnan(value) && slot < st->best_slot[p]) st->best_slot[p] = slot;
        return;
    }
    if (isnan(value) || value > best || (value == best && slot < st->best_slot[p])) {
        st->best_value[p] = value;
        st->best_logit[p] = x;
        st->best_slot[p] = slot;
        best = value;
    }
    st->gate[p] = isnan(best) ? NAN : (best < OMG_TINY ? -INFINITY : st->best_logit[p]);
}

static void merge_begin(void *ctx, int64_t y, int64_t end) {
    omg_merge *st = ctx;
    const int64_t pixels = (end - y) * st->w;
    memset(st->open + pixels, 0, 8);
    for (int64_t p = 0; p < pixels; ++p) {
        st->gate[p] = -INFINITY;
        st->best_logit[p] = -INFINITY;
        st->best_value[p] = -INFINITY;
        st->best_slot[p] = INT64_MAX;
    }
}

static void merge_query(void *ctx, int64_t k, int64_t y, int64_t end, const float *x) {
    omg_merge *st = ctx;
    const int64_t pixels = (end - y) * st->w, slot = st->slots[k];
    const float score = st->scores[k], threshold = st->threshold;
    /* The area count and the open flags in one pass (it vectorises: restrict, as uint8_t
     * stores may alias anything), then the open pixels a word of eight flags at a time. */
    uint8_t *restrict open = st->open;
    const float *restrict gate = st->gate, *restrict best = st->best_value;
    int64_t count = 0;
    for (int64_t p = 0; p < pixels; ++p) {
        count += x[p] >= threshold;
        open[p] = (x[p] != x[p]) | (!(x[p] < gate[p]) & !(score < best[p]));
    }
    st->above[k] += count;
    if (st->near[k]) {
        for (int64_t p = 0; p < pixels; ++p) consider(st, p, x[p], score, slot);
        return;
    }
    for (int64_t p = 0; p < pixels; p += 8) {
        uint64_t word;
        memcpy(&word, open + p, sizeof word);
        if (word == 0) continue;
        for (int64_t j = p; j < p + 8; ++j)
            if (open[j]) consider(st, j, x[j], score, slot);
    }
}

static void merge_finish(void *ctx, int64_t y, int64_t end) {
    const omg_merge *st = ctx;
    const int64_t pixels = (end - y) * st->w, at = (y - st->top) * st->w;
    const float threshold = st->threshold;
    const int64_t *restrict slot = st->best_slot;
    const float *restrict logit = st->best_logit;
    int64_t *restrict winner = st->winner + at;
    uint8_t *restrict confident = st->confident + at;
    for (int64_t p = 0; p < pixels; ++p) {
        winner[p] = slot[p];
        confident[p] = logit[p] >= threshold;
    }
}

/* Rows [top, stop) of the original image.
 *
 * queries: (n,) the kept queries in descending score order; scores: (n,) that order;
 * slots: (n,) each one's slot (its place among the kept queries in query order); near: (n,)
 * nonzero where the score is within 2**-20 of the previous one's; threshold: the smallest
 * float32 logit whose sigmoid is >= 0.5.
 * winner: (stop - top) x w slots and confident: (stop - top) x w, 1 where the winner's logit is
 * >= threshold (both from row top); above: (n,) += pixels with logit >= threshold, per query
 * (score order). Returns 0, or -1 when out of memory. Safe to call from several threads on
 * disjoint rows with their own `above`. */
int omg_panoptic_merge(const float *logits, const int64_t *queries, int64_t n,
                       const omg_resize *r, const float *scores, const int64_t *slots,
                       const uint8_t *near, float threshold, int64_t top, int64_t stop,
                       int64_t *winner, uint8_t *confident, int64_t *above) {
    const int64_t w = r->cols2.n, pixels = OMG_BAND * w;
    float *state = malloc(sizeof(float) * (size_t)(3 * pixels));
    int64_t *best_slot = malloc(sizeof(int64_t) * (size_t)pixels);
    uint8_t *open = malloc((size_t)pixels + 8);
    int status = -1;
    if (state != NULL && best_slot != NULL && open != NULL) {
        omg_merge st = {scores, slots, near, threshold, top, w, winner, above, confident, open,
                        state, state + pixels, state + 2 * pixels, best_slot};
        omg_visitor v = {merge_begin, merge_query, merge_finish, &st, NULL};
        status = visit_bands(logits, queries, n, r, top, stop, &v);
    }
    free(state);
    free(best_slot);
    free(open);
    return status;
}

/* ---- omg_id_masks ---- */

/* Rows [top, stop) of the masks id_map == ids[j] into masks, (n, rows, w) with rows the map's
 * height, and their boxes widened as omg_instance_masks's (first row, last row, first column,
 * last column; start at (rows, -1, w, -1)). ids: (n,) distinct, ascending; slot[j]: the mask
 * (and box) index of ids[j]. One pass over the map: each run of equal ids along a row finds its
 * slot once (binary search) and is written with one memset. Safe to call from several threads
 * on disjoint rows with their own `box`. */
void omg_id_masks(const int32_t *id_map, int64_t w, const int32_t *ids, const int64_t *slot,
                  int64_t n, int64_t rows, int64_t top, int64_t stop, uint8_t *masks,
                  int64_t *box) {
    for (int64_t k = 0; k < n; ++k)
        memset(masks + (k * rows + top) * w, 0, (size_t)((stop - top) * w));
    for (int64_t y = top; y < stop; ++y) {
        const int32_t *line = id_map + y * w;
        for (int64_t x = 0, end; x < w; x = end) {
            const int32_t v = line[x];
            for (end = x + 1; end < w && line[end] == v; ++end) {
            }
            int64_t lo = 0, hi = n;
            while (lo < hi) {
                const int64_t mid = lo + (hi - lo) / 2;
                if (ids[mid] < v) lo = mid + 1;
                else hi = mid;
            }
            if (lo == n || ids[lo] != v) continue;
            const int64_t k = slot[lo];
            memset(masks + (k * rows + y) * w + x, 1, (size_t)(end - x));
            int64_t *b = box + 4 * k;
            if (y < b[0]) b[0] = y;
            if (y > b[1]) b[1] = y;
            if (x < b[2]) b[2] = x;
            if (end - 1 > b[3]) b[3] = end - 1;
        }
    }
}
