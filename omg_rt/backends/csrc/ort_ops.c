/* omg-rt's ONNX Runtime custom operators on the CPU, each split over ONNX Runtime's own intra-op
 * threads:
 *
 * - trt::MultiscaleDeformableAttnPlugin_TRT (FP32), the node the TensorRT flavour of omg-rt's
 *   pixel decoder carries (kernels/trt_plugin.py): inputs value (N, S, M, D), spatial_shapes
 *   (L, 2) int32, level_start_index (L,) int32, sampling_locations (N, Lq, M, L, P, 2),
 *   attention_weights (N, Lq, M, L, P); output (N, Lq, M, D). ms_deform_attn_compute.h.
 * - omg_rt::BiasGeluQuantize, the bias + erf GELU + QuantizeLinear chain of the INT8 ConvNeXt
 *   MLP (export/precision.py fuse_gelu_quantize): inputs x (..., C) float32, bias (C,) or (1,)
 *   float32, y_scale float32 and y_zero_point uint8 (one value each); output uint8 of x's shape.
 *   gelu_quantize_compute.h.
 * - omg_rt::BiasReluQuantize, the same with ReLU: the bias + Relu + QuantizeLinear chain of the
 *   INT8 pixel decoder's FFNs (export/precision.py fuse_relu_quantize); the same inputs and
 *   output. gelu_quantize_compute.h.
 * - omg_rt::LayerNormQuantize, the DequantizeLinear + LayerNormalization (last axis) +
 *   QuantizeLinear chain before the INT8 ConvNeXt MLP (export/precision.py
 *   fuse_layernorm_quantize): inputs x (..., C) uint8, x_scale float32, x_zero_point uint8,
 *   gamma (C,) and beta (C,) float32, epsilon float32, y_scale float32, y_zero_point uint8 (one
 *   value each but gamma and beta); output uint8 of x's shape. layernorm_quantize_compute.h.
 * - omg_rt::MaskedAttention, Mask2Former's masked cross-attention without its score tensor
 *   (the fused query decoder, export/graphs.py): inputs q (B, Q, M, D), k and v (B, K, M, D)
 *   float32, allowed (B or 1, 1, Q, K) bool (True = may attend; a row allowing nothing attends
 *   to every key); output (B, Q, M, D); the scores are scaled by 1 / sqrt(D).
 *   masked_attention_compute.h.
 *
 * Built without ONNX Runtime's headers: the library declares what it uses of the C ABI itself.
 * OrtApi is a table of function pointers that only ever grows (entries keep their place across
 * releases), so each function is taken from the table by its place; OrtCustomOp is filled up to
 * the fields of ORT_CUSTOM_OP_VERSION, and ONNX Runtime reads no field added after that version.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "gelu_quantize_compute.h"
#include "layernorm_quantize_compute.h"
#include "masked_attention_compute.h"
#include "ms_deform_attn_compute.h"

typedef struct OrtStatus OrtStatus;
typedef struct OrtValue OrtValue;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef void OrtApiTable; /* const OrtApi*: read as an array of function pointers */

typedef struct OrtApiBase {
    const OrtApiTable* (*GetApi)(uint32_t version);
    const char* (*GetVersionString)(void);
} OrtApiBase;

/* The API version asked of ONNX Runtime: the oldest that has every entry used below
 * (KernelContext_ParallelFor, the newest of them, came with ONNX Runtime 1.17). */
#define OMG_ORT_API_VERSION 17
/* OrtCustomOp fields filled in: through KernelComputeV2 (version 16), which returns a status */
#define ORT_CUSTOM_OP_VERSION 16

enum { ORT_FLOAT = 1, ORT_UINT8 = 2, ORT_INT32 = 6, ORT_BOOL = 9 };  /* ONNXTensorElementDataType */
enum { INPUT_OUTPUT_REQUIRED = 0 };  /* OrtCustomOpInputOutputCharacteristic */
enum { ORT_INVALID_ARGUMENT = 2 };  /* OrtErrorCode */
enum { ORT_MEM_TYPE_DEFAULT = 0 };  /* OrtMemType */

