"""Video instance AP, YouTube-VIS style: COCO AP with videos for images and tube IoU for mask IoU.

YouTube-VIS's `ytvoseval.py` is COCOeval with three changes, reproduced here on top of
pycocotools' COCOeval (its matching, accumulation and summary are used as they are):

- the IoU of a predicted and a ground-truth tube is Σ_t |P_t ∩ G_t| / Σ_t |P_t ∪ G_t| over the
  video's frames (0 when both tubes are empty) — crowd flags do not change it;
- an instance's area, for the small / medium / large split, is the mean of its non-zero per-frame
  areas (0 when it is empty everywhere);
- the area ranges are [0, 128²], [128², 256²], [256², 1e10] pixels ("all" = [0, 1e10]).

The tube IoUs are computed once per video when it is added (numpy, one frame at a time), so only
those small matrices are kept, never the masks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from omg_rt.errors import InvalidInputError, describe
from omg_rt.metrics import _validation as check
from omg_rt.metrics.instance import evaluate, quiet_coco

# ytvoseval Params.setDetParams: area ranges for all / small / medium / large.
YTVIS_AREA_RANGES: tuple[tuple[float, float], ...] = (
    (0.0, 1e5**2), (0.0, 128.0**2), (128.0**2, 256.0**2), (256.0**2, 1e5**2))

# COCOeval converts every annotation's `segmentation` to an RLE before it asks for IoUs; ours are
# never read (IoUs come from the tube table), so each annotation carries this 1×1 empty RLE.
_PLACEHOLDER_RLE = mask_utils.encode(np.zeros((1, 1, 1), np.uint8, order="F"))[0]


def tube_iou(pred_tubes: np.ndarray, gt_tubes: np.ndarray) -> np.ndarray:
    """Tube IoU between every predicted and every ground-truth tube.

    Args:
        pred_tubes: (N, T, H, W) bool predicted masks per frame.
        gt_tubes: (M, T, H, W) bool ground-truth masks per frame.

    Returns:
        (N, M) float64: Σ_t |P_t ∩ G_t| / Σ_t |P_t ∪ G_t|, 0 where both tubes are empty.
    """
    pred = check.binary_masks("pred_tubes", pred_tubes, 4)
    gt = check.binary_masks("gt_tubes", gt_tubes, 4)
    if pred.shape[1:] != gt.shape[1:]:
        raise InvalidInputError(f"pred_tubes: expected (N, {', '.join(map(str, gt.shape[1:]))}) "
                                f"like gt_tubes, got {describe(pred)}")
    n, m, frames = pred.shape[0], gt.shape[0], gt.shape[1]
    inter = np.zeros((n, m), np.int64)
    for t in range(frames):
        # float32 sums of 0/1 are exact below 2**24 pixels per frame.
        p = pred[:, t].reshape(n, -1).astype(np.float32)  # (N, HW)
        g = gt[:, t].reshape(m, -1).astype(np.float32)  # (M, HW)
        inter += np.rint(p @ g.T).astype(np.int64)
    pred_area = pred.reshape(n, -1).sum(1)
    gt_area = gt.reshape(m, -1).sum(1)
    union = pred_area[:, None] + gt_area[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


class VideoInstanceAPAccumulator:
    """Accumulates per-video instance tubes; `compute()` gives YouTube-VIS AP.

    Args:
        category_ids: the category ids evaluated.
    """

    def __init__(self, category_ids: Sequence[int]) -> None:
        self._category_ids = check.distinct_ids("category_ids", category_ids)
        self._videos: list[dict[str, Any]] = []
        self._gt: list[dict[str, Any]] = []
        self._dt: list[dict[str, Any]] = []
        self._ious: dict[int, np.ndarray] = {}  # video id → (N, M) tube IoUs

    def update(
        self,
        pred_masks: np.ndarray,
        pred_scores: np.ndarray,
        pred_labels: np.ndarray,
        gt_masks: np.ndarray,
        gt_labels: np.ndarray,
        gt_iscrowd: np.ndarray | None = None,
    ) -> None:
        """Adds one video.

        Args:
            pred_masks: (N, T, H, W) bool predicted tubes.
            pred_scores: (N,) float confidences.
            pred_labels: (N,) int category ids.
            gt_masks: (M, T, H, W) bool ground-truth tubes (empty frames where an object is
                absent).
            gt_labels: (M,) int category ids.
            gt_iscrowd: (M,) bool crowd flags; all False when omitted.
        """
        ious = tube_iou(pred_masks, gt_masks)
        n, m = ious.shape
        scores = check.vector("pred_scores", pred_scores, n, "float")
        labels = check.vector("pred_labels", pred_labels, n, "int")
        gt_cats = check.vector("gt_labels", gt_labels, m, "int")
        crowd = (np.zeros(m, bool) if gt_iscrowd is None
                 else check.vector("gt_iscrowd", gt_iscrowd, m, "bool"))
        known = set(self._category_ids)
        for name, cats in (("pred_labels", labels), ("gt_labels", gt_cats)):
            unknown = sorted(set(cats.tolist()) - known)
            if unknown:
                raise InvalidInputError(f"{name}: unknown category ids {unknown}")
        video_id = len(self._videos) + 1
        self._videos.append({"id": video_id, "height": 1, "width": 1})
        self._ious[video_id] = ious
        gt_area = _mean_nonzero_area(gt_masks)
        pred_area = _mean_nonzero_area(pred_masks)
        for j in range(m):
            self._gt.append({"id": len(self._gt) + 1, "image_id": video_id,
                             "category_id": int(gt_cats[j]), "iscrowd": int(crowd[j]),
                             "area": float(gt_area[j]), "segmentation": _PLACEHOLDER_RLE,
                             "tube_index": j})
        for i in range(n):
            self._dt.append({"id": len(self._dt) + 1, "image_id": video_id,
                             "category_id": int(labels[i]), "iscrowd": 0, "score": float(scores[i]),
                             "area": float(pred_area[i]), "segmentation": _PLACEHOLDER_RLE,
                             "tube_index": i})

    def compute(self) -> dict[str, Any]:
        """YouTube-VIS AP over the videos added so far.

        Returns:
            `mask_ap`'s keys (`"ap"`, `"ap50"`, `"ap75"`, `"ap_small"`, ..., `"ar100"`, ...,
            `"per_class_ap"`), with YouTube-VIS's area ranges; NaN where undefined.
        """
        categories = [{"id": c} for c in self._category_ids]
        coco_gt = quiet_coco({"images": list(self._videos), "categories": categories,
                              "annotations": [dict(a) for a in self._gt]})
        coco_dt = quiet_coco({"images": list(self._videos), "categories": categories,
                              "annotations": [dict(a) for a in self._dt]})
        evaluator = _TubeEval(coco_gt, coco_dt, self._ious)
        evaluator.params.areaRng = [list(r) for r in YTVIS_AREA_RANGES]
        return evaluate(evaluator)


def video_instance_ap(
    videos: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
    category_ids: Sequence[int],
) -> dict[str, Any]:
    """YouTube-VIS AP in one call.

    Args:
        videos: `(pred_masks, pred_scores, pred_labels, gt_masks, gt_labels)` per video, as
            `VideoInstanceAPAccumulator.update` takes them.
        category_ids: the category ids evaluated.

    Returns:
        `VideoInstanceAPAccumulator.compute()`'s dict.
    """
    acc = VideoInstanceAPAccumulator(category_ids)
    for pred_masks, pred_scores, pred_labels, gt_masks, gt_labels in videos:
        acc.update(pred_masks, pred_scores, pred_labels, gt_masks, gt_labels)
    return acc.compute()


class _TubeEval(COCOeval):  # type: ignore[misc]  # pycocotools is untyped
    """COCOeval whose IoUs are looked up in precomputed per-video tube-IoU tables."""

    def __init__(self, coco_gt: Any, coco_dt: Any, ious: dict[int, np.ndarray]) -> None:
        super().__init__(coco_gt, coco_dt, iouType="segm")
        self._tube_ious = ious

    def computeIoU(self, imgId: int, catId: int) -> Any:  # noqa: N802 - COCOeval's name
        # Same selection and order as COCOeval.computeIoU: score-sorted (stable) detections,
        # cut at the largest max-dets.
        p = self.params
        if p.useCats:
            gt = self._gts[imgId, catId]
            dt = self._dts[imgId, catId]
        else:
            gt = [g for c in p.catIds for g in self._gts[imgId, c]]
            dt = [d for c in p.catIds for d in self._dts[imgId, c]]
        if len(gt) == 0 or len(dt) == 0:
            return []
        order = np.argsort([-d["score"] for d in dt], kind="mergesort")
        dt = [dt[i] for i in order][: p.maxDets[-1]]
        rows = [d["tube_index"] for d in dt]
        cols = [g["tube_index"] for g in gt]
        return self._tube_ious[imgId][np.ix_(rows, cols)]


def _mean_nonzero_area(tubes: np.ndarray) -> np.ndarray:
    """(K, T, H, W) bool → (K,) mean of the non-zero per-frame areas (0 if all are zero)."""
    areas = np.asarray(tubes, bool).reshape(tubes.shape[0], tubes.shape[1], -1).sum(2)  # (K, T)
    nonzero = (areas > 0).sum(1)
    return np.where(nonzero > 0, areas.sum(1) / np.maximum(nonzero, 1), 0.0)
