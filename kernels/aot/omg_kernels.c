/* omg_kernels: the C API over the AOT-compiled Triton kernels (see omg_kernels.h).
 *
 * The CUDA driver is opened with dlopen so this builds without the CUDA toolkit; the few driver
 * types it needs are declared here with the driver's ABI (all handles are pointers, CUdeviceptr
 * is 64-bit, CUresult an int).
 */
#include "omg_kernels.h"
#include "omg_kernels_internal.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;

enum {
  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
  CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76,
  CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8,
};

static struct {
  void *lib;
  CUresult (*cuInit)(unsigned);
  CUresult (*cuCtxGetDevice)(CUdevice *);
  CUresult (*cuDeviceGetAttribute)(int *, int, CUdevice);
  CUresult (*cuModuleLoadData)(CUmodule *, const void *);
  CUresult (*cuModuleGetFunction)(CUfunction *, CUmodule, const char *);
  CUresult (*cuFuncSetAttribute)(CUfunction, int, int);
  CUresult (*cuLaunchKernel)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                             unsigned, unsigned, omg_stream, void **, void **);
  CUresult (*cuGetErrorString)(CUresult, const char **);
} drv;

#define OMG_MAX_VARIANTS 64
static CUfunction loaded[OMG_MAX_VARIANTS];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static __thread char last_error[512];

static omg_status fail(omg_status status, const char *fmt, ...) {
  va_list args;
  va_start(args, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, args);
  va_end(args);
  return status;
}

static omg_status driver_fail(const char *what, CUresult rc) {
  const char *msg = NULL;
  if (drv.cuGetErrorString) drv.cuGetErrorString(rc, &msg);
  return fail(OMG_ERROR_DRIVER, "%s failed: CUDA error %d (%s)", what, rc, msg ? msg : "?");
}

const char *omg_kernels_last_error(void) { return last_error; }

