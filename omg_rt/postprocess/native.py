"""Host post-processing in C (``csrc/merge.c``): the stride-4 mask logits resized to the image
a band of output rows at a time, on the post-processing threads, and used there -- the panoptic
merge (best ``score * sigmoid`` per pixel, its confidence, the queries' ``sigmoid >= 0.5``
areas) and the instance masks (``logit > 0`` and the sigmoid sums) -- without ever holding the
(Q, H, W) logits.

The resize is PyTorch's own arithmetic (the same fused multiply-adds: bit for bit
``F.interpolate`` on every mask of a real image), which OpenCV and numpy round differently
(~1e-7 relative); the merge evaluates the sigmoid only where a query can still win a pixel.
:func:`~omg_rt.postprocess.panoptic.panoptic_from_tiles` and
:func:`~omg_rt.postprocess.instance.instances_from_tiles` run these where a C compiler is found
(:func:`omg_rt.native.build`); their tile-bounded numpy paths run otherwise.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from omg_rt import native
from omg_rt.errors import BackendUnavailableError
from omg_rt.postprocess._common import (
    parallel_map,
    sigmoid_saturation,
    sigmoid_threshold,
    thread_count,
)
from omg_rt.postprocess.masks import ResizePlan
from omg_rt.postprocess.tiles import TiledLogits, row_spans

_LOG = logging.getLogger(__name__)
_BAND = 16  # csrc/merge.c OMG_BAND: the threads' spans of rows are whole bands
# Scores this close to the previous (relative) may tie it after rounding: evaluated everywhere.
_NEAR = np.float32(1.0 - 2.0**-20)

_f32 = ctypes.POINTER(ctypes.c_float)
_i32 = ctypes.POINTER(ctypes.c_int32)
_i64 = ctypes.POINTER(ctypes.c_int64)
_u8 = ctypes.POINTER(ctypes.c_uint8)


class _Taps(ctypes.Structure):
    _fields_ = [("i0", _i32), ("i1", _i32), ("l0", _f32), ("l1", _f32), ("n", ctypes.c_int64)]


class _Resize(ctypes.Structure):
    _fields_ = [("h4", ctypes.c_int64), ("w4", ctypes.c_int64), ("rows1", _Taps),
                ("cols1", _Taps), ("rows2", _Taps), ("cols2", _Taps), ("copy", ctypes.c_int32)]


@functools.lru_cache(maxsize=1)
def _library() -> ctypes.CDLL | None:
    try:
        path = native.build("post-processing", "post", Path(__file__).resolve().parent / "csrc",
                            ("merge.c",), "merge.c")
    except BackendUnavailableError as exc:
        _LOG.warning("post-processing in numpy: %s", exc)
        return None
    lib = ctypes.CDLL(str(path))
    lib.omg_upsample.restype = ctypes.c_int
    source: list[Any] = [_f32, _i64, ctypes.c_int64, ctypes.POINTER(_Resize)]  # see _source
    lib.omg_upsample.argtypes = [*source, ctypes.c_int64, ctypes.c_int64, _f32]
    lib.omg_instance_masks.restype = ctypes.c_int
    lib.omg_instance_masks.argtypes = [
        *source, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_float, _u8,
        ctypes.POINTER(ctypes.c_double), _i64, _i64,
    ]
    lib.omg_panoptic_merge.restype = ctypes.c_int
    lib.omg_panoptic_merge.argtypes = [
        *source, _f32, _i64, _u8, ctypes.c_float, ctypes.c_int64, ctypes.c_int64, _i64, _u8, _i64,
    ]
    lib.omg_id_masks.restype = None
    lib.omg_id_masks.argtypes = [
        _i32, ctypes.c_int64, _i32, _i64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
        ctypes.c_int64, _u8, _i64,
    ]
    return lib


def available() -> bool:
    """Whether the C library is built here (compiled on the first call, then cached)."""
    return _library() is not None


def _pointer(array: np.ndarray, kind: type) -> ctypes._Pointer:  # type: ignore[type-arg]
    return array.ctypes.data_as(kind)


def _taps(taps: tuple[np.ndarray, ...], keep: list[np.ndarray]) -> _Taps:
    i0, i1, l0, l1 = (np.ascontiguousarray(t, dtype) for t, dtype in
                      zip(taps, (np.int32, np.int32, np.float32, np.float32), strict=True))
    keep.extend((i0, i1, l0, l1))
    return _Taps(_pointer(i0, _i32), _pointer(i1, _i32), _pointer(l0, _f32), _pointer(l1, _f32),
                 i0.shape[0])


def _checked() -> ctypes.CDLL:
    lib = _library()
    if lib is None:
        raise BackendUnavailableError("post-processing: the C library is not available here")
    return lib


def _source(logits: np.ndarray, queries: np.ndarray, plan: ResizePlan,
            keep: list[np.ndarray]) -> tuple[Any, ...]:
    """The kernels' first arguments: all queries' stride-4 logits, the queries to use (by
    index: no gathered copy), their count, the plan's taps (arrays appended to ``keep``, which
    must outlive the call)."""
    index = np.ascontiguousarray(queries, np.int64)
    keep.extend((logits, index))
    resize = _Resize(logits.shape[1], logits.shape[2], _taps(plan.rows1, keep),
                     _taps(plan.cols1, keep), _taps(plan.rows2, keep), _taps(plan.cols2, keep),
                     int(plan.copy))
    return (_pointer(logits, _f32), _pointer(index, _i64), index.shape[0], ctypes.byref(resize))


def upsample_rows(logits: np.ndarray, plan: ResizePlan, top: int, stop: int) -> np.ndarray:
    """Rows ``[top, stop)`` of the stride-4 ``logits`` (N, h4, w4) resized as ``plan`` says,
    bit for bit PyTorch's two ``F.interpolate`` calls and the crop between them.

    Returns:
        (N, stop - top, W) float32.
    """
    lib = _checked()
    logits = np.ascontiguousarray(logits, np.float32)
    keep: list[np.ndarray] = []
    source = _source(logits, np.arange(logits.shape[0]), plan, keep)
    out = np.empty((logits.shape[0], stop - top, plan.original_hw[1]), np.float32)
    if lib.omg_upsample(*source, top, stop, _pointer(out, _f32)) != 0:
        raise MemoryError("upsample: out of memory for its band buffers")
    return out


def panoptic_merge(
    tiles: TiledLogits, kept: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel of the original image, the kept query with the largest ``score * sigmoid``
    of its resized logit (the first on ties, a NaN winning), and whether that sigmoid is >= 0.5.

    Args:
        tiles: all queries' stride-4 logits and sizes.
        kept: (N,) int query indices, N >= 1; scores: (N,) float32.

    Returns:
        winner (H, W) int64 slot of ``kept``, confident (H, W) bool, original_area (N,) int64
        pixels with sigmoid >= 0.5 per kept query (as ``_assign_pixels`` of the resized logits).

    Raises:
        BackendUnavailableError: the library is not built here (see :func:`available`).
        MemoryError: the kernel could not allocate its band buffers.
    """
    lib = _checked()
    scores = np.asarray(scores, np.float32)
    order = np.argsort(-scores, kind="stable")  # position -> slot, best score first
    ordered = np.ascontiguousarray(scores[order])
    near = np.zeros(order.shape[0], np.uint8)
    near[1:] = ordered[1:] >= ordered[:-1] * _NEAR
    slots = np.ascontiguousarray(order, np.int64)
    keep: list[np.ndarray] = []
    source = _source(tiles.logits, kept[order], tiles.plan, keep)
    h, w = tiles.original_hw
    winner = np.empty((h, w), np.int64)
    confident = np.empty((h, w), np.uint8)
    threshold = float(sigmoid_threshold())

    def run(span: tuple[int, int]) -> np.ndarray:
        above = np.zeros(order.shape[0], np.int64)
        top, stop = span
        status = lib.omg_panoptic_merge(
            *source, _pointer(ordered, _f32), _pointer(slots, _i64), _pointer(near, _u8),
            threshold, top, stop, _pointer(winner[top:], _i64), _pointer(confident[top:], _u8),
            _pointer(above, _i64))
        if status != 0:
            raise MemoryError("panoptic merge: out of memory for its band buffers")
        return above

    spans = row_spans(h, _BAND, 4 * thread_count())
    counts = np.sum(parallel_map(run, spans), axis=0)
    original_area = np.empty_like(counts)
    original_area[order] = counts
    return winner, confident.view(bool), original_area