/* Places in OrtApi (0-based) of the entries used. */
enum {
    API_CreateStatus = 0,
    API_CreateCustomOpDomain = 26,
    API_CustomOpDomain_Add = 27,
    API_AddCustomOpDomain = 28,
    API_GetTensorMutableData = 51,
    API_GetTensorElementType = 60,
    API_GetDimensionsCount = 61,
    API_GetDimensions = 62,
    API_GetTensorTypeAndShape = 65,
    API_KernelContext_GetInput = 90,
    API_KernelContext_GetOutput = 91,
    API_ReleaseTensorTypeAndShapeInfo = 99,
    API_KernelContext_ParallelFor = 274,
};

typedef OrtStatus* (*CreateStatusFn)(int code, const char* message);
typedef OrtStatus* (*CreateCustomOpDomainFn)(const char* domain, OrtCustomOpDomain** out);
typedef OrtStatus* (*CustomOpDomainAddFn)(OrtCustomOpDomain* domain, const void* op);
typedef OrtStatus* (*AddCustomOpDomainFn)(OrtSessionOptions* options, OrtCustomOpDomain* domain);
typedef OrtStatus* (*GetTensorMutableDataFn)(OrtValue* value, void** out);
typedef OrtStatus* (*GetTensorTypeAndShapeFn)(const OrtValue* value,
                                               OrtTensorTypeAndShapeInfo** out);
typedef OrtStatus* (*GetDimensionsCountFn)(const OrtTensorTypeAndShapeInfo* info, size_t* out);
typedef OrtStatus* (*GetDimensionsFn)(const OrtTensorTypeAndShapeInfo* info, int64_t* values,
                                      size_t count);
typedef OrtStatus* (*GetTensorElementTypeFn)(const OrtTensorTypeAndShapeInfo* info, int* out);
typedef void (*ReleaseTensorTypeAndShapeInfoFn)(OrtTensorTypeAndShapeInfo* info);
typedef OrtStatus* (*KernelContextGetInputFn)(const OrtKernelContext* context, size_t index,
                                             const OrtValue** out);
typedef OrtStatus* (*KernelContextGetOutputFn)(OrtKernelContext* context, size_t index,
                                              const int64_t* dims, size_t count, OrtValue** out);
typedef OrtStatus* (*KernelContextParallelForFn)(OrtKernelContext* context,
                                                void (*fn)(void*, size_t), size_t total,
                                                size_t num_batch, void* user_data);

typedef struct OmgCustomOp {
    uint32_t version;
    void* (*CreateKernel)(const struct OmgCustomOp* op, const OrtApiTable* api,
                          const OrtKernelInfo* info);
    const char* (*GetName)(const struct OmgCustomOp* op);
    const char* (*GetExecutionProviderType)(const struct OmgCustomOp* op);
    int (*GetInputType)(const struct OmgCustomOp* op, size_t index);
    size_t (*GetInputTypeCount)(const struct OmgCustomOp* op);
    int (*GetOutputType)(const struct OmgCustomOp* op, size_t index);
    size_t (*GetOutputTypeCount)(const struct OmgCustomOp* op);
    void (*KernelCompute)(void* kernel, OrtKernelContext* context);
    void (*KernelDestroy)(void* kernel);
    int (*GetInputCharacteristic)(const struct OmgCustomOp* op, size_t index);
    int (*GetOutputCharacteristic)(const struct OmgCustomOp* op, size_t index);
    int (*GetInputMemoryType)(const struct OmgCustomOp* op, size_t index);
    int (*GetVariadicInputMinArity)(const struct OmgCustomOp* op);
    int (*GetVariadicInputHomogeneity)(const struct OmgCustomOp* op);
    int (*GetVariadicOutputMinArity)(const struct OmgCustomOp* op);
    int (*GetVariadicOutputHomogeneity)(const struct OmgCustomOp* op);
    OrtStatus* (*CreateKernelV2)(const struct OmgCustomOp* op, const OrtApiTable* api,
                                 const OrtKernelInfo* info, void** kernel);
    OrtStatus* (*KernelComputeV2)(void* kernel, OrtKernelContext* context);
} OmgCustomOp;

