"""Held-out evaluation with the runtime's own pre- and post-processing and metrics.

Every number goes through the code a deployed model runs (``omg_rt.preprocess``,
``omg_rt.postprocess``, ``omg_rt.metrics``; numpy, no torch), so a training metric and a runtime
benchmark agree:

- panoptic: keep-ratio resize to the spec's image scale, normalise, pad; learned queries; masks
  upsampled to the original image; the official panoptic merge (spec thresholds); PQ / SQ / RQ
  (all, things, stuff) against the COCO panoptic ground truth.
- interactive: one positive click per ground-truth segment at its interior centre (the pixel
  farthest from the border), given to the model as the official ±3 px pseudo box in
  resized-image pixels; mean IoU of ``sigmoid > 0.5`` masks (things, stuff and all).
- video: frames decoded in consecutive clips of the spec's ``clip_size`` as the runtime streams
  them; queries linked across clips with ``align_clips``, class logits averaged over the clips so
  far, per-frame panoptic maps with ids stable per query (``vps_results``); ID consistency of the
  thing tracks (``omg_rt.metrics.id_consistency``) over the frames where a track is visible
  enough to be drawn (``MIN_VISIBLE_AREA``; ``id_consistency_all`` counts every frame) and the
  mean per-frame IoU of those tracks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from omg_rt.metrics import PQAccumulator, id_consistency, mask_ious
from omg_rt.postprocess.interactive import prompt_results
from omg_rt.postprocess.masks import upsample_masks
from omg_rt.postprocess.panoptic import INSTANCE_OFFSET, PanopticResult, panoptic_results
from omg_rt.postprocess.video import align_clips, vps_results
from omg_rt.preprocess import PreparedImage, prepare_image
from training.data.prompts import sample_point
from training.data.readers import CocoPanopticReader, YouTubeVISReader

__all__ = ["evaluate", "evaluate_panoptic", "evaluate_prompts", "evaluate_video"]

# Frames where a track shows fewer pixels do not count for ``id_consistency`` (8 x 8 px: two
# stride-4 mask cells across). An oracle answering the ground truth at stride 4 on 64 px
# videos reaches ~0.89 when every frame counts, ~1.0 with this floor (tests/training).
MIN_VISIBLE_AREA = 64


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    class_bank: torch.Tensor,
    images: CocoPanopticReader | None,
    videos: YouTubeVISReader | None,
    *,
    num_things: int,
    max_images: int | None = None,
    max_videos: int | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Every held-out metric of one model.

    Args:
        model: an ``OMGSeg`` (put in eval mode for the call, restored after).
        class_bank: (K, S, D) float32 unit-norm text bank of the readers' classes (things first).
        images: held-out COCO panoptic split (panoptic and interactive metrics), or None.
        videos: held-out YouTube-VIS split (video metrics), or None.
        num_things: classes ``[0, num_things)`` are things.
        max_images, max_videos: evaluate only the first ones (None = all).
        batch_size: images per forward pass.

    Returns:
        ``pq, sq, rq, pq_things, pq_stuff`` (percent), ``prompt_miou`` (+ ``_things``,
        ``_stuff``; in [0, 1]), ``id_consistency`` and ``video_track_iou`` (in [0, 1]), the
        counts evaluated and ``eval_seconds``. Missing splits give no keys.
    """
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        out: dict[str, Any] = {}
        if images is not None and len(images):
            n = len(images) if max_images is None else min(max_images, len(images))
            out.update(evaluate_panoptic(model, class_bank, images, num_things=num_things,
                                         count=n, batch_size=batch_size))
            out.update(evaluate_prompts(model, class_bank, images, num_things=num_things,
                                        count=n, batch_size=batch_size))
        if videos is not None and len(videos):
            n = len(videos) if max_videos is None else min(max_videos, len(videos))
            out.update(evaluate_video(model, class_bank, videos, num_things=num_things, count=n))
    finally:
        model.train(was_training)
    out["eval_seconds"] = time.perf_counter() - start
    return out