omg_status omg_kernels_init(void) {
  omg_status status = OMG_OK;
  pthread_mutex_lock(&lock);
  if (!drv.lib) {
    void *lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) lib = dlopen("libcuda.so", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      status = fail(OMG_ERROR_DRIVER, "cannot load the CUDA driver: %s", dlerror());
    } else {
#define OMG_SYM(name)                                                              \
  if (status == OMG_OK && !(*(void **)&drv.name = dlsym(lib, #name)))              \
    status = fail(OMG_ERROR_DRIVER, "libcuda has no symbol %s", #name);
      OMG_SYM(cuInit)
      OMG_SYM(cuCtxGetDevice)
      OMG_SYM(cuDeviceGetAttribute)
      OMG_SYM(cuModuleLoadData)
      OMG_SYM(cuModuleGetFunction)
      OMG_SYM(cuFuncSetAttribute)
      OMG_SYM(cuLaunchKernel)
      OMG_SYM(cuGetErrorString)
#undef OMG_SYM
      CUresult rc = status == OMG_OK ? drv.cuInit(0) : 0;
      if (status == OMG_OK && rc != 0) status = driver_fail("cuInit", rc);
      if (status == OMG_OK) drv.lib = lib;
      else dlclose(lib);
    }
  }
  pthread_mutex_unlock(&lock);
  return status;
}

int omg_kernels_num_variants(void) { return omg_num_variants; }

const char *omg_kernels_variant_name(int i) {
  static __thread char name[128];
  if (i < 0 || i >= omg_num_variants) return "";
  const omg_variant *v = &omg_variants[i];
  snprintf(name, sizeof name, "%s %s sm_%d M=%d D=%d L=%d P=%d",
           v->kernel == OMG_KERNEL_MS_DEFORM_ATTN_FWD ? "ms_deform_attn_fwd" : "masked_attention_fwd",
           v->dtype == OMG_FLOAT32 ? "fp32" : "fp16", v->arch, v->heads, v->head_dim, v->levels,
           v->points);
  return name;
}

/* The variant for the current device; loads its module on first use. */
static omg_status find_function(int kernel, omg_dtype dtype, int heads, int head_dim, int levels,
                                int points, const omg_variant **variant, CUfunction *fn) {
  omg_status status = omg_kernels_init();
  if (status != OMG_OK) return status;
  CUdevice dev;
  CUresult rc = drv.cuCtxGetDevice(&dev);
  if (rc != 0) return driver_fail("cuCtxGetDevice (is a CUDA context current?)", rc);
  int major = 0, minor = 0;
  drv.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev);
  drv.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev);
  int arch = major * 10 + minor;
  for (int i = 0; i < omg_num_variants && i < OMG_MAX_VARIANTS; ++i) {
    const omg_variant *v = &omg_variants[i];
    if (v->kernel != kernel || v->dtype != (int)dtype || v->arch != arch || v->heads != heads ||
        v->head_dim != head_dim || v->levels != levels || v->points != points)
      continue;
    pthread_mutex_lock(&lock);
    if (!loaded[i]) {
      CUmodule module;
      CUfunction f;
      rc = drv.cuModuleLoadData(&module, v->cubin);
      if (rc == 0) rc = drv.cuModuleGetFunction(&f, module, v->entry);
      if (rc == 0 && v->shared > 48 * 1024)
        rc = drv.cuFuncSetAttribute(f, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, v->shared);
      if (rc == 0) loaded[i] = f;
    }
    *fn = loaded[i];
    pthread_mutex_unlock(&lock);
    if (rc != 0) return driver_fail("loading the kernel module", rc);
    *variant = v;
    return OMG_OK;
  }
  return fail(OMG_ERROR_NO_VARIANT,
              "no %s kernel compiled for sm_%d, %s, heads=%d head_dim=%d levels=%d points=%d "
              "(rebuild with kernels/aot/build.py)",
              kernel == OMG_KERNEL_MS_DEFORM_ATTN_FWD ? "ms_deform_attn" : "masked_attention", arch,
              dtype == OMG_FLOAT32 ? "fp32" : "fp16", heads, head_dim, levels, points);
}

static omg_status launch(const omg_variant *v, CUfunction fn, omg_stream stream, unsigned grid_x,
                         unsigned grid_y, unsigned grid_z, void **args, int num_args) {
  /* Parameters after the kernel's own are Triton's scratch pointers: NULL (size 0 at build). */
  void *params[32];
  omg_devptr scratch = 0;
  if (v->num_params > 32 || v->num_params < num_args)
    return fail(OMG_ERROR_INVALID, "variant %s has %d parameters", v->entry, v->num_params);
  for (int i = 0; i < v->num_params; ++i) params[i] = i < num_args ? args[i] : &scratch;
  CUresult rc = drv.cuLaunchKernel(fn, grid_x, grid_y, grid_z, (unsigned)v->threads, 1, 1,
                                   (unsigned)v->shared, stream, params, NULL);
  return rc == 0 ? OMG_OK : driver_fail("cuLaunchKernel", rc);
}

omg_status omg_ms_deform_attn_forward(omg_stream stream, omg_dtype dtype, omg_devptr value,
                                      omg_devptr spatial_shapes, omg_devptr level_start_index,
                                      omg_devptr sampling_locations, omg_devptr attention_weights,
                                      int batch, int num_keys, int num_queries, int num_heads,
                                      int head_dim, int num_levels, int num_points,
                                      omg_devptr output) {
  if (batch <= 0 || num_keys <= 0 || num_queries < 0 || num_heads <= 0 || head_dim <= 0)
    return fail(OMG_ERROR_INVALID, "ms_deform_attn: sizes must be positive");
  if (num_queries == 0) return OMG_OK;
  const omg_variant *v;
  CUfunction fn;
  omg_status status = find_function(OMG_KERNEL_MS_DEFORM_ATTN_FWD, dtype, num_heads, head_dim,
                                    num_levels, num_points, &v, &fn);
  if (status != OMG_OK) return status;
  int32_t s = num_keys, lq = num_queries;
  void *args[] = {&value, &spatial_shapes, &level_start_index, &sampling_locations,
                  &attention_weights, &s, &lq, &output};
  unsigned grid_x = (unsigned)((num_queries + v->block_q - 1) / v->block_q);
  return launch(v, fn, stream, grid_x, (unsigned)num_heads, (unsigned)batch, args, 8);
}

omg_status omg_masked_attention_forward(omg_stream stream, omg_dtype dtype, omg_devptr q,
                                        omg_devptr k, omg_devptr v_ptr, omg_devptr mask,
                                        int batch, int num_heads, int num_queries, int num_keys,
                                        int head_dim, int mask_heads, omg_devptr out) {
  if (batch <= 0 || num_heads <= 0 || num_queries < 0 || num_keys <= 0 || head_dim <= 0)
    return fail(OMG_ERROR_INVALID, "masked_attention: sizes must be positive");
  if (mask && mask_heads != 1 && mask_heads != num_heads)
    return fail(OMG_ERROR_INVALID, "masked_attention: mask_heads must be 1 or %d, got %d",
                num_heads, mask_heads);
  if (!mask) return fail(OMG_ERROR_INVALID, "masked_attention: the AOT build needs a mask");
  if (num_queries == 0) return OMG_OK;
  const omg_variant *v;
  CUfunction fn;
  omg_status status = find_function(OMG_KERNEL_MASKED_ATTENTION_FWD, dtype, num_heads, head_dim,
                                    0, 0, &v, &fn);
  if (status != OMG_OK) return status;
  int64_t plane = (int64_t)num_queries * num_keys;
  if (plane * mask_heads > INT32_MAX)
    return fail(OMG_ERROR_INVALID, "masked_attention: mask plane too large for int32 strides");
  int32_t nq = num_queries, nk = num_keys;
  int32_t stride_b = (int32_t)(plane * mask_heads), stride_h = mask_heads == 1 ? 0 : (int32_t)plane;
  void *args[] = {&q, &k, &v_ptr, &mask, &nq, &nk, &stride_b, &stride_h, &out};
  unsigned grid_x = (unsigned)((num_queries + v->block_q - 1) / v->block_q);
  return launch(v, fn, stream, grid_x, (unsigned)(batch * num_heads), 1, args, 9);
}
