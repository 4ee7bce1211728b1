"""Instance segmentation from query outputs: the official ``OMGFusionHead.instance_postprocess``.

1. ``probs = softmax(cls_logits)[:, :K]`` (void dropped after the softmax), flattened query-major
   to Q * K; the top ``max_per_image`` (100) in ``torch.topk(sorted=False)``'s CPU order (see
   :mod:`omg_rt.postprocess.topk`; sorted descending whenever ``Q * K >= 64 * 100``, which holds
   for every official config: 300 queries x >= 40 classes).
2. ``query = index // K``, ``label = index % K``; keep thing classes only, in that order.
3. ``mask = mask_logit > 0`` at the output size;
   ``score = prob * sum(sigmoid * mask) / (sum(mask) + 1e-6)``; boxes are the masks' tight
   ``(x1, y1, x2 + 1, y2 + 1)`` extents (mmdet ``mask2bbox``; all zeros for an empty mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from omg_rt.errors import InvalidInputError, describe
from omg_rt.postprocess import native
from omg_rt.postprocess._common import check_array, parallel_map, sigmoid, softmax
from omg_rt.postprocess.device import DeviceLogits
from omg_rt.postprocess.tiles import TiledLogits
from omg_rt.postprocess.topk import topk_indices
from omg_rt.spec import PostprocessSpec

MAX_PER_IMAGE = PostprocessSpec().max_per_image  # m2_convl_300q.py test_cfg
# instances_from_tiles resizes a query whole when it needs this fraction of the tiles.
_WHOLE_FRACTION = 0.3


@dataclass(frozen=True)
class InstanceResult:
    """Instances of one image (or one video frame), in the official order.

    Attributes:
        scores: (N,) float32 class probability x mask score.
        labels: (N,) int64 class indices (things only).
        query_indices: (N,) int64 query each instance comes from.
        masks: (N, H, W) bool, ``mask_logit > 0``.
        boxes: (N, 4) float32 ``(x1, y1, x2, y2)`` in pixels, x2/y2 exclusive.
    """

    scores: np.ndarray
    labels: np.ndarray
    query_indices: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray


def select_instances(
    cls_logits: np.ndarray, num_things: int, max_per_image: int = MAX_PER_IMAGE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps 1-2: the top (query, class) pairs that are things, in the official order.

    Only needs the class logits, so a caller can resize just these queries' masks.

    Args:
        cls_logits: (Q, K + 1) float32, void last (no IoU column).
        num_things: classes ``[0, num_things)`` are things.
        max_per_image: top-k size; clamped to Q * K (``torch.topk`` would raise instead).

    Returns:
        ``(class_probs (N,) float32, labels (N,) int64, query_indices (N,) int64)``.
    """
    cls_logits = check_array(cls_logits, "cls_logits", 2, "float32", "float32 (Q, K + 1)")
    q, k1 = cls_logits.shape
    num_classes = k1 - 1
    if num_classes < 1:
        raise InvalidInputError(f"cls_logits: expected at least 2 columns, got {k1}")
    if not 0 <= num_things <= num_classes:
        raise InvalidInputError(f"num_things: expected 0..{num_classes}, got {num_things}")
    if max_per_image < 0:
        raise InvalidInputError(f"max_per_image: expected >= 0, got {max_per_image}")
    flat = softmax(cls_logits)[:, :num_classes].reshape(-1)  # (Q * K,)
    top = topk_indices(flat, min(max_per_image, flat.shape[0]), sorted=False)
    labels = top % num_classes
    queries = top // num_classes
    things = labels < num_things
    return flat[top][things], labels[things].astype(np.int64), queries[things].astype(np.int64)


def instance_results(
    cls_logits: np.ndarray,
    mask_logits: np.ndarray,
    num_things: int,
    max_per_image: int = MAX_PER_IMAGE,
) -> InstanceResult:
    """The official instance post-processing of one image.

    Args:
        cls_logits: (Q, K + 1) float32, void last (no IoU column).
        mask_logits: (Q, H, W) float32 at the output size.
        num_things: classes ``[0, num_things)`` are things.
        max_per_image: top-k over Q * K (100 in the official config).

    Returns:
        :class:`InstanceResult` with N <= max_per_image instances.
    """
    mask_logits = check_array(mask_logits, "mask_logits", 3, "float32", "float32 (Q, H, W)")
    probs, labels, queries = select_instances(cls_logits, num_things, max_per_image)
    if mask_logits.shape[0] != cls_logits.shape[0]:
        raise InvalidInputError(
            f"mask_logits: expected {cls_logits.shape[0]} masks (one per query of cls_logits), "
            f"got {mask_logits.shape[0]}"
        )
    return instances_from_masks(probs, labels, queries, mask_logits[queries])


