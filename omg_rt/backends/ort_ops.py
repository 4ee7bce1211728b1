"""ONNX Runtime custom operators of omg-rt: multi-scale deformable attention and the INT8 MLP's
GELU + quantization, each as one CPU kernel.

ONNX has no deformable attention: the portable graphs spell it as one ``GridSample`` per level
plus the weighting (``Mul``, ``ReduceSum``, ``Add``), which on ConvNeXt-L at 768x1024 cost half
of ONNX Runtime's pixel decoder on the CPU (GridSample reads 32 channel planes per corner; the
weighting writes and re-reads every sample). ``csrc/ort_ops.c`` registers the same
computation as one kernel over the head-contiguous value layout with ONNX Runtime's C API for
the node the TensorRT flavour of the graphs already carries
(``trt::MultiscaleDeformableAttnPlugin_TRT``, :mod:`kernels.trt_plugin`): one graph for
TensorRT and for ONNX Runtime with this library.

The INT8 encoder's MLPs run ``bias -> GELU -> QuantizeLinear`` between their two integer matrix
products; ONNX Runtime writes the GELU in float32 and reads it back to quantize, the largest
float cost of the INT8 ConvNeXt after its matrix products. ``omg_rt::BiasGeluQuantize`` does it
in one pass (``export.precision.fuse_gelu_quantize`` puts it into the cpu target's fused INT8
encoder); ``omg_rt::LayerNormQuantize`` likewise the block's ``DequantizeLinear -> LayerNorm ->
QuantizeLinear`` before the MLP (``export.precision.fuse_layernorm_quantize``), and
``omg_rt::BiasReluQuantize`` the pixel decoder FFNs' ``bias -> Relu -> QuantizeLinear``
(``export.precision.fuse_relu_quantize``).

The library is built on first use by :func:`omg_rt.native.build` (the machine's C compiler, for
this CPU, cached in ``$OMG_RT_CACHE``); it needs no ONNX Runtime headers (the few C API entries
it calls are declared in the source by their place in ``OrtApi``, which only ever grows).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omg_rt import native
from omg_rt.errors import BackendUnavailableError

DOMAIN = "trt"
OP_NAME = "MultiscaleDeformableAttnPlugin_TRT"
OPS_DOMAIN = "omg_rt"  # omg-rt's own operators
GELU_QUANTIZE_OP = "BiasGeluQuantize"
RELU_QUANTIZE_OP = "BiasReluQuantize"
LAYERNORM_QUANTIZE_OP = "LayerNormQuantize"
MASKED_ATTENTION_OP = "MaskedAttention"
_SOURCES = ("gelu_quantize_compute.h", "layernorm_quantize_compute.h",
            "masked_attention_compute.h", "ms_deform_attn_compute.h", "ort_ops.c")


def library() -> Path:
    """The custom-op shared library, compiled once per source, compiler and CPU.

    Raises:
        BackendUnavailableError: no C compiler, or it failed (its message included).
    """
    source_dir = Path(__file__).resolve().parent / "csrc"
    return native.build("onnxruntime custom ops", "ort-ops", source_dir, _SOURCES, "ort_ops.c")


def available() -> bool:
    """Whether the library builds here (a C compiler): then the runtime runs, and the export
    verifies, the bundle's fused graphs."""
    try:
        library()
    except BackendUnavailableError:
        return False
    return True


def register(options: Any) -> None:
    """Register the library with an ``onnxruntime.SessionOptions``."""
    options.register_custom_ops_library(str(library()))


def inference_session(path: Path, options: Any, providers: Any) -> tuple[Any, bool]:
    """``onnxruntime.InferenceSession`` of ``path``; a graph ONNX Runtime refuses for want of one of
    this library's operators is loaded again with the library registered (built on first use).
    The calling thread's floating-point control word is restored afterwards (where the library
    builds): with ``session.set_denormal_as_zero`` ONNX Runtime leaves the thread that created a
    session flushing denormals to zero, the caller's own numpy and Python arithmetic included.

    Returns:
        the session, and whether the library was registered for it.

    Raises:
        BackendUnavailableError: the graph needs the library and it cannot be built here.
    """
    import onnxruntime

    with _kept_fp_control():
        try:
            return onnxruntime.InferenceSession(str(path), sess_options=options,
                                                providers=providers), False
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            if not any(op in str(exc) for op in (OP_NAME, GELU_QUANTIZE_OP, RELU_QUANTIZE_OP,
                                                LAYERNORM_QUANTIZE_OP, MASKED_ATTENTION_OP)):
                raise
        register(options)
        return onnxruntime.InferenceSession(str(path), sess_options=options,
                                            providers=providers), True


@functools.lru_cache(maxsize=1)
def _fp_control() -> Any:
    """The library's floating-point control word entry points, or None without a C compiler."""
    try:
        lib = ctypes.CDLL(str(library()))
    except (BackendUnavailableError, OSError):
        return None
    lib.omg_fp_control_get.restype = ctypes.c_ulong
    lib.omg_fp_control_set.argtypes = [ctypes.c_ulong]
    return lib


@contextlib.contextmanager
def _kept_fp_control() -> Iterator[None]:
    """The calling thread's floating-point control word (MXCSR / FPCR) as it was on entry, on
    exit; without a C compiler ONNX Runtime's setting stays."""
    lib = _fp_control()
    if lib is None:
        yield
        return
    saved = lib.omg_fp_control_get()
    try:
        yield
    finally:
        lib.omg_fp_control_set(saved)


__all__ = ["DOMAIN", "OPS_DOMAIN", "GELU_QUANTIZE_OP", "LAYERNORM_QUANTIZE_OP", "RELU_QUANTIZE_OP",
           "MASKED_ATTENTION_OP", "OP_NAME",
           "available", "inference_session", "library", "register"]