static const void* const* g_api = NULL;
#define ORT(name, type) ((type)(g_api[API_##name]))

/* ------------------------------------------------------------------ the kernels */

/* Items [0, total) of a computation, `chunk` at a time, over ONNX Runtime's intra-op threads. */
typedef void (*RangeFn)(const void* args, int64_t begin, int64_t end);
typedef struct {
    RangeFn run;
    const void* args;
    int64_t total, chunk;
} RangeTask;

static void range_task(void* data, size_t index) {
    const RangeTask* task = (const RangeTask*)data;
    const int64_t begin = (int64_t)index * task->chunk;
    const int64_t end = begin + task->chunk < task->total ? begin + task->chunk : task->total;
    task->run(task->args, begin, end);
}

static OrtStatus* parallel_ranges(OrtKernelContext* context, RangeFn run, const void* args,
                                  int64_t total, int64_t chunk) {
    if (total == 0) return NULL;
    RangeTask task = {run, args, total, chunk};
    const size_t tasks = (size_t)((total + chunk - 1) / chunk);
    return ORT(KernelContext_ParallelFor, KernelContextParallelForFn)(context, range_task, tasks,
                                                                     0, &task);
}

static void msda_range(const void* args, int64_t begin, int64_t end) {
    msda_items((const MsdaArgs*)args, begin, end);
}

static void gelu_quantize_range(const void* args, int64_t begin, int64_t end) {
    gelu_quantize_rows((const GeluQuantizeArgs*)args, begin, end);
}

static void layernorm_quantize_range(const void* args, int64_t begin, int64_t end) {
    layernorm_quantize_rows((const LayerNormQuantizeArgs*)args, begin, end);
}

static void masked_attention_range(const void* args, int64_t begin, int64_t end) {
    masked_attention_items((const MaskedAttnArgs*)args, begin, end);
}

static void row_any_range(const void* args, int64_t begin, int64_t end) {
    const MaskedAttnArgs* a = (const MaskedAttnArgs*)args;
    masked_attention_row_any(a->allowed, a->nk, (uint8_t*)a->row_any, begin, end);
}

/* dims of input `index` into dims[0..max) -> rank, or -1 with the element type not `want` */
static int64_t input_dims(OrtKernelContext* context, size_t index, int want, int64_t* dims,
                          size_t max, const void** data) {
    const OrtValue* value = NULL;
    OrtTensorTypeAndShapeInfo* info = NULL;
    size_t rank = 0;
    int type = 0;
    if (ORT(KernelContext_GetInput, KernelContextGetInputFn)(context, index, &value) || !value)
        return -1;
    if (ORT(GetTensorTypeAndShape, GetTensorTypeAndShapeFn)(value, &info)) return -1;
    int ok = !ORT(GetTensorElementType, GetTensorElementTypeFn)(info, &type) && type == want &&
             !ORT(GetDimensionsCount, GetDimensionsCountFn)(info, &rank) && rank <= max &&
             !ORT(GetDimensions, GetDimensionsFn)(info, dims, rank);
    ORT(ReleaseTensorTypeAndShapeInfo, ReleaseTensorTypeAndShapeInfoFn)(info);
    if (!ok) return -1;
    void* pointer = NULL;
    if (ORT(GetTensorMutableData, GetTensorMutableDataFn)((OrtValue*)value, &pointer)) return -1;
    *data = pointer;
    return (int64_t)rank;
}

