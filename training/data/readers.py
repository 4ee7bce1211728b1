"""Readers for COCO panoptic, COCO instances, YouTube-VIS (2019 and 2021), ADE20K, DAVIS 2017 and
VIPSeg, returning typed records.

Each reader indexes its annotation files (a JSON, a video list, a directory listing) when built
and decodes images and masks only when an item is accessed (``reader[i]``), so large datasets
cost one parse up front. Class indices are contiguous, things first (see `Categories`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from omg_rt.vocabularies import VOCABULARIES
from training.data.formats import (
    Categories,
    DataError,
    DataFormatError,
    load_json,
    rgb_to_id,
    rle_decode,
)

__all__ = [
    "ADE20KReader",
    "CocoInstancesReader",
    "CocoPanopticReader",
    "DAVISReader",
    "IGNORE_LABEL",
    "ImageRecord",
    "VIPSegReader",
    "VideoRecord",
    "YouTubeVISReader",
    "read_ade20k",
    "read_coco_instances",
    "read_coco_panoptic",
    "read_davis",
    "read_image",
    "read_vipseg",
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
        segment_ids: (N,) int64, the segment's id in the file (panoptic id / annotation id /
            ADE20K label value).
        void: (H, W) bool, the pixels the dataset marks as ignored (ADE20K's "other"); None
            when the format has no such mark.
    """

    image_id: int
    file_name: str
    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    segment_ids: np.ndarray
    void: np.ndarray | None = None


@dataclass
class VideoRecord:
    """One annotated video.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        masks: (N, T, H, W) bool; all-False in frames where the track is absent.
        labels: (N,) int64 contiguous class indices (things first).
        iscrowd: (N,) bool.
        track_ids: (N,) int64, the annotation ids (stable across the video).
        void: (T, H, W) bool, the pixels the dataset marks as ignored (DAVIS 255, VIPSeg id 0);
            None when the format has no such mark.
    """

    video_id: int
    file_names: list[str]
    frames: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    track_ids: np.ndarray
    void: np.ndarray | None = None


