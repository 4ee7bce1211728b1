"""Input checks shared by the metrics: each raises InvalidInputError naming the argument."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from omg_rt.errors import InvalidInputError, describe

# Segment ids are packed two to a uint64 key (gt * 2**32 + pred), so each must fit in 32 bits.
MAX_SEGMENT_ID = 2**32 - 1


def id_maps(name: str, value: Any, ndim: int) -> np.ndarray:
    """An integer id map of `ndim` dims with ids in [0, 2**32); returned as uint64."""
    if not isinstance(value, np.ndarray) or value.ndim != ndim:
        raise InvalidInputError(f"{name}: expected an integer ndarray with {ndim} dims, "
                                f"got {describe(value)}")
    if value.dtype == np.bool_ or not np.issubdtype(value.dtype, np.integer):
        raise InvalidInputError(f"{name}: expected an integer dtype, got {describe(value)}")
    if value.size and (value.min() < 0 or int(value.max()) > MAX_SEGMENT_ID):
        raise InvalidInputError(f"{name}: ids must lie in [0, 2**32), got range "
                                f"[{value.min()}, {value.max()}]")
    return value.astype(np.uint64, copy=False)


def distinct_ids(name: str, value: Sequence[int]) -> list[int]:
    """A non-empty sequence of distinct integer ids, as a list of ints."""
    ids = [int(v) for v in value]
    if not ids or len(set(ids)) != len(ids):
        raise InvalidInputError(f"{name}: expected distinct ids, got {value}")
    return ids


def binary_masks(name: str, value: Any, ndim: int) -> np.ndarray:
    """A bool (or 0/1 integer) mask array of `ndim` dims, returned as bool."""
    if not isinstance(value, np.ndarray) or value.ndim != ndim:
        raise InvalidInputError(f"{name}: expected a bool ndarray with {ndim} dims, "
                                f"got {describe(value)}")
    if value.dtype == np.bool_:
        return value
    if np.issubdtype(value.dtype, np.integer) and (value.size == 0 or value.min() >= 0) \
            and (value.size == 0 or value.max() <= 1):
        return value.astype(bool)
    raise InvalidInputError(f"{name}: expected bool (or 0/1 integer) values, got {describe(value)}")


def same_shape(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise InvalidInputError(f"{name_b}: expected the shape of {name_a} {tuple(a.shape)}, "
                                f"got {tuple(b.shape)}")


def vector(name: str, value: Any, length: int, kind: str) -> np.ndarray:
    """A 1-D array of `length` values; kind 'int', 'float' or 'bool' (bool or 0/1 ints)."""
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.shape[0] != length:
        raise InvalidInputError(f"{name}: expected shape ({length},), got {describe(arr)}")
    if kind == "bool":
        if arr.size and arr.dtype != np.bool_ and not (
                np.issubdtype(arr.dtype, np.integer) and arr.min() >= 0 and arr.max() <= 1):
            raise InvalidInputError(f"{name}: expected bool (or 0/1) values, got {describe(arr)}")
        return arr.astype(bool)
    if kind == "int":
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise InvalidInputError(f"{name}: expected integers, got {describe(arr)}")
        return arr.astype(np.int64)
    if arr.size and not np.issubdtype(arr.dtype, np.number):
        raise InvalidInputError(f"{name}: expected numbers, got {describe(arr)}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError(f"{name}: expected finite values")
    return arr


def categories(name: str, value: Any) -> dict[int, bool]:
    """COCO panoptic categories ([{id, isthing}, ...]) → {category_id: isthing}, in input order."""
    if not isinstance(value, Sequence) or isinstance(value, str | bytes) or len(value) == 0:
        raise InvalidInputError(f"{name}: expected a non-empty list of {{'id', 'isthing'}} dicts, "
                                f"got {describe(value)}")
    out: dict[int, bool] = {}
    for i, cat in enumerate(value):
        if not isinstance(cat, Mapping) or "id" not in cat or "isthing" not in cat:
            raise InvalidInputError(f"{name}[{i}]: expected a dict with 'id' and 'isthing', "
                                    f"got {cat!r}")
        cat_id = int(cat["id"])
        if cat_id in out:
            raise InvalidInputError(f"{name}[{i}]: category id {cat_id} appears twice")
        out[cat_id] = bool(cat["isthing"])
    return out


def segments(
    name: str, value: Any, known_categories: Mapping[int, Any]
) -> dict[int, tuple[int, bool]]:
    """COCO panoptic segments_info ([{id, category_id, iscrowd?}, ...]) → {id: (category, crowd)}.

    The order of the input list is kept (panopticapi's crowd rule depends on it).
    """
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise InvalidInputError(f"{name}: expected a list of {{'id', 'category_id'}} dicts, "
                                f"got {describe(value)}")
    out: dict[int, tuple[int, bool]] = {}
    for i, seg in enumerate(value):
        if not isinstance(seg, Mapping) or "id" not in seg or "category_id" not in seg:
            raise InvalidInputError(f"{name}[{i}]: expected a dict with 'id' and 'category_id', "
                                    f"got {seg!r}")
        seg_id, cat_id = int(seg["id"]), int(seg["category_id"])
        if not 0 < seg_id <= MAX_SEGMENT_ID:
            raise InvalidInputError(f"{name}[{i}]: segment id must lie in [1, 2**32) "
                                    f"(0 is void), got {seg_id}")
        if seg_id in out:
            raise InvalidInputError(f"{name}[{i}]: segment id {seg_id} appears twice")
        if cat_id not in known_categories:
            raise InvalidInputError(f"{name}[{i}]: unknown category_id {cat_id}")
        out[seg_id] = (cat_id, bool(seg.get("iscrowd", 0)))
    return out
