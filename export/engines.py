"""TensorRT plans for a bundle (``omg-export --engine``), TensorRT 10 Python API.

One plan per graph and precision under ``engines/<key>/``, ``key`` = GPU name, compute capability
and TensorRT version (``nvidia-h100-80gb-hbm3_sm90_trt10.9.0``): a plan is only valid for exactly
that triple, so the runtime loads plans from the directory whose key matches its own and never
another. ``engines/<key>/engines.json`` records the key, the optimisation profiles and the files;
``engines/<key>/timing.cache`` is the builder's timing cache (reused by later builds).

- Every dynamic axis gets one optimisation profile range (``TARGET_RANGES`` per target; the rules
  are shared with the runtime's engine builder: ``omg_rt.backends.trt_profiles``).
- FP16: ``BuilderFlag.FP16`` with FP32 islands pinned (normalisation, softmax, reductions;
  ``OBEY_PRECISION_CONSTRAINTS``) — ConvNeXt's LayerNorm overflows in FP16.
- INT8: explicit quantization, built from the bundle's QDQ graphs (``int8/``, quantized with
  symmetric activations for TensorRT targets) with ``BuilderFlag.INT8`` and FP16.
- The pixel decoder is built from ``tensorrt/pixel_decoder.onnx`` (deformable attention as the
  ``MultiscaleDeformableAttnPlugin_TRT`` plugin: TensorRT >= 10.14 computes the GridSample form
  wrong, NVIDIA/TensorRT#4813), with TensorRT's built-in plugins registered.

``import tensorrt`` happens here only, lazily; without it :func:`build_engines` raises
``BackendUnavailableError`` saying so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from omg_rt.backends import trt_profiles
from omg_rt.backends.trt_profiles import TARGET_RANGES
from omg_rt.errors import BackendUnavailableError

WORKSPACE_BYTES = 4 << 30


def import_tensorrt() -> Any:
    """``tensorrt`` or ``BackendUnavailableError`` with the reason."""
    try:
        import tensorrt
    except ImportError as exc:  # the package is missing or its libraries do not load
        raise BackendUnavailableError(
            f"TensorRT is not installed here (import tensorrt: {exc}); no engines were built. "
            "The ONNX bundle is complete: build the plans on the target machine with "
            "`omg-export CHECKPOINT --engine` or from the bundle's ONNX files") from exc
    return tensorrt


def engine_key(gpu_name: str, capability: tuple[int, int], trt_version: str) -> str:
    """``<gpu name slug>_sm<major><minor>_trt<version>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-")
    return f"{slug}_sm{capability[0]}{capability[1]}_trt{trt_version}"


def current_gpu() -> tuple[str, tuple[int, int]]:
    """Name and compute capability of CUDA device 0."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("TensorRT engines need a CUDA GPU; none is visible")
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), (major, minor)


Shape = tuple[int, ...]


def profile_shapes(io: Mapping[str, Any], target: str, defaults: Mapping[str, int],
                   contract: Mapping[str, Any]) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shapes of every input of a manifest graph entry with symbolic dimensions,
    for an export target (``defaults``: the bundle's ``Q``, ``K``, ``S``; ``contract``: the
    manifest's ``input`` section, which gives the height and width ranges)."""
    inputs = {name: tensor["shape"] for name, tensor in io["inputs"].items()}
    ranges = {**TARGET_RANGES[target], **trt_profiles.spatial_ranges(contract)}
    return trt_profiles.profile_shapes(inputs, ranges, defaults)


def build_engines(bundle: Path, manifest: Mapping[str, Any], *, target: str,
                  precisions: tuple[str, ...], progress: bool = True) -> dict[str, Any]:
    """Build every graph's plan for every precision into ``engines/<key>/``.

    Returns:
        The manifest's ``engines`` entry for this key.

    Raises:
        BackendUnavailableError: TensorRT or a GPU is missing.
        RuntimeError: TensorRT rejects a graph (every parser error is listed).
    """
    trt = import_tensorrt()
    gpu, capability = current_gpu()
    key = engine_key(gpu, capability, trt.__version__)
    out = bundle / "engines" / key
    out.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # MultiscaleDeformableAttnPlugin_TRT
    builder = trt.Builder(logger)
    cache_path = out / "timing.cache"
    cache_bytes = cache_path.read_bytes() if cache_path.exists() else b""
    vocab = manifest["vocabulary"]
    defaults = {"Q": manifest["queries"]["num_queries"], "K": len(vocab["names"]),
                "S": vocab["synonyms"]}
    files: dict[str, dict[str, str]] = {}
    profiles: dict[str, Any] = {}
    jobs = [(g, p) for g in manifest["graphs"] for p in precisions]
    for graph, precision in tqdm(jobs, desc="tensorrt", unit="plan", disable=not progress):
        entry = manifest["graphs"][graph]
        source = entry.get("tensorrt_files", entry["files"])[precision]
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(bundle / source)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            raise RuntimeError(f"TensorRT cannot parse {source}:\n" + "\n".join(errors))
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, ignore_mismatch=False)
        if precision in ("fp16", "int8"):
            config.set_flag(trt.BuilderFlag.FP16)
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            _pin_fp32_islands(trt, network)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
        shapes = profile_shapes(entry, target, defaults, manifest["input"])
        if shapes:
            profile = builder.create_optimization_profile()
            for name, (lo, opt, hi) in shapes.items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError(f"TensorRT failed to build {graph} ({precision}); see its log")
        name = f"{graph}.{precision}.plan"
        (out / name).write_bytes(bytes(plan))
        cache_bytes = bytes(config.get_timing_cache().serialize())
        files.setdefault(graph, {})[precision] = f"engines/{key}/{name}"
        profiles[graph] = {k: [list(s) for s in v] for k, v in shapes.items()}
    cache_path.write_bytes(cache_bytes)
    record = {"key": key, "gpu": gpu, "compute_capability": list(capability),
              "tensorrt": trt.__version__, "target": target, "files": files,
              "profiles": profiles, "timing_cache": f"engines/{key}/timing.cache"}
    (out / "engines.json").write_text(json.dumps(record, indent=1, sort_keys=True))
    return record


def _pin_fp32_islands(trt: Any, network: Any) -> None:
    """Normalisation, softmax and reductions run in FP32 under the FP16 flag."""
    islands = {trt.LayerType.NORMALIZATION, trt.LayerType.SOFTMAX, trt.LayerType.REDUCE}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in islands:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
