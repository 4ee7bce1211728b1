"""Semantic segmentation from query outputs (Mask2Former's ``semantic_inference``).

The official OMG-Seg fusion head raises ``NotImplementedError`` for semantic output; Mask2Former,
whose head OMG-Seg reuses, computes a per-pixel class score
``einsum("qc,qhw->chw", softmax(cls)[:, :K], sigmoid(mask))`` and takes the argmax over classes.
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
    band = max(1, _BAND_ELEMENTS // max(max(q, k1) * w, 1))
    for top in range(0, h, band):
        probs = sigmoid(mask_logits[:, top : top + band]).reshape(q, -1)  # (Q, b * W)
        per_class = class_probs.T @ probs  # (K, b * W)
        out[top : top + band] = per_class.argmax(0).reshape(-1, w)
    return out
