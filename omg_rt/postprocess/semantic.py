"""Semantic segmentation from query outputs (Mask2Former's ``semantic_inference``).

The official OMG-Seg fusion head raises ``NotImplementedError`` for semantic output; Mask2Former,
whose head OMG-Seg reuses, computes a per-pixel class score
``einsum("qc,qhw->chw", softmax(cls)[:, :K], sigmoid(mask))`` and takes the argmax over classes.
Each class present also gets a score: the mean over its pixels of the class probability of the
queries covering the pixel, weighted by their masks (:func:`semantic_with_scores`).

Both entry points run the same loop over bands of rows (the same bands, the same float32 BLAS
product per band): :func:`semantic_with_scores` reads the bands from logits already at the output
size, :func:`semantic_from_tiles` resizes each band from the stride-4 logits as it goes (in C,
:func:`~omg_rt.postprocess.native.upsample_rows`, or
:meth:`~omg_rt.postprocess.tiles.TiledLogits.row_bands`), so it never holds the (Q, H, W)
logits and gives the same map and scores as :func:`semantic_with_scores` of those logits, bit
for bit.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from omg_rt.errors import InvalidInputError
from omg_rt.postprocess import native
from omg_rt.postprocess._common import check_array, softmax
from omg_rt.postprocess.device import DeviceLogits
from omg_rt.postprocess.tiles import TiledLogits

# Pixels x max(Q, K + 1) per band: bounds the (Q, band) sigmoids and the (K, band) class scores.
_BAND_ELEMENTS = 1 << 22
# Query-pixels resized at once by semantic_from_tiles (a whole number of bands).
_RESIZE_ELEMENTS = 1 << 23


def semantic_results(cls_logits: np.ndarray, mask_logits: np.ndarray) -> np.ndarray:
    """Per-pixel class map.

    Args:
        cls_logits: (Q, K + 1) float32, void last (no IoU column).
        mask_logits: (Q, H, W) float32 at the output size.

    Returns:
        (H, W) int32 class indices in ``[0, K)`` (the first class on exact ties).
    """
    return semantic_with_scores(cls_logits, mask_logits)[0]


def semantic_with_scores(
    cls_logits: np.ndarray, mask_logits: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel class map and a score per class.

    Per pixel, Mask2Former's class score ``sum_q softmax(cls_q)[c] * sigmoid(mask_q)`` divided
    by the pixel's total mask weight ``sum_q sigmoid(mask_q)`` is the class probability of the
    queries covering it, weighted by their masks (in [0, 1]; the division leaves the argmax
    unchanged). A class's score is the mean of that probability over the pixels it labels.

    Args:
        cls_logits: (Q, K + 1) float32, void last (no IoU column).
        mask_logits: (Q, H, W) float32 at the output size.

    Returns:
        ``(label_map, class_scores)``: (H, W) int32 class indices in ``[0, K)`` (the first class
        on exact ties) and (K,) float32 scores, 0 for classes that label no pixel.
    """
    mask_logits = check_array(mask_logits, "mask_logits", 3, "float32", "float32 (Q, H, W)")
    class_probs = _class_probs(cls_logits, mask_logits.shape[0])
    h, w = mask_logits.shape[1:]
    band, _ = _rows(class_probs.shape, w)
    bands = ((top, mask_logits[:, top : top + band]) for top in range(0, h, band))
    return _semantic(class_probs, bands, (h, w))


