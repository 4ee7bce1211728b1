"""Kernel-test settings: Triton's CPU interpreter when no GPU, and the poisoned-outputs fixture.

``TRITON_INTERPRET=1`` must be in the environment before ``triton`` is imported (it decides at
import/decoration time whether ``@triton.jit`` compiles or interprets), so it is set here, at
conftest import, before any test module imports ``kernels.*``. Helpers live in
``kernel_testing.py`` (a unique module name: every test folder has its own ``conftest``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

_REPO = Path(__file__).resolve().parents[2]
if str(_REPO) not in sys.path:  # plain `pytest` (console script) does not put the repo root first
    sys.path.insert(0, str(_REPO))

from kernels._outputs import poisoned_outputs  # noqa: E402


@pytest.fixture
def poisoned():
    """Every output the Triton launchers allocate starts as NaN."""
    with poisoned_outputs():
        yield


@pytest.fixture(autouse=True)
def _grad_mode_on():
    """Gradient tests need autograd on, whatever another test module set globally at import."""
    with torch.enable_grad():
        yield
