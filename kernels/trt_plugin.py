"""TensorRT integration of the deformable-attention kernel: a QDP plugin and an ONNX node helper.

1. ``register_plugin()`` registers ``omg::MultiscaleDeformableAttnPlugin_TRT`` with TensorRT's
   Python plugin API (``tensorrt.plugin``, TensorRT >= 10.9) with an *AOT* implementation: at engine
   build time it returns the PTX of ``_ms_deform_attn_fwd_kernel`` for the build GPU, so the engine
   runs without Python (trtexec, C++, Triton server). Where Triton is not installed (Jetson), the
   PTX comes from a ``kernels/aot/build.py`` output directory (``OMG_KERNELS_AOT_DIR``).
2. ``ms_deform_attn_onnx(g, ...)`` is a TorchScript-exporter symbolic that emits the ONNX node
   ``MultiscaleDeformableAttnPlugin_TRT`` — the name of TensorRT's built-in plugin and of ours, so
   the same node binds to either: ``plugin_namespace=""`` (built-in) or ``"omg"`` (this plugin).

The plugin keeps the built-in's contract: inputs (value, spatial_shapes int32, level_start_index
int32, sampling_locations, attention_weights), output (N, Lq, M, D); FP32 or FP16, all float I/O of
one type. TensorRT and Triton are imported lazily: importing this module needs neither.

Known limits (TensorRT docs / issues): AOT plugins accept PTX only and do not serialize plugin
attributes (ours has none: M, D, L, P come from the static input shapes); TensorRT 11.1/11.2 leak a
CUDA module per shape change of an AOT plugin (NVIDIA/TensorRT#4849), so use few shape profiles.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

PLUGIN_NAME = "MultiscaleDeformableAttnPlugin_TRT"
PLUGIN_NAMESPACE = "omg"
PLUGIN_ID = f"{PLUGIN_NAMESPACE}::{PLUGIN_NAME}"
_ONNX_INT32 = 6  # onnx.TensorProto.INT32

_registered = False


def ms_deform_attn_onnx(g, value, spatial_shapes, level_start_index, sampling_locations,
                        attention_weights, plugin_namespace: str = ""):
    """Emit ``MultiscaleDeformableAttnPlugin_TRT`` in a ``torch.onnx`` (TorchScript) export.

    Use as the ``symbolic`` of an autograd Function that wraps the op, or through
    ``torch.onnx.register_custom_op_symbolic``. The five inputs go in the plugin's order, the two
    index tensors cast to int32 (TensorRT's plugin reads int32), and the plugin's (N, Lq, M, D)
    output is reshaped to the op's (N, Lq, M * D).

    Args:
        g: the export's graph context (``torch.onnx._internal.jit_utils.GraphContext``).
        plugin_namespace: ``""`` binds TensorRT's built-in plugin, ``"omg"`` the Triton plugin of
            this module (then the node also carries ``aot=1`` to ask for its AOT implementation).

    Returns:
        The (N, Lq, M * D) output value.
    """
    attrs = {}
    if plugin_namespace:
        attrs = {"plugin_namespace_s": plugin_namespace, "aot_i": 1}
    shapes = g.op("Cast", spatial_shapes, to_i=_ONNX_INT32)
    starts = g.op("Cast", level_start_index, to_i=_ONNX_INT32)
    out = g.op(f"trt::{PLUGIN_NAME}", value, shapes, starts, sampling_locations,
               attention_weights, **attrs)  # (N, Lq, M, D)
    value_sizes, loc_sizes = _sizes(value), _sizes(sampling_locations)
    if value_sizes and loc_sizes:  # static shapes: tell ONNX shape inference (custom ops have none)
        out.setType(value.type().with_sizes([loc_sizes[0], loc_sizes[1], *value_sizes[2:]]))
    keep_first_two = g.op("Constant", value_t=_int64_tensor([0, 0, -1]))
    return g.op("Reshape", out, keep_first_two)  # (N, Lq, M * D)


def _sizes(tensor_value) -> list | None:
    try:
        sizes = tensor_value.type().varyingSizes()
    except RuntimeError:  # not a tensor type
        return None
    return sizes if sizes and all(s is not None for s in sizes) else None


def _int64_tensor(values):
    import torch

    return torch.tensor(values, dtype=torch.int64)


def strip_scratch_params(ptx: str, num_args: int) -> str:
    """Drop the trailing scratch-pointer parameters Triton (>= 3.3) appends to a kernel's entry.

    TensorRT launches an AOT plugin kernel with exactly (inputs, scalars, outputs); Triton's PTX
    declares one or two more pointers for scratch memory. They are unused when the kernel needs no
    scratch (checked here), so removing them from the signature makes the two agree.
    """
    entry = re.search(r"(\.entry\s+\w+\s*\()([^)]*)(\))", ptx)
    if entry is None:
        raise ValueError("no .entry in the PTX")
    params = [p.strip() for p in entry.group(2).split(",") if p.strip()]
    if len(params) < num_args:
        raise ValueError(f"PTX entry has {len(params)} params, expected at least {num_args}")
    for extra in params[num_args:]:
        name = extra.split()[-1]
        if re.search(rf"\b{re.escape(name)}\b", ptx[entry.end():]):
            raise ValueError(f"PTX uses scratch parameter {name}; the kernel needs scratch memory")
    kept = ",\n\t".join(params[:num_args])
    return ptx[:entry.start(2)] + "\n\t" + kept + "\n" + ptx[entry.end(2):]


def _constant(expr, what: str) -> int:
    if not expr.is_constant:
        raise ValueError(f"{PLUGIN_ID}: {what} must be a build-time constant (static dimension)")
    return int(expr.constant_value())


def kernel_ptx(dtype: str, constants: dict, arch: int | None = None) -> tuple[str, str, int]:
    """(entry name, PTX, shared bytes) of the forward kernel for ``dtype`` in {"fp32", "fp16"}.

    Compiles with Triton for ``arch`` (default: the current GPU). Without Triton, reads the
    precompiled PTX from ``$OMG_KERNELS_AOT_DIR/manifest.json`` (written by kernels/aot/build.py).
    """
    from kernels.aot.build import Variant, compile_variant, signature

    num_args = len(signature(Variant("ms_deform_attn_fwd", dtype, 0)))
    try:
        import triton
    except ImportError:
        return _precompiled_ptx(dtype, constants, arch, num_args)
    if arch is None:
        target = triton.runtime.driver.active.get_current_target()
        arch = int(target.arch)
    variant, ptx, _ = compile_variant(Variant("ms_deform_attn_fwd", dtype, arch, dict(constants)))
    return variant.entry, strip_scratch_params(ptx, num_args), variant.shared


def _precompiled_ptx(dtype, constants, arch, num_args):
    aot_dir = os.environ.get("OMG_KERNELS_AOT_DIR")
    if not aot_dir:
        raise RuntimeError(f"{PLUGIN_ID}: Triton is not installed and OMG_KERNELS_AOT_DIR is not "
                           "set to a kernels/aot/build.py output directory")
    manifest = json.loads((Path(aot_dir) / "manifest.json").read_text())
    for v in manifest["variants"]:
        if (v["kernel"] == "ms_deform_attn_fwd" and v["dtype"] == dtype
                and (arch is None or v["arch"] == arch)
                and all(v["constants"].get(k) == val for k, val in constants.items())):
            ptx = (Path(aot_dir) / v["ptx"]).read_text()
            return v["entry"], strip_scratch_params(ptx, num_args), v["shared"]
    raise RuntimeError(f"{PLUGIN_ID}: no precompiled {dtype} variant with {constants} for "
                       f"sm_{arch} in {aot_dir}")


def register_plugin() -> str:
    """Register the plugin with ``tensorrt.plugin`` (once per process); returns its id."""
    global _registered
    if _registered:
        return PLUGIN_ID
    import tensorrt as trt
    import tensorrt.plugin as trtp

    from kernels.ms_deform_attn_triton import block_sizes

    @trtp.register(PLUGIN_ID)
    def _describe(value: trtp.TensorDesc, spatial_shapes: trtp.TensorDesc,
                  level_start_index: trtp.TensorDesc, sampling_locations: trtp.TensorDesc,
                  attention_weights: trtp.TensorDesc) -> trtp.TensorDesc:
        loc = sampling_locations.shape_expr
        val = value.shape_expr
        return trtp.from_shape_expr((loc[0], loc[1], val[2], val[3]), dtype=value.dtype)

    @trtp.autotune(PLUGIN_ID)
    def _autotune(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                  outputs) -> list[trtp.AutoTuneCombination]:
        # '|' ties the float I/O together: all FP32 or all FP16, as the built-in plugin.
        return [trtp.AutoTuneCombination("FP32|FP16, INT32, INT32, FP32|FP16, FP32|FP16, FP32|FP16",
                                         "LINEAR")]

    @trtp.aot_impl(PLUGIN_ID)
    def _aot(value: trtp.TensorDesc, spatial_shapes: trtp.TensorDesc,
             level_start_index: trtp.TensorDesc, sampling_locations: trtp.TensorDesc,
             attention_weights: trtp.TensorDesc, outputs, tactic: int):
        val, loc = value.shape_expr, sampling_locations.shape_expr
        heads, head_dim = _constant(val[2], "num_heads"), _constant(val[3], "head_dim")
        levels, points = _constant(loc[3], "num_levels"), _constant(loc[4], "num_points")
        block_q, block_d = block_sizes(head_dim)
        dtype = "fp32" if value.dtype == trt.float32 else "fp16"
        constants = dict(M=heads, D=head_dim, L=levels, P=points, BLOCK_Q=block_q, BLOCK_D=block_d)
        entry, ptx, shared = kernel_ptx(dtype, constants)
        launch = trtp.KernelLaunchParams()
        launch.grid_x = trtp.cdiv(loc[1], block_q)  # query blocks
        launch.grid_y = val[2]  # heads
        launch.grid_z = val[0]  # batch
        launch.block_x = 4 * 32  # num_warps = 4 (kernels.aot.build.NUM_WARPS)
        launch.shared_mem = shared
        # Scalars between inputs and outputs, in kernel order: S (keys), Lq (queries).
        scalars = trtp.SymIntExprs.from_tuple([trtp.SymInt32(val[1]), trtp.SymInt32(loc[1])])
        return entry.encode(), ptx.encode(), launch, scalars

    _registered = True
    return PLUGIN_ID
