"""Shared float32 maths and argument checks of the post-processing modules."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from scipy.special import expit

from omg_rt.arrays import to_host
from omg_rt.errors import InvalidInputError, describe

_T = TypeVar("_T")
_R = TypeVar("_R")
# Threads of the banded post-processing: numpy's elementwise loops and OpenCV's resize release
# the GIL, so bands of rows run in parallel. More than 4 gains little on these memory-bound loops.
_MAX_THREADS = 4


def thread_count() -> int:
    """Threads the banded post-processing uses: the cores this process may run on, at most 4."""
    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere all cores
    cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    return max(1, min(cores, _MAX_THREADS))


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=thread_count(), thread_name_prefix="omg-rt-post")


def parallel_map(fn: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """``[fn(item) for item in items]``, the items on the post-processing threads (in this
    thread when there is one item). The calls must not share mutable state."""
    if len(items) <= 1:
        return [fn(item) for item in items]
    return list(_pool().map(fn, items))


def check_array(value: object, name: str, ndim: int, dtype: str, expected: str) -> np.ndarray:
    """Raise InvalidInputError unless ``value`` is an ndarray of that ndim and dtype kind; a tensor
    a backend kept on its device (:mod:`omg_rt.arrays`) is brought to the host first.

    ``dtype`` is ``"float32"``, ``"bool"`` or ``"int"`` (any integer dtype).
    """
    value = to_host(value)
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
    out: np.ndarray = exp / exp.sum(axis=axis, keepdims=True)
    return out


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32 logistic function (no overflow warnings for logits of +-1e5)."""
    out: np.ndarray = expit(logits.astype(np.float32, copy=False))
    return out


def _float32_of_key(key: int) -> np.float32:
    """float32 values in ascending order of their integer key (0 = +0.0)."""
    bits = key if key >= 0 else (-key) | 0x80000000
    out: np.float32 = np.array([bits], np.uint32).view(np.float32)[0]
    return out


def _first_passing(bad: int, good: int, passes: Callable[[np.float32], bool]) -> np.float32:
    """The smallest float32 in (key ``bad``, key ``good``] that ``passes`` (a monotone test)."""
    while good - bad > 1:
        middle = (good + bad) // 2
        if passes(_float32_of_key(middle)):
            good = middle
        else:
            bad = middle
    return _float32_of_key(good)


@functools.lru_cache(maxsize=1)
def sigmoid_saturation() -> np.float32:
    """The smallest float32 logit whose :func:`sigmoid` is exactly 1.0 (it is from there on)."""
    return _first_passing(0x3F800000, 0x43000000,  # keys of 1.0 and 128.0
                          lambda x: bool(sigmoid(np.array([x], np.float32))[0] == 1.0))


@functools.lru_cache(maxsize=2)
def sigmoid_threshold(strict: bool = False) -> np.float32:
    """The smallest float32 logit ``x`` with ``sigmoid(x) >= 0.5`` (``> 0.5`` when ``strict``).

    :func:`sigmoid` is monotone, so for float32 logits ``sigmoid(x) >= 0.5`` holds exactly when
    ``x >= sigmoid_threshold()``: thresholds on logits decide what thresholds on the float32
    sigmoid decide, without computing it. Found by bisection over the float32 values in order.
    """

    def passes(x: np.float32) -> bool:
        y = sigmoid(np.array([x], np.float32))[0]
        return bool(y > np.float32(0.5)) if strict else bool(y >= np.float32(0.5))

    return _first_passing(-0x3F800000, 0x3F800000, passes)  # keys of -1.0 and 1.0
