"""SAM-style prompts made from ground-truth masks (the paper's COCO-SAM setting).

A click is either the mask's innermost pixel (the distance-transform maximum, which the official
COCO point evaluation uses) or a uniformly random mask pixel (what the official training uses).
A box is the mask's tight box, optionally jittered. Coordinates are pixels, x right, y down;
a click at pixel (x, y) is that pixel's integer index; a box is ``(x0, y0, x1, y1)`` with
pixel-edge coordinates, so a mask covering columns 3..5 has x0 = 3, x1 = 6.
"""

from __future__ import annotations

import cv2
import numpy as np

from training.data.formats import DataError

__all__ = ["POINT_PSEUDO_BOX_RADIUS", "mask_box", "point_pseudo_box", "sample_box", "sample_point"]

# The official preprocessing turns a click into the box (x − 3, y − 3, x + 3, y + 3).
POINT_PSEUDO_BOX_RADIUS = 3.0


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise DataError(f"mask: expected bool (H, W), got {mask.dtype} {mask.shape}")
    if not mask.any():
        raise DataError("mask: expected at least one True pixel, got an empty mask")
    return mask


def sample_point(mask: np.ndarray, mode: str = "center",
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """One click inside a mask.

    Args:
        mask: (H, W) bool, not empty.
        mode: ``"center"`` = the pixel farthest from the mask's border (the image edge counts as
            border; ties go to the first in raster order), ``"random"`` = uniform over the mask.
        rng: needed for ``"random"``.
    Returns:
        (2,) float32 ``(x, y)`` of a pixel where ``mask[y, x]`` is True.
    """
    mask = _check_mask(mask)
    if mode == "center":
        # Pad with background so pixels on the image edge are one step from the border.
        padded = np.pad(mask, 1).astype(np.uint8)
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    elif mode == "random":
        if rng is None:
            raise DataError("rng: expected a numpy Generator for mode='random', got None")
        ys, xs = np.nonzero(mask)
        k = int(rng.integers(len(xs)))
        y, x = ys[k], xs[k]
    else:
        raise DataError(f"mode: expected 'center' or 'random', got {mode!r}")
    return np.array([x, y], np.float32)


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(4,) float32 tight box ``(x0, y0, x1, y1)`` of a non-empty (H, W) bool mask."""
    mask = _check_mask(mask)
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def sample_box(mask: np.ndarray, jitter: float = 0.0,
               rng: np.random.Generator | None = None) -> np.ndarray:
    """The mask's box with each side moved by at most ``jitter`` × the box's width/height.

    Args:
        mask: (H, W) bool, not empty.
        jitter: fraction of the box size; each coordinate moves by U(−jitter, jitter) · side.
        rng: needed when ``jitter > 0``.
    Returns:
        (4,) float32 ``(x0, y0, x1, y1)`` clipped to ``[0, W] × [0, H]``, with x0 < x1, y0 < y1.
    """
    box = mask_box(mask)
    if jitter < 0:
        raise DataError(f"jitter: expected >= 0, got {jitter}")
    if jitter == 0:
        return box
    if rng is None:
        raise DataError("rng: expected a numpy Generator when jitter > 0, got None")
    h, w = mask.shape
    side = np.array([box[2] - box[0], box[3] - box[1]] * 2, np.float32)
    jittered = box + rng.uniform(-jitter, jitter, size=4).astype(np.float32) * side
    jittered = np.clip(jittered, 0, [w, h, w, h]).astype(np.float32)
    # A box never collapses: keep at least one pixel on each axis (inside the image).
    for lo, hi, limit in ((0, 2, w), (1, 3, h)):
        if jittered[hi] - jittered[lo] < 1:
            mid = np.clip((jittered[lo] + jittered[hi]) / 2, 0.5, limit - 0.5)
            jittered[lo], jittered[hi] = mid - 0.5, mid + 0.5
    return jittered


def point_pseudo_box(point: np.ndarray) -> np.ndarray:
    """(4,) float32 box ``(x − 3, y − 3, x + 3, y + 3)``: how the model takes a click."""
    x, y = float(point[0]), float(point[1])
    r = POINT_PSEUDO_BOX_RADIUS
    return np.array([x - r, y - r, x + r, y + r], np.float32)
