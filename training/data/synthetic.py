"""The synthetic dataset on disk: the procedural world written as the real formats.

`generate_dataset` draws images and videos with `SceneGenerator` (see `training.data.world`) and
writes COCO panoptic, COCO instances and YouTube-VIS files, so training reads them with the
real readers. The same seed gives byte-identical files whatever the number of worker
processes, and two splits made with one seed do not share scenes (the split name is part of
every item's seed).
"""

from __future__ import annotations

import json
import multiprocessing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from training.data.formats import DataError, id_to_rgb, mask_bbox_xywh, rle_encode
from training.data.world import (
    STUFF_STYLES,
    THING_STYLES,
    Scene,
    SceneConfig,
    SceneGenerator,
    VideoScene,
)

__all__ = [
    "STUFF_STYLES",
    "THING_STYLES",
    "DatasetPaths",
    "Scene",
    "SceneConfig",
    "SceneGenerator",
    "VideoScene",
    "dataset_paths",
    "generate_dataset",
]


@dataclass(frozen=True)
class DatasetPaths:
    """Where `generate_dataset` puts one split (the arguments the readers take)."""

    root: Path
    split: str
    panoptic_json: Path = field(init=False)
    panoptic_dir: Path = field(init=False)
    image_dir: Path = field(init=False)
    instances_json: Path = field(init=False)
    ytvis_json: Path = field(init=False)
    video_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        root, split = Path(self.root), self.split
        for name, value in {
            "panoptic_json": root / f"panoptic_{split}.json",
            "panoptic_dir": root / f"panoptic_{split}",
            "image_dir": root / "images" / split,
            "instances_json": root / f"instances_{split}.json",
            "ytvis_json": root / f"ytvis_{split}.json",
            "video_dir": root / "videos" / split,
        }.items():
            object.__setattr__(self, name, value)


def dataset_paths(root: str | Path, split: str) -> DatasetPaths:
    """The file layout of one split under ``root``."""
    return DatasetPaths(Path(root), split)


def generate_dataset(
    root: str | Path,
    split: str,
    *,
    num_images: int,
    num_videos: int = 0,
    frames_per_video: int = 8,
    seed: int = 0,
    config: SceneConfig | None = None,
    workers: int = 1,
    progress: bool = True,
) -> DatasetPaths:
    """Generate one split and write it as COCO panoptic + COCO instances + YouTube-VIS.

    Layout under ``root`` (see `DatasetPaths`): ``panoptic_{split}.json`` and
    ``panoptic_{split}/NNNNNN.png`` (RGB-encoded ids), ``images/{split}/NNNNNN.png``,
    ``instances_{split}.json`` (things, RLE), ``ytvis_{split}.json`` and
    ``videos/{split}/NNNNN/NNNNN.png``. Same arguments → byte-identical files; the split name
    is part of every item's seed, so "train" and "val" made with one seed never share scenes.

    Args:
        num_images, num_videos: how many of each (either may be 0).
        frames_per_video: T of every video.
        workers: processes drawing and encoding in parallel (the files do not depend on it).
    """
    for name, value, least in (("num_images", num_images, 0), ("num_videos", num_videos, 0),
                               ("frames_per_video", frames_per_video, 1), ("workers", workers, 1)):
        if int(value) < least:
            raise DataError(f"{name}: expected an int >= {least}, got {value}")
    if not split or "/" in split:
        raise DataError(f"split: expected a plain name like 'train', got {split!r}")
    config = config if config is not None else SceneConfig()
    paths = dataset_paths(root, split)
    for d in (paths.panoptic_dir, paths.image_dir, paths.video_dir):
        d.mkdir(parents=True, exist_ok=True)
    categories = config.categories()
    info = {"description": "omg-rt synthetic shapes", "seed": int(seed), "split": split,
            "config": asdict(config)}

    jobs = [("image", seed, config, str(paths.root), split, i + 1) for i in range(num_images)]
    jobs += [("video", seed, config, str(paths.root), split, v + 1, frames_per_video)
             for v in range(num_videos)]
    results = _run_jobs(jobs, workers, progress, f"generating {split}")

    images, pan_anns, inst_anns, videos, vis_anns = [], [], [], [], []
    for kind, result in zip((j[0] for j in jobs), results, strict=True):
        if kind == "image":
            image, pan, things = result
            images.append(image)
            pan_anns.append(pan)
            for ann in things:
                inst_anns.append({"id": len(inst_anns) + 1, **ann})
        else:
            video, tracks = result
            videos.append(video)
            for ann in tracks:
                vis_anns.append({"id": len(vis_anns) + 1, **ann})

    _write_json(paths.panoptic_json, {"info": info, "images": images, "annotations": pan_anns,
                                      "categories": categories})
    _write_json(paths.instances_json, {"info": info, "images": images, "annotations": inst_anns,
                                       "categories": categories[: config.num_things]})
    _write_json(paths.ytvis_json, {"info": info, "videos": videos, "annotations": vis_anns,
                                   "categories": categories})
    return paths


