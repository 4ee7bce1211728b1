"""Readers for COCO panoptic, COCO instances and YouTube-VIS, returning typed records.

Each reader indexes its JSON when built and decodes images and masks only when an item is
accessed (``reader[i]``), so large datasets cost one JSON parse up front. Class indices are
contiguous, things first (see `Categories`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from training.data.formats import (
    Categories,
    DataError,
    DataFormatError,
    load_json,
    rgb_to_id,
    rle_decode,
)

__all__ = [
    "CocoInstancesReader",
    "CocoPanopticReader",
    "ImageRecord",
    "VideoRecord",
    "YouTubeVISReader",
    "read_coco_instances",
    "read_coco_panoptic",
    "read_image",
    "read_ytvis",
]


@dataclass
class ImageRecord:
    """One annotated image.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        masks: (N, H, W) bool, one per segment.
        labels: (N,) int64 contiguous class indices (things first).
        iscrowd: (N,) bool.
        segment_ids: (N,) int64, the segment's id in the file (panoptic id / annotation id).
    """

    image_id: int
    file_name: str
    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    segment_ids: np.ndarray


@dataclass
class VideoRecord:
    """One annotated video.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        masks: (N, T, H, W) bool; all-False in frames where the track is absent.
        labels: (N,) int64 contiguous class indices (things first).
        iscrowd: (N,) bool.
        track_ids: (N,) int64, the annotation ids (stable across the video).
    """

    video_id: int
    file_names: list[str]
    frames: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    track_ids: np.ndarray


def read_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataFormatError(f"image: could not read {str(path)!r} (missing or not an image)")
    return np.ascontiguousarray(bgr[..., ::-1])


class _Reader:
    categories: Categories
    _ids: list[int]

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index: expected [0, {len(self)}), got {index}")
        return index % len(self)


class CocoPanopticReader(_Reader):
    """COCO panoptic: a JSON with ``segments_info`` per image plus RGB-encoded id PNGs."""

    def __init__(self, json_path: str | Path, png_dir: str | Path, image_dir: str | Path) -> None:
        data = load_json(json_path)
        self.json_path, self.png_dir, self.image_dir = Path(json_path), Path(png_dir), Path(
            image_dir)
        self.categories = Categories.from_coco(data.get("categories", []), str(json_path))
        self._images = {int(im["id"]): im for im in data.get("images", [])}
        self._anns = {int(a["image_id"]): a for a in data.get("annotations", [])}
        missing = sorted(set(self._anns) - set(self._images))
        if missing:
            raise DataFormatError(f"{json_path}: annotations for unknown image ids {missing[:5]}")
        self._ids = sorted(self._anns)

    def __getitem__(self, index: int) -> ImageRecord:
        image_id = self._ids[self._check_index(index)]
        info, ann = self._images[image_id], self._anns[image_id]
        image = read_image(self.image_dir / info["file_name"])
        ids = rgb_to_id(read_image(self.png_dir / ann["file_name"]))
        if ids.shape != image.shape[:2]:
            raise DataFormatError(f"{ann['file_name']}: PNG size {ids.shape} differs from the "
                                  f"image's {image.shape[:2]}")
        segments = ann.get("segments_info", [])
        seg_ids = np.asarray([int(s["id"]) for s in segments], np.int64)
        masks = ids[None] == seg_ids[:, None, None]  # (N, H, W)
        labels = np.asarray([self.categories.index(int(s["category_id"])) for s in segments],
                            np.int64)
        iscrowd = np.asarray([bool(s.get("iscrowd", 0)) for s in segments], bool)
        return ImageRecord(image_id, info["file_name"], image, masks, labels, iscrowd, seg_ids)


class CocoInstancesReader(_Reader):
    """COCO instances: per-object polygons, RLE or uncompressed RLE (things only)."""

    def __init__(self, json_path: str | Path, image_dir: str | Path,
                 include_empty: bool = True) -> None:
        data = load_json(json_path)
        self.json_path, self.image_dir = Path(json_path), Path(image_dir)
        self.categories = Categories.from_coco(data.get("categories", []), str(json_path))
        self._images = {int(im["id"]): im for im in data.get("images", [])}
        self._anns: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ann in data.get("annotations", []):
            image_id = int(ann["image_id"])
            if image_id not in self._images:
                raise DataFormatError(f"{json_path}: annotation {ann.get('id')} names unknown "
                                      f"image {image_id}")
            self._anns[image_id].append(ann)
        ids = sorted(self._images)
        self._ids = ids if include_empty else [i for i in ids if self._anns.get(i)]

    def __getitem__(self, index: int) -> ImageRecord:
        image_id = self._ids[self._check_index(index)]
        info, anns = self._images[image_id], self._anns.get(image_id, [])
        image = read_image(self.image_dir / info["file_name"])
        h, w = image.shape[:2]
        masks = np.zeros((len(anns), h, w), bool)
        for k, ann in enumerate(anns):
            masks[k] = rle_decode(ann["segmentation"], h, w)
        return ImageRecord(
            image_id, info["file_name"], image, masks,
            np.asarray([self.categories.index(int(a["category_id"])) for a in anns], np.int64),
            np.asarray([bool(a.get("iscrowd", 0)) for a in anns], bool),
            np.asarray([int(a["id"]) for a in anns], np.int64),
        )


class YouTubeVISReader(_Reader):
    """YouTube-VIS: videos with ``file_names`` and per-track, per-frame segmentations (or null)."""

    def __init__(self, json_path: str | Path, video_dir: str | Path) -> None:
        data = load_json(json_path)
        self.json_path, self.video_dir = Path(json_path), Path(video_dir)
        self.categories = Categories.from_coco(data.get("categories", []), str(json_path))
        self._videos = {int(v["id"]): v for v in data.get("videos", [])}
        self._anns: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for ann in data.get("annotations", []):
            video_id = int(ann["video_id"])
            if video_id not in self._videos:
                raise DataFormatError(f"{json_path}: track {ann.get('id')} names unknown video "
                                      f"{video_id}")
            if len(ann["segmentations"]) != len(self._videos[video_id]["file_names"]):
                raise DataFormatError(
                    f"{json_path}: track {ann.get('id')}: expected "
                    f"{len(self._videos[video_id]['file_names'])} segmentations, got "
                    f"{len(ann['segmentations'])}")
            self._anns[video_id].append(ann)
        self._ids = sorted(self._videos)

    def num_frames(self, index: int) -> int:
        """T of a video, without decoding it."""
        return len(self._videos[self._ids[self._check_index(index)]]["file_names"])

    def __getitem__(self, index: int) -> VideoRecord:
        return self.clip(index, None)

    def clip(self, index: int, frame_indices: list[int] | None) -> VideoRecord:
        """A video, or only the frames ``frame_indices`` of it (decodes just those)."""
        video_id = self._ids[self._check_index(index)]
        video, anns = self._videos[video_id], self._anns.get(video_id, [])
        length = len(video["file_names"])
        chosen = list(range(length)) if frame_indices is None else list(frame_indices)
        if any(not 0 <= f < length for f in chosen):
            raise DataError(f"frame_indices: expected values in [0, {length}), got {chosen}")
        frames = np.stack([read_image(self.video_dir / video["file_names"][f]) for f in chosen])
        _, h, w, _ = frames.shape
        masks = np.zeros((len(anns), len(chosen), h, w), bool)
        for k, ann in enumerate(anns):
            for t, f in enumerate(chosen):
                seg = ann["segmentations"][f]
                if seg is not None:
                    masks[k, t] = rle_decode(seg, h, w)
        return VideoRecord(
            video_id, [video["file_names"][f] for f in chosen], frames, masks,
            np.asarray([self.categories.index(int(a["category_id"])) for a in anns], np.int64),
            np.asarray([bool(a.get("iscrowd", 0)) for a in anns], bool),
            np.asarray([int(a["id"]) for a in anns], np.int64),
        )


def read_coco_panoptic(json_path: str | Path, png_dir: str | Path,
                       image_dir: str | Path) -> CocoPanopticReader:
    """A lazy reader of a COCO panoptic split (``reader[i]`` → `ImageRecord`)."""
    return CocoPanopticReader(json_path, png_dir, image_dir)


def read_coco_instances(json_path: str | Path, image_dir: str | Path,
                        include_empty: bool = True) -> CocoInstancesReader:
    """A lazy reader of a COCO instances split (``reader[i]`` → `ImageRecord`)."""
    return CocoInstancesReader(json_path, image_dir, include_empty)


def read_ytvis(json_path: str | Path, video_dir: str | Path) -> YouTubeVISReader:
    """A lazy reader of a YouTube-VIS split (``reader[i]`` → `VideoRecord`)."""
    return YouTubeVISReader(json_path, video_dir)
