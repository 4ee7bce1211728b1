"""Shared float32 maths and argument checks of the post-processing modules."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from omg_rt.errors import InvalidInputError


def describe(value: object) -> str:
    """``float32 (3, 4)`` for arrays, the type name otherwise (for error messages)."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} {tuple(value.shape)}"
    return type(value).__name__


def check_array(value: object, name: str, ndim: int, dtype: str, expected: str) -> np.ndarray:
    """Raise InvalidInputError unless ``value`` is an ndarray of that ndim and dtype kind.

    ``dtype`` is ``"float32"``, ``"bool"`` or ``"int"`` (any integer dtype).
    """
    ok = isinstance(value, np.ndarray) and value.ndim == ndim
    if ok:
        assert isinstance(value, np.ndarray)
        if dtype == "int":
            ok = value.dtype.kind in "iu"
        else:
            ok = value.dtype == np.dtype(dtype)
    if not ok:
        raise InvalidInputError(f"{name}: expected {expected}, got {describe(value)}")
    assert isinstance(value, np.ndarray)
    return value


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """float32 softmax as ``torch.softmax``: ``exp(x - max) / sum``."""
    logits = logits.astype(np.float32, copy=False)
    shifted = logits - logits.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32 logistic function (no overflow warnings for logits of +-1e5)."""
    return expit(logits.astype(np.float32, copy=False))