def evaluate_panoptic(
    model: torch.nn.Module,
    class_bank: torch.Tensor,
    images: CocoPanopticReader,
    *,
    num_things: int,
    count: int,
    batch_size: int = 8,
) -> dict[str, Any]:
    """PQ of the learned queries on the first ``count`` images (see the module docstring)."""
    spec = model.config
    num_classes = class_bank.shape[0]
    categories = [{"id": k + 1, "isthing": int(k < num_things)} for k in range(num_classes)]
    accumulator = PQAccumulator(categories)
    for first in range(0, count, batch_size):
        records = [images[i] for i in range(first, min(first + batch_size, count))]
        prepared = [_prepare(model, r.image) for r in records]
        predictions = _forward(model, class_bank, prepared)
        for b, (record, prep) in enumerate(zip(records, prepared)):
            cls = predictions.class_logits[b].float().cpu().numpy()
            masks = _full_size(predictions.mask_logits[b, :, 0], prep)
            result = panoptic_results(
                cls, masks, num_things,
                object_mask_thr=spec.postprocess.object_mask_threshold,
                iou_thr=spec.postprocess.overlap_threshold,
            )
            pred_map, pred_segments = _pq_prediction(result, num_classes)
            gt_map = np.zeros(record.image.shape[:2], np.int64)
            for k, mask in enumerate(record.masks):
                gt_map[mask] = k + 1
            gt_segments = [
                {"id": k + 1, "category_id": int(label) + 1, "iscrowd": int(crowd)}
                for k, (label, crowd) in enumerate(zip(record.labels, record.iscrowd))
            ]
            accumulator.update(pred_map, pred_segments, gt_map, gt_segments)
    summary = accumulator.compute()
    return {
        "pq": 100 * summary["all"]["pq"],
        "sq": 100 * summary["all"]["sq"],
        "rq": 100 * summary["all"]["rq"],
        "pq_things": 100 * summary["things"]["pq"],
        "pq_stuff": 100 * summary["stuff"]["pq"],
        "num_images": count,
    }


