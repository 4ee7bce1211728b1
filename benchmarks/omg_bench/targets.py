"""The model under test and one opened :class:`~omg_rt.Segmenter` per backend x precision x
image size, or the reason that combination was skipped (never dropped silently)."""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.omg_bench.options import BenchOptions, OptionError
from omg_rt.manifest import MANIFEST, Manifest

# Reasons a combination cannot exist anywhere (not a property of this machine).
NO_TORCH_INT8 = ("PyTorch has no INT8 path here: INT8 is the bundle's QDQ graphs "
                 "(onnxruntime, tensorrt)")
NO_CPU_FP16 = "PyTorch FP16 needs CUDA (torch.autocast float16); this machine has no CUDA GPU"


@dataclass
class Model:
    """What was benchmarked: bundles per image size and, when known, the checkpoint."""

    source: str
    kind: str  # "bundle" | "checkpoint" | "preset" | "synthetic"
    checkpoint: Path | None
    bundles: dict[int, Path | None]  # None: nothing but PyTorch can run here, not exported
    trained: bool
    note: str = ""
    torch_model: Any = None
    vocab: Any = None


@dataclass
class Target:
    """One backend x precision x image size.

    Attributes:
        status: ``ok``, ``skipped`` (unavailable here, with ``reason``) or ``failed`` (an
            error while opening or measuring, with ``reason``).
        segmenter: the opened runtime (``ok`` only).
        device: ``cpu`` or ``cuda`` (where the graphs run).
        autocast: PyTorch FP16 runs the torch backend under ``torch.autocast``.
    """

    backend: str
    precision: str
    image_size: int
    status: str = "ok"
    reason: str = ""
    device: str = "cpu"
    runtime_name: str = ""
    segmenter: Any = None
    autocast: bool = False
    open_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.precision}/{self.image_size}"

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision} @{self.image_size}"

    def context(self) -> contextlib.AbstractContextManager:
        """The context every call of this target runs in (autocast for PyTorch FP16)."""
        if not self.autocast:
            return contextlib.nullcontext()
        import torch

        return torch.autocast("cuda", dtype=torch.float16)

    def synchronize(self) -> None:
        """Wait for the work this target queued on its GPU: the PyTorch backend leaves its big
        outputs there (``omg_rt.backends.base.RESIDENT_OUTPUTS``) without waiting for them."""
        if self.backend == "torch" and self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "precision": self.precision,
                "image_size": self.image_size, "device": self.device, "status": self.status,
                "reason": self.reason, "runtime": self.runtime_name}

    def close(self) -> None:
        if self.segmenter is not None:
            self.segmenter.close()
            self.segmenter = None


def _is_bundle(path: Path) -> bool:
    return path.is_dir() and (path / MANIFEST).is_file()


def _bundle_size(path: Path) -> int:
    manifest = Manifest.from_json((path / MANIFEST).read_bytes(), str(path / MANIFEST))
    return int(manifest.input.image_scale[0])


def check_model(options: BenchOptions) -> None:
    """Reject a MODEL that cannot be one before any work is done."""
    source = options.model
    if source == "synthetic" or source.startswith("preset:"):
        return
    if not Path(source).exists():
        raise OptionError(f"MODEL: {source!r} is not a bundle, a checkpoint, 'synthetic' "
                          "or 'preset:NAME'")