static OrtStatus* invalid(const char* message) {
    return ORT(CreateStatus, CreateStatusFn)(ORT_INVALID_ARGUMENT, message);
}

/* output 0 with dims[0..rank) and its data */
static OrtStatus* output_data(OrtKernelContext* context, const int64_t* dims, int64_t rank,
                              void** data) {
    OrtValue* out = NULL;
    OrtStatus* status = ORT(KernelContext_GetOutput, KernelContextGetOutputFn)(
        context, 0, dims, (size_t)rank, &out);
    if (status) return status;
    return ORT(GetTensorMutableData, GetTensorMutableDataFn)(out, data);
}

static OrtStatus* msda_compute(void* kernel, OrtKernelContext* context) {
    (void)kernel;
    int64_t v[8], sh[8], st[8], lo[8], w[8];
    const void *value, *shapes, *starts, *locations, *weights;
    if (input_dims(context, 0, ORT_FLOAT, v, 8, &value) != 4 ||
        input_dims(context, 1, ORT_INT32, sh, 8, &shapes) != 2 ||
        input_dims(context, 2, ORT_INT32, st, 8, &starts) != 1 ||
        input_dims(context, 3, ORT_FLOAT, lo, 8, &locations) != 6 ||
        input_dims(context, 4, ORT_FLOAT, w, 8, &weights) != 5)
        return invalid("MultiscaleDeformableAttnPlugin_TRT: expected float32 value (N, S, M, D), "
                       "int32 spatial_shapes (L, 2) and level_start_index (L,), float32 "
                       "sampling_locations (N, Lq, M, L, P, 2) and attention_weights "
                       "(N, Lq, M, L, P)");
    const int64_t n = v[0], s = v[1], m = v[2], d = v[3], lq = lo[1], l = lo[3], p = lo[4];
    if (sh[0] != l || sh[1] != 2 || st[0] != l || lo[0] != n || lo[2] != m || lo[5] != 2 ||
        w[0] != n || w[1] != lq || w[2] != m || w[3] != l || w[4] != p)
        return invalid("MultiscaleDeformableAttnPlugin_TRT: the inputs' N, M, L, Lq or P "
                       "disagree");
    if (d > OMG_MSDA_MAX_D) return invalid("MultiscaleDeformableAttnPlugin_TRT: D > 1024");
    const int32_t* shape_values = (const int32_t*)shapes;
    const int32_t* start_values = (const int32_t*)starts;
    for (int64_t i = 0; i < l; ++i) {  /* every level inside the value tensor */
        int64_t h = shape_values[2 * i], wd = shape_values[2 * i + 1];
        if (h < 1 || wd < 1 || start_values[i] < 0 || start_values[i] + h * wd > s)
            return invalid("MultiscaleDeformableAttnPlugin_TRT: a level lies outside value");
    }
    const int64_t out_dims[4] = {n, lq, m, d};
    void* out_data = NULL;
    OrtStatus* status = output_data(context, out_dims, 4, &out_data);
    if (status) return status;
    const MsdaArgs args = {(const float*)value, shape_values, start_values,
                           (const float*)locations, (const float*)weights, (float*)out_data,
                           n, s, m, d, lq, l, p};
    return parallel_ranges(context, msda_range, &args, n * lq, 64);  /* 64 queries a task */
}

static int64_t element_count(const int64_t* dims, int64_t rank) {
    int64_t count = 1;
    for (int64_t i = 0; i < rank; ++i) count *= dims[i];
    return count;
}

static void relu_quantize_range(const void* args, int64_t begin, int64_t end) {
    relu_quantize_rows((const GeluQuantizeArgs*)args, begin, end);
}