def semantic_from_tiles(
    cls_logits: np.ndarray, tiles: TiledLogits | DeviceLogits
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`semantic_with_scores` of the stride-4 logits resized to the image, band by band:
    the same map and scores, in memory bounded by the band size. The resize is PyTorch's
    ``F.interpolate``, bit for bit, where the C post-processing is built
    (:func:`omg_rt.postprocess.native.upsample_rows`), else ``upsample_masks``'s; on a device,
    :meth:`~omg_rt.postprocess.device.DeviceLogits.semantic` (the same within float32 rounding).

    Args:
        cls_logits: (Q, K + 1) float32, void last (no IoU column).
        tiles: the Q queries' stride-4 mask logits with the image's sizes.
    """
    q = tiles.logits.shape[0]
    class_probs = _class_probs(cls_logits, q)
    if isinstance(tiles, DeviceLogits):
        return tiles.semantic(class_probs)
    h, w = tiles.original_hw
    band, chunk = _rows(class_probs.shape, w)
    if native.available():  # PyTorch's resize in C: 1.6-4x faster than the numpy bands
        bands: Iterator[tuple[int, np.ndarray]] = (
            (top, native.upsample_rows(tiles.logits, tiles.plan, top, min(top + band, h)))
            for top in range(0, h, band))
    else:
        bands = tiles.row_bands(np.arange(q), band, chunk)
    return _semantic(class_probs, bands, (h, w))


def _class_probs(cls_logits: np.ndarray, q: int) -> np.ndarray:
    """(Q, K + 1) class logits -> (Q, K) float32 probabilities (void dropped after the softmax)."""
    cls_logits = check_array(cls_logits, "cls_logits", 2, "float32", "float32 (Q, K + 1)")
    k1 = cls_logits.shape[1]
    if k1 < 2:
        raise InvalidInputError(f"cls_logits: expected at least 2 columns, got {k1}")
    if q != cls_logits.shape[0]:
        raise InvalidInputError(
            f"mask_logits: expected {cls_logits.shape[0]} masks (one per query of cls_logits), "
            f"got {q}"
        )
    out: np.ndarray = softmax(cls_logits)[:, : k1 - 1]
    return out


def _rows(class_probs_shape: tuple[int, ...], w: int) -> tuple[int, int]:
    """(band, chunk): output rows per band (bounds the (Q, band) sigmoids and the (K + 1, band)
    class scores), and rows resized at once by :func:`semantic_from_tiles` (whole bands)."""
    q, k = class_probs_shape
    band = max(1, _BAND_ELEMENTS // max(max(q, k + 1) * w, 1))
    return band, band * max(1, _RESIZE_ELEMENTS // max(band * q * w, 1))


def _semantic(
    class_probs: np.ndarray, bands: Iterator[tuple[int, np.ndarray]], hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The per-band loop of :func:`semantic_with_scores`.

    Args:
        class_probs: (Q, K) float32.
        bands: ``(top, (Q, b, W) float32 mask logits of rows [top, top + b))`` in order, the
            bands of :func:`_rows`.
        hw: (H, W).

    One thread: the product already runs on BLAS's threads (the bands on the post-processing
    threads as well were slower on 2 cores, 1.70 against 1.38 s for a 768x1024 photo).
    """
    q, k = class_probs.shape
    h, w = hw
    out = np.empty((h, w), dtype=np.int32)
    score_sum = np.zeros(k, dtype=np.float64)
    # one product gives the K class scores and, as row K, the pixel's total mask weight
    weights = np.ascontiguousarray(
        np.concatenate([class_probs, np.ones((q, 1), np.float32)], axis=1).T)
    for top, logits in bands:
        b = logits.shape[1]
        per_class = weights @ _sigmoid(logits.reshape(q, -1))  # (K + 1, b * W)
        scores = per_class[:k]
        best_score = scores.max(0)
        best = _first_argmax(scores, best_score)
        out[top : top + b] = best.reshape(-1, w)
        weight = np.maximum(per_class[k], np.finfo(np.float32).tiny)
        score_sum += np.bincount(best, weights=best_score / weight, minlength=k)
    area = np.bincount(out.ravel(), minlength=k)
    scores = np.where(area > 0, score_sum / np.maximum(area, 1), 0.0).astype(np.float32)
    return out, scores


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    """float32 ``1 / (1 + exp(-x))`` in numpy's vectorised exp (within an ulp of scipy's expit,
    twice as fast); exp's overflow below -88 gives exactly 0."""
    out: np.ndarray = np.negative(logits)
    with np.errstate(over="ignore"):
        np.exp(out, out=out)
    out += np.float32(1.0)
    np.reciprocal(out, out=out)
    return out


def _first_argmax(values: np.ndarray, maxima: np.ndarray) -> np.ndarray:
    """``values.argmax(0)`` given ``maxima = values.max(0)``: for a (K, N) array, one pass per
    row instead of numpy's strided argmax along axis 0 (several times slower)."""
    best = np.zeros(values.shape[1], dtype=np.int64)
    for row in range(values.shape[0] - 1, -1, -1):
        best[values[row] == maxima] = row
    nan = np.isnan(maxima)  # argmax takes the first NaN, which == never matches
    if nan.any():
        best[nan] = values[:, nan].argmax(0)
    return best
