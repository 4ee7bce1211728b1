"""The embedded default checkpoint: ``synthetic-tiny`` trained on the generated shapes world.

The demo, export tests and benchmarks use the checkpoint ``omg-train --preset synthetic-tiny``
writes. :func:`ensure_checkpoint` returns a cached run directory (``$OMG_RT_CACHE/synthetic-tiny``,
else ``<repo>/runs/synthetic-tiny``) and trains it only when no valid one is there, so nothing
retrains twice; unit tests never call it (they train a few steps on tiny data).

The run directory holds ``checkpoint.safetensors`` + ``config.json`` (``load_checkpoint(RUN)``),
``vocabulary.json`` (class names, ``num_things``), ``metrics.json`` (held-out ``pq``,
``prompt_miou``, ``id_consistency``, ...), ``curve.json`` and ``train.log``.

Recipe (``TRAIN_PRESETS["synthetic-tiny"]``): the ``synthetic-tiny`` model (ConvNeXt widths
32-256 trained from scratch, 2 deformable encoder layers, 6 decoder layers, 64 channels,
20 queries; frozen random text tower; panoptic overlap threshold 0.5), 64 px scenes (2000
training images and 300 videos of 8 frames holding 2-6 things; held out: 100 images and 200
videos of 9 frames holding 1-4, the world's default), batches of 4 drawn panoptic / video
(3-frame clips) / prompt at 0.35 / 0.35 / 0.3, AdamW 5e-4 (fused) with 200 warm-up steps and
cosine decay, clip 0.01, 512 points, 6000 steps, one thread, and the position-aware init of the
cross-attention (``position_init_gain`` 2, ``Mask2FormerQueryDecoder.init_position_attention``).

Measured (2-core CPU, otherwise idle; wall seconds include the evaluations, ~9 s each; data
generation adds ~10 s). ID consistency over frames where a track shows >= 64 px (all frames),
then split into things alone in their class in the video / sharing it with a look-alike
(alone / alike), and the mean IoU of the tracks (IoU):

| step | wall s | PQ | PQ th / st | click mIoU (th / st) | ID (all frames) | alone / alike | IoU |
|---|---|---|---|---|---|---|---|
| 1000 | 86 | 74.8 | 58.4 / 96.7 | 0.628 (0.478 / 0.890) | 0.724 (0.659) | 0.972 / 0.381 | 0.571 |
| 2000 | 188 | 75.1 | 58.2 / 97.6 | 0.542 (0.415 / 0.764) | 0.739 (0.669) | 0.955 / 0.440 | 0.594 |
| 3000 | 291 | 78.8 | 64.8 / 97.6 | 0.673 (0.564 / 0.864) | 0.778 (0.707) | 0.966 / 0.519 | 0.628 |
| 4000 | 396 | 80.8 | 67.9 / 97.9 | 0.695 (0.582 / 0.891) | 0.808 (0.732) | 0.965 / 0.592 | 0.655 |
| 5000 | 497 | 81.0 | 68.3 / 97.9 | 0.711 (0.600 / 0.902) | 0.811 (0.735) | 0.967 / 0.597 | 0.663 |
| 6000 | 600 | 81.5 | 69.2 / 97.9 | 0.715 (0.625 / 0.872) | 0.821 (0.743) | 0.967 / 0.619 | 0.670 |

All three targets pass: PQ 81.5 (>= 40), one-click mIoU 0.715 (>= 0.65), ID consistency 0.821
(>= 0.8) over 469 thing tracks (197 sharing their class). Bootstrapped over the 200 videos the
ID number has a standard error of 0.016 (95 % interval 0.787-0.851): it clears 0.8 by about
one standard error, not more. What moved the numbers, each measured against the run before it:

- Clicks: with Xavier init every prompt query starts from the same content token and its
  position reaches the decoder only through the cross-attention's query projection, which
  has to discover the key code's geometry on its own (DETR's slow start): one-click mIoU stayed
  at 0.155 after 6000 steps (0.12 after 1500 prompt-only steps). Starting each head's query and
  key projections on the key code's fastest sine channels, and the prompt's ``pos_linear`` on
  its box centre's code, makes the first cross-attention look at the click: 0.62 after 1500
  prompt-only steps, 0.68 after the joint 6000 (gains 2 and 4 alike, 8 worse).
- Video IDs, first round: 3 decoder layers reached ~0.6, 6 layers 0.71-0.76 across runs; 9
  layers (0.69), more video batches (0.73), a 1e-3 learning rate, grid-initialised learned
  queries and 10000 steps (0.742) did not close the gap.
- What limited them was never the tracking: a thing alone in its class keeps its ID in ~97-99 %
  of its frames. Two shapes of one class look alike (colour jitter +-20) and the model drew one
  mask over both: with the 1-4-thing training scenes, things sharing their class were found
  (IoU >= 0.5) in 26 % of held-out images and 32 % of training images (not overfitting), while
  fine-tuning on 8 such images fits them in 100 steps (capacity was not it either).
- Busier training scenes fixed most of it: 1-6 things per training scene reached ID
  consistency 0.77 (look-alike tracks 0.49, PQ 81.3) where three runs of other changes on the
  same 48 videos reached 0.73-0.74 (look-alike 0.39-0.43, PQ 78.8-80.2); 2-6 things added
  ~0.03 on a common 100-video set; 1-8 things was worse (0.74: lone things suffered). Tried and
  not kept (6000 steps each): per-instance stripes on the shapes (+0.03 alone, -0.02 with busier
  scenes, each on its own 48 videos: noise), colour jitter +-27, a deeper backbone (depths
  1-2-3-1), a nonzero deformable value bias (position from the map borders) and, as a diagnosis
  only, a sine position code added to the pixel decoder's outputs: all 0.72-0.74.
- The overlap threshold of the panoptic merge (drop a segment keeping less than this fraction
  of its mask): at the official 0.8 the merge drops the second of two overlapping same-class
  masks. Swept on 100 videos and 200 images generated with data seed 1, which no run trains or
  is scored on: ID 0.794 / 0.812 / 0.820 / 0.820 and PQ 81.1 / 81.8 / 81.4 / 80.7 at 0.8 / 0.65 /
  0.5 / 0.35; the spec takes 0.5. On the held-out set it is 0.821 against 0.784 at 0.8.
- Held-out videos went from 16 to 48 to 200: with 48, one model's ID consistency differed by
  0.04 between two video sets of the same world.

Ceilings measured with an oracle that answers the ground truth at stride 4
(tests/training/test_evaluate.py): prompt mIoU ~0.82-0.88, ID consistency ~0.89 over all
frames and ~1.0 over frames with >= 64 visible pixels.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from omg_rt.spec import ModelSpec
from training.config import TrainConfig, get_train_preset
from training.presets import get_preset

__all__ = ["PRESET", "default_cache_dir", "ensure_checkpoint", "is_complete_run"]

PRESET = "synthetic-tiny"
CACHE_ENV = "OMG_RT_CACHE"
_REPO = Path(__file__).resolve().parents[1]


def default_cache_dir() -> Path:
    """``$OMG_RT_CACHE/synthetic-tiny`` if that is set, else ``<repo>/runs/synthetic-tiny``."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else _REPO / "runs") / PRESET