/* BiasGeluQuantize and BiasReluQuantize: the same inputs, checks and split of rows */
static OrtStatus* bias_activation_quantize(OrtKernelContext* context, const char* name,
                                           RangeFn rows_fn) {
    char message[256];
    int64_t x[8], b[8], sc[8], zp[8];
    const void *x_data, *bias, *scale, *zero_point;
    const int64_t rank = input_dims(context, 0, ORT_FLOAT, x, 8, &x_data);
    const int64_t b_rank = input_dims(context, 1, ORT_FLOAT, b, 8, &bias);
    const int64_t sc_rank = input_dims(context, 2, ORT_FLOAT, sc, 8, &scale);
    const int64_t zp_rank = input_dims(context, 3, ORT_UINT8, zp, 8, &zero_point);
    if (rank < 1 || b_rank != 1 || sc_rank < 0 || zp_rank < 0 ||
        element_count(sc, sc_rank) != 1 || element_count(zp, zp_rank) != 1) {
        snprintf(message, sizeof message, "%s: expected float32 x (..., C), float32 bias (C,), "
                 "one float32 y_scale and one uint8 y_zero_point", name);
        return invalid(message);
    }
    const int64_t cols = x[rank - 1];
    if (b[0] != cols && b[0] != 1) {
        snprintf(message, sizeof message, "%s: bias length is neither x's last dimension nor 1",
                 name);
        return invalid(message);
    }
    const float scale_value = *(const float*)scale;
    if (!(scale_value > 0.0f) || isinf(scale_value)) {
        snprintf(message, sizeof message, "%s: y_scale must be positive and finite", name);
        return invalid(message);
    }
    void* out_data = NULL;
    OrtStatus* status = output_data(context, x, rank, &out_data);
    if (status) return status;
    const int64_t rows = cols ? element_count(x, rank) / cols : 0;
    if (rows == 0) return NULL;
    float* row_bias = NULL;  /* one bias for every column: spelled out along a row */
    if (b[0] != cols) {
        row_bias = (float*)malloc((size_t)cols * sizeof(float));
        if (!row_bias) {
            snprintf(message, sizeof message, "%s: out of memory", name);
            return invalid(message);
        }
        for (int64_t c = 0; c < cols; ++c) row_bias[c] = *(const float*)bias;
    }
    const GeluQuantizeArgs args = {(const float*)x_data,
                                   row_bias ? row_bias : (const float*)bias, (uint8_t*)out_data,
                                   rows, cols, scale_value, (float)*(const uint8_t*)zero_point};
    const int64_t chunk = (1 << 16) / cols > 0 ? (1 << 16) / cols : 1;  /* ~64K elements */
    status = parallel_ranges(context, rows_fn, &args, rows, chunk);
    free(row_bias);
    return status;
}

static OrtStatus* gelu_quantize_compute(void* kernel, OrtKernelContext* context) {
    (void)kernel;
    return bias_activation_quantize(context, "BiasGeluQuantize", gelu_quantize_range);
}

static OrtStatus* relu_quantize_compute(void* kernel, OrtKernelContext* context) {
    (void)kernel;
    return bias_activation_quantize(context, "BiasReluQuantize", relu_quantize_range);
}

/* one value of input `index` of element type `want` into *value (float), or 0 */
static int scalar_input(OrtKernelContext* context, size_t index, int want, float* value) {
    int64_t dims[8];
    const void* data = NULL;
    const int64_t rank = input_dims(context, index, want, dims, 8, &data);
    if (rank < 0 || element_count(dims, rank) != 1) return 0;
    *value = want == ORT_UINT8 ? (float)*(const uint8_t*)data : *(const float*)data;
    return 1;
}

