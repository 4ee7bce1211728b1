/* omg_kernels: OMG-Seg's Triton kernels, compiled ahead of time, behind a small C API.
 *
 * The library embeds cubins for the architectures it was built for (sm_90 H100/H200, sm_87 Jetson
 * Orin) and loads the CUDA driver (libcuda.so.1) with dlopen on first use, so it builds and links
 * on machines without CUDA. Every call launches on the caller's stream into the caller's current
 * CUDA context (one context per process is assumed: modules are loaded once and cached).
 *
 * Tensors are device pointers to contiguous row-major arrays; shapes as in kernels/reference.py.
 * Functions return OMG_OK or an error code; omg_kernels_last_error() explains the last failure.
 */
#ifndef OMG_KERNELS_H
#define OMG_KERNELS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define OMG_API __attribute__((visibility("default")))
#else
#define OMG_API
#endif

typedef uint64_t omg_devptr;        /* a CUdeviceptr */
typedef struct CUstream_st *omg_stream; /* a CUstream (NULL = legacy default stream) */

typedef enum { OMG_FLOAT32 = 0, OMG_FLOAT16 = 1 } omg_dtype;

typedef enum {
  OMG_OK = 0,
  OMG_ERROR_DRIVER = 1,      /* libcuda missing, or a driver call failed */
  OMG_ERROR_NO_VARIANT = 2,  /* no kernel compiled for this GPU arch / dtype / shape constants */
  OMG_ERROR_INVALID = 3,     /* bad argument (sizes <= 0, ...) */
} omg_status;

/* Loads libcuda and resolves the driver entry points (also done lazily by every launch). */
OMG_API omg_status omg_kernels_init(void);

/* Human-readable reason of the last failure in this thread ("" if none). */
OMG_API const char *omg_kernels_last_error(void);

/* Number of compiled variants, and a description of variant i ("kernel dtype sm_XY M=.. D=.."). */
OMG_API int omg_kernels_num_variants(void);
OMG_API const char *omg_kernels_variant_name(int i);

/* Multi-scale deformable attention forward (contract of MultiscaleDeformableAttnPlugin_TRT).
 *   value               (batch, num_keys, num_heads, head_dim)                       dtype
 *   spatial_shapes      (num_levels, 2)                                              int32
 *   level_start_index   (num_levels,)                                                int32
 *   sampling_locations  (batch, num_queries, num_heads, num_levels, num_points, 2)   dtype
 *   attention_weights   (batch, num_queries, num_heads, num_levels, num_points)      dtype
 *   output              (batch, num_queries, num_heads * head_dim)                   dtype
 */
OMG_API omg_status omg_ms_deform_attn_forward(
    omg_stream stream, omg_dtype dtype, omg_devptr value, omg_devptr spatial_shapes,
    omg_devptr level_start_index, omg_devptr sampling_locations, omg_devptr attention_weights,
    int batch, int num_keys, int num_queries, int num_heads, int head_dim, int num_levels,
    int num_points, omg_devptr output);

/* Masked attention forward with Mask2Former's empty-row rule, softmax scale 1/sqrt(head_dim).
 *   q     (batch, num_heads, num_queries, head_dim)   dtype
 *   k, v  (batch, num_heads, num_keys, head_dim)      dtype
 *   mask  (batch, mask_heads, num_queries, num_keys)  bool/uint8, nonzero = may attend;
 *         mask_heads is 1 (shared by heads) or num_heads; mask = 0 means no mask
 *   out   (batch, num_heads, num_queries, head_dim)   dtype
 */
OMG_API omg_status omg_masked_attention_forward(
    omg_stream stream, omg_dtype dtype, omg_devptr q, omg_devptr k, omg_devptr v, omg_devptr mask,
    int batch, int num_heads, int num_queries, int num_keys, int head_dim, int mask_heads,
    omg_devptr out);

#ifdef __cplusplus
}
#endif
#endif /* OMG_KERNELS_H */
