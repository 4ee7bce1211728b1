"""Fixtures of the benchmark tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import seeded_tiny


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A seeded, untrained ``tiny`` checkpoint: omg-bench's input in its end-to-end tests."""
    from training.model.checkpoint import save_checkpoint

    return save_checkpoint(seeded_tiny(0), tmp_path_factory.mktemp("tiny") / "tiny")