def _run_jobs(jobs: list[tuple], workers: int, progress: bool, desc: str) -> list[Any]:
    bar = tqdm(total=len(jobs), desc=desc, unit="item", disable=not progress)
    try:
        if workers == 1 or len(jobs) < 2:
            out = []
            for job in jobs:
                out.append(_run_job(job))
                bar.update()
            return out
        # fork (where there is one) works from any caller, a REPL or stdin included; spawn
        # re-imports the caller's __main__. The workers only run numpy/cv2 drawing code.
        methods = multiprocessing.get_all_start_methods()
        context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with context.Pool(workers) as pool:
            out = []
            for result in pool.imap(_run_job, jobs, chunksize=8):  # ordered: files stay identical
                out.append(result)
                bar.update()
            return out
    finally:
        bar.close()


def _run_job(job: tuple) -> Any:
    if job[0] == "image":
        return _write_image(*job[1:])
    return _write_video(*job[1:])


def _write_image(seed: int, config: SceneConfig, root: str, split: str, image_id: int):
    scene = SceneGenerator(seed, config=config, split=split).image(image_id - 1)
    paths = dataset_paths(root, split)
    size = config.image_size
    stem = f"{image_id:06d}"
    _write_png(paths.image_dir / f"{stem}.png", scene.image)
    ids = np.zeros(scene.segment_map.shape, np.int64)
    segments, things = [], []
    per_class: dict[int, int] = {}
    for k, label in enumerate(scene.labels.tolist()):
        category_id = label + 1
        per_class[category_id] = per_class.get(category_id, 0) + 1
        segment_id = category_id * 1000 + per_class[category_id]  # readable; any unique id works
        mask = scene.segment_map == k
        ids[mask] = segment_id
        area, bbox = int(mask.sum()), mask_bbox_xywh(mask)
        segments.append({"id": segment_id, "category_id": category_id, "iscrowd": 0,
                         "area": area, "bbox": bbox})
        if label < config.num_things:
            things.append({"image_id": image_id, "category_id": category_id,
                           "segmentation": rle_encode(mask), "area": area, "bbox": bbox,
                           "iscrowd": 0})
    _write_png(paths.panoptic_dir / f"{stem}.png", id_to_rgb(ids))
    image = {"id": image_id, "file_name": f"{stem}.png", "height": size, "width": size}
    pan = {"image_id": image_id, "file_name": f"{stem}.png", "segments_info": segments}
    return image, pan, things


def _write_video(seed: int, config: SceneConfig, root: str, split: str, video_id: int,
                 num_frames: int):
    video = SceneGenerator(seed, config=config, split=split).video(video_id - 1,
                                                                   num_frames)
    folder = dataset_paths(root, split).video_dir / f"{video_id:05d}"
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for f, frame in enumerate(video.frames):
        names.append(f"{video_id:05d}/{f:05d}.png")
        _write_png(folder / f"{f:05d}.png", frame)
    size = config.image_size
    tracks = []
    for mask, label in zip(video.masks, video.labels.tolist(), strict=True):
        present = [bool(m.any()) for m in mask]
        tracks.append({
            "video_id": video_id, "category_id": label + 1, "iscrowd": 0,
            "height": size, "width": size, "length": 1,
            "segmentations": [rle_encode(m) if p else None for m, p in zip(mask, present,
                                                                              strict=True)],
            "areas": [int(m.sum()) if p else None for m, p in zip(mask, present, strict=True)],
            "bboxes": [mask_bbox_xywh(m) if p else None for m, p in zip(mask, present,
                                                                           strict=True)],
        })
    meta = {"id": video_id, "file_names": names, "height": size, "width": size,
            "length": num_frames}
    return meta, tracks


def _write_png(path: Path, rgb: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise OSError(f"could not encode {path}")
    path.write_bytes(buf.tobytes())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, separators=(",", ":")))