def evaluate_prompts(
    model: torch.nn.Module,
    class_bank: torch.Tensor,
    images: CocoPanopticReader,
    *,
    num_things: int,
    count: int,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Interactive mIoU: one centre click per ground-truth segment of the first ``count`` images."""
    radius = model.config.query_decoder.point_box_radius
    ious, is_thing = [], []
    for first in range(0, count, batch_size):
        records = [images[i] for i in range(first, min(first + batch_size, count))]
        records = [r for r in records if len(r.masks)]
        if not records:
            continue
        prepared = [_prepare(model, r.image) for r in records]
        boxes = []
        for record, prep in zip(records, prepared):
            scale = np.array([prep.resized_hw[1] / prep.original_hw[1],
                              prep.resized_hw[0] / prep.original_hw[0]], np.float32)
            points = np.stack([sample_point(m, "center") for m in record.masks]) * scale
            boxes.append(np.concatenate([points - radius, points + radius], axis=1))
        width = max(len(b) for b in boxes)
        # Prompt queries do not see each other: padding with copies changes no real mask.
        padded = np.stack([np.concatenate([b, np.repeat(b[:1], width - len(b), 0)]) for b in boxes])
        image_size = torch.tensor([p.resized_hw for p in prepared], dtype=torch.float32)
        predictions = _forward(model, class_bank, prepared, torch.from_numpy(padded), image_size)
        for b, (record, prep) in enumerate(zip(records, prepared)):
            n = len(record.masks)
            result = prompt_results(
                predictions.mask_logits[b, :n, 0].float().cpu().numpy(),
                predictions.iou_logits[b, :n].float().cpu().numpy(),
                prep.padded_hw, prep.resized_hw, prep.original_hw,
            )
            ious.append(mask_ious(result.masks, record.masks))
            is_thing.append(record.labels < num_things)
    if not ious:
        return {"prompt_miou": float("nan"), "num_prompts": 0}
    all_ious, things = np.concatenate(ious), np.concatenate(is_thing)
    return {
        "prompt_miou": float(all_ious.mean()),
        "prompt_miou_things": _mean(all_ious[things]),
        "prompt_miou_stuff": _mean(all_ious[~things]),
        "num_prompts": int(all_ious.size),
    }


def evaluate_video(
    model: torch.nn.Module,
    class_bank: torch.Tensor,
    videos: YouTubeVISReader,
    *,
    num_things: int,
    count: int,
    min_visible_area: int = MIN_VISIBLE_AREA,
) -> dict[str, Any]:
    """ID consistency of thing tracks over the first ``count`` videos, decoded as the runtime
    streams them (clips of ``spec.postprocess.clip_size`` frames linked by ``align_clips``).

    ``id_consistency`` counts the frames where a track shows at least ``min_visible_area``
    pixels (an object entering, leaving or hidden behind another may show a handful, below what
    a stride-4 mask can draw); ``id_consistency_all`` counts every frame where it shows at all.
    ``id_consistency_distinct`` / ``_lookalike`` split ``id_consistency`` by whether a track is
    the only thing of its class in its video (things of one class look alike in the shapes
    world, and the model separates look-alikes far less well).
    """
    spec = model.config
    clip_size = spec.postprocess.clip_size
    per_track: list[float] = []
    per_track_all: list[float] = []
    per_track_distinct: list[float] = []  # the only thing of its class in the video
    per_track_lookalike: list[float] = []  # shares its class (its look) with another thing
    track_ious: list[float] = []
    for index in range(count):
        video = videos[index]
        prepared = [_prepare(model, frame) for frame in video.frames]
        frame_maps: list[np.ndarray] = []
        target: np.ndarray | None = None
        class_sum: np.ndarray | None = None
        for clip_index, first in enumerate(range(0, len(prepared), clip_size)):
            clip = prepared[first : first + clip_size]
            predictions = _forward(model, class_bank, clip, num_frames=len(clip))
            embeddings = predictions.query_embeddings[0].float().cpu().numpy()
            perm = (np.arange(len(embeddings)) if target is None
                    else align_clips([target, embeddings])[1])
            target = embeddings[perm]
            cls = predictions.class_logits[0].float().cpu().numpy()[perm]
            class_sum = cls.copy() if class_sum is None else class_sum + cls
            average = (class_sum / np.float32(clip_index + 1)).astype(np.float32)
            mask_logits = predictions.mask_logits[0][torch.from_numpy(perm)]  # (Q, t, h4, w4)
            frames = [_full_size(mask_logits[:, t], prep) for t, prep in enumerate(clip)]
            for result in vps_results(
                average, frames, num_things,
                object_mask_thr=spec.postprocess.object_mask_threshold,
                iou_thr=spec.postprocess.overlap_threshold,
            ):
                frame_maps.append(_thing_ids(result))
        pred = np.stack(frame_maps)
        things = np.flatnonzero(video.labels < num_things)
        if not things.size:
            continue
        gt_all = np.zeros(pred.shape, np.int64)
        gt_visible = np.zeros(pred.shape, np.int64)
        for k in things:
            gt_all[video.masks[k]] = k + 1
            area = video.masks[k].reshape(len(pred), -1).sum(1)
            gt_visible[video.masks[k] & (area >= min_visible_area)[:, None, None]] = k + 1
        per_track_all.extend(id_consistency(pred, gt_all)["per_track"].values())
        result = id_consistency(pred, gt_visible)
        per_track.extend(result["per_track"].values())
        for gt_id, value in result["per_track"].items():
            alone = int((video.labels[things] == video.labels[gt_id - 1]).sum()) == 1
            (per_track_distinct if alone else per_track_lookalike).append(value)
        visible = [masks & (gt_visible == gt_id) for masks, gt_id
                   in zip(video.masks[things], things + 1)]
        track_ious.extend(_track_ious(pred, np.stack(visible), result["majority_id"],
                                      things + 1))
    return {
        "id_consistency": _mean(np.asarray(per_track)),
        "id_consistency_all": _mean(np.asarray(per_track_all)),
        "id_consistency_distinct": _mean(np.asarray(per_track_distinct)),
        "id_consistency_lookalike": _mean(np.asarray(per_track_lookalike)),
        "video_track_iou": _mean(np.asarray(track_ious)),
        "num_videos": count,
        "num_tracks": len(per_track),
        "num_tracks_lookalike": len(per_track_lookalike),
    }


# ---------------------------------------------------------------------------------- helpers


def _prepare(model: torch.nn.Module, image: np.ndarray) -> PreparedImage:
    pre = model.config.preprocess
    return prepare_image(image, pre.image_scale, pre.mean, pre.std, pre.size_divisor)


def _forward(
    model: torch.nn.Module,
    class_bank: torch.Tensor,
    prepared: Sequence[PreparedImage],
    prompt_boxes: torch.Tensor | None = None,
    image_size: torch.Tensor | None = None,
    num_frames: int = 1,
):
    """The last prediction for B images (``num_frames=1``) or one clip of ``num_frames``."""
    device = next(model.parameters()).device
    tensors = _same_size([p.tensor for p in prepared])
    images = torch.from_numpy(np.concatenate(tensors)).to(device)
    return model(
        images,
        class_bank.to(device),
        num_frames=num_frames,
        prompt_boxes=None if prompt_boxes is None else prompt_boxes.to(device),
        image_size=None if image_size is None else image_size.to(device),
    )[-1]


def _same_size(tensors: list[np.ndarray]) -> list[np.ndarray]:
    """Pad (1, 3, H, W) inputs bottom/right with 0 to the largest H and W (as batching does)."""
    h = max(t.shape[2] for t in tensors)
    w = max(t.shape[3] for t in tensors)
    if all(t.shape[2:] == (h, w) for t in tensors):
        return tensors
    return [np.pad(t, ((0, 0), (0, 0), (0, h - t.shape[2]), (0, w - t.shape[3]))) for t in tensors]


def _full_size(mask_logits: torch.Tensor, prep: PreparedImage) -> np.ndarray:
    """(Q, h4, w4) stride-4 logits -> (Q, H, W) float32 at the original image size."""
    logits = np.ascontiguousarray(mask_logits.float().cpu().numpy())
    return upsample_masks(logits, prep.padded_hw, prep.resized_hw, prep.original_hw)


def _pq_prediction(result: PanopticResult, num_classes: int) -> tuple[np.ndarray, list[dict]]:
    """A panoptic result (void = K) -> an id map with 0 = void and its segments (COCO ids)."""
    id_map = result.id_map.astype(np.int64)
    pred_map = np.where(id_map == num_classes, 0, id_map + 1)
    segments = [{"id": int(s["id"]) + 1, "category_id": int(s["category_id"]) + 1}
                for s in result.segments]
    return pred_map, segments


def _thing_ids(result: PanopticResult) -> np.ndarray:
    """Per-frame object ids of a VPS map: things keep their id, stuff and void become 0."""
    id_map = result.id_map.astype(np.int64)
    return np.where(id_map >= INSTANCE_OFFSET, id_map, 0)


def _track_ious(pred: np.ndarray, masks: np.ndarray, majority: dict, gt_ids: np.ndarray):
    """Mean IoU over the frames where a track is present, of its majority id's masks."""
    for k, gt_id in enumerate(gt_ids.tolist()):
        present = masks[k].reshape(len(masks[k]), -1).any(1)
        chosen = majority.get(gt_id)
        if chosen is None:
            yield 0.0
            continue
        ious = mask_ious(pred[present] == chosen, masks[k][present])
        yield float(ious.mean())


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")
