"""Panoptic segmentation from query outputs: the official ``OMGFusionHead.panoptic_postprocess``.

Mask2Former's panoptic inference with the OMG-Seg test config (``m2_convl_300q.py``):

1. ``score, label = softmax(cls_logits).max(-1)`` over the K classes *and* void; keep the queries
   whose label is not void and whose score exceeds ``object_mask_thr`` (0.0 in the config).
2. Every pixel goes to the kept query with the largest ``score * sigmoid(mask)`` (the first one
   on ties, as ``torch.argmax``).
3. Visiting the kept queries in query order: ``area`` = pixels won, ``original_area`` = pixels with
   ``sigmoid >= 0.5``; with ``filter_low_score`` (True) the painted region is the won pixels that
   also have ``sigmoid >= 0.5`` — but ``area`` is counted *before* that filter. A query is skipped
   when either area is 0 or ``area / original_area < iou_thr`` (0.8).
4. Stuff (label >= num_things) is painted as ``label`` (same-class stuff merges); things as
   ``label + instance_id * 1000`` with ``instance_id`` counting accepted things from 1. Pixels
   nobody paints are void = K.

Won regions are disjoint, so painting order cannot change the map; we paint with a lookup table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np

from omg_rt.errors import InvalidInputError
from omg_rt.postprocess._common import check_array, sigmoid, softmax

INSTANCE_OFFSET = 1000  # mmdet.evaluation.functional.INSTANCE_OFFSET
OBJECT_MASK_THR = 0.0  # m2_convl_300q.py test_cfg (the code default is 0.8)
IOU_THR = 0.8
FILTER_LOW_SCORE = True
# Pixels per band when scanning the masks: bounds the (Q, band) temporaries.
_BAND_ELEMENTS = 1 << 24


class PanopticSegment(TypedDict):
    """One COCO-panoptic ``segments_info`` entry."""

    id: int
    category_id: int
    isthing: bool
    score: float
    area: int


@dataclass(frozen=True)
class PanopticResult:
    """Panoptic output of one image (or one video frame).

    Attributes:
        id_map: (H, W) int32; stuff = class, thing = class + instance_id * 1000, void = K.
        segments: one entry per id present in ``id_map`` (void excluded), in id-assignment order.
    """

    id_map: np.ndarray
    segments: list[PanopticSegment] = field(default_factory=list)


def panoptic_results(
    cls_logits: np.ndarray,
    mask_logits: np.ndarray,
    num_things: int,
    object_mask_thr: float = OBJECT_MASK_THR,
    iou_thr: float = IOU_THR,
    filter_low_score: bool = FILTER_LOW_SCORE,
) -> PanopticResult:
    """The official panoptic post-processing of one image.

    Args:
        cls_logits: (Q, K + 1) float32 class logits, void last (no IoU column). Log-probabilities
            from :func:`omg_rt.postprocess.open_vocab.open_vocab_ensemble` work the same way.
        mask_logits: (Q, H, W) float32 mask logits at the output size (usually the original
            image, see :func:`omg_rt.postprocess.masks.upsample_masks`).
        num_things: classes ``[0, num_things)`` are things, ``[num_things, K)`` stuff.
        object_mask_thr: keep queries whose best non-void probability is above this.
        iou_thr: drop a segment keeping less than this fraction of its own ``sigmoid >= 0.5`` area.
        filter_low_score: paint only pixels where the winning query's sigmoid is >= 0.5.

    Returns:
        :class:`PanopticResult` with an (H, W) int32 id map.
    """
    return _panoptic(
        cls_logits, mask_logits, num_things, object_mask_thr, iou_thr, filter_low_score, None
    )


def _panoptic(
    cls_logits: np.ndarray,
    mask_logits: np.ndarray,
    num_things: int,
    object_mask_thr: float,
    iou_thr: float,
    filter_low_score: bool,
    thing_ids: np.ndarray | None,
) -> PanopticResult:
    """Shared by images (``thing_ids`` None: counter from 1) and video (fixed id per query)."""
    cls_logits = check_array(cls_logits, "cls_logits", 2, "float32", "float32 (Q, K + 1)")
    mask_logits = check_array(mask_logits, "mask_logits", 3, "float32", "float32 (Q, H, W)")
    q, k1 = cls_logits.shape
    if mask_logits.shape[0] != q:
        raise InvalidInputError(
            f"mask_logits: expected {q} masks (one per query of cls_logits), "
            f"got {mask_logits.shape[0]}"
        )
    num_classes = k1 - 1
    if num_classes < 1:
        raise InvalidInputError(f"cls_logits: expected at least 2 columns, got {k1}")
    if not 0 <= num_things <= num_classes:
        raise InvalidInputError(f"num_things: expected 0..{num_classes}, got {num_things}")
    if num_classes >= INSTANCE_OFFSET:
        raise InvalidInputError(
            f"cls_logits: expected fewer than {INSTANCE_OFFSET} classes, got {num_classes}"
        )
    h, w = mask_logits.shape[1:]

    probs = softmax(cls_logits)
    labels = probs.argmax(-1)  # first maximum on ties, as torch.max
    scores = probs[np.arange(q), labels]
    kept = np.flatnonzero((labels != num_classes) & (scores > np.float32(object_mask_thr)))
    id_map = np.full((h, w), num_classes, dtype=np.int32)
    if kept.size == 0:
        return PanopticResult(id_map=id_map, segments=[])

    winner, painted, original_area = _assign_pixels(mask_logits[kept], scores[kept])
    won_area = np.bincount(winner.ravel(), minlength=kept.size)
    if not filter_low_score:
        painted = np.ones_like(painted)
    painted_area = np.bincount(winner.ravel(), weights=painted.ravel(), minlength=kept.size)

    value = np.full(kept.size, num_classes, dtype=np.int64)
    segments: list[PanopticSegment] = []
    stuff_entry: dict[int, PanopticSegment] = {}
    instance_id = 1
    for slot, query in enumerate(kept):
        label = int(labels[query])
        area, original = int(won_area[slot]), int(original_area[slot])
        if area == 0 or original == 0 or area / original < iou_thr:
            continue
        score = float(scores[query])
        painted_pixels = int(painted_area[slot])
        if label >= num_things:
            value[slot] = label
            if painted_pixels == 0:
                continue
            entry = stuff_entry.get(label)
            if entry is None:
                entry = PanopticSegment(
                    id=label, category_id=label, isthing=False, score=score, area=0
                )
                stuff_entry[label] = entry
                segments.append(entry)
            entry["area"] += painted_pixels
            entry["score"] = max(entry["score"], score)
        else:
            inst = instance_id if thing_ids is None else int(thing_ids[query])
            instance_id += 1
            value[slot] = label + inst * INSTANCE_OFFSET
            if painted_pixels:
                segments.append(
                    PanopticSegment(
                        id=int(value[slot]),
                        category_id=label,
                        isthing=True,
                        score=score,
                        area=painted_pixels,
                    )
                )
    id_map[...] = np.where(painted, value[winner], num_classes)
    return PanopticResult(id_map=id_map, segments=segments)


def _assign_pixels(
    mask_logits: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel, the kept query with the largest ``score * sigmoid``, and its confidence.

    Args:
        mask_logits: (N, H, W) float32 of the kept queries.
        scores: (N,) float32.

    Returns:
        winner (H, W) int64 slot, confident (H, W) bool (winner's sigmoid >= 0.5),
        original_area (N,) int64 pixels with sigmoid >= 0.5 per query.
    """
    n, h, w = mask_logits.shape
    winner = np.empty((h, w), dtype=np.int64)
    confident = np.empty((h, w), dtype=bool)
    original_area = np.zeros(n, dtype=np.int64)
    band = max(1, _BAND_ELEMENTS // max(n * w, 1))
    for top in range(0, h, band):
        probs = sigmoid(mask_logits[:, top : top + band])  # (N, b, W)
        above = probs >= np.float32(0.5)
        original_area += above.reshape(n, -1).sum(1)
        probs *= scores.astype(np.float32)[:, None, None]
        best = probs.argmax(0)  # first maximum on ties, as torch.argmax
        winner[top : top + band] = best
        confident[top : top + band] = np.take_along_axis(above, best[None], 0)[0]
    return winner, confident, original_area
