"""Shared, built-once fixtures of the runtime tests: one tiny checkpoint and one tiny bundle at
image size 128 (``export.build_bundle``), and scene generators."""

from __future__ import annotations

import dataclasses
import functools
import shutil
import types
from pathlib import Path

import numpy as np

from tests.conftest import seeded_tiny
from tests.scratch import scratch_dir

IMAGE_SIZE = 128
NAMES = ("person", "car,automobile", "dog", "grass", "sky")
NUM_THINGS = 3


@functools.lru_cache(maxsize=1)
def tiny_checkpoint() -> Path:
    """A seeded tiny model saved with ``save_checkpoint`` (built once per process)."""
    from training.model.checkpoint import save_checkpoint

    model = seeded_tiny(0)
    return save_checkpoint(model, scratch_dir("omg-rt-ckpt-") / "tiny")


@functools.lru_cache(maxsize=1)
def tiny_bundle() -> Path:
    """The tiny checkpoint exported at image size 128 (built once per process)."""
    from export import build_bundle

    out = scratch_dir("omg-rt-bundle-") / "bundle"
    vocab = types.SimpleNamespace(names=NAMES, num_things=NUM_THINGS)
    return build_bundle(tiny_checkpoint(), out, image_size=IMAGE_SIZE, vocab=vocab, verify=False)


def merging_bundle(out: Path, names: tuple[str, ...] = NAMES, num_things: int = NUM_THINGS,
                   image_size: int = IMAGE_SIZE) -> Path:
    """The seeded tiny model exported with overlap threshold 0: its random weights then keep
    panoptic segments (the official 0.8 drops every one of them)."""
    from export import build_bundle

    vocab = types.SimpleNamespace(names=names, num_things=num_things)
    return build_bundle(merging_model(), out, image_size=image_size, vocab=vocab, verify=False)


def merging_model():
    """The seeded tiny model with overlap threshold 0 (see :func:`merging_bundle`)."""
    model = seeded_tiny(0)
    spec = model.config
    model.config = dataclasses.replace(
        spec, postprocess=dataclasses.replace(spec.postprocess, overlap_threshold=0.0))
    return model


def copy_bundle(dest: Path) -> Path:
    """A private copy of the tiny bundle (tests that alter files)."""
    return Path(shutil.copytree(tiny_bundle(), dest))


def scene(seed: int, hw: tuple[int, int] = (96, 120)) -> np.ndarray:
    """An RGB image with a few flat-coloured rectangles and discs on a gradient."""
    rng = np.random.default_rng(seed)
    h, w = hw
    image = np.zeros((h, w, 3), np.uint8)
    image[...] = np.linspace(40, 200, w, dtype=np.uint8)[None, :, None]
    for _ in range(4):
        y, x = rng.integers(0, h - 20), rng.integers(0, w - 20)
        image[y : y + rng.integers(10, 30), x : x + rng.integers(10, 30)] = rng.integers(0, 255, 3)
    return image


def moving_clip(frames: int, hw: tuple[int, int] = (96, 120)) -> list[np.ndarray]:
    """Two objects moving across a static background, 3 px per frame."""
    h, w = hw
    clip = []
    for t in range(frames):
        image = np.full((h, w, 3), 90, np.uint8)
        image[:, :, 1] = np.linspace(60, 160, w, dtype=np.uint8)[None]
        x = 5 + 3 * t
        image[20:50, x : x + 30] = (230, 40, 40)
        yy, xx = np.mgrid[:h, :w]
        disc = (yy - 65) ** 2 + (xx - (w - 25 - 2 * t)) ** 2 < 14**2
        image[disc] = (30, 40, 220)
        clip.append(image)
    return clip
