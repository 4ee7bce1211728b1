"""Held-out evaluation through the runtime itself: the model behind
``omg_rt.Segmenter.from_checkpoint`` (the torch backend), so every number goes through the code
a deployed bundle runs (the runtime's preprocessing, its decoder layer, post-processing and
video session; ``omg_rt.metrics``) and a training metric and a runtime benchmark agree:

- panoptic: ``Segmenter.panoptic`` (keep-ratio resize to the spec's image scale, padding to a
  multiple of 32, learned queries, the official panoptic merge with the spec's thresholds);
  PQ / SQ / RQ (all, things, stuff) against the COCO panoptic ground truth.
- interactive: one positive click per ground-truth segment at its interior centre (the pixel
  farthest from the border) through ``Segmenter.prompt`` (the official ±3 px pseudo box in
  resized-image pixels); mean IoU of the masks (things, stuff and all).
- video: ``Segmenter.open_video("vps")`` streams clips of the spec's ``clip_size``, linked
  across clips on their query embeddings, class logits averaged over the clips so far; ID
  consistency of the thing tracks (``omg_rt.metrics.id_consistency``) over the frames where a
  track is visible enough to be drawn (``MIN_VISIBLE_AREA``; ``id_consistency_all`` counts every
  frame) and the mean per-frame IoU of those tracks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from omg_rt import Segmenter
from omg_rt.metrics import PQAccumulator, id_consistency, mask_ious
from omg_rt.postprocess.panoptic import INSTANCE_OFFSET
from omg_rt.results import SegmentationResult
from training.data.prompts import sample_point
from training.data.readers import CocoPanopticReader, ImageRecord, YouTubeVISReader

if TYPE_CHECKING:  # torch is needed only by evaluate(): omg-eval runs these without it
    import torch

__all__ = ["evaluate", "evaluate_panoptic", "evaluate_prompts", "evaluate_video", "runtime"]

# Frames where a track shows fewer pixels do not count for ``id_consistency`` (8 x 8 px: two
# stride-4 mask cells across). An oracle answering the ground truth at stride 4 on 64 px
# videos reaches ~0.89 when every frame counts, ~1.0 with this floor (tests/training).
MIN_VISIBLE_AREA = 64


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
        model: an ``OMGSeg`` (put in eval mode for the call, restored after; it stays on its
            device).
        class_bank: (K, S, D) float32 unit-norm text bank of the readers' classes (things first).
        images: held-out COCO panoptic split (panoptic and interactive metrics), or None.
        videos: held-out YouTube-VIS split (video metrics), or None.
        num_things: classes ``[0, num_things)`` are things.
        max_images, max_videos: evaluate only the first ones (None = all).
        batch_size: images per encoder call.

    Returns:
        ``pq, sq, rq, pq_things, pq_stuff`` (percent), ``prompt_miou`` (+ ``_things``,
        ``_stuff``; in [0, 1]), ``id_consistency`` and ``video_track_iou`` (in [0, 1]), the
        counts evaluated and ``eval_seconds``. Missing splits give no keys.
    """
    start = time.perf_counter()
    was_training = model.training
    try:
        seg = runtime(model, class_bank, num_things)  # its graphs run under inference_mode
        out: dict[str, Any] = {}
        if images is not None and len(images):
            n = len(images) if max_images is None else min(max_images, len(images))
            out.update(evaluate_panoptic(seg, images, count=n, batch_size=batch_size))
            out.update(evaluate_prompts(seg, images, count=n, batch_size=batch_size))
        if videos is not None and len(videos):
            n = len(videos) if max_videos is None else min(max_videos, len(videos))
            out.update(evaluate_video(seg, videos, count=n))
        seg.close()
    finally:
        model.train(was_training)
    out["eval_seconds"] = time.perf_counter() - start
    return out


def runtime(model: torch.nn.Module, class_bank: torch.Tensor, num_things: int) -> Segmenter:
    """The model as the runtime serves it (torch backend, on the model's device), over the
    readers' K classes (named ``class 0`` ...; things first)."""
    bank = class_bank.detach().float().cpu().numpy()
    names = [f"class {k}" for k in range(bank.shape[0])]
    device = str(next(model.parameters()).device)
    return Segmenter.from_checkpoint(model, vocabulary=names, num_things=num_things,
                                     class_bank=bank, device=device)