static OrtStatus* layernorm_quantize_compute(void* kernel, OrtKernelContext* context) {
    (void)kernel;
    int64_t x[8], g[8], b[8];
    const void *x_data, *gamma, *beta;
    float x_scale, x_zero_point, epsilon, y_scale, y_zero_point;
    const int64_t rank = input_dims(context, 0, ORT_UINT8, x, 8, &x_data);
    if (rank < 1 || input_dims(context, 3, ORT_FLOAT, g, 8, &gamma) != 1 ||
        input_dims(context, 4, ORT_FLOAT, b, 8, &beta) != 1 ||
        !scalar_input(context, 1, ORT_FLOAT, &x_scale) ||
        !scalar_input(context, 2, ORT_UINT8, &x_zero_point) ||
        !scalar_input(context, 5, ORT_FLOAT, &epsilon) ||
        !scalar_input(context, 6, ORT_FLOAT, &y_scale) ||
        !scalar_input(context, 7, ORT_UINT8, &y_zero_point))
        return invalid("LayerNormQuantize: expected uint8 x (..., C), one float32 x_scale, one "
                       "uint8 x_zero_point, float32 gamma (C,) and beta (C,), one float32 "
                       "epsilon, one float32 y_scale and one uint8 y_zero_point");
    const int64_t cols = x[rank - 1];
    if (g[0] != cols || b[0] != cols)
        return invalid("LayerNormQuantize: gamma and beta must be as long as x's last dimension");
    if (!(x_scale > 0.0f) || isinf(x_scale) || !(y_scale > 0.0f) || isinf(y_scale) ||
        !(epsilon >= 0.0f) || isinf(epsilon))
        return invalid("LayerNormQuantize: x_scale and y_scale must be positive and finite, "
                       "epsilon finite and >= 0");
    void* out_data = NULL;
    OrtStatus* status = output_data(context, x, rank, &out_data);
    if (status) return status;
    const int64_t rows = cols ? element_count(x, rank) / cols : 0;
    if (rows == 0) return NULL;
    float* scaled = (float*)malloc(2 * (size_t)cols * sizeof(float));  /* gamma, beta / y_scale */
    if (!scaled) return invalid("LayerNormQuantize: out of memory");
    for (int64_t c = 0; c < cols; ++c) {
        scaled[c] = ((const float*)gamma)[c] / y_scale;
        scaled[cols + c] = ((const float*)beta)[c] / y_scale;
    }
    const LayerNormQuantizeArgs args = {(const uint8_t*)x_data, scaled, scaled + cols,
                                        (uint8_t*)out_data, rows, cols, x_scale, epsilon,
                                        y_zero_point};
    const int64_t chunk = (1 << 16) / cols > 0 ? (1 << 16) / cols : 1;  /* ~64K elements */
    status = parallel_ranges(context, layernorm_quantize_range, &args, rows, chunk);
    free(scaled);
    return status;
}

static OrtStatus* masked_attention_compute(void* kernel, OrtKernelContext* context) {
    (void)kernel;
    int64_t q[8], k[8], v[8], al[8];
    const void *q_data, *k_data, *v_data, *allowed;
    if (input_dims(context, 0, ORT_FLOAT, q, 8, &q_data) != 4 ||
        input_dims(context, 1, ORT_FLOAT, k, 8, &k_data) != 4 ||
        input_dims(context, 2, ORT_FLOAT, v, 8, &v_data) != 4 ||
        input_dims(context, 3, ORT_BOOL, al, 8, &allowed) != 4)
        return invalid("MaskedAttention: expected float32 q (B, Q, M, D), k and v (B, K, M, D) "
                       "and bool allowed (B or 1, 1, Q, K)");
    const int64_t b = q[0], nq = q[1], m = q[2], d = q[3], nk = k[1];
    for (int i = 0; i < 4; ++i)
        if (k[i] != v[i])
            return invalid("MaskedAttention: k and v must have the same shape");
    if (k[0] != b || k[2] != m || k[3] != d || (al[0] != b && al[0] != 1) || al[1] != 1 ||
        al[2] != nq || al[3] != nk)
        return invalid("MaskedAttention: the inputs' B, Q, K, M or D disagree");
    if (d < 1 || d > OMG_MA_MAX_D) return invalid("MaskedAttention: D must be 1..128");
    if (nk < 1 && b * nq > 0) return invalid("MaskedAttention: no keys");
    const int64_t out_dims[4] = {b, nq, m, d};
    void* out_data = NULL;
    OrtStatus* status = output_data(context, out_dims, 4, &out_data);
    if (status || b * nq * m == 0) return status;
    uint8_t* row_any = (uint8_t*)malloc((size_t)(al[0] * nq));
    if (!row_any) return invalid("MaskedAttention: out of memory");
    const MaskedAttnArgs args = {(const float*)q_data, (const float*)k_data, (const float*)v_data,
                                 (const uint8_t*)allowed, row_any, (float*)out_data,
                                 b, nq, nk, m, d, al[0], 1.0f / sqrtf((float)d)};
    status = parallel_ranges(context, row_any_range, &args, al[0] * nq, 8);
    if (!status) {
        status = parallel_ranges(context, masked_attention_range, &args,
                                 b * m * masked_attention_chunks(nq), 1);
    }
    free(row_any);
    return status;
}

