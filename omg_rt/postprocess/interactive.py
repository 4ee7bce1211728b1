"""Interactive (point / box prompt) results: the official ``inference_sam`` branch.

Each prompt query's mask logits are resized like every other mask (padded size, crop, original
size; :func:`omg_rt.postprocess.masks.upsample_masks`) and thresholded at ``sigmoid > 0.5`` —
on the tiles a mask boundary may cross only (:mod:`omg_rt.postprocess.tiles`), the same masks.
The official code returns only the masks; we add ``sigmoid(iou_logit)`` (the IoU / objectness
head, last column of the class output) as a per-prompt quality score. With a torch ``device`` the
masks are resized and thresholded there (:class:`~omg_rt.postprocess.device.DeviceLogits`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from omg_rt.arrays import Array, is_tensor
from omg_rt.errors import InvalidInputError
from omg_rt.postprocess._common import check_array, sigmoid, sigmoid_threshold
from omg_rt.postprocess.device import DeviceLogits
from omg_rt.postprocess.tiles import TiledLogits


@dataclass(frozen=True)
class PromptResult:
    """One mask per prompt.

    Attributes:
        masks: (P, H, W) bool at the original image size.
        scores: (P,) float32 ``sigmoid(iou_logit)``.
        boxes: (P, 4) float32 of the masks where they were computed with them (the device
            path), else None.
    """

    masks: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray | None = None


def prompt_results(
    mask_logits: Array,
    iou_logits: np.ndarray,
    padded_hw: Sequence[int],
    resized_hw: Sequence[int],
    original_hw: Sequence[int],
    *,
    device: str | None = None,
) -> PromptResult:
    """Binary masks and quality scores of prompt queries.

    Args:
        mask_logits: (P, h4, w4) float32 at stride 4 of the padded input.
        iou_logits: (P,) float32 IoU-head logits.
        padded_hw: (Hp, Wp); resized_hw: (Hr, Wr); original_hw: (H, W).
        device: a torch device that resizes and thresholds the masks, or None: the host.

    Returns:
        :class:`PromptResult` with (P, H, W) bool masks.
    """
    if device is None or not is_tensor(mask_logits):
        mask_logits = check_array(mask_logits, "mask_logits", 3, "float32",
                                  "float32 (P, h4, w4)")
    iou_logits = check_array(iou_logits, "iou_logits", 1, "float32", "float32 (P,)")
    if iou_logits.shape[0] != mask_logits.shape[0]:
        raise InvalidInputError(
            f"iou_logits: expected {mask_logits.shape[0]} values (one per prompt), "
            f"got {iou_logits.shape[0]}"
        )
    queries = np.arange(mask_logits.shape[0])
    if device is not None:
        on_device = DeviceLogits(mask_logits, padded_hw, resized_hw, original_hw, device)
        masks, boxes = on_device.binary_masks(queries)
        return PromptResult(masks=masks, scores=sigmoid(iou_logits), boxes=boxes)
    tiles = TiledLogits(mask_logits, padded_hw, resized_hw, original_hw)
    masks = binary_masks_from_tiles(tiles, queries)
    return PromptResult(masks=masks, scores=sigmoid(iou_logits))


def binary_masks(mask_logits: np.ndarray) -> np.ndarray:
    """``sigmoid(mask_logits) > 0.5`` in float32, as the official code thresholds.

    Args:
        mask_logits: (N, H, W) float32.

    Returns:
        (N, H, W) bool.
    """
    mask_logits = check_array(mask_logits, "mask_logits", 3, "float32", "float32 (N, H, W)")
    out = np.empty(mask_logits.shape, dtype=bool)
    for i in range(mask_logits.shape[0]):
        out[i] = sigmoid(mask_logits[i]) > np.float32(0.5)
    return out


def binary_masks_from_tiles(tiles: TiledLogits, queries: np.ndarray) -> np.ndarray:
    """:func:`binary_masks` of ``upsample_masks(stride-4 logits)[queries]``, resizing only the
    tiles a mask boundary may cross (the logit against
    :func:`~omg_rt.postprocess._common.sigmoid_threshold`): the same masks.

    Args:
        tiles: the stride-4 mask logits with the image's sizes.
        queries: (N,) int.

    Returns:
        (N, H, W) bool.
    """
    thr = sigmoid_threshold(strict=True)
    lo, hi = tiles.bounds(queries)
    ty, tx = tiles.grid
    out_t = np.zeros((queries.shape[0], ty, tx, tiles.tile, tiles.tile), bool)
    out_t[lo >= thr] = True
    qi, qy, qx = np.nonzero((lo < thr) & (hi >= thr))
    out_t[qi, qy, qx] = tiles.evaluate(queries[qi], qy, qx) >= thr
    out = np.empty((queries.shape[0], *tiles.original_hw), bool)
    for i in range(queries.shape[0]):
        out[i] = tiles.assemble(out_t[i])
    return out
