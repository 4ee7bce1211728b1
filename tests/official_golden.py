"""Regenerates the official golden fixtures' deterministic weights
(see ../shared/fixtures/README.md)."""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from tests.conftest import OFFICIAL_FIXTURES

GOLDEN = OFFICIAL_FIXTURES / "official_golden"
KEYS = OFFICIAL_FIXTURES / "official_omg_seg_convl_keys.json"


def deterministic_tensor(key: str, shape: list[int]) -> torch.Tensor:
    """The fixture README's rule: a seeded normal draw per key, scaled by the key's kind."""
    generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    r = torch.randn(shape, generator=generator, dtype=torch.float32)
    last = key.rsplit(".", 1)[-1]
    if len(shape) >= 2:
        if any(word in key for word in ("embed", "embedding", "query", "tokens")):
            return r
        return r / math.sqrt(math.prod(shape[1:]))
    if last == "gamma":
        return 0.1 + 0.01 * r
    if last == "weight":
        return 1.0 + 0.1 * r
    return 0.02 * r


def official_state_dicts() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(decoder state dict as the published file, backbone as an OpenCLIP ``visual.*`` dict)."""
    layout = json.loads(KEYS.read_text())
    decoder = {k: deterministic_tensor(k, shape) for k, shape in layout["decoder"].items()}
    wrapped = {
        k: deterministic_tensor(k, shape) for k, shape in layout["backbone_if_wrapped"].items()
    }
    visual = {}
    for key, value in wrapped.items():
        name = key[len("backbone.") :]
        if name.startswith("stem."):
            visual["visual.trunk." + name] = value
        elif name.startswith("layer"):
            stage = int(name[5]) - 1
            visual[f"visual.trunk.stages.{stage}" + name[6:]] = value
        elif name.startswith("head.0."):
            visual["visual.trunk.head." + name[7:]] = value
        elif name.startswith("head.1."):
            visual["visual.head." + name[7:]] = value
        else:
            raise AssertionError(f"unexpected wrapped backbone key {key}")
    return decoder, visual


def fingerprint(tensors: dict[str, torch.Tensor]) -> tuple[float, float]:
    total = sum(float(t.double().sum()) for t in tensors.values())
    squares = sum(float((t.double() ** 2).sum()) for t in tensors.values())
    return total, squares


def write_official_files(directory: Path) -> tuple[Path, Path]:
    decoder, visual = official_state_dicts()
    decoder_path, visual_path = directory / "omg_seg_convl.pth", directory / "clip_visual.pt"
    torch.save(decoder, decoder_path)
    torch.save(visual, visual_path)
    return decoder_path, visual_path


def load_npz(name: str) -> dict[str, np.ndarray]:
    with np.load(GOLDEN / name) as data:
        return {k: data[k] for k in data.files}