def instance_masks(
    tiles: TiledLogits, queries: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``logit > 0`` masks of ``queries`` at the original size, with their float64 sums of the
    sigmoid over each mask, areas and boxes (as
    :func:`~omg_rt.postprocess.instance.instances_from_masks` of PyTorch's resize), a band of
    rows at a time on the post-processing threads.

    Args:
        tiles: all queries' stride-4 logits and sizes; queries: (d,) int query indices (a query
            may come twice: its mask is computed twice, cheaper than copying it).

    Returns:
        (d, H, W) bool masks, (d,) float64 sums, (d,) int64 areas, (d, 4) float32 boxes
        ``(x1, y1, x2 + 1, y2 + 1)``, zeros for an empty mask (``masks_to_boxes``).
    """
    lib = _checked()
    keep: list[np.ndarray] = []
    source = _source(tiles.logits, queries, tiles.plan, keep)
    h, w = tiles.original_hw
    d = queries.shape[0]
    masks = np.empty((d, h, w), np.uint8)
    saturated = float(sigmoid_saturation())

    def run(span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sums, area = np.zeros(d, np.float64), np.zeros(d, np.int64)
        box = np.tile(np.array([h, -1, w, -1], np.int64), (d, 1))
        status = lib.omg_instance_masks(
            *source, span[0], span[1], h, saturated,
            _pointer(masks, _u8), sums.ctypes.data_as(ctypes.POINTER(ctypes.c_double)),
            _pointer(area, _i64), _pointer(box, _i64))
        if status != 0:
            raise MemoryError("instance masks: out of memory for their band buffers")
        return sums, area, box

    parts = parallel_map(run, row_spans(h, _BAND, 4 * thread_count()))
    sums = np.sum([p[0] for p in parts], axis=0)
    area = np.sum([p[1] for p in parts], axis=0)
    return masks.view(bool), sums, area, _merged_boxes([p[2] for p in parts])


def id_masks(id_map: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``id_map == ids[j]`` for every j and their boxes, in one pass over the map on the
    post-processing threads (:func:`~omg_rt.postprocess.instance.masks_of_ids` checks the
    inputs and falls back to numpy).

    Args:
        id_map: (H, W) int32; ids: (n,) distinct values that fit int32, in any order.

    Returns:
        (n, H, W) bool masks and (n, 4) float32 boxes as
        :func:`~omg_rt.postprocess.instance.masks_to_boxes` gives them.
    """
    lib = _checked()
    id_map = np.ascontiguousarray(id_map, np.int32)
    h, w = id_map.shape
    order = np.argsort(ids, kind="stable")
    sorted_ids = np.ascontiguousarray(np.asarray(ids)[order], np.int32)
    slots = np.ascontiguousarray(order, np.int64)
    n = slots.shape[0]
    masks = np.empty((n, h, w), np.uint8)

    def run(span: tuple[int, int]) -> np.ndarray:
        box = np.tile(np.array([h, -1, w, -1], np.int64), (n, 1))
        lib.omg_id_masks(_pointer(id_map, _i32), w, _pointer(sorted_ids, _i32),
                         _pointer(slots, _i64), n, h, span[0], span[1], _pointer(masks, _u8),
                         _pointer(box, _i64))
        return box

    parts = parallel_map(run, row_spans(h, _BAND, 4 * thread_count()))
    return masks.view(bool), _merged_boxes(parts)


def _merged_boxes(parts: list[np.ndarray]) -> np.ndarray:
    """Per-span (n, 4) extents (first row, last row, first column, last column; widened only by
    a mask's pixels) -> (n, 4) float32 ``(x1, y1, x2 + 1, y2 + 1)``, zeros for an empty mask
    (no row seen)."""
    boxes = np.stack(parts)  # (spans, n, 4)
    y1, y2 = boxes[..., 0].min(0), boxes[..., 1].max(0)
    x1, x2 = boxes[..., 2].min(0), boxes[..., 3].max(0)
    out = np.stack([x1, y1, x2 + 1, y2 + 1], axis=1).astype(np.float32)
    out[y2 < 0] = 0.0
    return out
