"""Result assembly: the query decoder's outputs for one image (or one video frame) turned into a
:class:`~omg_rt.results.SegmentationResult` per task, with the official post-processing of
``omg_rt.postprocess``.

Every function takes the stride-4 mask logits of the padded input and resizes only what can
change its result: panoptic, instance and prompt results go through
:class:`~omg_rt.postprocess.tiles.TiledLogits` (tiles of the original image decided from bounds,
the undecided ones resized exactly, or every query a band of rows at a time when few tiles are
decided); semantic results resize every query a band of rows at a time. Each output sample of a
bilinear resize depends on its own input samples only, so both give the values of resizing
everything (:func:`full_resolution`), bit for bit. With a torch ``device`` (a GPU), panoptic and
instance results resize densely there instead (:class:`~omg_rt.postprocess.device.DeviceLogits`).

The logits may be a tensor the PyTorch backend left on its device (:mod:`omg_rt.arrays`): the
device path reads it where it is, the host paths bring it over.
"""

from __future__ import annotations

import numpy as np

from omg_rt.arrays import Array, to_host
from omg_rt.bundle import Vocabulary
from omg_rt.postprocess.device import DeviceLogits
from omg_rt.postprocess.instance import (
    instances_from_tiles,
    masks_of_ids,
    masks_to_boxes,
    select_instances,
)
from omg_rt.postprocess.interactive import prompt_results
from omg_rt.postprocess.masks import upsample_masks
from omg_rt.postprocess.panoptic import INSTANCE_OFFSET, PanopticResult, panoptic_from_tiles
from omg_rt.postprocess.semantic import semantic_from_tiles
from omg_rt.postprocess.tiles import TiledLogits
from omg_rt.results import SegmentationResult
from omg_rt.sessions import ImageSizes
from omg_rt.spec import PostprocessSpec


def full_resolution(session: ImageSizes, mask_logits: Array) -> np.ndarray:
    """(N, h4, w4) stride-4 logits of the padded input -> (N, H, W) float32 at the original size."""
    return upsample_masks(*_logits_and_sizes(session, mask_logits))


def tiled(session: ImageSizes, mask_logits: Array) -> TiledLogits:
    """(N, h4, w4) stride-4 logits of the padded input, evaluated lazily at the original size."""
    return TiledLogits(*_logits_and_sizes(session, mask_logits))


def on_device(
    session: ImageSizes, mask_logits: Array, device: str | None
) -> TiledLogits | DeviceLogits:
    """:func:`tiled`, or with a torch ``device`` the logits resized densely there."""
    if device is None:
        return tiled(session, mask_logits)
    return DeviceLogits(mask_logits, session.padded_hw, session.resized_hw, session.original_hw,
                        device)


