"""Inference backends behind one Protocol (:class:`~omg_rt.backends.base.Backend`).

``open_backends(kind, ...)`` loads every graph of a bundle with one backend:

- ``"onnxruntime"``: CPU everywhere, CUDA / TensorRT execution providers where the build has them;
- ``"tensorrt"``: TensorRT 10 engines (built on first use on this device), imported lazily;
- ``"torch"``: the PyTorch model (needs a checkpoint), imported lazily — the reference;
- ``"auto"``: TensorRT, then ONNX Runtime with CUDA, then ONNX Runtime on the CPU; logs once why
  each faster one was skipped and returns that report.

A *named* backend works or raises BackendUnavailableError with the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omg_rt.backends.base import Backend, GraphRunner, TensorSpec
from omg_rt.errors import BackendUnavailableError, InvalidInputError
from omg_rt.spec import GRAPHS

log = logging.getLogger("omg_rt")
BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
_REPORTED: set[tuple[str, ...]] = set()


@dataclass
class BackendChoice:
    """The opened graphs and why this backend was chosen.

    Attributes:
        name: the backend that runs (``onnxruntime[CPUExecutionProvider]``, ``tensorrt``, ...).
        runners: graph name -> validating runner.
        report: (candidate, "used" or the reason it was skipped) in the order tried.
    """

    name: str
    runners: dict[str, GraphRunner]
    report: list[tuple[str, str]] = field(default_factory=list)

    @property
    def on_gpu(self) -> bool:
        """Whether the graphs run on a CUDA device (torch on CUDA, ONNX Runtime's CUDA or
        TensorRT provider, TensorRT)."""
        name = self.name.lower()
        return any(key in name for key in ("cuda", "tensorrt"))

    def close(self) -> None:
        for runner in self.runners.values():
            runner.close()


def _runners(graphs: Mapping[str, Backend]) -> dict[str, GraphRunner]:
    by_name = {g.name: g for g in GRAPHS}
    return {name: GraphRunner(by_name[name], backend) for name, backend in graphs.items()}


def _open_onnxruntime(
    bundle: Any, precision: str, providers: Any, options: dict[str, Any]
) -> dict[str, Backend]:
    from omg_rt.backends.onnxruntime import OnnxRuntimeGraph, choose_providers

    chosen = choose_providers(providers)
    return {
        name: OnnxRuntimeGraph(
            _onnxruntime_file(bundle, name, precision, chosen, options.get("fused_ops", True)),
            providers=chosen,
            intra_op_threads=options.get("threads", 0),
            trt_cache_dir=bundle.root / "engines" / "onnxruntime-trt",
        )
        for name in bundle.graphs
        if precision in bundle.graphs[name].files
    }


def _onnxruntime_file(bundle: Any, name: str, precision: str, providers: list[str],
                      fused_ops: bool) -> Any:
    """The graph file ONNX Runtime runs: on the CPU provider alone, the fused flavour where the
    bundle has one and omg-rt's custom operators build here (``omg_rt.backends.ort_ops``; a
    third faster pixel decoder on ConvNeXt-L), else the portable graph."""
    fused = bundle.graphs[name].fused_files or {}
    if fused_ops and precision in fused and providers == ["CPUExecutionProvider"]:
        from omg_rt.backends import ort_ops

        if ort_ops.available():  # without a C compiler the portable graph computes the same
            return bundle.root / fused[precision]
    return bundle.graph_file(name, precision)


def open_backends(
    kind: str,
    *,
    bundle: Any = None,
    model: Any = None,
    precision: str = "fp32",
    device: str = "auto",
    providers: Any = "auto",
    options: dict[str, Any] | None = None,
) -> BackendChoice:
    """Open every graph with backend ``kind``.

    Args:
        kind: one of ``BACKENDS``.
        bundle: a :class:`~omg_rt.bundle.Bundle` (onnxruntime, tensorrt).
        model: the PyTorch model (torch).
        precision: ``fp32``, ``fp16`` or ``int8`` (bundle backends).
        device: torch device (``auto``, ``cpu``, ``cuda``).
        providers: onnxruntime providers (``auto``, ``cpu``, ``cuda``, ``tensorrt`` or a list).
        options: ``threads`` and ``fused_ops`` (onnxruntime), ``cuda_graphs`` (torch: replay
            the prompt graphs from CUDA graphs on a GPU, default True), and TensorRT options
            (see :class:`~omg_rt.backends.tensorrt.TensorRTOptions`).
    """
    options = dict(options or {})
    graphs: Mapping[str, Backend]
    if kind not in BACKENDS:
        raise InvalidInputError(f"backend: expected one of {BACKENDS}, got {kind!r}")
    if kind == "torch":
        if model is None:
            raise BackendUnavailableError(
                "torch backend: needs the PyTorch model — pass checkpoint=... to from_bundle, "
                "or use Segmenter.from_checkpoint"
            )
        from omg_rt.backends.torch import open_torch_graphs

        graphs = open_torch_graphs(
            model, device=device, cuda_graphs=bool(options.get("cuda_graphs", True))
        )
        name = next(iter(graphs.values())).name
        return BackendChoice(name, _runners(graphs), [(name, "used")])
    if bundle is None:
        raise BackendUnavailableError(f"{kind} backend: needs a bundle (Segmenter.from_bundle)")
    if precision not in bundle.precisions:
        raise InvalidInputError(
            f"precision: expected one of the bundle's {list(bundle.precisions)}, got {precision!r}"
        )
    if kind == "onnxruntime":
        graphs = _open_onnxruntime(bundle, precision, providers, options)
        name = next(iter(graphs.values())).name
        return BackendChoice(name, _runners(graphs), [(name, "used")])
    if kind == "tensorrt":
        from omg_rt.backends.tensorrt import open_tensorrt_graphs

        graphs = open_tensorrt_graphs(bundle, precision, options)
        return BackendChoice("tensorrt", _runners(graphs), [("tensorrt", "used")])
    return _auto(bundle, precision, options)


def _auto(bundle: Any, precision: str, options: dict[str, Any]) -> BackendChoice:
    report: list[tuple[str, str]] = []
    try:
        from omg_rt.backends.tensorrt import open_tensorrt_graphs

        graphs = open_tensorrt_graphs(bundle, precision, options)
        report.append(("tensorrt", "used"))
        choice = BackendChoice("tensorrt", _runners(graphs), report)
        _log_once(report)
        return choice
    except BackendUnavailableError as exc:
        report.append(("tensorrt", str(exc)))
    from omg_rt.backends.onnxruntime import available_providers

    have = available_providers()
    gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in have]
    if gpu:
        graphs = _open_onnxruntime(bundle, precision, [*gpu, "CPUExecutionProvider"], options)
    else:
        report.append(
            ("onnxruntime[CUDA]", f"this onnxruntime build has no CUDA/TensorRT provider ({have})")
        )
        graphs = _open_onnxruntime(bundle, precision, ["CPUExecutionProvider"], options)
    name = next(iter(graphs.values())).name
    report.append((name, "used"))
    _log_once(report)
    return BackendChoice(name, _runners(graphs), report)


def _log_once(report: list[tuple[str, str]]) -> None:
    key = tuple(f"{a}:{b}" for a, b in report)
    if key in _REPORTED:
        return
    _REPORTED.add(key)
    for candidate, outcome in report:
        if outcome == "used":
            log.info("backend auto: using %s", candidate)
        else:
            log.info("backend auto: skipped %s: %s", candidate, outcome)


__all__ = [
    "BACKENDS",
    "Backend",
    "BackendChoice",
    "GraphRunner",
    "TensorSpec",
    "open_backends",
]
