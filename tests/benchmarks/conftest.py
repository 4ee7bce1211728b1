"""Fixtures of the benchmark tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A seeded, untrained ``tiny`` checkpoint: omg-bench's input in its end-to-end tests."""
    import torch

    from training.model import build_model
    from training.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    return save_checkpoint(build_model("tiny").eval(), tmp_path_factory.mktemp("tiny") / "tiny")
