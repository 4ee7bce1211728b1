"""``torch.topk`` on CPU, order included, in numpy and plain Python.

The order of ``topk`` results is part of the official outputs: instance results keep the top-k
order (track ids are ``arange + 1`` in that order), and the VOS proposals are painted in it.
PyTorch's CPU kernel (``ATen/native/TopKImpl.h``, ``topk_impl_loop``) runs libstdc++ algorithms
on ``(value, index)`` pairs with a comparator that looks at the value only (NaN counts as the
largest):

- ``k * 64 <= n``: ``std::partial_sort`` of the first k — always sorted, whatever ``sorted`` says;
- otherwise ``std::nth_element`` at ``k - 1``, then, if ``sorted``, ``std::sort`` of the first
  ``k - 1`` elements; unsorted results come out in ``nth_element``'s order.

Neither algorithm is stable, so among equal values the order is an artefact of the algorithms —
and equal values are common with saturated outputs (the official golden VOS case has
``sigmoid(iou) == 1.0`` for all 300 queries). We therefore port the libstdc++ routines
(``bits/stl_algo.h``, ``bits/stl_heap.h``) step for step; a test holds them against ``torch.topk``
on tie-heavy inputs. When the values involved are distinct the fast numpy path gives the same
answer.
"""

from __future__ import annotations

import math

import numpy as np

from omg_rt.errors import InvalidInputError

_S_THRESHOLD = 16  # libstdc++ _S_threshold for introsort / final insertion sort
_Pair = tuple[float, int]  # (value, index), compared by value only


def topk_indices(values: np.ndarray, k: int, sorted: bool = True) -> np.ndarray:  # noqa: A002
    """Indices of the k largest values, in the order ``torch.topk(largest=True)`` returns on CPU.

    Args:
        values: (N,) float array (compared as float64, like PyTorch's accumulate type).
        k: 0 <= k <= N.
        sorted: PyTorch's ``sorted`` flag (only matters when ``k * 64 > N``).

    Returns:
        (k,) int64 indices into ``values``.
    """
    values = np.asarray(values)
    if values.ndim != 1:
        raise InvalidInputError(f"values: expected a 1-D array, got shape {values.shape}")
    n = values.shape[0]
    if not 0 <= k <= n:
        raise InvalidInputError(f"k: expected 0 <= k <= {n}, got {k}")
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    keys = values.astype(np.float64)
    if k * 64 <= n:
        fast = _fast_partial_sort(keys, k)
        if fast is not None:
            return fast
    pairs = [(float(v), i) for i, v in enumerate(keys)]
    if k * 64 <= n:
        _partial_sort(pairs, 0, k, n)
    else:
        _nth_element(pairs, 0, k - 1, n)
        if sorted:
            _sort(pairs, 0, k - 1)
    return np.array([index for _, index in pairs[:k]], dtype=np.int64)


def _fast_partial_sort(keys: np.ndarray, k: int) -> np.ndarray | None:
    """Sorted top-k when no tie or NaN can make partial_sort's order differ from a sort."""
    if np.isnan(keys).any():
        return None
    top = np.argpartition(-keys, k)[: k + 1] if k < keys.shape[0] else np.arange(keys.shape[0])
    order = top[np.argsort(-keys[top], kind="stable")]
    chosen = keys[order]
    # The k values and the best one left out must all differ, so the set and order are unique.
    if np.unique(chosen).shape[0] != chosen.shape[0]:
        return None
    return order[:k].astype(np.int64)


def _greater(x: float, y: float) -> bool:
    """PyTorch's largest=True comparator: NaN first, then larger values."""
    return (math.isnan(x) and not math.isnan(y)) or x > y


def _lg(n: int) -> int:
    return n.bit_length() - 1


# --- libstdc++ bits/stl_algo.h: sort, nth_element ------------------------------------------


def _move_median_to_first(a: list[_Pair], result: int, x: int, y: int, z: int) -> None:
    vx, vy, vz = a[x][0], a[y][0], a[z][0]
    if _greater(vx, vy):
        if _greater(vy, vz):
            a[result], a[y] = a[y], a[result]
        elif _greater(vx, vz):
            a[result], a[z] = a[z], a[result]
        else:
            a[result], a[x] = a[x], a[result]
    elif _greater(vx, vz):
        a[result], a[x] = a[x], a[result]
    elif _greater(vy, vz):
        a[result], a[z] = a[z], a[result]
    else:
        a[result], a[y] = a[y], a[result]


