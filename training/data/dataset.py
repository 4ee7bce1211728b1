"""Torch datasets giving one sample dict for every task, and a seeded joint batch sampler.

Every sample is a clip (an image is a 1-frame clip, or a 2-frame pseudo-video), so image,
video and prompt batches go through one model path::

    {"frames":    (T, 3, H, W) float32 RGB in 0..255,
     "masks":     (N, T, H, W) bool,
     "labels":    (N,) int64 contiguous classes (things first),
     "track_ids": (N,) int64, unique within the sample,
     "valid":     (T, H, W) bool, False on padding,
     "task":      "panoptic" | "video" | "prompt",
     # prompt samples only (P prompts, each aimed at one object):
     "prompt_boxes":    (P, 4) float32 xyxy pixels; a click is its (x±3, y±3) pseudo box,
     "prompt_points":   (P, 2) float32 xy; the click, or the box centre for box prompts,
     "prompt_is_point": (P,) bool,
     "prompt_targets":  (P, T, H, W) bool, the prompted object's mask,
     "prompt_labels":   (P,) int64, its class}

Randomness comes from ``default_rng([seed, epoch, index])``: a sample depends only on those.
This is the only module of `training.data` that imports torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Sampler

from training.data.formats import DataError
from training.data.prompts import point_pseudo_box, sample_box, sample_point
from training.data.transforms import (
    ClipSample,
    horizontal_flip,
    large_scale_jitter,
    pseudo_video,
)

__all__ = [
    "IMAGE_SCALE_RANGE",
    "VIDEO_SCALE_RANGE",
    "ConcatDataset",
    "ImageDataset",
    "JointSampler",
    "PromptDataset",
    "VideoDataset",
    "collate_samples",
]

# OMG-Seg's LSJ ranges: 0.1–2.0 for COCO images, 0.8–2.0 for video clips.
IMAGE_SCALE_RANGE = (0.1, 2.0)
VIDEO_SCALE_RANGE = (0.8, 2.0)


class _ClipDataset(Dataset):
    task = ""

    def __init__(self, *, output_size: int | tuple[int, int], scale_range: tuple[float, float],
                 flip_prob: float, seed: int) -> None:
        if not 0 <= flip_prob <= 1:
            raise DataError(f"flip_prob: expected [0, 1], got {flip_prob}")
        self.output_size = output_size
        self.scale_range = scale_range
        self.flip_prob = flip_prob
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations: a sample depends on (seed, epoch, index)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def _to_dict(self, clip: ClipSample) -> dict[str, Any]:
        frames = torch.from_numpy(np.ascontiguousarray(clip.frames.transpose(0, 3, 1, 2)))
        return {
            "frames": frames.float(),
            "masks": torch.from_numpy(np.ascontiguousarray(clip.masks)),
            "labels": torch.from_numpy(clip.labels.astype(np.int64)),
            "track_ids": torch.from_numpy(clip.track_ids.astype(np.int64)),
            "valid": torch.from_numpy(np.ascontiguousarray(clip.valid)),
            "task": self.task,
        }


class ImageDataset(_ClipDataset):
    """Images (panoptic or instances) as 1-frame clips or 2-frame pseudo-videos.

    Args:
        reader: an image reader (COCO panoptic / instances, ADE20K; ``reader[i]`` -> an
            `ImageRecord`).
        num_frames: 1, or 2 for a pseudo-video.
        pair_images: for ``num_frames=2``: False = OMG-Seg's pseudo-video (the image twice, flip
            and scale shared, a crop per frame, objects keep their track); True = a second,
            different image joined after it (its objects are separate tracks).
    """

    task = "panoptic"

    def __init__(self, reader: Any, *,
                 output_size: int | tuple[int, int] = 128,
                 scale_range: tuple[float, float] = IMAGE_SCALE_RANGE, flip_prob: float = 0.5,
                 num_frames: int = 1, pair_images: bool = False, seed: int = 0) -> None:
        super().__init__(output_size=output_size, scale_range=scale_range, flip_prob=flip_prob,
                         seed=seed)
        if num_frames not in (1, 2):
            raise DataError(f"num_frames: expected 1 or 2, got {num_frames}")
        if pair_images and len(reader) < 2:
            raise DataError(f"pair_images: needs a reader with >= 2 images, got {len(reader)}")
        self.reader = reader
        self.num_frames = num_frames
        self.pair_images = pair_images

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._to_dict(self.clip(index))

    def clip(self, index: int) -> ClipSample:
        """The augmented `ClipSample` behind ``self[index]``."""
        rng = self._rng(index)
        clip = ClipSample.from_image(self.reader[index])
        if self.num_frames == 1 or not self.pair_images:
            if rng.random() < self.flip_prob:
                clip = horizontal_flip(clip)
            if self.num_frames == 2:  # OMG-Seg ImageCopy: the same objects in both frames
                clip = ClipSample(np.repeat(clip.frames, 2, axis=0), np.repeat(clip.masks, 2,
                                  axis=1), clip.labels, clip.track_ids,
                                  np.repeat(clip.valid, 2, axis=0), clip.source_id)
            return large_scale_jitter(clip, rng, self.output_size, self.scale_range,
                                      crop_per_frame=True)
        other = (index + 1 + int(rng.integers(len(self.reader) - 1))) % len(self.reader)
        frames = []
        for i in (index, other):
            one = ClipSample.from_image(self.reader[i])
            if rng.random() < self.flip_prob:
                one = horizontal_flip(one)
            frames.append(large_scale_jitter(one, rng, self.output_size, self.scale_range))
        return pseudo_video(*frames)


class VideoDataset(_ClipDataset):
    """Clips of ``num_frames`` frames (every ``frame_stride``-th) from a video reader
    (YouTube-VIS, VIPSeg, DAVIS: anything with ``num_frames(i)`` and ``clip(i, frames)``);
    videos shorter than a clip are left out.

    One scale, crop and flip for the whole clip; tracks absent from the clip are dropped.
    ``things_only`` drops stuff tracks (YouTube-VIS proper has none).
    """

    task = "video"

    def __init__(self, reader: Any, *, num_frames: int = 2, frame_stride: int = 1,
                 output_size: int | tuple[int, int] = 128,
                 scale_range: tuple[float, float] = VIDEO_SCALE_RANGE, flip_prob: float = 0.5,
                 things_only: bool = False, seed: int = 0) -> None:
        super().__init__(output_size=output_size, scale_range=scale_range, flip_prob=flip_prob,
                         seed=seed)
        if num_frames < 1 or frame_stride < 1:
            raise DataError(f"num_frames, frame_stride: expected >= 1, got {num_frames}, "
                            f"{frame_stride}")
        span = (num_frames - 1) * frame_stride + 1
        # videos shorter than a clip are left out (a real dataset has a few)
        self.videos = [i for i in range(len(reader)) if reader.num_frames(i) >= span]
        if len(reader) and not self.videos:
            raise DataError(f"num_frames, frame_stride: clips span {span} frames but every "
                            f"video is shorter")
        self.reader = reader
        self.num_frames = num_frames
        self.frame_stride = frame_stride
        self.things_only = things_only

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._to_dict(self.clip(index))

    def clip(self, index: int) -> ClipSample:
        rng = self._rng(index)
        video = self.videos[index]
        span = (self.num_frames - 1) * self.frame_stride + 1
        start = int(rng.integers(self.reader.num_frames(video) - span + 1))
        chosen = list(range(start, start + span, self.frame_stride))
        clip = ClipSample.from_video(self.reader.clip(video, chosen))
        if self.things_only:
            keep = clip.labels < self.reader.categories.num_things
            clip = ClipSample(clip.frames, clip.masks[keep], clip.labels[keep],
                              clip.track_ids[keep], clip.valid, clip.source_id)
        if rng.random() < self.flip_prob:
            clip = horizontal_flip(clip)
        return large_scale_jitter(clip, rng, self.output_size, self.scale_range)


class PromptDataset(_ClipDataset):
    """SAM-style samples (the paper's COCO-SAM): prompts made from ground-truth masks.

    Each sample draws ``num_prompts`` targets from the image's segments (things and stuff;
    repeated when there are fewer, as the official pipeline does) and prompts each with a click
    (probability ``point_ratio``; ``point_mode`` "random" as in official training or "center"
    as in its evaluation) or a box jittered by ``box_jitter``. Segments smaller than
    ``min_area`` pixels after augmentation are not prompted.
    """

    task = "prompt"

    def __init__(self, reader: Any, *,
                 num_prompts: int = 8, point_ratio: float = 0.5, point_mode: str = "random",
                 box_jitter: float = 0.1, min_area: int = 16,
                 output_size: int | tuple[int, int] = 128,
                 scale_range: tuple[float, float] = IMAGE_SCALE_RANGE, flip_prob: float = 0.5,
                 seed: int = 0) -> None:
        super().__init__(output_size=output_size, scale_range=scale_range, flip_prob=flip_prob,
                         seed=seed)
        if num_prompts < 1:
            raise DataError(f"num_prompts: expected >= 1, got {num_prompts}")
        if not 0 <= point_ratio <= 1:
            raise DataError(f"point_ratio: expected [0, 1], got {point_ratio}")
        if point_mode not in ("random", "center"):
            raise DataError(f"point_mode: expected 'random' or 'center', got {point_mode!r}")
        self.reader = reader
        self.num_prompts = num_prompts
        self.point_ratio = point_ratio
        self.point_mode = point_mode
        self.box_jitter = box_jitter
        self.min_area = min_area

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = self._rng(index)
        record = ClipSample.from_image(self.reader[index])
        # A crop may miss every segment: redraw a few times before giving an empty sample.
        for _ in range(10):
            clip = record
            if rng.random() < self.flip_prob:
                clip = horizontal_flip(clip)
            clip = large_scale_jitter(clip, rng, self.output_size, self.scale_range,
                                      min_area=self.min_area)
            if len(clip.labels):
                break
        sample = self._to_dict(clip)
        n = len(clip.labels)
        targets = np.zeros(0, np.int64)
        if n:
            order = rng.permutation(n)
            targets = np.tile(order, -(-self.num_prompts // n))[: self.num_prompts]
        boxes, points, is_point = [], [], []
        for k in targets:
            mask = clip.masks[k, 0]
            if rng.random() < self.point_ratio:
                point = sample_point(mask, self.point_mode, rng)
                boxes.append(point_pseudo_box(point))
                points.append(point)
                is_point.append(True)
            else:
                box = sample_box(mask, self.box_jitter, rng)
                boxes.append(box)
                points.append(np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2],
                                       np.float32))
                is_point.append(False)
        sample["prompt_boxes"] = torch.from_numpy(np.asarray(boxes, np.float32).reshape(-1, 4))
        sample["prompt_points"] = torch.from_numpy(np.asarray(points, np.float32).reshape(-1, 2))
        sample["prompt_is_point"] = torch.tensor(is_point, dtype=torch.bool)
        # Indexed in numpy: torch's advanced indexing of bool tensors is ~1000× slower on CPU.
        sample["prompt_targets"] = torch.from_numpy(np.ascontiguousarray(clip.masks[targets]))
        sample["prompt_labels"] = torch.from_numpy(clip.labels[targets].astype(np.int64))
        return sample


class JointSampler(Sampler[list[int]]):
    """Batches of indices into a `ConcatDataset`, each batch from one sub-dataset.

    The sub-dataset of each batch is drawn with probability ∝ ``ratios``; inside a sub-dataset
    indices follow a fresh permutation per pass, so every item is seen before any repeats.
    A batch never mixes tasks (their T and prompt fields differ).
    """

    def __init__(self, dataset: ConcatDataset, ratios: Sequence[float], *, batch_size: int,
                 num_batches: int, seed: int = 0) -> None:
        sizes = [len(d) for d in dataset.datasets]
        if len(ratios) != len(sizes):
            raise DataError(f"ratios: expected {len(sizes)} values (one per dataset), got "
                            f"{len(ratios)}")
        weights = np.asarray(ratios, np.float64)
        if (weights < 0).any() or weights.sum() <= 0:
            raise DataError(f"ratios: expected non-negative with a positive sum, got {ratios}")
        if any(size == 0 and w > 0 for size, w in zip(sizes, weights, strict=True)):
            raise DataError(f"ratios: a dataset with a positive ratio is empty (sizes {sizes})")
        if batch_size < 1 or num_batches < 1:
            raise DataError(f"batch_size, num_batches: expected >= 1, got {batch_size}, "
                            f"{num_batches}")
        self.sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.probs = weights / weights.sum()
        self.batch_size = batch_size
        self.num_batches = num_batches
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        queues: list[list[int]] = [[] for _ in self.sizes]
        for _ in range(self.num_batches):
            d = int(rng.choice(len(self.sizes), p=self.probs))
            batch = []
            while len(batch) < self.batch_size:
                if not queues[d]:
                    queues[d] = rng.permutation(self.sizes[d]).tolist()
                take = min(self.batch_size - len(batch), len(queues[d]))
                batch += queues[d][:take]
                queues[d] = queues[d][take:]
            yield [int(self.offsets[d]) + i for i in batch]


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A batch of one task: ``frames`` (B, T, 3, H, W) and ``valid`` (B, T, H, W) stacked; the
    per-sample fields whose N or P differ (masks, labels, track_ids, prompt_*) as lists."""
    tasks = {s["task"] for s in samples}
    if len(tasks) != 1:
        raise DataError(f"samples: expected one task per batch, got {sorted(tasks)}")
    batch: dict[str, Any] = {"task": tasks.pop()}
    for key in samples[0]:
        if key == "task":
            continue
        values = [s[key] for s in samples]
        batch[key] = torch.stack(values) if key in ("frames", "valid") else values
    return batch
