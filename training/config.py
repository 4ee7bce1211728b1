"""Training configuration: one flat, JSON-serialisable dataclass and the named presets.

``omg-train --config run.json`` reads a JSON object of :class:`TrainConfig` fields (unknown or
ill-typed fields raise :class:`TrainConfigError` naming the field); ``--preset NAME`` starts from
``TRAIN_PRESETS[NAME]``; ``--set field=value`` overrides single fields. The config a run used is
written to ``RUN/train_config.json`` and checked again on ``--resume``.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.data.layouts import DATASETS
from training.presets import PRESETS

__all__ = ["TASKS", "TRAIN_PRESETS", "TrainConfig", "TrainConfigError", "get_train_preset"]

# The three kinds of batch the joint sampler draws (also the keys of ``TrainConfig.ratios``).
TASKS: tuple[str, ...] = ("panoptic", "video", "prompt")


class TrainConfigError(ValueError):
    """A training config field is missing, unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on (with the seed, it fixes the run bit for bit).

    Model: ``model`` names a ``training.presets.PRESETS`` entry. The backbone trains unless the
    preset freezes it; the CLIP text tower is always frozen (its embeddings of the class names are
    the classifier's fixed bank). ``position_init_gain`` > 0 starts the cross-attention heads
    looking where their query's position code points (prompts see their box from step 0; the
    official Xavier init, 0, leaves clicks to a slow DETR-like search: one-click mIoU 0.155 vs
    0.68 after the same 6000 synthetic steps).

    Data: the procedural shapes world (``training.data``) is generated under ``data_root``
    (default ``RUN/data``) unless it is already there: ``train`` and ``val`` splits of
    ``image_size`` px scenes, training scenes holding ``train_things`` (fewest, most) things
    (busier scenes hold more same-class pairs, the hard case of the held-out metrics). Images
    train as ``image_frames``-frame clips (2 = OMG-Seg's pseudo-video), videos as
    ``video_frames``-frame clips, prompts as ``num_prompts`` clicks or boxes per image; all are
    cropped to ``input_size`` after a random rescale in ``*_scale_range``. ``ratios`` weighs the
    tasks of the joint sampler.

    Real datasets: ``datasets`` lists the training sources instead of the world alone, each
    ``{"dataset": NAME, "root": DIR, "split": "train", "ratio": 1.0}`` (NAME one of
    ``training.data.layouts.DATASETS``, found in its usual layout under ``root``; or
    ``"images"`` / ``"annotations"`` / ``"masks"`` paths instead of ``root``), or
    ``{"dataset": "synthetic"}`` for the generated world (whose ``val`` split is then the
    held-out evaluation; without it, score the exported bundle with ``omg-eval``). Their class
    lists merge by name into one vocabulary, things first (``training.data.mixing``). Image
    datasets feed the panoptic and prompt batches, video datasets the video batches;
    ``ratios`` still splits the batches between tasks, and an entry's ``ratio`` weighs it
    against the other datasets of the same task.

    Optimisation: AdamW (``lr``, ``weight_decay``; the backbone at ``lr * backbone_lr_mult``),
    linear warm-up over ``warmup_steps`` then cosine decay to ``lr * min_lr_ratio`` at ``steps``;
    gradients clipped to ``grad_clip`` (L2 norm, 0 = off). ``batch_size`` is per process.

    Losses: the official weights by default (``training.losses.SetCriterion``), with fewer points.
    Prompt batches weigh their class loss by ``prompt_class_weight`` instead: upstream's prompt
    class loss is a sum over all prompts of the batch (normaliser clamped to 1), tens of times
    the mask losses at our batch sizes, and with gradient clipping it kept the prompt masks from
    learning at all (measured: interactive mIoU 0.07 after 750 steps at weight 2.0).
    """

    # model
    model: str = "synthetic-tiny"
    # From-scratch init: cross-attention heads start attending where their query's position
    # code points, at this gain (0 = the official Xavier init; see
    # ``Mask2FormerQueryDecoder.init_position_attention``).
    position_init_gain: float = 2.0
    # data
    data_root: str | None = None
    data_seed: int = 0
    image_size: int = 64
    # Things per training scene (image or video), fewest and most; held-out scenes keep the
    # world's default (``SceneConfig``: 1 to 4).
    train_things: tuple[int, int] = (1, 4)
    num_train_images: int = 512
    num_train_videos: int = 64
    train_video_length: int = 8
    num_val_images: int = 64
    num_val_videos: int = 8
    val_video_length: int = 9
    input_size: int = 64
    image_scale_range: tuple[float, float] = (0.5, 1.5)
    video_scale_range: tuple[float, float] = (0.8, 1.25)
    image_frames: int = 1
    video_frames: int = 2
    num_prompts: int = 8
    point_ratio: float = 0.5
    ratios: dict[str, float] = field(
        default_factory=lambda: {"panoptic": 0.4, "video": 0.3, "prompt": 0.3}
    )
    num_workers: int = 0
    datasets: tuple[dict[str, str | float], ...] = ()  # empty = the synthetic world alone
    # optimisation
    steps: int = 1000
    batch_size: int = 4
    lr: float = 3e-4
    backbone_lr_mult: float = 1.0
    weight_decay: float = 0.05
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_clip: float = 0.01
    # losses
    class_weight: float = 2.0
    prompt_class_weight: float = 0.1
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    iou_weight: float = 2.0
    void_weight: float = 0.1
    num_points: int = 1024
    # bookkeeping
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    checkpoint_every: int = 0  # 0 = only at the end (and at every evaluation)
    eval_images: int | None = None  # None = all of the val split
    eval_videos: int | None = None
    threads: int | None = None  # torch intra-op threads per process (None = torch's default)
    deterministic: bool = True

    def __post_init__(self) -> None:
        _check_types(self)
        problems = []
        if self.model not in PRESETS:
            problems.append(f"model: expected one of {sorted(PRESETS)}, got {self.model!r}")
        for name in ("image_size", "input_size", "steps", "batch_size", "num_prompts",
                     "num_points", "train_video_length", "val_video_length", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: expected >= 1, got {getattr(self, name)}")
        for name in ("num_train_images", "num_train_videos", "num_val_images", "num_val_videos",
                     "warmup_steps", "eval_every", "checkpoint_every", "num_workers", "seed",
                     "data_seed"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.input_size % 32:
            problems.append(f"input_size: expected a multiple of 32, got {self.input_size}")
        if self.image_frames not in (1, 2):
            problems.append(f"image_frames: expected 1 or 2, got {self.image_frames}")
        if not 1 <= self.video_frames <= self.train_video_length:
            problems.append(f"video_frames: expected 1..train_video_length "
                            f"({self.train_video_length}), got {self.video_frames}")
        if not 1 <= self.train_things[0] <= self.train_things[1]:
            problems.append(f"train_things: expected 1 <= fewest <= most, got {self.train_things}")
        for name in ("image_scale_range", "video_scale_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                problems.append(f"{name}: expected 0 < lo <= hi, got {getattr(self, name)}")
        for name in ("lr", "grad_clip", "weight_decay", "backbone_lr_mult", "class_weight",
                     "position_init_gain",
                     "prompt_class_weight",
                     "mask_weight", "dice_weight", "iou_weight", "void_weight"):
            if getattr(self, name) < 0:
                problems.append(f"{name}: expected >= 0, got {getattr(self, name)}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio: expected in [0, 1], got {self.min_lr_ratio}")
        if not 0 <= self.point_ratio <= 1:
            problems.append(f"point_ratio: expected in [0, 1], got {self.point_ratio}")
        unknown = set(self.ratios) - set(TASKS)
        if unknown:
            problems.append(f"ratios: unknown tasks {sorted(unknown)}; expected keys from {TASKS}")
        elif any(v < 0 for v in self.ratios.values()) or sum(self.ratios.values()) <= 0:
            problems.append(f"ratios: expected non-negative weights with a positive sum, got "
                            f"{self.ratios}")
        elif self.uses_world:
            for task, available in (("panoptic", self.num_train_images),
                                    ("prompt", self.num_train_images),
                                    ("video", self.num_train_videos)):
                if self.ratios.get(task, 0) > 0 and available == 0:
                    problems.append(f"ratios: {task!r} has weight {self.ratios[task]} but the "
                                    f"training split has no {task} data")
        problems += _dataset_problems(self.datasets)
        for name in ("eval_images", "eval_videos", "threads"):
            value = getattr(self, name)
            if value is not None and value < (1 if name == "threads" else 0):
                problems.append(f"{name}: expected None or >= {1 if name == 'threads' else 0}, "
                                f"got {value}")
        if problems:
            raise TrainConfigError("invalid TrainConfig: " + "; ".join(problems))

    @property
    def uses_world(self) -> bool:
        """Whether the generated synthetic world is (one of) the training data."""
        return not self.datasets or any(d.get("dataset") == "synthetic" for d in self.datasets)

    # ------------------------------------------------------------------ (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A config from a dict of fields (missing fields keep their defaults)."""
        if not isinstance(data, dict):
            raise TrainConfigError(f"config: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigError(f"config: unknown fields {unknown}; known: {sorted(known)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrainConfigError(f"config: not valid JSON ({exc})") from exc
        return cls.from_dict(data)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise TrainConfigError(f"config: {path} is not a file")
        return cls.from_json(path.read_text())

    def replace(self, **changes: Any) -> TrainConfig:
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TrainConfigError(f"config: unknown fields {unknown}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
        return dataclasses.replace(self, **values)

    def with_overrides(self, assignments: list[str]) -> TrainConfig:
        """Apply ``field=value`` strings (value parsed as JSON, else taken as a string)."""
        changes: dict[str, Any] = {}
        for item in assignments:
            name, sep, raw = item.partition("=")
            if not sep or not name:
                raise TrainConfigError(f"--set: expected field=value, got {item!r}")
            try:
                changes[name.strip()] = json.loads(raw)
            except json.JSONDecodeError:
                changes[name.strip()] = raw
        return self.replace(**changes)


DATASET_KEYS = ("dataset", "root", "split", "images", "annotations", "masks", "ratio")


def _dataset_problems(entries: tuple[dict[str, str | float], ...]) -> list[str]:
    problems = []
    for k, entry in enumerate(entries):
        where = f"datasets[{k}]"
        unknown = sorted(set(entry) - set(DATASET_KEYS))
        name = entry.get("dataset")
        if unknown:
            problems.append(f"{where}: unknown keys {unknown}; known: {list(DATASET_KEYS)}")
        elif name not in (*DATASETS, "synthetic"):
            problems.append(f"{where}: expected 'dataset' one of {[*DATASETS, 'synthetic']}, "
                            f"got {name!r}")
        elif not isinstance(entry.get("ratio", 1.0), int | float) or entry.get("ratio", 1.0) < 0:
            problems.append(f"{where}: expected 'ratio' >= 0, got {entry.get('ratio')!r}")
        elif name != "synthetic" and not entry.get("root") and not (
                entry.get("images") and entry.get("annotations")):
            problems.append(f"{where}: {name} needs 'root', or 'images' and 'annotations'")
        elif any(not isinstance(entry[key], str) for key in entry if key not in ("ratio",)):
            problems.append(f"{where}: expected strings for {[*DATASET_KEYS[:-1]]}")
    return problems


def _check_types(config: TrainConfig) -> None:
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not _matches(value, hints[f.name]):
            raise TrainConfigError(
                f"{f.name}: expected {_describe(hints[f.name])}, got {type(value).__name__} "
                f"{value!r}"
            )


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return isinstance(value, tuple) and all(_matches(v, args[0]) for v in value)
        return (isinstance(value, tuple) and len(value) == len(args)
                and all(_matches(v, a) for v, a in zip(value, args)))
    if origin is dict:
        key_type, value_type = typing.get_args(hint)
        return isinstance(value, dict) and all(
            _matches(k, key_type) and _matches(v, value_type) for k, v in value.items()
        )
    raise TypeError(f"unsupported config type {hint}")  # a programming error, not user input


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0])}"
        return "[" + ", ".join(_describe(a) for a in args) + "]"
    if origin is dict:
        return "an object of " + _describe(typing.get_args(hint)[1])
    return hint.__name__


TRAIN_PRESETS: dict[str, TrainConfig] = {
    # The embedded default: a small model learns the shapes world on the 2-core CPU in at most
    # 15 minutes (the measured curve and what it reaches: ``training/EXPERIMENTS.md``).
    "synthetic-tiny": TrainConfig(
        model="synthetic-tiny",
        num_train_images=2000,
        num_train_videos=300,
        num_val_images=100,
        # Busier training scenes (2 to 6 things; held out: 1 to 4) hold more same-class pairs,
        # the case that limits video IDs (training/EXPERIMENTS.md)
        train_things=(2, 6),
        # 200 held-out videos (~480 thing tracks): with 48, a run's ID consistency differed
        # by 0.04 between two video sets of the same world (one standard error)
        num_val_videos=200,
        image_scale_range=(0.7, 1.3),
        video_frames=3,
        ratios={"panoptic": 0.35, "video": 0.35, "prompt": 0.3},
        steps=6000,
        lr=5e-4,
        warmup_steps=200,
        num_points=512,
        eval_every=1000,
        # one thread: these tensors are too small for two to pay off, and on a shared machine
        # a second thread mostly spins
        threads=1,
    ),
}


def get_train_preset(name: str) -> TrainConfig:
    """The training preset called ``name``."""
    try:
        return TRAIN_PRESETS[name]
    except KeyError:
        raise TrainConfigError(
            f"preset: expected one of {sorted(TRAIN_PRESETS)}, got {name!r}"
        ) from None
