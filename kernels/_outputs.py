"""Output allocation shared by the launchers, with a switch that poisons fresh outputs with NaN.

Tests turn poisoning on so that any output element a kernel forgets to write shows up as NaN in a
parity check instead of passing by luck with whatever ``torch.empty`` returned.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_poison = False


def new_output(shape, *, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An uninitialised tensor on ``like``'s device (NaN-filled inside :func:`poisoned_outputs`)."""
    dtype = dtype or like.dtype
    if _poison:
        return torch.full(shape, float("nan"), device=like.device, dtype=dtype)
    return torch.empty(shape, device=like.device, dtype=dtype)


@contextmanager
def poisoned_outputs() -> Iterator[None]:
    """Fill every output the launchers allocate with NaN while the block runs."""
    global _poison
    previous, _poison = _poison, True
    try:
        yield
    finally:
        _poison = previous
