"""Helpers for the kernel tests: the device to test on and the parity assertion."""

from __future__ import annotations

import torch

from tests.conftest import TOLERANCES

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