/* ------------------------------------------------------------------ the operators */

static void* op_create_kernel(const OmgCustomOp* op, const OrtApiTable* api,
                              const OrtKernelInfo* info) {
    (void)op; (void)api; (void)info;
    static int kernel;  /* stateless: any non-NULL pointer */
    return &kernel;
}
static const char* op_provider(const OmgCustomOp* op) { (void)op; return "CPUExecutionProvider"; }
static size_t op_output_count(const OmgCustomOp* op) { (void)op; return 1; }
static void op_destroy(void* kernel) { (void)kernel; }
static int op_required(const OmgCustomOp* op, size_t index) {
    (void)op; (void)index;
    return INPUT_OUTPUT_REQUIRED;
}
static int op_memory(const OmgCustomOp* op, size_t index) {
    (void)op; (void)index;
    return ORT_MEM_TYPE_DEFAULT;
}
static int op_one(const OmgCustomOp* op) { (void)op; return 1; }  /* variadic: unused */

static const char* msda_name(const OmgCustomOp* op) { (void)op; return "MultiscaleDeformableAttnPlugin_TRT"; }
static int msda_input_type(const OmgCustomOp* op, size_t index) {
    (void)op;
    return index == 1 || index == 2 ? ORT_INT32 : ORT_FLOAT;
}
static size_t msda_input_count(const OmgCustomOp* op) { (void)op; return 5; }
static int msda_output_type(const OmgCustomOp* op, size_t index) { (void)op; (void)index; return ORT_FLOAT; }

static const char* gq_name(const OmgCustomOp* op) { (void)op; return "BiasGeluQuantize"; }
static int gq_input_type(const OmgCustomOp* op, size_t index) {
    (void)op;
    return index == 3 ? ORT_UINT8 : ORT_FLOAT;
}
static size_t gq_input_count(const OmgCustomOp* op) { (void)op; return 4; }
static int gq_output_type(const OmgCustomOp* op, size_t index) { (void)op; (void)index; return ORT_UINT8; }

static const char* rq_name(const OmgCustomOp* op) { (void)op; return "BiasReluQuantize"; }

static const char* lq_name(const OmgCustomOp* op) { (void)op; return "LayerNormQuantize"; }
static int lq_input_type(const OmgCustomOp* op, size_t index) {
    (void)op;
    return index == 0 || index == 2 || index == 7 ? ORT_UINT8 : ORT_FLOAT;
}
static size_t lq_input_count(const OmgCustomOp* op) { (void)op; return 8; }

static const char* ma_name(const OmgCustomOp* op) { (void)op; return "MaskedAttention"; }
static int ma_input_type(const OmgCustomOp* op, size_t index) {
    (void)op;
    return index == 3 ? ORT_BOOL : ORT_FLOAT;
}
static size_t ma_input_count(const OmgCustomOp* op) { (void)op; return 4; }