def read_image(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8 RGB."""
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DataFormatError(f"image: could not read {str(path)!r} (missing or not an image)")
    return np.ascontiguousarray(bgr[..., ::-1])


def _read_png(path: Path, modes: tuple[str, ...], what: str) -> np.ndarray:
    """A PNG's pixel values as stored: a palette PNG gives its indices, not their colours.

    Args:
        path: the PNG.
        modes: the Pillow modes the format allows ("P" palette, "L" 8-bit grey, "RGB").
        what: what the PNG should hold, for the error message.
    Returns:
        (H, W) uint8 for "P" / "L", (H, W, 3) uint8 for "RGB".
    """
    # Pillow, not OpenCV: cv2.imread expands a palette PNG to its colours, losing the ids.
    from PIL import Image

    try:
        with Image.open(path) as png:
            if png.mode not in modes:
                raise DataFormatError(f"{path}: expected {what} (PNG mode {' or '.join(modes)}), "
                                      f"got mode {png.mode!r}")
            return np.array(png)
    except OSError as err:  # missing file, or PIL.UnidentifiedImageError
        raise DataFormatError(f"annotation: could not read {str(path)!r} ({what}): "
                              f"{type(err).__name__}") from err


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
        known = set(self.categories.category_ids)
        for ann in data.get("annotations", []):
            video_id = int(ann["video_id"])
            if video_id not in self._videos:
                raise DataFormatError(f"{json_path}: track {ann.get('id')} names unknown video "
                                      f"{video_id}")
            if int(ann["category_id"]) not in known:
                raise DataFormatError(
                    f"{json_path}: track {ann.get('id')}: expected a category_id listed in "
                    f"'categories', got {ann['category_id']}")
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
        chosen = _chosen_frames(frame_indices, len(video["file_names"]))
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


# ADE20K SceneParsing label values (objectInfo150 order, 1..150) of the 100 classes the official
# ADE20K panoptic split marks ``isthing`` (Mask2Former's ADE20K_150_CATEGORIES, id = value - 1).
# ``VOCABULARIES["ade"]`` lists these things, then the other 50 values, each in value order.
_ADE20K_THING_VALUES = (
    8, 9, 11, 13, 15, 16, 19, 20, 21, 23, 24, 25, 28, 31, 32, 33, 34, 36, 37, 38, 39, 40, 42, 43,
    44, 45, 46, 48, 50, 51, 54, 56, 57, 58, 59, 63, 65, 66, 67, 68, 70, 71, 72, 73, 74, 75, 76, 77,
    79, 81, 82, 83, 84, 86, 87, 88, 89, 90, 91, 93, 94, 96, 98, 99, 103, 104, 105, 108, 109, 111,
    112, 113, 116, 117, 119, 120, 121, 122, 124, 125, 126, 127, 128, 130, 131, 133, 134, 135, 136,
    137, 138, 139, 140, 143, 144, 145, 147, 148, 149, 150,
)
IGNORE_LABEL = 255  # the label-map value the semantic metric skips (mmseg's reduce_zero_label)


class ADE20KReader(_Reader):
    """ADE20K SceneParsing (ADEChallengeData2016): ``images/<split>/*.jpg`` plus
    ``annotations/<split>/<same stem>.png`` 8-bit label maps.

    A label pixel is 0 ("other", which the official mIoU ignores) or a class value 1..150 in
    objectInfo150 order. The classes are ``omg_rt.vocabularies.VOCABULARIES["ade"]``, things
    first, so a value's contiguous index is ``categories.index(value)`` (not ``value - 1``:
    value 1 "wall" is stuff, index 100); ``categories.category_ids`` are the values in index
    order. Semantic labels have no instances: `ImageRecord` holds one mask per class present.
    ``image_id`` is the image's position in the sorted listing.
    """

    def __init__(self, image_dir: str | Path, annotation_dir: str | Path) -> None:
        self.image_dir, self.annotation_dir = Path(image_dir), Path(annotation_dir)
        for name, folder in (("image_dir", self.image_dir),
                             ("annotation_dir", self.annotation_dir)):
            if not folder.is_dir():
                raise DataError(f"{name}: expected an existing directory, got {str(folder)!r}")
        self._files = sorted(p.name for p in self.image_dir.glob("*.jpg"))
        if not self._files:
            raise DataFormatError(f"{self.image_dir}: expected ADE20K images (*.jpg), found none")
        labelled = {p.stem for p in self.annotation_dir.glob("*.png")}
        missing = [Path(f).stem + ".png" for f in self._files if Path(f).stem not in labelled]
        if missing:
            raise DataFormatError(f"{self.annotation_dir}: expected a label PNG per image, "
                                  f"missing {missing[0]} (and {len(missing) - 1} more)")
        self._ids = list(range(len(self._files)))
        vocabulary = VOCABULARIES["ade"]
        stuff = tuple(v for v in range(1, 151) if v not in set(_ADE20K_THING_VALUES))
        self.categories = Categories(vocabulary.names, _ADE20K_THING_VALUES + stuff,
                                     vocabulary.num_things)
        # label value -> contiguous index; 0 ("other") and an existing 255 -> ignore; -1: invalid
        self._value_to_index = np.full(256, -1, np.int64)
        self._value_to_index[[0, IGNORE_LABEL]] = IGNORE_LABEL
        self._value_to_index[list(self.categories.category_ids)] = np.arange(150)

    def label_map(self, index: int) -> np.ndarray:
        """The ground truth the semantic metric takes, decoding only the label PNG.

        Returns:
            (H, W) int64 contiguous class indices, `IGNORE_LABEL` (255) where the PNG says 0.
        """
        path = self.annotation_dir / (Path(self._files[self._check_index(index)]).stem + ".png")
        values = _read_png(path, ("L", "P"), "an 8-bit ADE20K label map")
        labels: np.ndarray = self._value_to_index[values]  # (H, W) int64
        if (labels < 0).any():
            bad = np.unique(values[labels < 0]).tolist()
            raise DataFormatError(f"{path}: expected label values 0..150 (or 255 = ignore), got "
                                  f"{bad[:5]}")
        return labels

    def __getitem__(self, index: int) -> ImageRecord:
        index = self._check_index(index)
        image = read_image(self.image_dir / self._files[index])
        labels = self.label_map(index)
        if labels.shape != image.shape[:2]:
            raise DataFormatError(f"{Path(self._files[index]).stem}.png: label map size "
                                  f"{labels.shape} differs from the image's {image.shape[:2]}")
        void = labels == IGNORE_LABEL
        classes = np.unique(labels[~void])  # (N,) int64
        values = np.asarray(self.categories.category_ids, np.int64)[classes]
        return ImageRecord(index, self._files[index], image,
                           labels[None] == classes[:, None, None], classes,
                           np.zeros(len(classes), bool), values, void)


_DAVIS_VOID = 255  # DAVIS marks pixels to ignore with palette index 255


class DAVISReader(_Reader):
    """DAVIS semi-supervised video object segmentation (2017 layout).

    ``ImageSets/<year>/<split>.txt`` lists the videos; ``JPEGImages/<resolution>/<video>/*.jpg``
    are the frames (sorted by name) and ``Annotations/<resolution>/<video>/<frame>.png`` palette
    PNGs whose pixel *indices* are object ids (0 background, 255 void). Every object is one
    track of the single class "object"; ``video_names[i]`` names video ``i``, whose
    ``video_id`` is ``i``. The first frame's PNG must exist when the reader is built; the
    others (which test-dev does not ship) only when ``reader[i]`` decodes the video.
    """

    def __init__(self, root: str | Path, year: str = "2017", split: str = "val",
                 resolution: str = "480p") -> None:
        root = Path(root)
        self.list_path = root / "ImageSets" / str(year) / f"{split}.txt"
        self.image_dir = root / "JPEGImages" / resolution
        self.annotation_dir = root / "Annotations" / resolution
        if not self.list_path.is_file():
            raise DataFormatError(f"{self.list_path}: expected the DAVIS video list "
                                  f"(ImageSets/<year>/<split>.txt), not found")
        self.video_names = [line.strip() for line in self.list_path.read_text().splitlines()
                            if line.strip()]
        if not self.video_names:
            raise DataFormatError(f"{self.list_path}: expected video names, one a line, got none")
        self._frames: dict[str, list[str]] = {}
        for name in self.video_names:
            stems = sorted(p.stem for p in (self.image_dir / name).glob("*.jpg"))
            if not stems:
                raise DataFormatError(f"{self.image_dir / name}: expected the frames (*.jpg) of "
                                      f"video {name!r} listed in {self.list_path}, found none")
            first = self.annotation_dir / name / f"{stems[0]}.png"
            if not first.is_file():
                raise DataFormatError(f"{first}: expected the first-frame annotation of video "
                                      f"{name!r}, not found")
            self._frames[name] = stems
        self._ids = list(range(len(self.video_names)))
        self.categories = Categories(("object",), (1,), 1)

    def _ids_png(self, name: str, stem: str) -> np.ndarray:
        return _read_png(self.annotation_dir / name / f"{stem}.png", ("P", "L"),
                         "a palette PNG of DAVIS object ids")

    def first_frame_ids(self, index: int) -> np.ndarray:
        """Frame 0's objects as the runtime's VOS session takes them, decoding only that PNG.

        Returns:
            (H, W) int32 object ids, 0 = background (void pixels are background here).
        """
        name = self.video_names[self._check_index(index)]
        ids = self._ids_png(name, self._frames[name][0]).astype(np.int32)
        ids[ids == _DAVIS_VOID] = 0
        return ids

    def num_frames(self, index: int) -> int:
        """T of a video, without decoding it."""
        return len(self._frames[self.video_names[self._check_index(index)]])

    def __getitem__(self, index: int) -> VideoRecord:
        return self.clip(index, None)

    def clip(self, index: int, frame_indices: list[int] | None) -> VideoRecord:
        """A video, or only the frames ``frame_indices`` of it (decodes just those)."""
        index = self._check_index(index)
        name = self.video_names[index]
        every = self._frames[name]
        stems = [every[f] for f in _chosen_frames(frame_indices, len(every))]
        frames = np.stack([read_image(self.image_dir / name / f"{s}.jpg") for s in stems])
        ids = np.stack([self._ids_png(name, s) for s in stems])  # (T, H, W) uint8
        if ids.shape != frames.shape[:3]:
            raise DataFormatError(f"{self.annotation_dir / name}: annotation size "
                                  f"{ids.shape[1:]} differs from the frames' {frames.shape[1:3]}")
        objects = np.asarray([v for v in np.unique(ids) if v not in (0, _DAVIS_VOID)], np.int64)
        masks = ids[None] == objects[:, None, None, None]  # (N, T, H, W)
        return VideoRecord(index, [f"{name}/{s}.jpg" for s in stems], frames, masks,
                           np.zeros(len(objects), np.int64), np.zeros(len(objects), bool),
                           objects, ids == _DAVIS_VOID)


class VIPSegReader(_Reader):
    """VIPSeg video panoptic segmentation in its COCO-style form.

    Accepted layout under ``root`` (each part can be given explicitly instead):

    * ``panoptic_gt_VIPSeg_<split>.json``: ``{"categories": [{"id", "name", "isthing"}],
      "videos": [{"video_id": str, ...}], "annotations": [{"video_id": str, "annotations":
      [frame, ...]}]}`` as the official ``create_panoptic_video_labels.py`` + ``splitjson.py``
      write it, or each video carrying its frames itself (``videos[k]["annotations"]``). A
      frame is ``{"file_name": "<frame>.png", "segments_info": [{"id", "category_id",
      "iscrowd"?}]}``.
    * frames ``imgs/<video>/<frame>.jpg`` (or ``images/``, the 720P conversion's name).
    * RGB-encoded ids ``panomasks/<video>/<frame>.png`` (or ``panomasksRGB/``, preferred when
      present: the official conversion keeps the raw class-coded PNGs in ``panomasks/``),
      ``id = R + 256·G + 256²·B``, 0 = void.

    A thing segment id is one track across the video; the stuff segments of one class are one
    track (its first segment id). ``video_names[i]`` names video ``i``, whose ``video_id`` is
    ``i``; videos keep the JSON's order, frames the video's.
    """

    def __init__(self, root: str | Path, split: str = "val", *,
                 json_path: str | Path | None = None, image_dir: str | Path | None = None,
                 mask_dir: str | Path | None = None) -> None:
        root = Path(root)
        self.json_path = Path(json_path or root / f"panoptic_gt_VIPSeg_{split}.json")
        self.image_dir = Path(image_dir or _first_dir(root, ("imgs", "images")))
        self.mask_dir = Path(mask_dir or _first_dir(root, ("panomasksRGB", "panomasks")))
        data = load_json(self.json_path)
        self.categories = Categories.from_coco(data.get("categories", []), str(self.json_path))
        videos = data.get("videos")
        if not isinstance(videos, list):
            raise DataFormatError(f"{self.json_path}: expected a 'videos' list, got "
                                  f"{type(videos).__name__}")
        by_video = {str(_field(a, "video_id", self.json_path)): a.get("annotations")
                    for a in data.get("annotations", [])}
        known = set(self.categories.category_ids)
        self.video_names: list[str] = []
        self._videos: list[list[dict[str, Any]]] = []
        for video in videos:
            name = str(_field(video, "video_id", self.json_path))
            frames = video.get("annotations", by_video.get(name))
            if not isinstance(frames, list) or not frames:
                raise DataFormatError(f"{self.json_path}: video {name!r}: expected its frames "
                                      f"('annotations' with segments_info), got none")
            for frame in frames:
                file_name = _field(frame, "file_name", f"{self.json_path}: video {name!r}")
                where = f"{self.json_path}: video {name!r} frame {file_name!r}"
                for seg in _field(frame, "segments_info", where):
                    _field(seg, "id", where)
                    category = int(_field(seg, "category_id", where))
                    if category not in known:
                        raise DataFormatError(f"{where}: segment {seg.get('id')}: expected a "
                                              f"category_id listed in 'categories', got "
                                              f"{category}")
            self.video_names.append(name)
            self._videos.append(frames)
        self._ids = list(range(len(self._videos)))

    def num_frames(self, index: int) -> int:
        """T of a video, without decoding it."""
        return len(self._videos[self._check_index(index)])

    def __getitem__(self, index: int) -> VideoRecord:
        return self.clip(index, None)

    def clip(self, index: int, frame_indices: list[int] | None) -> VideoRecord:
        """A video, or only the frames ``frame_indices`` of it (decodes just those; a track is
        what those frames show of it)."""
        index = self._check_index(index)
        name, every = self.video_names[index], self._videos[index]
        frames = [every[f] for f in _chosen_frames(frame_indices, len(every))]
        stems = [Path(f["file_name"]).stem for f in frames]
        images = np.stack([read_image(self.image_dir / name / f"{s}.jpg") for s in stems])
        num_things = self.categories.num_things
        tracks: dict[tuple[str, int], int] = {}  # ("thing", id) / ("stuff", category) -> track
        owner: dict[int, tuple[str, int]] = {}  # segment id -> its track key
        track_ids: list[int] = []
        labels: list[int] = []
        crowd: list[bool] = []
        masks: list[np.ndarray] = []  # per track (T, H, W) bool
        void = np.zeros(images.shape[:3], bool)
        for t, frame in enumerate(frames):
            path = self.mask_dir / name / frame["file_name"]
            ids = rgb_to_id(_read_png(path, ("RGB",), "RGB-encoded VIPSeg panoptic ids"))
            if ids.shape != images.shape[1:3]:
                raise DataFormatError(f"{path}: PNG size {ids.shape} differs from the frame's "
                                      f"{images.shape[1:3]}")
            listed = {int(s["id"]): s for s in frame["segments_info"]}
            unlisted = [int(i) for i in np.unique(ids) if i != 0 and int(i) not in listed]
            if unlisted:
                raise DataFormatError(f"{path}: ids {unlisted[:5]} are not in this frame's "
                                      f"segments_info in {self.json_path}")
            void[t] = ids == 0
            for seg_id, seg in listed.items():
                label = self.categories.index(int(seg["category_id"]))
                key = ("thing", seg_id) if label < num_things else ("stuff", label)
                if owner.setdefault(seg_id, key) != key:
                    raise DataFormatError(f"{self.json_path}: video {name!r}: segment id "
                                          f"{seg_id} names two segments ({owner[seg_id]} and "
                                          f"{key}); VIPSeg ids are unique within a video")
                if key not in tracks:
                    tracks[key] = len(track_ids)
                    track_ids.append(seg_id)
                    labels.append(label)
                    crowd.append(False)
                    masks.append(np.zeros(images.shape[:3], bool))
                k = tracks[key]
                crowd[k] |= bool(seg.get("iscrowd", 0))
                masks[k][t] |= ids == seg_id
        stacked = np.stack(masks) if masks else np.zeros((0, *images.shape[:3]), bool)
        return VideoRecord(index, [f"{name}/{s}.jpg" for s in stems], images, stacked,
                           np.asarray(labels, np.int64), np.asarray(crowd, bool),
                           np.asarray(track_ids, np.int64), void)


def _chosen_frames(frame_indices: list[int] | None, length: int) -> list[int]:
    """All of a video's frames (None) or the given ones, checked against its length."""
    chosen = list(range(length)) if frame_indices is None else list(frame_indices)
    if any(not 0 <= f < length for f in chosen):
        raise DataError(f"frame_indices: expected values in [0, {length}), got {chosen}")
    return chosen


def _first_dir(root: Path, names: tuple[str, ...]) -> Path:
    """The first of ``root/name`` that exists (the first name when none does)."""
    return next((root / n for n in names if (root / n).is_dir()), root / names[0])


def _field(obj: Any, key: str, where: str | Path) -> Any:
    """``obj[key]`` of a JSON object, or a `DataFormatError` naming the file and the key."""
    if not isinstance(obj, dict) or key not in obj:
        raise DataFormatError(f"{where}: expected an object with a {key!r} field, got "
                              f"{str(obj)[:80]}")
    return obj[key]


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


def read_ade20k(image_dir: str | Path, annotation_dir: str | Path) -> ADE20KReader:
    """A lazy reader of an ADE20K SceneParsing split (``reader[i]`` → `ImageRecord`,
    ``reader.label_map(i)`` → the (H, W) int64 ground truth with 255 = ignore)."""
    return ADE20KReader(image_dir, annotation_dir)


def read_davis(root: str | Path, year: str = "2017", split: str = "val",
               resolution: str = "480p") -> DAVISReader:
    """A lazy reader of a DAVIS split (``reader[i]`` → `VideoRecord`,
    ``reader.first_frame_ids(i)`` → frame 0's (H, W) int32 object ids)."""
    return DAVISReader(root, year, split, resolution)


def read_vipseg(root: str | Path, split: str = "val", *, json_path: str | Path | None = None,
                image_dir: str | Path | None = None,
                mask_dir: str | Path | None = None) -> VIPSegReader:
    """A lazy reader of a VIPSeg split (``reader[i]`` → `VideoRecord`)."""
    return VIPSegReader(root, split, json_path=json_path, image_dir=image_dir, mask_dir=mask_dir)