def evaluate_panoptic(
    seg: Segmenter,
    images: CocoPanopticReader,
    *,
    count: int,
    batch_size: int = 8,
    progress: bool = False,
    on_result: Callable[[ImageRecord, SegmentationResult], None] | None = None,
) -> dict[str, Any]:
    """PQ of the learned queries on the first ``count`` images (see the module docstring).

    ``on_result(record, result)`` sees every image's panoptic result (``omg-eval`` writes them).
    """
    from tqdm import tqdm

    vocabulary = seg.vocabulary
    categories = [{"id": k + 1, "isthing": int(k < vocabulary.num_things)}
                  for k in range(len(vocabulary.names))]
    accumulator = PQAccumulator(categories)
    bar = tqdm(total=count, desc="panoptic", unit="img", disable=not progress)
    for first in range(0, count, batch_size):
        records = [images[i] for i in range(first, min(first + batch_size, count))]
        for record, session in zip(records, seg.set_images([r.image for r in records])):
            result = seg.panoptic(session)
            if on_result is not None:
                on_result(record, result)
            pred_map, pred_segments = _pq_prediction(result)
            gt_map = np.zeros(record.image.shape[:2], np.int64)
            for k, mask in enumerate(record.masks):
                gt_map[mask] = k + 1
            gt_segments = [
                {"id": k + 1, "category_id": int(label) + 1, "iscrowd": int(crowd)}
                for k, (label, crowd) in enumerate(zip(record.labels, record.iscrowd))
            ]
            accumulator.update(pred_map, pred_segments, gt_map, gt_segments)
            bar.update(1)
    bar.close()
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
    seg: Segmenter,
    images: CocoPanopticReader,
    *,
    count: int,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Interactive mIoU: one centre click per ground-truth segment of the first ``count`` images."""
    num_things = seg.vocabulary.num_things
    ious, is_thing = [], []
    for first in range(0, count, batch_size):
        records = [images[i] for i in range(first, min(first + batch_size, count))]
        records = [r for r in records if len(r.masks)]
        if not records:
            continue
        for record, session in zip(records, seg.set_images([r.image for r in records])):
            points = np.stack([sample_point(m, "center") for m in record.masks])
            result = seg.prompt(session, points=points)
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
    seg: Segmenter,
    videos: YouTubeVISReader,
    *,
    count: int,
    min_visible_area: int = MIN_VISIBLE_AREA,
) -> dict[str, Any]:
    """ID consistency of thing tracks over the first ``count`` videos, streamed as the runtime
    streams them (``open_video("vps")``: clips of ``spec.postprocess.clip_size`` frames).

    ``id_consistency`` counts the frames where a track shows at least ``min_visible_area``
    pixels (an object entering, leaving or hidden behind another may show a handful, below what
    a stride-4 mask can draw); ``id_consistency_all`` counts every frame where it shows at all.
    ``id_consistency_distinct`` / ``_lookalike`` split ``id_consistency`` by whether a track is
    the only thing of its class in its video (things of one class look alike in the shapes
    world, and the model separates look-alikes far less well).
    """
    num_things = seg.vocabulary.num_things
    per_track: list[float] = []
    per_track_all: list[float] = []
    per_track_distinct: list[float] = []  # the only thing of its class in the video
    per_track_lookalike: list[float] = []  # shares its class (its look) with another thing
    track_ious: list[float] = []
    for index in range(count):
        video = videos[index]
        results = seg.open_video("vps").run(list(video.frames))
        pred = np.stack([_thing_ids(result) for result in results])
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


def _pq_prediction(result: SegmentationResult) -> tuple[np.ndarray, list[dict]]:
    """A panoptic result (void = -1) -> an id map with 0 = void and its segments (COCO ids)."""
    id_map = result.id_map.astype(np.int64)
    pred_map = np.where(id_map < 0, 0, id_map + 1)
    segments = [{"id": int(i) + 1, "category_id": int(label) + 1}
                for i, label in zip(result.ids, result.labels)]
    return pred_map, segments


def _thing_ids(result: SegmentationResult) -> np.ndarray:
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