/* KernelCompute is NULL: KernelComputeV2 runs, and reports bad inputs as a status;
 * CreateKernelV2 is NULL: CreateKernel runs. */
#define OMG_OP(name, input_type, input_count, output_type, compute)                          \
    {ORT_CUSTOM_OP_VERSION, op_create_kernel, name, op_provider, input_type, input_count,     \
     output_type, op_output_count, NULL, op_destroy, op_required, op_required, op_memory,     \
     op_one, op_one, op_one, op_one, NULL, compute}

static const OmgCustomOp g_msda_op =
    OMG_OP(msda_name, msda_input_type, msda_input_count, msda_output_type, msda_compute);
static const OmgCustomOp g_gelu_quantize_op =
    OMG_OP(gq_name, gq_input_type, gq_input_count, gq_output_type, gelu_quantize_compute);
static const OmgCustomOp g_relu_quantize_op =
    OMG_OP(rq_name, gq_input_type, gq_input_count, gq_output_type, relu_quantize_compute);
static const OmgCustomOp g_layernorm_quantize_op = OMG_OP(
    lq_name, lq_input_type, lq_input_count, gq_output_type, layernorm_quantize_compute);
static const OmgCustomOp g_masked_attention_op =
    OMG_OP(ma_name, ma_input_type, ma_input_count, msda_output_type, masked_attention_compute);

static OrtStatus* add_domain(OrtSessionOptions* options, const char* name,
                             const OmgCustomOp* const* ops, size_t count) {
    OrtCustomOpDomain* domain = NULL;
    OrtStatus* status = ORT(CreateCustomOpDomain, CreateCustomOpDomainFn)(name, &domain);
    if (status) return status;
    for (size_t i = 0; i < count; ++i) {
        status = ORT(CustomOpDomain_Add, CustomOpDomainAddFn)(domain, ops[i]);
        if (status) return status;
    }
    return ORT(AddCustomOpDomain, AddCustomOpDomainFn)(options, domain);
}

/* The entry point of SessionOptions.register_custom_ops_library. */
OrtStatus* RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* base) {
    g_api = (const void* const*)base->GetApi(OMG_ORT_API_VERSION);
    if (!g_api) return NULL;  /* an ONNX Runtime older than 1.17: register nothing */
    static const OmgCustomOp* const trt_ops[] = {&g_msda_op};
    static const OmgCustomOp* const omg_ops[] = {&g_gelu_quantize_op, &g_relu_quantize_op,
                                                 &g_layernorm_quantize_op, &g_masked_attention_op};
    OrtStatus* status = add_domain(options, "trt", trt_ops, 1);
    if (status) return status;
    return add_domain(options, "omg_rt", omg_ops, sizeof omg_ops / sizeof omg_ops[0]);
}

/* For tests: the computation alone, on the calling thread. */
void omg_msda_forward(const MsdaArgs* args) { msda_items(args, 0, args->n * args->lq); }

/* The calling thread's floating-point control word (x86: MXCSR; AArch64: FPCR; else 0), read and
 * written back around an ONNX Runtime session's creation: with session.set_denormal_as_zero,
 * ONNX Runtime switches the creating thread to flush-to-zero / denormals-are-zero for good, and
 * the user's own numpy and Python arithmetic on that thread with it. */
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
unsigned long omg_fp_control_get(void) { return _mm_getcsr(); }
void omg_fp_control_set(unsigned long value) { _mm_setcsr((unsigned int)value); }
#elif defined(__aarch64__)
unsigned long omg_fp_control_get(void) {
    unsigned long value;
    __asm__ volatile("mrs %0, fpcr" : "=r"(value));
    return value;
}
void omg_fp_control_set(unsigned long value) { __asm__ volatile("msr fpcr, %0" : : "r"(value)); }
#else
unsigned long omg_fp_control_get(void) { return 0; }
void omg_fp_control_set(unsigned long value) { (void)value; }
#endif
