"""Scratch folders for the caches that tests share across a process (exported bundles, saved
checkpoints), which pytest's per-test ``tmp_path`` cannot hold: removed when the process exits, so
a test run leaves nothing behind (the official-weight bundle alone is 1.7 GB)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path


def scratch_dir(prefix: str) -> Path:
    """A new empty folder under the system temp dir, deleted at interpreter exit."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path
