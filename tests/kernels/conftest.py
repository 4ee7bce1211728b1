"""Kernel-test settings: Triton's CPU interpreter when no GPU, a parity assertion, poisoned outputs.

``TRITON_INTERPRET=1`` must be in the environment before ``triton`` is imported (it decides at
import/decoration time whether ``@triton.jit`` compiles or interprets), so it is set here, at
conftest import, before any test module imports ``kernels.*``.
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
from tests.conftest import TOLERANCES  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def assert_parity(actual: torch.Tensor, expected: torch.Tensor, *, dtype: torch.dtype | None = None,
                  what: str = "output", scale: float = 1.0) -> None:
    """``actual`` matches ``expected`` within ``TOLERANCES[dtype]``, relative to max |expected|.

    An element fails when |a - e| > atol + rtol * max|e| * scale, or when it is NaN/inf while the
    reference is finite (poisoned, unwritten outputs). The message gives the mismatch count, the
    worst error and the first indices.
    """
    dtype = dtype or expected.dtype
    tol = TOLERANCES[str(dtype).removeprefix("torch.")]
    if tuple(actual.shape) != tuple(expected.shape):
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}")
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    ref_scale = float(e.abs().max()) if e.numel() else 0.0
    limit = tol["atol"] + tol["rtol"] * ref_scale * scale
    err = (a - e).abs()
    bad = ~(err <= limit)  # NaN compares False, so NaN counts as a mismatch
    count = int(bad.sum())
    if count:
        first = bad.nonzero()[:5].tolist()
        worst = float(err[~err.isnan()].max()) if (~err.isnan()).any() else float("nan")
        raise AssertionError(
            f"{what}: {count}/{a.numel()} elements off by more than {limit:.3g} "
            f"(rtol {tol['rtol']} of max|ref| {ref_scale:.4g}); worst {worst:.3g}, "
            f"NaN {int(a.isnan().sum())}; first indices {first}: "
            f"got {[float(a[tuple(i)]) for i in first]}, "
            f"want {[float(e[tuple(i)]) for i in first]}")


@pytest.fixture
def poisoned():
    """Every output the Triton launchers allocate starts as NaN."""
    with poisoned_outputs():
        yield