def _unguarded_partition(a: list[_Pair], first: int, last: int, pivot: int) -> int:
    while True:
        while _greater(a[first][0], a[pivot][0]):
            first += 1
        last -= 1
        while _greater(a[pivot][0], a[last][0]):
            last -= 1
        if not first < last:
            return first
        a[first], a[last] = a[last], a[first]
        first += 1


def _unguarded_partition_pivot(a: list[_Pair], first: int, last: int) -> int:
    mid = first + (last - first) // 2
    _move_median_to_first(a, first, first + 1, mid, last - 1)
    return _unguarded_partition(a, first + 1, last, first)


def _unguarded_linear_insert(a: list[_Pair], last: int) -> None:
    val = a[last]
    nxt = last - 1
    while _greater(val[0], a[nxt][0]):
        a[last] = a[nxt]
        last = nxt
        nxt -= 1
    a[last] = val


def _insertion_sort(a: list[_Pair], first: int, last: int) -> None:
    if first == last:
        return
    for i in range(first + 1, last):
        if _greater(a[i][0], a[first][0]):
            val = a[i]
            a[first + 1 : i + 1] = a[first:i]
            a[first] = val
        else:
            _unguarded_linear_insert(a, i)


def _final_insertion_sort(a: list[_Pair], first: int, last: int) -> None:
    if last - first > _S_THRESHOLD:
        _insertion_sort(a, first, first + _S_THRESHOLD)
        for i in range(first + _S_THRESHOLD, last):
            _unguarded_linear_insert(a, i)
    else:
        _insertion_sort(a, first, last)


def _introsort_loop(a: list[_Pair], first: int, last: int, depth_limit: int) -> None:
    while last - first > _S_THRESHOLD:
        if depth_limit == 0:
            _partial_sort(a, first, last, last)
            return
        depth_limit -= 1
        cut = _unguarded_partition_pivot(a, first, last)
        _introsort_loop(a, cut, last, depth_limit)
        last = cut


def _sort(a: list[_Pair], first: int, last: int) -> None:
    if first != last:
        _introsort_loop(a, first, last, _lg(last - first) * 2)
        _final_insertion_sort(a, first, last)


def _nth_element(a: list[_Pair], first: int, nth: int, last: int) -> None:
    if first == last or nth == last:
        return
    depth_limit = _lg(last - first) * 2
    while last - first > 3:
        if depth_limit == 0:
            _heap_select(a, first, nth + 1, last)
            a[first], a[nth] = a[nth], a[first]
            return
        depth_limit -= 1
        cut = _unguarded_partition_pivot(a, first, last)
        if cut <= nth:
            first = cut
        else:
            last = cut
    _insertion_sort(a, first, last)


# --- libstdc++ bits/stl_heap.h + partial_sort ------------------------------------------------


def _push_heap(a: list[_Pair], first: int, hole: int, top: int, value: _Pair) -> None:
    parent = (hole - 1) // 2
    while hole > top and _greater(a[first + parent][0], value[0]):
        a[first + hole] = a[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    a[first + hole] = value


def _adjust_heap(a: list[_Pair], first: int, hole: int, length: int, value: _Pair) -> None:
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if _greater(a[first + child][0], a[first + child - 1][0]):
            child -= 1
        a[first + hole] = a[first + child]
        hole = child
    if length & 1 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        a[first + hole] = a[first + child - 1]
        hole = child - 1
    _push_heap(a, first, hole, top, value)


def _make_heap(a: list[_Pair], first: int, last: int) -> None:
    length = last - first
    if length < 2:
        return
    parent = (length - 2) // 2
    while True:
        _adjust_heap(a, first, parent, length, a[first + parent])
        if parent == 0:
            return
        parent -= 1


def _pop_heap(a: list[_Pair], first: int, last: int, result: int) -> None:
    value = a[result]
    a[result] = a[first]
    _adjust_heap(a, first, 0, last - first, value)


def _heap_select(a: list[_Pair], first: int, middle: int, last: int) -> None:
    _make_heap(a, first, middle)
    for i in range(middle, last):
        if _greater(a[i][0], a[first][0]):
            _pop_heap(a, first, middle, i)


def _sort_heap(a: list[_Pair], first: int, last: int) -> None:
    while last - first > 1:
        last -= 1
        _pop_heap(a, first, last, last)


def _partial_sort(a: list[_Pair], first: int, middle: int, last: int) -> None:
    _heap_select(a, first, middle, last)
    _sort_heap(a, first, middle)