def _logits_and_sizes(
    session: ImageSizes, mask_logits: Array
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Host float32 logits and the session's sizes (padded, resized, original)."""
    return (np.ascontiguousarray(to_host(mask_logits), dtype=np.float32), session.padded_hw,
            session.resized_hw, session.original_hw)


def panoptic_result(
    session: ImageSizes,
    cls: np.ndarray,
    mask_logits: Array,
    vocabulary: Vocabulary,
    post: PostprocessSpec,
    *,
    video_ids: bool = False,
    task: str = "panoptic",
    frame_index: int | None = None,
    device: str | None = None,
) -> SegmentationResult:
    """Panoptic segments (official merge).

    Args:
        session: the image's sizes.
        cls: (Q, K + 1) float32 class scores, void last.
        mask_logits: (Q, h4, w4) stride-4 mask logits.
        vocabulary: the K classes ``cls`` scores.
        post: thresholds.
        video_ids: thing ids ``label + (query + 1) * 1000``, stable across frames (VPS), instead
            of a counter from 1.
        task, frame_index: recorded in the result.
        device: a torch device that resizes and assigns the masks (a GPU), or None: the host.

    Returns:
        a result with ``id_map`` (-1 = void) and one mask per segment.
    """
    k = cls.shape[1] - 1
    thing_ids = np.arange(1, cls.shape[0] + 1, dtype=np.int64) if video_ids else None
    result = panoptic_from_tiles(
        np.ascontiguousarray(cls, dtype=np.float32),
        on_device(session, mask_logits, device),
        vocabulary.num_things,
        post.object_mask_threshold,
        post.overlap_threshold,
        thing_ids=thing_ids,
    )
    return _from_panoptic(result, vocabulary, task, frame_index, void=k)


def instance_result(
    session: ImageSizes,
    cls: np.ndarray,
    mask_logits: Array,
    vocabulary: Vocabulary,
    post: PostprocessSpec,
    *,
    track_ids: bool = False,
    task: str = "instance",
    frame_index: int | None = None,
    device: str | None = None,
) -> SegmentationResult:
    """Instances (official top-k over queries x thing classes).

    Args:
        session, cls, mask_logits, vocabulary, post: as :func:`panoptic_result`.
        track_ids: ids ``label + (query + 1) * track_id_offset(K)``, the persistent identity of
            an aligned query slot and class in video (VIS), instead of ``1..N``.
        task, frame_index: recorded in the result.
        device: as :func:`panoptic_result`.
    """
    probs, labels, queries = select_instances(cls, vocabulary.num_things, post.max_per_image)
    inst = instances_from_tiles(probs, labels, queries, on_device(session, mask_logits, device))
    n = inst.scores.shape[0]
    if track_ids:
        identity = inst.labels + (queries + 1) * track_id_offset(cls.shape[1] - 1)
    else:
        identity = np.arange(1, n + 1, dtype=np.int64)
    return SegmentationResult(
        task=task,
        masks=inst.masks,
        scores=inst.scores,
        labels=inst.labels,
        ids=identity.astype(np.int64),
        class_names=vocabulary.names,
        boxes=inst.boxes,
        is_thing=np.ones(n, bool),
        frame_index=frame_index,
    )


def semantic_result(
    session: ImageSizes,
    cls: np.ndarray,
    mask_logits: Array,
    vocabulary: Vocabulary,
    *,
    task: str = "semantic",
    frame_index: int | None = None,
    device: str | None = None,
) -> SegmentationResult:
    """One mask per class present (Mask2Former per-pixel argmax); ids = labels = class indices;
    scores = the mean per-pixel class score over the class's pixels
    (:func:`~omg_rt.postprocess.semantic.semantic_with_scores`, resized a band of rows at a
    time: :func:`~omg_rt.postprocess.semantic.semantic_from_tiles`; with a torch ``device``,
    computed there)."""
    label_map, class_scores = semantic_from_tiles(cls, on_device(session, mask_logits, device))
    classes = np.unique(label_map)
    masks, boxes = masks_of_ids(label_map, classes)
    return SegmentationResult(
        task=task,
        masks=masks,
        scores=class_scores[classes],
        labels=classes.astype(np.int64),
        ids=classes.astype(np.int64),
        class_names=vocabulary.names,
        boxes=boxes,
        id_map=label_map.astype(np.int32),
        is_thing=classes < vocabulary.num_things,
        frame_index=frame_index,
    )


def prompt_result(
    session: ImageSizes,
    mask_logits: Array,
    iou_logits: np.ndarray,
    class_logits: np.ndarray,
    vocabulary: Vocabulary,
    *,
    device: str | None = None,
) -> SegmentationResult:
    """One mask per prompt query.

    Args:
        session: the image's sizes.
        mask_logits: (P, h4, w4) stride-4 mask logits; iou_logits: (P,) float32;
            class_logits: (P, K + 1) float32.
        vocabulary: the K classes.
        device: as :func:`panoptic_result`.

    Returns:
        ``scores`` = sigmoid(IoU head), ``labels`` = best non-void class, ``ids`` = 1..P.
    """
    pr = prompt_results(
        mask_logits if device is not None else _logits_and_sizes(session, mask_logits)[0],
        iou_logits,
        session.padded_hw,
        session.resized_hw,
        session.original_hw,
        device=device,
    )
    n = mask_logits.shape[0]
    return SegmentationResult(
        task="prompt",
        masks=pr.masks,
        scores=pr.scores.astype(np.float32),
        labels=class_logits[:, :-1].argmax(-1).astype(np.int64),
        ids=np.arange(1, n + 1, dtype=np.int64),
        class_names=vocabulary.names,
        boxes=pr.boxes if pr.boxes is not None else masks_to_boxes(pr.masks),
        is_thing=np.ones(n, bool),
    )


def track_id_offset(num_classes: int) -> int:
    """Track id = label + (slot + 1) * offset: 1000 as panoptic ids, or the next power of ten
    for vocabularies of 1000 classes or more."""
    offset = INSTANCE_OFFSET
    while offset <= num_classes:
        offset *= 10
    return offset


def _from_panoptic(
    result: PanopticResult,
    vocabulary: Vocabulary,
    task: str,
    frame_index: int | None,
    void: int,
) -> SegmentationResult:
    ids = np.array([s["id"] for s in result.segments], np.int64)
    masks, boxes = masks_of_ids(result.id_map, ids)
    id_map = np.where(result.id_map == void, -1, result.id_map).astype(np.int32)
    return SegmentationResult(
        task=task,
        masks=masks,
        scores=np.array([s["score"] for s in result.segments], np.float32),
        labels=np.array([s["category_id"] for s in result.segments], np.int64),
        ids=ids,
        class_names=vocabulary.names,
        boxes=boxes,
        id_map=id_map,
        is_thing=np.array([s["isthing"] for s in result.segments], bool),
        frame_index=frame_index,
    )
