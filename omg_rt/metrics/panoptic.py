"""Panoptic quality (PQ = SQ × RQ), as COCO's panopticapi computes it.

PQ (Kirillov et al., CVPR 2019): a predicted and a ground-truth segment of the same category
match when their IoU exceeds 0.5 (which makes the matching unique), then per category

    PQ = Σ_TP IoU / (|TP| + ½|FP| + ½|FN|) = SQ × RQ,
    SQ = Σ_TP IoU / |TP|,   RQ = |TP| / (|TP| + ½|FP| + ½|FN|)

and the reported PQ/SQ/RQ average over the categories that occur (|TP| + |FP| + |FN| > 0), for all
categories, things only, and stuff only. The details follow panopticapi's `pq_compute_single_core`:

- id 0 is void. Void pixels are removed from a prediction's area in the IoU's union.
- ground-truth segments with `iscrowd` are never matched; an unmatched prediction whose pixels lie
  more than half in void plus the crowd region of its category is not a false positive (when a
  category has several crowd segments, the last one listed is that region, as in panopticapi).
- areas come from the id maps (any `area` in a segment dict is ignored); a listed segment whose id
  does not occur in its map takes no part (panopticapi would reject such a prediction).

The core works on counts of (gt id, pred id) pixel pairs, so the same code scores a single image
and a stacked window of video frames (`video_panoptic.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from omg_rt.errors import InvalidInputError, describe
from omg_rt.metrics import _validation as check

VOID = 0
# A (gt id, pred id) pair is packed into one uint64 key; ids are < 2**32 (checked on input).
_OFFSET = np.uint64(2**32)
# A match needs IoU strictly above one half (panopticapi: `iou > 0.5`).
_MATCH_IOU = 0.5


class PQAccumulator:
    """Accumulates panoptic quality over images; `compute()` gives PQ/SQ/RQ.

    Args:
        categories: COCO panoptic categories, `[{"id": int, "isthing": 0 | 1}, ...]` (other keys
            are ignored). Every segment's `category_id` must be one of these ids.
    """

    def __init__(self, categories: Sequence[Mapping[str, Any]]) -> None:
        self._categories = check.categories("categories", categories)
        self._stats = PQStats.zeros(list(self._categories))

    def update(
        self,
        pred_id_map: np.ndarray,
        pred_segments: Sequence[Mapping[str, Any]],
        gt_id_map: np.ndarray,
        gt_segments: Sequence[Mapping[str, Any]],
    ) -> None:
        """Adds one image.

        Args:
            pred_id_map: (H, W) integer segment ids of the prediction, 0 = void.
            pred_segments: `[{"id", "category_id"}, ...]` for every non-zero id in `pred_id_map`.
            gt_id_map: (H, W) integer segment ids of the ground truth, 0 = void.
            gt_segments: `[{"id", "category_id", "iscrowd"?}, ...]` for every non-zero id in
                `gt_id_map` (`iscrowd` defaults to 0).

        Raises:
            InvalidInputError: wrong shapes or dtypes, an id in a map that its segments do not
                list, a duplicate id, or an unknown category.
        """
        pred = check.id_maps("pred_id_map", pred_id_map, 2)
        gt = check.id_maps("gt_id_map", gt_id_map, 2)
        check.same_shape("gt_id_map", gt, "pred_id_map", pred)
        pred_segs = check.segments("pred_segments", pred_segments, self._categories)
        gt_segs = check.segments("gt_segments", gt_segments, self._categories)
        keys, counts = pixel_pair_counts(gt, pred)
        match_segments(keys, counts, gt_segs, pred_segs, self._stats)

    def compute(self) -> dict[str, Any]:
        """PQ, SQ and RQ so far.

        Returns:
            `{"all" | "things" | "stuff": {"pq", "sq", "rq": float, "n": int}, "per_class":
            {category_id: {"pq", "sq", "rq": float, "tp", "fp", "fn": int}}}` with values in
            [0, 1]; `n` counts the categories averaged (those with TP + FP + FN > 0). A group
            with n = 0 and a category that never occurred have NaN scores.
        """
        return self._stats.summarize(self._categories)


def panoptic_quality(
    samples: Iterable[tuple[np.ndarray, Sequence[Mapping[str, Any]], np.ndarray,
                            Sequence[Mapping[str, Any]]]],
    categories: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """PQ over a dataset in one call.

    Args:
        samples: `(pred_id_map, pred_segments, gt_id_map, gt_segments)` per image, as
            `PQAccumulator.update` takes them.
        categories: `[{"id", "isthing"}, ...]`.

    Returns:
        `PQAccumulator.compute()`'s dict.
    """
    acc = PQAccumulator(categories)
    for pred_id_map, pred_segments, gt_id_map, gt_segments in samples:
        acc.update(pred_id_map, pred_segments, gt_id_map, gt_segments)
    return acc.compute()


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids from a COCO panoptic PNG's colours: id = R + 256·G + 256²·B.

    Args:
        rgb: (H, W, 3) uint8 image as read from the PNG.

    Returns:
        (H, W) int64 id map.
    """
    if not isinstance(rgb, np.ndarray) or rgb.ndim != 3 or rgb.shape[2] != 3 \
            or rgb.dtype != np.uint8:
        raise InvalidInputError(f"rgb: expected uint8 (H, W, 3), got {describe(rgb)}")
    channels = rgb.astype(np.int64)
    return channels[..., 0] + 256 * channels[..., 1] + 256 * 256 * channels[..., 2]


