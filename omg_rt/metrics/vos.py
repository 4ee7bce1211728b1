"""J&F for video object segmentation, as the DAVIS benchmark defines it.

- J (region similarity) is the IoU of an object's predicted and ground-truth masks in a frame,
  1 when both are empty (DAVIS `db_eval_iou`).
- F (boundary accuracy) is the F-measure of boundary pixels (DAVIS `db_eval_boundary`): both masks
  are turned into 1-pixel boundary maps (`_boundary_map`, DAVIS `_seg2bmap`); a boundary pixel of
  one counts as matched when the other's boundary, dilated by a disk of radius
  ceil(bound_th × image diagonal) pixels (bound_th 0.008; a bound_th ≥ 1 is a radius in pixels),
  covers it. Precision = matched predicted boundary / predicted boundary, recall likewise for the
  ground truth, F = 2PR / (P + R). Empty boundaries: none on either side → P = R = 1; none
  predicted → P = 1, R = 0; none in the ground truth → P = 0, R = 1.
- Per object, J and F are averaged over the evaluated frames; J-mean and F-mean average those over
  all objects of all videos, and J&F is their mean (DAVIS 2017 / vos-benchmark). The DAVIS
  semi-supervised protocol leaves out each video's first and last frame: `skip_first_and_last`.

The disk dilation uses OpenCV (no scikit-image): the disk is the set of offsets with
dx² + dy² ≤ r², as `skimage.morphology.disk(r)`.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from omg_rt.errors import InvalidInputError
from omg_rt.metrics import _validation as check

DAVIS_BOUND_TH = 0.008


def region_similarity(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    """J: IoU of two binary masks, 1.0 when both are empty.

    Args:
        pred_mask, gt_mask: (H, W) bool masks.
    """
    pred = check.binary_masks("pred_mask", pred_mask, 2)
    gt = check.binary_masks("gt_mask", gt_mask, 2)
    check.same_shape("gt_mask", gt, "pred_mask", pred)
    union = np.count_nonzero(pred | gt)
    return 1.0 if union == 0 else np.count_nonzero(pred & gt) / union


def boundary_f_measure(pred_mask: np.ndarray, gt_mask: np.ndarray,
                       bound_th: float = DAVIS_BOUND_TH) -> float:
    """F: DAVIS boundary F-measure of two binary masks (see the module docstring).

    Args:
        pred_mask, gt_mask: (H, W) bool masks.
        bound_th: boundary tolerance, a fraction of the image diagonal (< 1) or pixels (≥ 1).
    """
    pred = check.binary_masks("pred_mask", pred_mask, 2)
    gt = check.binary_masks("gt_mask", gt_mask, 2)
    check.same_shape("gt_mask", gt, "pred_mask", pred)
    return _boundary_f(pred, gt, _disk(_bound_radius(bound_th, gt.shape)))


def j_and_f(
    pred_maps: np.ndarray,
    gt_maps: np.ndarray,
    *,
    bound_th: float = DAVIS_BOUND_TH,
    skip_first_and_last: bool = False,
) -> dict[str, Any]:
    """J and F of every ground-truth object of one video.

    Args:
        pred_maps: (T, H, W) integer object ids per frame, 0 = background.
        gt_maps: (T, H, W) integer object ids per frame, 0 = background. The objects are the
            non-zero ids that occur anywhere in `gt_maps`; each is scored on every evaluated
            frame (a frame where it is absent and not predicted scores J = F = 1).
        bound_th: boundary tolerance of F.
        skip_first_and_last: drop frames 0 and T-1 (the DAVIS semi-supervised protocol).

    Returns:
        `{"j": {object_id: (T',) float64}, "f": {object_id: (T',) float64}, "j_mean", "f_mean",
        "jf": float}`, means over this video's objects of their per-frame means (NaN when there
        is no object or no frame).
    """
    pred = check.id_maps("pred_maps", pred_maps, 3)
    gt = check.id_maps("gt_maps", gt_maps, 3)
    check.same_shape("gt_maps", gt, "pred_maps", pred)
    if skip_first_and_last:
        pred, gt = pred[1:-1], gt[1:-1]
    objects = [int(o) for o in np.unique(gt) if o != 0]
    disk = _disk(_bound_radius(bound_th, gt.shape[1:]))
    j = {o: np.empty(gt.shape[0]) for o in objects}
    f = {o: np.empty(gt.shape[0]) for o in objects}
    for t in range(gt.shape[0]):
        for o in objects:
            p, g = pred[t] == o, gt[t] == o
            union = np.count_nonzero(p | g)
            j[o][t] = 1.0 if union == 0 else np.count_nonzero(p & g) / union
            f[o][t] = _boundary_f(p, g, disk)
    return {"j": j, "f": f, **_summary(j, f)}


class JFAccumulator:
    """Accumulates J and F over videos; `compute()` gives the dataset's J-mean, F-mean and J&F.

    Args:
        bound_th: boundary tolerance of F.
        skip_first_and_last: as in `j_and_f`; True for the DAVIS semi-supervised protocol.
    """

    def __init__(self, *, bound_th: float = DAVIS_BOUND_TH, skip_first_and_last: bool = False):
        self.bound_th = bound_th
        self.skip_first_and_last = skip_first_and_last
        self._j: dict[tuple[int, int], np.ndarray] = {}
        self._f: dict[tuple[int, int], np.ndarray] = {}
        self._videos = 0

    def update(self, pred_maps: np.ndarray, gt_maps: np.ndarray) -> dict[str, Any]:
        """Adds one video ((T, H, W) integer id maps, as `j_and_f`); returns its `j_and_f`."""
        result = j_and_f(pred_maps, gt_maps, bound_th=self.bound_th,
                         skip_first_and_last=self.skip_first_and_last)
        for o in result["j"]:
            self._j[self._videos, o] = result["j"][o]
            self._f[self._videos, o] = result["f"][o]
        self._videos += 1
        return result

    def compute(self) -> dict[str, float]:
        """`{"j_mean", "f_mean", "jf"}`: means over all objects of all videos (NaN if none)."""
        return _summary(self._j, self._f)


def _summary(j: dict[Any, np.ndarray], f: dict[Any, np.ndarray]) -> dict[str, float]:
    per_object_j = [v.mean() for v in j.values() if v.size]
    per_object_f = [v.mean() for v in f.values() if v.size]
    j_mean = float(np.mean(per_object_j)) if per_object_j else float("nan")
    f_mean = float(np.mean(per_object_f)) if per_object_f else float("nan")
    return {"j_mean": j_mean, "f_mean": f_mean, "jf": (j_mean + f_mean) / 2}


def _bound_radius(bound_th: float, shape: tuple[int, ...]) -> int:
    if not bound_th > 0:
        raise InvalidInputError(f"bound_th: expected > 0, got {bound_th}")
    if bound_th >= 1:
        return int(math.ceil(bound_th))
    return int(math.ceil(bound_th * math.hypot(*shape)))


def _disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 disk: offsets with dx² + dy² ≤ r²."""
    offsets = np.arange(-radius, radius + 1)
    return ((offsets[:, None] ** 2 + offsets[None, :] ** 2) <= radius**2).astype(np.uint8)


