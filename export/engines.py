"""TensorRT plans for a bundle (``omg-export --engine``), TensorRT 10 Python API.

One plan per graph and precision under ``engines/<key>/`` (the layout and the key:
:mod:`omg_rt.backends.trt_build`, whose :func:`~omg_rt.backends.trt_build.build_plan` builds
every plan here and in the runtime's first use, with the same precision flags and FP32 islands).
``engines/<key>/engines.json`` records the key, the optimisation profiles and the files;
``engines/<key>/timing.cache`` is the builder's timing cache (reused by later builds).

- Every dynamic axis gets one optimisation profile range (``TARGET_RANGES`` per target; the rules
  are shared with the runtime: ``omg_rt.backends.trt_profiles``).
- INT8: explicit quantization, built from the bundle's QDQ graphs (``int8/``, quantized with
  symmetric activations for TensorRT targets).
- The pixel decoder is built from ``tensorrt/pixel_decoder.onnx`` (deformable attention as the
  ``MultiscaleDeformableAttnPlugin_TRT`` plugin: TensorRT >= 10.14 computes the GridSample form
  wrong, NVIDIA/TensorRT#4813), with TensorRT's built-in plugins registered.

``import tensorrt`` happens here only, lazily; without it :func:`build_engines` raises
``BackendUnavailableError`` saying so.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from omg_rt.backends import trt_build, trt_profiles
from omg_rt.backends.trt_build import BuildSettings, engine_key
from omg_rt.backends.trt_profiles import TARGET_RANGES
from omg_rt.errors import BackendUnavailableError
from omg_rt.manifest import EngineRecord, GraphEntry, InputContract, Manifest

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


def current_gpu() -> tuple[str, tuple[int, int]]:
    """Name and compute capability of CUDA device 0."""
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError("TensorRT engines need a CUDA GPU; none is visible")
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), (major, minor)


Shape = tuple[int, ...]


def profile_shapes(entry: GraphEntry, target: str, defaults: Mapping[str, int],
                   contract: InputContract) -> dict[str, tuple[Shape, Shape, Shape]]:
    """(min, opt, max) shapes of every input of a graph with symbolic dimensions, for an export
    target (``defaults``: the bundle's ``Q``, ``K``, ``S``; ``contract``: the bundle's input
    sizes, which give the height and width ranges)."""
    inputs: dict[str, list[int | str | None]] = {
        name: list(tensor.shape) for name, tensor in entry.inputs.items()}
    ranges = {**TARGET_RANGES[target], **trt_profiles.spatial_ranges(contract.to_dict())}
    return trt_profiles.profile_shapes(inputs, ranges, defaults)


def build_engines(bundle: Path, manifest: Manifest, *, target: str,
                  precisions: tuple[str, ...], progress: bool = True, trt: Any = None,
                  gpu: tuple[str, tuple[int, int]] | None = None) -> EngineRecord:
    """Build every graph's plan for every precision into ``engines/<key>/``.

    Args:
        trt: the ``tensorrt`` module (None: imported here); gpu: (name, compute capability) of
            the device (None: CUDA device 0).

    Returns:
        The manifest's engine record for this key (also written to ``engines.json``).

    Raises:
        BackendUnavailableError: TensorRT or a GPU is missing.
        BundleError: TensorRT rejects a graph (every parser error is listed) or fails to build.
    """
    trt = trt if trt is not None else import_tensorrt()
    name, capability = gpu if gpu is not None else current_gpu()
    key = engine_key(name, capability, trt.__version__)
    out = bundle / "engines" / key
    out.mkdir(parents=True, exist_ok=True)
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # MultiscaleDeformableAttnPlugin_TRT
    builder = trt.Builder(logger)
    cache_path = out / "timing.cache"
    cache_bytes = cache_path.read_bytes() if cache_path.exists() else b""
    vocab = manifest.vocabulary
    defaults = {"Q": manifest.num_queries, "K": len(vocab.names), "S": vocab.synonyms}
    files: dict[str, dict[str, str]] = {}
    profiles: dict[str, Any] = {}
    jobs = [(g, p) for g in manifest.graphs for p in precisions]
    for graph, precision in tqdm(jobs, desc="tensorrt", unit="plan", disable=not progress):
        entry = manifest.graphs[graph]
        network, _parser = trt_build.parse(trt, builder, logger,
                                           bundle / entry.tensorrt_source(precision))
        shapes = profile_shapes(entry, target, defaults, manifest.input)
        plan, cache_bytes = trt_build.build_plan(
            trt, builder, network, BuildSettings(precision, WORKSPACE_BYTES), shapes, cache_bytes)
        relative = trt_build.plan_path(key, graph, precision)
        (bundle / "engines" / relative).write_bytes(plan)
        files.setdefault(graph, {})[precision] = f"engines/{relative.as_posix()}"
        profiles[graph] = {k: [list(s) for s in v] for k, v in shapes.items()}
    cache_path.write_bytes(cache_bytes)
    record = EngineRecord(key=key, gpu=name, compute_capability=tuple(capability),
                          tensorrt=trt.__version__, target=target, files=files,
                          profiles=profiles, timing_cache=f"engines/{key}/timing.cache")
    (out / "engines.json").write_text(json.dumps(record.to_dict(), indent=1, sort_keys=True))
    return record
