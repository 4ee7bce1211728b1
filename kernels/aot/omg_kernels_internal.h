/* Private: the table of AOT-compiled variants that kernels/aot/build.py generates. */
#ifndef OMG_KERNELS_INTERNAL_H
#define OMG_KERNELS_INTERNAL_H

#include <stddef.h>

enum { OMG_KERNEL_MS_DEFORM_ATTN_FWD = 0, OMG_KERNEL_MASKED_ATTENTION_FWD = 1 };

typedef struct {
  int kernel;           /* OMG_KERNEL_* */
  int dtype;            /* omg_dtype */
  int arch;             /* compute capability * 10 + minor, e.g. 90, 87 */
  int heads, head_dim;  /* compile-time M, D */
  int levels, points;   /* compile-time L, P (deformable attention only) */
  int block_q;          /* queries per program */
  int threads;          /* num_warps * 32 */
  int shared;           /* dynamic shared memory, bytes */
  int num_params;       /* PTX parameters; those after the kernel's own are scratch (NULL) */
  const char *entry;    /* PTX entry name */
  const unsigned char *cubin;
  size_t cubin_size;
} omg_variant;

extern const omg_variant omg_variants[];
extern const int omg_num_variants;

#endif
