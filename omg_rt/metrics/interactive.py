"""Interactive segmentation: mean IoU of the masks predicted from point / box prompts.

Each prompt has one target mask; its score is the IoU of the predicted mask with that target
(1.0 when both are empty), and interactive mIoU is the mean over prompts (SAM's 1-click / box
mIoU). Put the prompts of all images in one batch, or average per-prompt IoUs yourself.
"""

from __future__ import annotations

import numpy as np

from omg_rt.metrics import _validation as check


def mask_ious(pred_masks: np.ndarray, gt_masks: np.ndarray) -> np.ndarray:
    """IoU of each predicted mask with its own target.

    Args:
        pred_masks: (N, H, W) bool, one mask per prompt.
        gt_masks: (N, H, W) bool, the prompt's target object.

    Returns:
        (N,) float64 IoUs in [0, 1], 1.0 where both masks are empty.
    """
    pred = check.binary_masks("pred_masks", pred_masks, 3)
    gt = check.binary_masks("gt_masks", gt_masks, 3)
    check.same_shape("gt_masks", gt, "pred_masks", pred)
    n = pred.shape[0]
    inter = (pred & gt).reshape(n, -1).sum(1)
    union = (pred | gt).reshape(n, -1).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def interactive_miou(pred_masks: np.ndarray, gt_masks: np.ndarray) -> float:
    """Mean over prompts of `mask_ious` (NaN for zero prompts).

    Args:
        pred_masks: (N, H, W) bool, one mask per prompt.
        gt_masks: (N, H, W) bool targets.
    """
    ious = mask_ious(pred_masks, gt_masks)
    return float(ious.mean()) if ious.size else float("nan")