def instances_from_masks(
    class_probs: np.ndarray,
    labels: np.ndarray,
    query_indices: np.ndarray,
    selected_mask_logits: np.ndarray,
) -> InstanceResult:
    """Step 3: binary masks, mask-scored scores and boxes for already selected instances.

    Args:
        class_probs: (N,) float32 from :func:`select_instances`.
        labels: (N,) int64; query_indices: (N,) int64.
        selected_mask_logits: (N, H, W) float32, the masks of ``query_indices`` in that order.

    Returns:
        :class:`InstanceResult`; empty arrays of the same ranks when N is 0 (no thing class in
        the top-k).
    """
    selected_mask_logits = check_array(
        selected_mask_logits, "selected_mask_logits", 3, "float32", "float32 (N, H, W)"
    )
    n = class_probs.shape[0]
    if selected_mask_logits.shape[0] != n:
        raise InvalidInputError(
            f"selected_mask_logits: expected {n} masks, got {selected_mask_logits.shape[0]}"
        )
    masks = selected_mask_logits > 0
    inside = np.empty(n, dtype=np.float64)
    for i in range(n):  # one mask at a time: no (N, H, W) float temporaries
        inside[i] = sigmoid(selected_mask_logits[i][masks[i]]).sum(dtype=np.float64)
    return _scored(class_probs, labels, query_indices, masks, inside)


def _scored(class_probs: np.ndarray, labels: np.ndarray, query_indices: np.ndarray,
            masks: np.ndarray, inside: np.ndarray, area: np.ndarray | None = None,
            boxes: np.ndarray | None = None) -> InstanceResult:
    """Step 3's scores and boxes of (N, H, W) ``masks`` whose float64 sigmoid sums over the
    mask are ``inside`` (their areas and boxes computed here unless given)."""
    if area is None:
        area = masks.sum(axis=(1, 2))  # not reshape(n, -1): n may be 0
    mask_scores = inside.astype(np.float32) / (area.astype(np.float32) + np.float32(1e-6))
    return InstanceResult(
        scores=(class_probs.astype(np.float32) * mask_scores).astype(np.float32),
        labels=labels.astype(np.int64),
        query_indices=query_indices.astype(np.int64),
        masks=masks,
        boxes=masks_to_boxes(masks) if boxes is None else boxes,
    )


def instances_from_tiles(
    class_probs: np.ndarray,
    labels: np.ndarray,
    query_indices: np.ndarray,
    tiles: TiledLogits | DeviceLogits,
) -> InstanceResult:
    """:func:`instances_from_masks` of the stride-4 logits resized to the image.

    On the host, the C kernels (:mod:`omg_rt.postprocess.native`) resize every selected query
    with PyTorch's arithmetic, bit for bit ``F.interpolate``; without a C compiler, numpy gives
    the result of ``upsample_masks(stride-4 logits)[query_indices]`` (within float32 rounding
    of PyTorch's resize) bit for bit, resizing only the tiles where a mask is not wholly in or
    out or its sigmoid not saturated. On a device (:class:`~omg_rt.postprocess.device.DeviceLogits`)
    every selected query is resized there instead: the same masks but where a logit is within
    float32 rounding of 0.

    Args:
        class_probs, labels, query_indices: (N,) from :func:`select_instances`.
        tiles: all queries' stride-4 mask logits with the image's sizes.
    """
    if isinstance(tiles, DeviceLogits):
        # in result order, a query twice if it has two labels: no reordering copy on the host
        masks, sums, area, boxes = tiles.instance_masks(query_indices)
        return _scored(class_probs, labels, query_indices, masks, sums, area, boxes)
    if native.available():  # PyTorch's resize of every selected query, in C, in result order
        masks, sums, area, boxes = native.instance_masks(tiles, query_indices)
        return _scored(class_probs, labels, query_indices, masks, sums, area, boxes)
    distinct, which = np.unique(query_indices, return_inverse=True)
    masks, sums = _tile_masks(distinct, tiles)
    return _scored(class_probs, labels, query_indices, masks[which], sums[which])


