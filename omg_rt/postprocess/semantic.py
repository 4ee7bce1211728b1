"""Semantic segmentation from query outputs (Mask2Former's ``semantic_inference``).

The official OMG-Seg fusion head raises ``NotImplementedError`` for semantic output; Mask2Former,
whose head OMG-Seg reuses, computes a per-pixel class score
``einsum("qc,qhw->chw", softmax(cls)[:, :K], sigmoid(mask))`` and takes the argmax over classes.
Each class present also gets a score: the mean over its pixels of the class probability of the
queries covering the pixel, weighted by their masks (:func:`semantic_with_scores`).
"""

from __future__ import annotations

import numpy as np

from omg_rt.errors import InvalidInputError
from omg_rt.postprocess._common import check_array, sigmoid, softmax

_BAND_ELEMENTS = 1 << 22


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
    cls_logits = check_array(cls_logits, "cls_logits", 2, "float32", "float32 (Q, K + 1)")
    mask_logits = check_array(mask_logits, "mask_logits", 3, "float32", "float32 (Q, H, W)")
    q, k1 = cls_logits.shape
    if k1 < 2:
        raise InvalidInputError(f"cls_logits: expected at least 2 columns, got {k1}")
    if mask_logits.shape[0] != q:
        raise InvalidInputError(
            f"mask_logits: expected {q} masks (one per query of cls_logits), "
            f"got {mask_logits.shape[0]}"
        )
    h, w = mask_logits.shape[1:]
    class_probs = softmax(cls_logits)[:, : k1 - 1]  # (Q, K)
    out = np.empty((h, w), dtype=np.int32)
    score_sum = np.zeros(k1 - 1, dtype=np.float64)
    band = max(1, _BAND_ELEMENTS // max(max(q, k1) * w, 1))
    for top in range(0, h, band):
        probs = sigmoid(mask_logits[:, top : top + band]).reshape(q, -1)  # (Q, b * W)
        per_class = class_probs.T @ probs  # (K, b * W)
        best = per_class.argmax(0)
        out[top : top + band] = best.reshape(-1, w)
        weight = np.maximum(probs.sum(0), np.finfo(np.float32).tiny)  # (b * W,)
        score_sum += np.bincount(best, weights=per_class.max(0) / weight, minlength=k1 - 1)
    area = np.bincount(out.ravel(), minlength=k1 - 1)
    scores = np.where(area > 0, score_sum / np.maximum(area, 1), 0.0).astype(np.float32)
    return out, scores
