"""Task accuracy of one target on one dataset, with ``omg_rt.metrics`` (the same data and code
for every backend x precision; deltas against FP32 PyTorch).

| task | metric | how |
|---|---|---|
| panoptic | PQ (SQ, RQ; things / stuff) | ``Segmenter.panoptic``, panopticapi matching |
| instance | mask AP (AP50) | ``Segmenter.instances``, COCOeval segm |
| semantic | mIoU | ``Segmenter.semantic``; pixels outside every segment are ignored |
| prompt | interactive mIoU | one click (the mask's innermost pixel, as the official COCO point
  evaluation) and one tight box per thing, on the cached image |
| video | J&F | VOS: objects of frame 0 given as its id map, followed to the end (DAVIS:
  first and last frame not scored) |
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks.omg_bench.dataset import Dataset
from benchmarks.omg_bench.options import BenchOptions, OptionError
from benchmarks.omg_bench.targets import Target

GENERATED_SPLIT = "bench"  # not a training split name: generated scenes never overlap training


def load_dataset(options: BenchOptions, work: Path, progress: bool) -> Dataset:
    """``generated``: a seeded held-out split written by ``generate_dataset``; ``photos``: real
    photos and a clip from package wheels, no annotations (:mod:`.photos`); a directory: COCO
    (``annotations/panoptic_<split>.json``) or the generated layout (``--split``)."""
    from training.data import dataset_paths, generate_dataset, read_coco_panoptic, read_ytvis

    note = ""
    if options.dataset == "photos":
        from benchmarks.omg_bench.photos import load_photos

        return load_photos(options)
    if options.dataset == "generated":
        paths = generate_dataset(work / "data", GENERATED_SPLIT, num_images=options.num_images,
                                 num_videos=options.num_videos,
                                 frames_per_video=options.frames_per_video, seed=options.seed,
                                 progress=progress)
        source = (f"generated (training.data.generate_dataset, split {GENERATED_SPLIT!r}, seed "
                  f"{options.seed})")
        panoptic = read_coco_panoptic(paths.panoptic_json, paths.panoptic_dir, paths.image_dir)
        videos_json, video_dir = paths.ytvis_json, paths.video_dir
    else:
        root = Path(options.dataset)
        if not root.is_dir():
            raise OptionError(
                f"--dataset: expected 'generated', 'photos' or a directory, got {root}")
        coco_split = options.split or "val2017"
        coco_json = root / "annotations" / f"panoptic_{coco_split}.json"
        if coco_json.is_file():
            panoptic = read_coco_panoptic(
                coco_json, root / "annotations" / f"panoptic_{coco_split}", root / coco_split)
            videos_json, video_dir = root / "none.json", root
            source = f"COCO panoptic {coco_split} at {root}"
            note = "no videos in a COCO directory: video accuracy skipped"
        else:
            paths = dataset_paths(root, options.split or "val")
            if not paths.panoptic_json.is_file():
                raise OptionError(
                    f"--dataset: {root} has neither {coco_json.relative_to(root)} (COCO) nor "
                    f"{paths.panoptic_json.name} (generated layout, --split)")
            panoptic = read_coco_panoptic(paths.panoptic_json, paths.panoptic_dir,
                                          paths.image_dir)
            videos_json, video_dir = paths.ytvis_json, paths.video_dir
            source = f"{root} split {paths.split!r}"
    images = [panoptic[i] for i in range(min(options.num_images, len(panoptic)))]
    videos = []
    if Path(videos_json).is_file() and options.num_videos:
        reader = read_ytvis(videos_json, video_dir)
        videos = [reader[i] for i in range(min(options.num_videos, len(reader)))]
    if not images:
        raise OptionError(f"--dataset: {source} holds no images")
    return Dataset(source, panoptic.categories, images, videos, note)


def align_vocabulary(target: Target, categories: Any) -> str:
    """Make the target's class indices the dataset's contiguous indices; '' or why not."""
    seg = target.segmenter
    if tuple(seg.vocabulary.names) == tuple(categories.names) and \
            seg.vocabulary.num_things == categories.num_things:
        return ""
    try:
        seg.set_vocabulary(list(categories.names), num_things=int(categories.num_things))
    except Exception as exc:  # noqa: BLE001 - a bundle without a text encoder: reported
        return ("the bundle's vocabulary differs from the dataset's and set_vocabulary "
                f"failed: {exc}")
    return ""


def evaluate(target: Target, data: Dataset, tasks: tuple[str, ...], progress: bool
             ) -> dict[str, Any]:
    """Every metric of ``tasks`` for one target (floats; NaN only where a metric is undefined)."""
    from omg_rt.metrics import (
        ConfusionMatrix,
        JFAccumulator,
        MaskAPAccumulator,
        PQAccumulator,
        mask_ious,
        mean_iou,
    )
    from training.data.prompts import mask_box, sample_point

    seg = target.segmenter
    cats = data.categories
    ids = list(cats.category_ids)
    nt = int(cats.num_things)
    c = len(ids)
    pq = PQAccumulator([{"id": ids[i], "isthing": int(i < nt)} for i in range(c)]) \
        if "panoptic" in tasks else None
    ap = MaskAPAccumulator(ids[:nt]) if "instance" in tasks and nt else None
    confusion = ConfusionMatrix(c + 1, ignore_index=255) if "semantic" in tasks else None
    point_ious: list[np.ndarray] = []
    box_ious: list[np.ndarray] = []
    lut = np.asarray(ids, np.int64)
    seg.cache.clear()
    for record in tqdm(data.images, desc=f"accuracy {target.label}", unit="image",
                       disable=not progress, leave=False):
        masks, labels = record.masks, record.labels
        with target.context():
            session = seg.set_image(record.image)
            if pq is not None:
                pred = seg.panoptic(session)
                pred_map = np.zeros(record.image.shape[:2], np.int32)
                segments = []
                for j, (mask, label) in enumerate(zip(pred.masks, pred.labels, strict=True)):
                    if mask.any():
                        pred_map[mask] = j + 1
                        segments.append({"id": j + 1, "category_id": int(lut[label])})
                gt_map = np.zeros(record.image.shape[:2], np.int32)
                gt_segments = []
                for i, (mask, label, crowd) in enumerate(zip(masks, labels, record.iscrowd,
                                                            strict=True)):
                    gt_map[mask] = i + 1
                    gt_segments.append({"id": i + 1, "category_id": int(lut[label]),
                                        "iscrowd": int(crowd)})
                pq.update(pred_map, segments, gt_map, gt_segments)
            things = labels < nt
            if ap is not None:
                pred = seg.instances(session)
                ap.update(pred.masks, pred.scores.astype(np.float64), lut[pred.labels],
                          masks[things], lut[labels[things]], record.iscrowd[things])
            if confusion is not None:
                pred = seg.semantic(session)
                gt = np.full(record.image.shape[:2], 255, np.int64)
                for mask, label in zip(masks, labels, strict=True):
                    gt[mask] = label
                pred_labels = pred.id_map.astype(np.int64)
                pred_labels[(pred_labels < 0) | (pred_labels >= c)] = c  # "no class" column
                confusion.update(pred_labels, gt)
            if "prompt" in tasks:
                targets = [m for m, crowd in zip(masks[things], record.iscrowd[things],
                                                 strict=True) if m.any() and not crowd]
                if targets:
                    gt_masks = np.stack(targets)
                    points = np.stack([sample_point(m, "center") for m in targets])
                    boxes = np.stack([mask_box(m) for m in targets])
                    point_ious.append(mask_ious(seg.prompt(session, points=points).masks,
                                                gt_masks))
                    box_ious.append(mask_ious(seg.prompt(session, boxes=boxes).masks, gt_masks))
    out: dict[str, Any] = {"images": len(data.images)}
    if pq is not None:
        result = pq.compute()
        out.update(pq=result["all"]["pq"], sq=result["all"]["sq"], rq=result["all"]["rq"],
                   pq_things=result["things"]["pq"], pq_stuff=result["stuff"]["pq"])
    if ap is not None:
        result = ap.compute()
        out.update(mask_ap=result["ap"], mask_ap50=result["ap50"])
    if confusion is not None:
        iou = mean_iou(confusion.matrix)["iou"][:c]
        out["miou"] = float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan
    if "prompt" in tasks:
        points = np.concatenate(point_ious) if point_ious else np.zeros(0)
        boxes = np.concatenate(box_ious) if box_ious else np.zeros(0)
        out.update(interactive_miou_point=float(points.mean()) if points.size else math.nan,
                   interactive_miou_box=float(boxes.mean()) if boxes.size else math.nan,
                   prompts=int(points.size))
    if "video" in tasks and data.videos:
        jf = JFAccumulator(skip_first_and_last=True)
        scored = 0
        for video in data.videos:
            maps = _vos_ground_truth(video)
            if maps is None:
                continue
            with target.context():
                results = seg.open_video("vos", first_mask=maps[0]).run(video.frames)
            pred = np.stack([np.maximum(r.id_map, 0) for r in results])
            jf.update(pred.astype(np.int32), maps)
            scored += 1
        summary = jf.compute()
        out.update(jf=summary["jf"], j=summary["j_mean"], f=summary["f_mean"], videos=scored)
    return {k: float(v) if isinstance(v, float | np.floating) else v for k, v in out.items()}


def _vos_ground_truth(video: Any) -> np.ndarray | None:
    """(T, H, W) int32 ids of the objects present in frame 0 (others are not followed)."""
    present = [k for k in range(video.masks.shape[0]) if video.masks[k, 0].any()]
    if not present:
        return None
    maps = np.zeros(video.masks.shape[1:], np.int32)
    for obj, k in enumerate(present, start=1):
        maps[video.masks[k]] = obj
    return maps


METRICS = ("pq", "sq", "rq", "pq_things", "pq_stuff", "mask_ap", "mask_ap50", "miou",
           "interactive_miou_point", "interactive_miou_box", "jf", "j", "f")


def deltas(rows: list[dict[str, Any]], references: dict[str, str]) -> None:
    """Add ``delta_<metric>`` (row - its image size's reference row) to every row, in place."""
    by_key = {r["key"]: r for r in rows}
    for row in rows:
        ref = by_key.get(references.get(str(row["image_size"]), ""))
        if ref is None:
            continue
        row["reference"] = ref["key"]
        for metric in METRICS:
            if metric in row and metric in ref:
                row[f"delta_{metric}"] = float(row[metric] - ref[metric])
