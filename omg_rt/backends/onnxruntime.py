"""ONNX Runtime backend: the CPU execution provider everywhere, CUDA / TensorRT execution
providers when the installed onnxruntime has them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from omg_rt.backends import ort_ops
from omg_rt.backends.base import TensorSpec
from omg_rt.errors import BackendUnavailableError, BundleError

# ONNX tensor element types as ONNX Runtime names them -> numpy.
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
# Fastest first: what ``providers="auto"`` asks for, keeping only what this build has.
PREFERRED_PROVIDERS = (
    "TensorrtExecutionProvider",
    "CUDAExecutionProvider",
    "CPUExecutionProvider",
)


def available_providers() -> list[str]:
    """Execution providers of the installed onnxruntime (BackendUnavailableError if absent)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailableError(f"onnxruntime: not installed ({exc})") from exc
    return list(onnxruntime.get_available_providers())


def choose_providers(requested: str | list[str] = "auto") -> list[str]:
    """``"auto"`` -> the preferred providers this build has; ``"cpu"``/``"cuda"``/``"tensorrt"``
    or an explicit list -> checked against the build (BackendUnavailableError naming the gap)."""
    have = available_providers()
    if requested == "auto":
        return [p for p in PREFERRED_PROVIDERS if p in have]
    aliases = {
        "cpu": ["CPUExecutionProvider"],
        "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
    }
    wanted = aliases.get(requested, None) if isinstance(requested, str) else list(requested)
    if wanted is None:
        raise BackendUnavailableError(
            f"onnxruntime providers: expected 'auto', 'cpu', 'cuda', 'tensorrt' or a list, "
            f"got {requested!r}"
        )
    missing = [p for p in wanted if p not in have]
    if missing:
        raise BackendUnavailableError(
            f"onnxruntime: this build lacks {missing} (it has {have}); install onnxruntime-gpu "
            f"for CUDA/TensorRT"
        )
    return wanted


class OnnxRuntimeGraph:
    """One ONNX graph in an ``onnxruntime.InferenceSession``.

    Args:
        path: the .onnx file.
        providers: execution providers in priority order (see :func:`choose_providers`).
        intra_op_threads: threads per session (0 = onnxruntime's default, all cores).
        trt_cache_dir: where the TensorRT execution provider caches its engines.
    """

    def __init__(
        self,
        path: Path,
        *,
        providers: list[str],
        intra_op_threads: int = 0,
        trt_cache_dir: Path | None = None,
    ) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(intra_op_threads)
        options.log_severity_level = 3
        # Idle ORT threads spin by default: between graph calls they would steal the cores the
        # host post-processing (numpy) — or another backend in the process — needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        # Flush denormals to zero on ORT's CPU threads: the masked cross-attention's softmax
        # sees half its logits at -inf, and MLAS's exp of those lands in denormals, which cost
        # x86 microcode assists (the ConvNeXt-L query decoder's softmax 5x slower); their true
        # value is 0 (benchmarks/RESULTS.md, 2026-12-04).
        options.add_session_config_entry("session.set_denormal_as_zero", "1")
        # ONNX Runtime's memory pattern plans one block for all of a run's intermediates per
        # input shape, and its first two runs at each new shape (every image size is one) then
        # cost up to twice a steady run: ConvNeXt-L's 5-frame query decoder 3.0 and 3.5 s, then
        # 1.5 s; without it 2.0, 1.6, 1.5 s, and steady runs are as fast (2026-12-05).
        options.enable_mem_pattern = False
        provider_args: list[str | tuple[str, dict[str, Any]]] = []
        for provider in providers:
            if provider == "TensorrtExecutionProvider" and trt_cache_dir is not None:
                os.makedirs(trt_cache_dir, exist_ok=True)
                provider_args.append(
                    (
                        provider,
                        {
                            "trt_engine_cache_enable": True,
                            "trt_engine_cache_path": str(trt_cache_dir),
                            "trt_fp16_enable": False,
                        },
                    )
                )
            else:
                provider_args.append(provider)
        try:
            # "+omg-ops" below: the graph runs omg-rt's fused operators (ort_ops)
            self.session, self.custom_ops = ort_ops.inference_session(path, options,
                                                                      provider_args)
        except BackendUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise BundleError(f"{path}: onnxruntime cannot load it ({exc})") from exc
        providers_used = ",".join(self.session.get_providers())
        self.name = f"onnxruntime[{providers_used}]" + ("+omg-ops" if self.custom_ops else "")
        self._inputs = {
            node.name: TensorSpec(
                name=node.name,
                shape=tuple(d if isinstance(d, int) else str(d or "") for d in node.shape),
                dtype=_ORT_DTYPES.get(node.type, node.type),
            )
            for node in self.session.get_inputs()
        }
        self._output_names = [node.name for node in self.session.get_outputs()]

    def inputs(self) -> dict[str, TensorSpec]:
        return dict(self._inputs)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, values, strict=True))

    def close(self) -> None:
        self.session = None
