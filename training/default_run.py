"""The embedded default checkpoint: ``synthetic-tiny`` trained on the generated shapes world.

The demo, export tests and benchmarks use the checkpoint ``omg-train --preset synthetic-tiny``
writes. :func:`ensure_checkpoint` returns a cached run directory (``$OMG_RT_CACHE/synthetic-tiny``,
else ``<repo>/runs/synthetic-tiny``) and trains it only when no valid one is there, so nothing
retrains twice; unit tests never call it (they train a few steps on tiny data).

The run directory holds ``checkpoint.safetensors`` + ``config.json`` (``load_checkpoint(RUN)``),
``vocabulary.json`` (class names, ``num_things``), ``metrics.json`` (held-out ``pq``,
``prompt_miou``, ``id_consistency``, ...), ``curve.json`` and ``train.log``.

The recipe, the measured training curve and what moved the numbers are in
``training/EXPERIMENTS.md``.
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