def _tile_masks(distinct: np.ndarray, tiles: TiledLogits) -> tuple[np.ndarray, np.ndarray]:
    """(d, H, W) ``logit > 0`` masks of the ``distinct`` queries and their float64 sums of
    ``sigmoid`` over the mask, from the tile bounds (:func:`instances_from_tiles`).

    A tile whose upper bound is <= 0 is out; one whose lower bound is > 0 and whose sigmoid
    there is exactly 1.0 in float32 is in, with a sigmoid sum of its pixel count; the rest are
    evaluated (queries needing much of the image are resized whole, on the post-processing
    threads). Sums of float32 sigmoids in [0.5, 1] are exact in float64 (fewer than 2**29
    terms), so their order does not matter.
    """
    h, w = tiles.original_hw
    ty, tx = tiles.grid
    t = tiles.tile
    lo, hi = tiles.bounds(distinct)  # (d, ty, tx)
    inside = lo > 0
    saturated = inside & (sigmoid(lo) == np.float32(1.0))
    need = (hi > 0) & ~saturated
    # Queries to evaluate on much of the image are resized whole.
    whole = need.sum((1, 2)) >= _WHOLE_FRACTION * ty * tx
    need[whole] = False
    valid = tiles.valid()
    masks_t = np.zeros((distinct.shape[0], ty, tx, t, t), bool)
    masks_t[inside] = True
    sums = (saturated * valid.sum((2, 3))).sum((1, 2)).astype(np.float64)
    di, dy, dx = np.nonzero(need)
    if di.size:
        logits = tiles.evaluate(distinct[di], dy, dx)
        positive = logits > 0
        masks_t[di, dy, dx] = positive
        kept = positive & valid[dy, dx]
        part = np.where(kept, sigmoid(logits), np.float32(0.0)).sum((1, 2), dtype=np.float64)
        sums += np.bincount(di, weights=part, minlength=distinct.shape[0])
    masks = np.empty((distinct.shape[0], h, w), bool)

    def fill(i: int) -> None:  # writes masks[i] and sums[i] only
        if whole[i]:
            full = tiles.dense(distinct[i : i + 1])[0]
            np.greater(full, 0, out=masks[i])
            sums[i] = sigmoid(full[masks[i]]).sum(dtype=np.float64)
        else:
            masks[i] = tiles.assemble(masks_t[i])

    parallel_map(fill, range(distinct.shape[0]))
    return masks, sums


def masks_of_ids(id_map: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The segments of an id map as masks, with their boxes: ``id_map == ids[j]`` and
    :func:`masks_to_boxes` of them.

    In C (one pass over the map, :func:`omg_rt.postprocess.native.id_masks`) where the library
    is built and the ids are distinct int32 values; otherwise one comparison per id in numpy
    (the panoptic result of a 768x1024 photo with 60 segments: 25 ms).

    Args:
        id_map: (H, W) integer map; ids: (n,) integers.

    Returns:
        (n, H, W) bool masks and (n, 4) float32 boxes.
    """
    id_map = check_array(id_map, "id_map", 2, "int", "integer (H, W)")
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise InvalidInputError(f"ids: expected (n,) integers, got {describe(ids)}")
    int32 = np.iinfo(np.int32)

    def fits(values: np.ndarray) -> bool:
        return values.size == 0 or (int(values.min()) >= int32.min
                                    and int(values.max()) <= int32.max)

    map_fits = np.can_cast(id_map.dtype, np.int32) or fits(id_map)
    if native.available() and map_fits and fits(ids) and np.unique(ids).size == ids.size:
        return native.id_masks(id_map, ids)
    masks = id_map[None] == ids[:, None, None]
    return masks, masks_to_boxes(masks)


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes of binary masks (mmdet ``mask2bbox``).

    Args:
        masks: (N, H, W) bool.

    Returns:
        (N, 4) float32 ``(x1, y1, x2 + 1, y2 + 1)``; zeros for an empty mask.
    """
    masks = check_array(masks, "masks", 3, "bool", "bool (N, H, W)")
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    cols = np.asarray(masks.any(axis=1))  # (N, W)
    rows = np.asarray(masks.any(axis=2))  # (N, H)
    for i in range(masks.shape[0]):
        xs, ys = np.flatnonzero(cols[i]), np.flatnonzero(rows[i])
        if xs.size and ys.size:
            boxes[i] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
    return boxes