def resolve_model(options: BenchOptions, vocab: Any, work: Path,
                  progress: Callable[[str], None]) -> Model:
    """Resolve ``options.model``; export one bundle per image size when it is not a bundle.

    Args:
        vocab: names + num_things of the evaluation data (what the exported bundle is told).
        work: where exported bundles go (``<out>/bundles/<size>``).
    """
    source = options.model
    if _is_bundle(Path(source)):
        bundle = Path(source)
        size = _bundle_size(bundle)
        if options.image_sizes and set(options.image_sizes) != {size}:
            raise OptionError(
                f"--image-size: the bundle {bundle} is exported at {size}; got "
                f"{list(options.image_sizes)} (pass a checkpoint to export other sizes)")
        checkpoint = Path(options.checkpoint) if options.checkpoint else None
        if checkpoint is not None and not checkpoint.exists():
            raise OptionError(f"--checkpoint: {checkpoint} does not exist")
        return Model(str(bundle), "bundle", checkpoint, {size: bundle}, trained=True,
                     note="bundle given; accuracy is as trained as its checkpoint")
    if options.checkpoint:
        raise OptionError("--checkpoint: only used with a BUNDLE (the model is already a "
                          "checkpoint)")
    import torch

    from training.model.checkpoint import load_checkpoint

    if source.startswith("preset:"):
        from training.model import build_model

        torch.manual_seed(0)
        model = build_model(source.split(":", 1)[1]).eval()
        lively_backbone(model)
        kind, trained = "preset", False
        note = ("random weights (seed 0; backbone scales and biases as the official fixture's): "
                "latency is real, accuracy numbers are meaningless; deltas between backends "
                "still measure export/precision error")
        checkpoint = None
    elif source == "synthetic":
        try:
            from training.default_run import ensure_checkpoint  # type: ignore[import-not-found]
        except ImportError as exc:
            raise OptionError(
                "MODEL 'synthetic': training.default_run.ensure_checkpoint is not available in "
                f"this checkout ({exc}); pass a checkpoint path or preset:tiny") from exc
        progress("training/fetching the synthetic checkpoint (ensure_checkpoint)")
        checkpoint = Path(ensure_checkpoint())
        model, _ = load_checkpoint(checkpoint)
        kind, trained, note = "synthetic", True, "the synthetic-tiny checkpoint"
    else:
        checkpoint = Path(source)
        if not checkpoint.exists():
            raise OptionError(f"MODEL: {source!r} is not a bundle, a checkpoint, 'synthetic' "
                              "or 'preset:NAME'")
        model, _ = load_checkpoint(checkpoint)
        kind, trained, note = "checkpoint", True, ""
    spec = model.config
    sizes = options.image_sizes or (max(spec.preprocess.image_scale),)
    # Export only when a graph backend can run here: PyTorch alone runs from the checkpoint
    # (Segmenter.from_checkpoint), and exporting ConvNeXt-L at 1024 costs minutes.
    runnable = [b for b in options.backends if b != "torch" and not absent_reason(b)]
    if checkpoint is None and "torch" in options.backends and (options.cold_start or runnable):
        from training.model.checkpoint import save_checkpoint  # the fresh process loads it

        checkpoint = Path(save_checkpoint(model, work / "checkpoint"))
    bundles: dict[int, Path | None] = {}
    precisions = tuple(p for p in options.precisions if p != "fp32")
    for size in sizes:
        if not runnable:
            bundles[size] = None
            continue
        from export import build_bundle

        progress(f"exporting the bundle at {size}x{size} ({', '.join(('fp32', *precisions))})")
        bundles[size] = Path(build_bundle(
            model, work / "bundles" / str(size), image_size=size, vocab=vocab,
            precisions=("fp32", *precisions), verify=options.verify_export,
            progress=options.progress))
    return Model(source, kind, checkpoint, bundles, trained, note, torch_model=model, vocab=vocab)


