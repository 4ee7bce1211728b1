"""Semantic segmentation: a pixel confusion matrix and mean IoU from it.

IoU_c = TP_c / (TP_c + FP_c + FN_c) per class; mIoU averages over the classes whose union is
non-empty (they occur in the ground truth or in the prediction), as mmseg's `IoUMetric` does — a
class that is predicted but absent from the ground truth counts with IoU 0. Pixels whose
ground-truth label is `ignore_index` take no part.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from omg_rt.errors import InvalidInputError, describe
from omg_rt.metrics import _validation as check


class ConfusionMatrix:
    """Pixel counts per (ground-truth class, predicted class).

    Args:
        num_classes: C; labels are 0 .. C-1.
        ignore_index: ground-truth label that marks pixels to skip (255 in ADE20K / COCO-stuff).

    Attributes:
        matrix: (C, C) int64, rows = ground truth, columns = prediction.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if int(num_classes) < 1:
            raise InvalidInputError(f"num_classes: expected >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((self.num_classes, self.num_classes), np.int64)

    def update(self, pred_labels: np.ndarray, gt_labels: np.ndarray) -> None:
        """Adds one image (or a batch).

        Args:
            pred_labels: (...) integer predicted class per pixel, in [0, C).
            gt_labels: same shape, integer ground-truth class per pixel, in [0, C) or
                `ignore_index`.

        Raises:
            InvalidInputError: different shapes, non-integer dtypes or labels out of range.
        """
        for name, arr in (("pred_labels", pred_labels), ("gt_labels", gt_labels)):
            if not isinstance(arr, np.ndarray) or arr.dtype == np.bool_ \
                    or not np.issubdtype(arr.dtype, np.integer):
                raise InvalidInputError(f"{name}: expected an integer ndarray, "
                                        f"got {describe(arr)}")
        check.same_shape("gt_labels", gt_labels, "pred_labels", pred_labels)
        valid = gt_labels != self.ignore_index
        gt = gt_labels[valid].astype(np.int64)
        pred = pred_labels[valid].astype(np.int64)
        c = self.num_classes
        if gt.size and (gt.min() < 0 or gt.max() >= c):
            raise InvalidInputError(f"gt_labels: expected values in [0, {c}) or "
                                    f"{self.ignore_index}, got range [{gt.min()}, {gt.max()}]")
        if pred.size and (pred.min() < 0 or pred.max() >= c):
            raise InvalidInputError(f"pred_labels: expected values in [0, {c}) where the ground "
                                    f"truth is not ignored, got range [{pred.min()}, {pred.max()}]")
        self.matrix += np.bincount(gt * c + pred, minlength=c * c).reshape(c, c)

    def compute(self) -> dict[str, Any]:
        """`mean_iou(self.matrix)`."""
        return mean_iou(self.matrix)


def mean_iou(confusion: np.ndarray) -> dict[str, Any]:
    """Mean IoU and pixel accuracy from a confusion matrix.

    Args:
        confusion: (C, C) non-negative integer pixel counts, rows = ground truth, columns =
            prediction.

    Returns:
        `{"miou": float, "iou": (C,) float64 with NaN for classes absent from both ground truth
        and prediction, "pixel_accuracy": float}`; NaN where there are no pixels at all.
    """
    if not isinstance(confusion, np.ndarray) or confusion.ndim != 2 \
            or confusion.shape[0] != confusion.shape[1] \
            or not np.issubdtype(confusion.dtype, np.number):
        raise InvalidInputError(f"confusion: expected a square (C, C) ndarray, "
                                f"got {describe(confusion)}")
    if confusion.size and confusion.min() < 0:
        raise InvalidInputError("confusion: expected non-negative counts")
    counts = confusion.astype(np.float64)
    tp = np.diag(counts)
    union = counts.sum(0) + counts.sum(1) - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    present = union > 0
    total = counts.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "iou": iou,
        "pixel_accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
    }