def is_complete_run(run: str | os.PathLike, config: TrainConfig | None = None) -> bool:
    """Whether ``run`` holds a finished run of ``config`` (default: the synthetic-tiny preset)."""
    run = Path(run)
    config = config or get_train_preset(PRESET)
    needed = ("checkpoint.safetensors", "config.json", "metrics.json", "vocabulary.json",
              "train_config.json")
    if not all((run / name).is_file() for name in needed):
        return False
    try:
        saved = json.loads((run / "train_config.json").read_text())
        spec = ModelSpec.from_json((run / "config.json").read_text())
        metrics = json.loads((run / "metrics.json").read_text())
    except (ValueError, OSError):
        return False
    # compared as written, so a run from before a config field existed (its default may have
    # changed since) or from an older model preset does not pass for the current recipe
    return (isinstance(saved, dict) and _comparable(saved) == _comparable(config.to_dict())
            and spec == get_preset(config.model) and metrics.get("step") == config.steps)


def ensure_checkpoint(cache_dir: str | os.PathLike | None = None, *,
                      progress: bool = True) -> Path:
    """The synthetic-tiny run directory, trained first if the cache has no complete run.

    Training goes to ``<cache_dir>.partial`` (resumed if a previous attempt was interrupted) and
    is renamed into place when done; a lock file serialises concurrent callers. A cache holding
    a run of another config is replaced.

    Args:
        cache_dir: the run directory (default :func:`default_cache_dir`).
        progress: show the training progress bar.

    Returns:
        the run directory (``load_checkpoint(path)`` loads it).
    """
    from training.train import train

    run = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    config = get_train_preset(PRESET)
    if is_complete_run(run, config):
        return run
    run.parent.mkdir(parents=True, exist_ok=True)
    with open(run.parent / f".{run.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete_run(run, config):  # another process finished it while we waited
            return run
        partial = run.with_name(run.name + ".partial")
        resume = (partial / "train_state.pt").is_file() and _same_config(partial, config)
        if not resume and partial.exists():
            shutil.rmtree(partial)
        train(config, partial, resume=resume, progress=progress)
        if run.exists():
            shutil.rmtree(run)
        os.replace(partial, run)
    return run


def _same_config(run: Path, config: TrainConfig) -> bool:
    try:
        saved = TrainConfig.from_json((run / "train_config.json").read_text())
    except (ValueError, OSError):
        return False
    return saved == config


def _comparable(config: dict) -> dict:
    """A config's fields without where its data lives (a cache may be moved), JSON-typed."""
    data = json.loads(json.dumps(config))
    data.pop("data_root", None)
    return data