def _boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-pixel boundary of a (H, W) bool mask, as DAVIS's `_seg2bmap` at full size.

    A pixel is boundary when it differs from its east, south or south-east neighbour (nothing
    beyond the image edge: the last row compares with east only, the last column with south only,
    and the bottom-right pixel is never boundary).
    """
    east = np.zeros_like(mask)
    south = np.zeros_like(mask)
    south_east = np.zeros_like(mask)
    east[:, :-1] = mask[:, 1:]
    south[:-1, :] = mask[1:, :]
    south_east[:-1, :-1] = mask[1:, 1:]
    boundary: np.ndarray = (mask ^ east) | (mask ^ south) | (mask ^ south_east)
    boundary[-1, :] = mask[-1, :] ^ east[-1, :]
    boundary[:, -1] = mask[:, -1] ^ south[:, -1]
    boundary[-1, -1] = False
    return boundary


def _boundary_f(pred: np.ndarray, gt: np.ndarray, disk: np.ndarray) -> float:
    pred_boundary = _boundary_map(pred)
    gt_boundary = _boundary_map(gt)
    n_pred = np.count_nonzero(pred_boundary)
    n_gt = np.count_nonzero(gt_boundary)
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0  # P = 1, R = 0 or P = 0, R = 1
    pred_dilated = cv2.dilate(pred_boundary.astype(np.uint8), disk) > 0
    gt_dilated = cv2.dilate(gt_boundary.astype(np.uint8), disk) > 0
    precision = np.count_nonzero(pred_boundary & gt_dilated) / n_pred
    recall = np.count_nonzero(gt_boundary & pred_dilated) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)