@dataclass
class PQStats:
    """Per-category sums: IoU of true positives, and TP / FP / FN counts."""

    category_ids: list[int]
    iou: np.ndarray  # (K,) float64
    tp: np.ndarray  # (K,) int64
    fp: np.ndarray  # (K,) int64
    fn: np.ndarray  # (K,) int64
    _index: dict[int, int] = field(default_factory=dict, repr=False)

    @classmethod
    def zeros(cls, category_ids: list[int]) -> PQStats:
        k = len(category_ids)
        return cls(category_ids, np.zeros(k), np.zeros(k, np.int64), np.zeros(k, np.int64),
                   np.zeros(k, np.int64), {c: i for i, c in enumerate(category_ids)})

    def summarize(self, categories: Mapping[int, bool]) -> dict[str, Any]:
        """Averages per-category PQ/SQ/RQ as panopticapi's `pq_average` does (see `compute`)."""
        denom = self.tp + 0.5 * self.fp + 0.5 * self.fn
        occurs = (self.tp + self.fp + self.fn) > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            pq = np.where(occurs, self.iou / denom, np.nan)
            sq = np.where(occurs, np.where(self.tp > 0, self.iou / np.maximum(self.tp, 1), 0.0),
                          np.nan)
            rq = np.where(occurs, self.tp / denom, np.nan)
        isthing = np.array([categories[c] for c in self.category_ids], dtype=bool)
        result: dict[str, Any] = {}
        for name, selected in (("all", np.ones_like(isthing)), ("things", isthing),
                               ("stuff", ~isthing)):
            used = selected & occurs
            n = int(used.sum())
            result[name] = {
                "pq": float(pq[used].mean()) if n else float("nan"),
                "sq": float(sq[used].mean()) if n else float("nan"),
                "rq": float(rq[used].mean()) if n else float("nan"),
                "n": n,
            }
        result["per_class"] = {
            c: {"pq": float(pq[i]), "sq": float(sq[i]), "rq": float(rq[i]),
                "tp": int(self.tp[i]), "fp": int(self.fp[i]), "fn": int(self.fn[i])}
            for i, c in enumerate(self.category_ids)
        }
        return result


def pixel_pair_counts(gt_ids: np.ndarray, pred_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Counts pixels per (gt id, pred id) pair.

    Args:
        gt_ids, pred_ids: uint64 id arrays of one shape (any number of dims), ids < 2**32.

    Returns:
        keys: (P,) uint64 sorted, `gt * 2**32 + pred`; counts: (P,) int64 pixels per pair.
    """
    keys, counts = np.unique(gt_ids.ravel() * _OFFSET + pred_ids.ravel(), return_counts=True)
    return keys, counts.astype(np.int64)


def merge_pair_counts(
    tables: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Sums several `pixel_pair_counts` tables (e.g. the frames of a video window)."""
    keys = np.concatenate([k for k, _ in tables])
    counts = np.concatenate([c for _, c in tables])
    merged, inverse = np.unique(keys, return_inverse=True)
    summed = np.zeros(len(merged), np.int64)
    np.add.at(summed, inverse, counts)
    return merged, summed


def match_segments(
    keys: np.ndarray,
    counts: np.ndarray,
    gt_segments: Mapping[int, tuple[int, bool]],
    pred_segments: Mapping[int, tuple[int, bool]],
    stats: PQStats,
) -> None:
    """Matches the segments of one image (or one video window) and adds to `stats` in place.

    Args:
        keys, counts: a `pixel_pair_counts` table.
        gt_segments: {id: (category_id, iscrowd)} in the order the user listed them.
        pred_segments: {id: (category_id, iscrowd)} (a prediction's iscrowd is ignored).
        stats: the per-category sums to add to.

    Raises:
        InvalidInputError: a non-zero id in a map has no segment entry.
    """
    gt_of = (keys // _OFFSET).tolist()
    pred_of = (keys % _OFFSET).tolist()
    inter = dict(zip(zip(gt_of, pred_of, strict=True), counts.tolist(), strict=True))
    gt_area: dict[int, int] = {}
    pred_area: dict[int, int] = {}
    for (g, p), n in inter.items():
        gt_area[g] = gt_area.get(g, 0) + n
        pred_area[p] = pred_area.get(p, 0) + n
    for ids, segs, name in ((gt_area, gt_segments, "gt_segments"),
                            (pred_area, pred_segments, "pred_segments")):
        missing = sorted(i for i in ids if i != VOID and i not in segs)
        if missing:
            raise InvalidInputError(f"{name}: ids {missing[:10]} occur in the id map but are not "
                                    f"listed")
    index = stats._index

    gt_matched: set[int] = set()
    pred_matched: set[int] = set()
    for (g, p), n in inter.items():
        if g == VOID or p == VOID:
            continue
        g_cat, g_crowd = gt_segments[g]
        if g_crowd or g_cat != pred_segments[p][0]:
            continue
        union = pred_area[p] + gt_area[g] - n - inter.get((VOID, p), 0)
        iou = n / union
        if iou > _MATCH_IOU:
            stats.tp[index[g_cat]] += 1
            stats.iou[index[g_cat]] += iou
            gt_matched.add(g)
            pred_matched.add(p)

    crowd_of_category: dict[int, int] = {}
    for g, (g_cat, g_crowd) in gt_segments.items():
        if g not in gt_area or g in gt_matched:
            continue
        if g_crowd:
            crowd_of_category[g_cat] = g
            continue
        stats.fn[index[g_cat]] += 1

    for p, (p_cat, _) in pred_segments.items():
        if p not in pred_area or p in pred_matched:
            continue
        ignored = inter.get((VOID, p), 0)
        if p_cat in crowd_of_category:
            ignored += inter.get((crowd_of_category[p_cat], p), 0)
        # Mostly void or crowd: not counted as a false positive.
        if ignored / pred_area[p] > 0.5:
            continue
        stats.fp[index[p_cat]] += 1
