"""The one TensorRT engine builder (TensorRT 10 Python API): ``omg-export --engine``
(:mod:`export.engines`) and the runtime's first use (:mod:`omg_rt.backends.tensorrt`) both build
every plan with :func:`build_plan`, so a plan means the same thing whoever built it.

- Precision: FP16 plans set ``BuilderFlag.FP16`` and pin FP32 islands (normalisation, softmax,
  reductions: ConvNeXt's LayerNorm overflows in FP16) under ``OBEY_PRECISION_CONSTRAINTS``;
  INT8 plans are built from the bundle's explicit QDQ graphs with ``INT8`` on top of that.
- Profiles: one optimisation profile with the (min, opt, max) shape of every dynamic input
  (:mod:`omg_rt.backends.trt_profiles`; the caller computes them).
- Where plans live: ``engines/<key>/<graph>.<precision>.plan`` with
  ``key`` = :func:`engine_key` (GPU name, compute capability, TensorRT version): a plan is only
  valid for exactly that triple.

Stdlib only; the ``trt`` module is passed in by the caller, which imports it lazily.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omg_rt.errors import BundleError
from omg_rt.spec import PRECISIONS

# Layer types computed in FP32 in every reduced-precision plan.
FP32_ISLANDS = ("NORMALIZATION", "SOFTMAX", "REDUCE")

Shape = tuple[int, ...]


@dataclass(frozen=True)
class BuildSettings:
    """How one plan is built.

    Attributes:
        precision: ``fp32``, ``fp16`` or ``int8`` (explicit QDQ graph).
        workspace_bytes: the builder's workspace pool limit.
        dla_core: build for this DLA core (Jetson), None = GPU only.
        gpu_fallback: with a DLA core, let layers DLA cannot run fall back to the GPU.
    """

    precision: str
    workspace_bytes: int = 1 << 30
    dla_core: int | None = None
    gpu_fallback: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise BundleError(
                f"tensorrt: precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")


def engine_key(gpu_name: str, capability: tuple[int, int], trt_version: str) -> str:
    """``<gpu name slug>_sm<major><minor>_trt<version>``, e.g.
    ``nvidia-h100-80gb-hbm3_sm90_trt10.9.0``."""
    slug = re.sub(r"[^a-z0-9]+", "-", gpu_name.strip("\x00 ").lower()).strip("-")
    return f"{slug}_sm{capability[0]}{capability[1]}_trt{trt_version}"


def plan_path(key: str, graph: str, precision: str) -> Path:
    """A plan's path relative to the bundle's ``engines/`` directory (or an engine cache)."""
    return Path(key) / f"{graph}.{precision}.plan"


def configure(trt: Any, builder: Any, network: Any, settings: BuildSettings) -> Any:
    """The builder config of ``settings`` for ``network`` (FP32 islands pinned on the network
    for reduced precisions)."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_bytes))
    if settings.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pin_fp32_islands(trt, network)
    if settings.precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)  # explicit Q/DQ nodes in the int8 graphs
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(settings.dla_core)
        if settings.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    return config


def pin_fp32_islands(trt: Any, network: Any) -> list[str]:
    """Run :data:`FP32_ISLANDS` layers in FP32; returns the names of the layers pinned."""
    islands = {getattr(trt.LayerType, name) for name in FP32_ISLANDS}
    pinned = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type in islands:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned.append(layer.name)
    return pinned


def network_inputs(network: Any) -> dict[str, Shape]:
    """Input name -> shape (-1 on dynamic axes) of a parsed network."""
    inputs = (network.get_input(i) for i in range(network.num_inputs))
    return {t.name: tuple(int(d) for d in t.shape) for t in inputs}


def parse(trt: Any, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    """(network, parser) of an ONNX file (keep the parser alive until the plan is built), or
    BundleError listing every parser error."""
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BundleError(f"tensorrt: cannot parse {onnx_path}: {errors}")
    return network, parser


def build_plan(
    trt: Any,
    builder: Any,
    network: Any,
    settings: BuildSettings,
    shapes: dict[str, tuple[Shape, Shape, Shape]],
    timing_cache: bytes = b"",
) -> tuple[bytes, bytes]:
    """Build one plan.

    Args:
        trt: the ``tensorrt`` module; builder, network: from :func:`parse`.
        shapes: (min, opt, max) per dynamic input (empty: every input is static).
        timing_cache: a previous build's serialised timing cache (b"" = start empty).

    Returns:
        (serialised plan, the timing cache after this build).

    Raises:
        BundleError: TensorRT could not build the network.
    """
    config = configure(trt, builder, network, settings)
    config.set_timing_cache(config.create_timing_cache(timing_cache), ignore_mismatch=False)
    if shapes:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BundleError(f"tensorrt: building the {settings.precision} plan failed (see the "
                          "TensorRT log above)")
    return bytes(plan), bytes(config.get_timing_cache().serialize())