def lively_backbone(model: Any, seed: int = 0) -> None:
    """Give the backbone's 1-D tensors the official fixture's rule (``tests/official_golden.py``:
    layer-scale gamma 0.1 + 0.01 r, norm weights 1 + 0.1 r, biases 0.02 r), in place.

    timm's init (gamma 1e-6, zero biases) hides every ConvNeXt MLP branch behind the residual and
    lets the exporter drop the bias Adds, flattering INT8's error and every graph's speed."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.backbone.named_parameters():
            if tensor.ndim != 1:
                continue
            r = torch.randn(tensor.shape, generator=generator)
            leaf = name.rsplit(".", 1)[-1]
            tensor.copy_(0.1 + 0.01 * r if leaf == "gamma"
                         else 1.0 + 0.1 * r if leaf == "weight" else 0.02 * r)


def absent_reason(backend: str) -> str:
    """Why a graph backend cannot run on this machine ('' when it may)."""
    if backend == "onnxruntime-cuda":
        try:
            import onnxruntime
        except ImportError as exc:
            return f"onnxruntime: not installed ({exc})"
        have = onnxruntime.get_available_providers()
        if "CUDAExecutionProvider" not in have:
            return (f"onnxruntime: this build lacks ['CUDAExecutionProvider'] (it has {have}); "
                    "install onnxruntime-gpu for CUDA/TensorRT")
    if backend == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - any import failure means "not usable here"
            return f"tensorrt: `import tensorrt` fails ({exc})"
    return ""


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def open_targets(options: BenchOptions, model: Model) -> list[Target]:
    """Every requested combination, opened or skipped with the reason."""
    from omg_rt.bundle import load_bundle
    from omg_rt.errors import BackendUnavailableError
    from omg_rt.segmenter import Segmenter

    cuda = cuda_available()
    if options.threads and "torch" in options.backends:
        import torch

        torch.set_num_threads(options.threads)  # --threads holds for both CPU runtimes
    max_batch = max(options.batches)
    targets = []
    for size, bundle_path in model.bundles.items():
        precisions_here = (tuple(load_bundle(bundle_path, verify=False).precisions)
                           if bundle_path is not None else ())
        for backend in options.backends:
            for precision in options.precisions:
                target = Target(backend, precision, size)
                target.device = "cpu" if backend == "onnxruntime" or (
                    backend == "torch" and not cuda) else "cuda"
                targets.append(target)
                reason = _static_skip(backend, precision, cuda, model, precisions_here,
                                      bundle_path is None)
                if reason:
                    target.status, target.reason = "skipped", reason
                    continue
                kwargs: dict[str, Any] = {"precision": precision, "threads": options.threads,
                                          "max_encoder_batch": max_batch}
                if backend == "torch":
                    target.device = "cuda" if cuda else "cpu"
                    target.autocast = precision == "fp16"
                    kwargs.update(backend="torch", checkpoint=str(model.checkpoint),
                                  device=target.device)
                elif backend == "onnxruntime":
                    kwargs.update(backend="onnxruntime", providers="cpu")
                elif backend == "onnxruntime-cuda":
                    target.device = "cuda"
                    kwargs.update(backend="onnxruntime", providers="cuda")
                else:
                    target.device = "cuda"
                    kwargs.update(backend="tensorrt")
                if bundle_path is None:  # PyTorch from the checkpoint, no bundle
                    kwargs = {"path": str(model.checkpoint) if model.checkpoint else None,
                              "backend": "torch", "vocabulary": list(model.vocab.names),
                              "num_things": int(model.vocab.num_things), "image_size": size,
                              "device": target.device, "max_encoder_batch": max_batch}
                target.open_kwargs = kwargs
                try:
                    if bundle_path is None:
                        target.segmenter = Segmenter.from_checkpoint(
                            **{**kwargs, "path": model.torch_model})
                    else:
                        target.segmenter = Segmenter.from_bundle(bundle_path, **kwargs)
                    target.runtime_name = target.segmenter.backend_name
                except BackendUnavailableError as exc:
                    target.status, target.reason = "skipped", str(exc)
                except ImportError as exc:
                    target.status, target.reason = "skipped", f"import failed: {exc}"
                except Exception as exc:  # noqa: BLE001 - reported in the table, run goes on
                    target.status, target.reason = "failed", f"{type(exc).__name__}: {exc}"
    return targets


def _static_skip(backend: str, precision: str, cuda: bool, model: Model,
                 bundle_precisions: tuple[str, ...], no_bundle: bool) -> str:
    if backend == "torch":
        if model.checkpoint is None and model.torch_model is None:
            return "the torch backend needs the checkpoint: pass --checkpoint with a BUNDLE"
        if precision == "int8":
            return NO_TORCH_INT8
        if precision == "fp16" and not cuda:
            return NO_CPU_FP16
        return ""
    if no_bundle:  # not exported because no graph backend can run here
        return absent_reason(backend) or "no bundle was exported"
    if precision not in bundle_precisions:
        return (f"the bundle has no {precision} graphs (it has {', '.join(bundle_precisions)}; "
                "re-export with --precisions)")
    return ""


def vocabulary_for(categories: Any) -> Any:
    """What ``export.build_bundle(vocab=...)`` takes for a dataset's categories."""
    return types.SimpleNamespace(names=tuple(categories.names),
                                 num_things=int(categories.num_things))


@contextlib.contextmanager
def opened(targets: list[Target]) -> Iterator[list[Target]]:
    try:
        yield targets
    finally:
        for t in targets:
            t.close()
