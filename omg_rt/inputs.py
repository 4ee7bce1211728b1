"""User inputs, checked at the boundary: images, prompts, and the first-frame mask of VOS.

Every check raises :class:`~omg_rt.errors.InvalidInputError` naming the argument, what was
expected and what came; nothing here touches a graph.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from omg_rt.errors import InvalidInputError
from omg_rt.preprocess import check_rgb_image


def read_image(image: Any, name: str) -> np.ndarray:
    """An (H, W, 3) uint8 RGB array, or the image file at a path, checked.

    Args:
        image: (H, W, 3) uint8 RGB array, or a path OpenCV can read.
        name: the argument's name in error messages.

    Returns:
        (H, W, 3) uint8 RGB.
    """
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        data = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if data is None:
            raise InvalidInputError(f"{name}: cannot read an image from {str(path)!r}")
        return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(
            f"{name}: expected uint8 (H, W, 3) RGB array or a path, got {type(image).__name__}"
        )
    return check_rgb_image(image, name)


def prompt_boxes(
    original_hw: tuple[int, int],
    resized_hw: tuple[int, int],
    *,
    points: Any = None,
    labels: Any = None,
    boxes: Any = None,
    point_radius: float,
) -> np.ndarray:
    """Clicks and boxes in original-image pixels -> the prompt encoder's boxes.

    A click becomes ``[x - r, y - r, x + r, y + r]`` in resized pixels (``r`` =
    ``point_radius``, 3 in the official code).

    Args:
        original_hw: (H, W) of the user's image; resized_hw: (Hr, Wr) after the keep-ratio resize.
        points: (N, 2) clicks (x, y); labels: (N,) all 1 (OMG-Seg clicks are foreground prompts).
        boxes: (M, 4) boxes (x0, y0, x1, y1).
        point_radius: half side of a click's box, in resized pixels.

    Returns:
        (N + M, 4) float32 boxes in resized-image pixels, points first.
    """
    h, w = original_hw
    pts = _prompt_array(points, "points", 2)
    if pts is not None:
        if labels is not None:
            lab = np.asarray(labels)
            if lab.shape != (pts.shape[0],):
                raise InvalidInputError(
                    f"labels: expected ({pts.shape[0]},) (one per point), got {lab.shape}"
                )
            if not np.all(lab == 1):
                raise InvalidInputError(
                    f"labels: OMG-Seg clicks are independent foreground prompts; expected all "
                    f"1, got {lab.tolist()} (background clicks are not supported)"
                )
        _inside(pts[:, 0], w, "points", "x", (h, w))
        _inside(pts[:, 1], h, "points", "y", (h, w))
    elif labels is not None:
        raise InvalidInputError("labels: given without points")
    bxs = _prompt_array(boxes, "boxes", 4)
    sy = resized_hw[0] / h
    sx = resized_hw[1] / w
    r = point_radius
    out = []
    if pts is not None:
        scaled = pts * np.array([sx, sy], np.float32)
        out.append(np.concatenate([scaled - r, scaled + r], axis=1))
    if bxs is not None:
        _inside(bxs[:, [0, 2]].ravel(), w, "boxes", "x", (h, w))
        _inside(bxs[:, [1, 3]].ravel(), h, "boxes", "y", (h, w))
        if np.any(bxs[:, 2] < bxs[:, 0]) or np.any(bxs[:, 3] < bxs[:, 1]):
            raise InvalidInputError(f"boxes: expected x0 <= x1 and y0 <= y1, got {bxs.tolist()}")
        out.append(bxs * np.array([sx, sy, sx, sy], np.float32))
    if not out:
        raise InvalidInputError("prompt: expected points and/or boxes, got neither")
    return np.concatenate(out, axis=0).astype(np.float32)


def first_mask_objects(first_mask: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """The objects VOS follows, from an id map or stacked masks.

    Args:
        first_mask: (H, W) integer id map of frame 0 (0 = background), or (M, H, W) bool masks
            (ids 1..M).

    Returns:
        ``(masks, ids)``: (M, H, W) bool, one non-empty mask per object, and their ids.
    """
    if not isinstance(first_mask, np.ndarray):
        raise InvalidInputError(
            f"first_mask: expected an (H, W) int id map or (M, H, W) bool masks, "
            f"got {type(first_mask).__name__}"
        )
    if first_mask.ndim == 3 and first_mask.dtype == bool:
        masks = first_mask
        ids = tuple(range(1, masks.shape[0] + 1))
    elif first_mask.ndim == 2 and first_mask.dtype.kind in "iu":
        ids = tuple(int(v) for v in np.unique(first_mask) if v > 0)
        masks = first_mask[None] == np.asarray(ids)[:, None, None]
    else:
        raise InvalidInputError(
            f"first_mask: expected an (H, W) int id map or (M, H, W) bool masks, got "
            f"{first_mask.dtype} {first_mask.shape}"
        )
    if not ids or not masks.reshape(masks.shape[0], -1).any(1).all():
        raise InvalidInputError("first_mask: expected at least one non-empty object mask")
    return np.ascontiguousarray(masks), ids


def _prompt_array(value: Any, name: str, width: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(
            f"{name}: expected numbers of shape (N, {width}), got {value!r}"
        ) from exc
    if array.ndim == 1 and array.shape[0] == width:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != width or array.shape[0] == 0:
        raise InvalidInputError(
            f"{name}: expected (N, {width}) with N >= 1, got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise InvalidInputError(f"{name}: expected finite coordinates, got {array.tolist()}")
    return array.astype(np.float32)


def _inside(values: np.ndarray, limit: int, name: str, axis: str, hw: tuple[int, int]) -> None:
    bad = values[(values < 0) | (values > limit)]
    if bad.size:
        raise InvalidInputError(
            f"{name}: {axis} coordinates must lie in [0, {limit}] for an image of (h, w) = {hw}, "
            f"got {bad.tolist()}"
        )
