"""Augmentations on clips (an image is a 1-frame clip): large-scale jitter, flip, pseudo-videos.

Large-scale jitter (LSJ) as Mask2Former / OMG-Seg train with it: resize the image to fit a
``scale × output`` box (keeping the aspect ratio, scale drawn from ``scale_range``), take a random
``output``-sized crop, pad what is left with zeros (``valid`` marks real pixels). Images are
resized with INTER_LINEAR; masks with INTER_NEAREST_EXACT, OpenCV's nearest neighbour that maps
pixel centres like INTER_LINEAR does (plain INTER_NEAREST floors the coordinate and can shift a
mask by half a source pixel against its image). Tracks that vanish from every frame are dropped.

`pseudo_video` follows OMG-Seg's image-as-video pipeline (``ImageCopy(num_frames=2)``, flip and
resize shared by both frames, an independent random crop per frame, each object keeping one
instance id in both frames): objects with the same (source, track id) in the two inputs are
one track; objects of different sources are separate tracks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from training.data.formats import DataError
from training.data.readers import ImageRecord, VideoRecord

__all__ = [
    "ClipSample",
    "crop_and_pad",
    "horizontal_flip",
    "large_scale_jitter",
    "pseudo_video",
    "resize_clip",
]


@dataclass
class ClipSample:
    """A clip of T frames with its tracks (T = 1 for an image).

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        masks: (N, T, H, W) bool.
        labels: (N,) int64 contiguous class indices.
        track_ids: (N,) int64, unique within the clip.
        valid: (T, H, W) bool, False on padding.
        source_id: the image / video the clip came from.
    """

    frames: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    track_ids: np.ndarray
    valid: np.ndarray
    source_id: int = 0

    @classmethod
    def from_image(cls, record: ImageRecord, keep_crowd: bool = False) -> ClipSample:
        keep = np.ones(len(record.labels), bool) if keep_crowd else ~record.iscrowd
        h, w = record.image.shape[:2]
        return cls(record.image[None], record.masks[keep][:, None], record.labels[keep],
                   record.segment_ids[keep], np.ones((1, h, w), bool), record.image_id)

    @classmethod
    def from_video(cls, record: VideoRecord, keep_crowd: bool = False) -> ClipSample:
        keep = np.ones(len(record.labels), bool) if keep_crowd else ~record.iscrowd
        t, h, w = record.frames.shape[:3]
        return cls(record.frames, record.masks[keep], record.labels[keep],
                   record.track_ids[keep], np.ones((t, h, w), bool), record.video_id)

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    def drop_empty(self, min_area: int = 1) -> ClipSample:
        """Without the tracks whose total area over the clip is below ``min_area`` pixels."""
        keep = self.masks.reshape(len(self.masks), -1).sum(axis=1) >= min_area
        return replace(self, masks=self.masks[keep], labels=self.labels[keep],
                       track_ids=self.track_ids[keep])


def resize_clip(clip: ClipSample, height: int, width: int) -> ClipSample:
    """Every frame to (height, width): frames INTER_LINEAR, masks/valid INTER_NEAREST_EXACT."""
    if height < 1 or width < 1:
        raise DataError(f"height, width: expected >= 1, got {height}, {width}")
    frames = np.stack([cv2.resize(f, (width, height), interpolation=cv2.INTER_LINEAR)
                       for f in clip.frames])
    n, t = clip.masks.shape[:2]
    masks = _resize_nearest(clip.masks.reshape(n * t, *clip.masks.shape[2:]), height, width)
    valid = _resize_nearest(clip.valid, height, width)
    return replace(clip, frames=frames, masks=masks.reshape(n, t, height, width), valid=valid)


def crop_and_pad(clip: ClipSample, top: int, left: int, height: int, width: int,
                 frames: list[int] | None = None) -> ClipSample:
    """The window ``[top, top + height) × [left, left + width)`` of the chosen frames (all by
    default), zero-padded (``valid`` False) where the window leaves the image."""
    frame_ids = list(range(clip.num_frames)) if frames is None else frames
    _, h, w = clip.valid.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, h), min(left + width, w)
    oy, ox = y0 - top, x0 - left
    out_frames = np.zeros((len(frame_ids), height, width, 3), np.uint8)
    out_masks = np.zeros((len(clip.masks), len(frame_ids), height, width), bool)
    out_valid = np.zeros((len(frame_ids), height, width), bool)
    if y1 > y0 and x1 > x0:
        dst = (slice(oy, oy + y1 - y0), slice(ox, ox + x1 - x0))
        src = (slice(y0, y1), slice(x0, x1))
        out_frames[(slice(None),) + dst] = clip.frames[frame_ids][(slice(None),) + src]
        out_masks[(slice(None), slice(None)) + dst] = clip.masks[:, frame_ids][
            (slice(None), slice(None)) + src]
        out_valid[(slice(None),) + dst] = clip.valid[frame_ids][(slice(None),) + src]
    return replace(clip, frames=out_frames, masks=out_masks, valid=out_valid)


def large_scale_jitter(clip: ClipSample, rng: np.random.Generator,
                       output_size: int | tuple[int, int],
                       scale_range: tuple[float, float] = (0.1, 2.0),
                       crop_per_frame: bool = False, min_area: int = 1) -> ClipSample:
    """Random resize (one scale for the whole clip) + random crop to ``output_size`` + pad.

    Args:
        clip: T frames.
        output_size: ``S`` or ``(H, W)`` of the result.
        scale_range: the resized image fits ``scale × output_size``; scale ~ U(lo, hi).
        crop_per_frame: an independent crop window per frame (OMG-Seg's pseudo-videos);
            otherwise one window for the clip.
        min_area: tracks with fewer pixels over the whole result are dropped.
    Returns:
        A clip of T frames of ``output_size``.
    """
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
    lo, hi = scale_range
    if not 0 < lo <= hi:
        raise DataError(f"scale_range: expected 0 < lo <= hi, got {scale_range}")
    if out_h < 1 or out_w < 1:
        raise DataError(f"output_size: expected positive sizes, got {output_size}")
    _, h, w = clip.valid.shape
    scale = rng.uniform(lo, hi)
    factor = min(scale * out_h / h, scale * out_w / w)
    new_h, new_w = max(1, round(h * factor)), max(1, round(w * factor))
    resized = resize_clip(clip, new_h, new_w)
    windows = clip.num_frames if crop_per_frame else 1
    offsets = [(int(rng.integers(max(new_h - out_h, 0) + 1)),
                int(rng.integers(max(new_w - out_w, 0) + 1))) for _ in range(windows)]
    if not crop_per_frame:
        out = crop_and_pad(resized, *offsets[0], out_h, out_w)
    else:
        parts = [crop_and_pad(resized, top, left, out_h, out_w, frames=[f])
                 for f, (top, left) in enumerate(offsets)]
        out = replace(resized, frames=np.concatenate([p.frames for p in parts]),
                      masks=np.concatenate([p.masks for p in parts], axis=1),
                      valid=np.concatenate([p.valid for p in parts]))
    return out.drop_empty(min_area)


def horizontal_flip(clip: ClipSample) -> ClipSample:
    """Mirror every frame left-right."""
    return replace(clip, frames=clip.frames[:, :, ::-1].copy(),
                   masks=clip.masks[..., ::-1].copy(), valid=clip.valid[..., ::-1].copy())


def pseudo_video(sample_a: ClipSample, sample_b: ClipSample) -> ClipSample:
    """Join two 1-frame samples into a 2-frame clip.

    Objects with equal (source_id, track id) are one track (OMG-Seg: one image, two crops);
    all others are separate tracks, empty in the frame they do not come from. Track ids of
    the result are 1..N (first-frame objects first).
    """
    for name, s in (("sample_a", sample_a), ("sample_b", sample_b)):
        if s.num_frames != 1:
            raise DataError(f"{name}: expected a 1-frame sample, got {s.num_frames} frames")
    if sample_a.valid.shape != sample_b.valid.shape:
        raise DataError(f"sample_a, sample_b: expected the same frame size, got "
                        f"{sample_a.valid.shape[1:]} and {sample_b.valid.shape[1:]}")
    keys_a = [(sample_a.source_id, int(i)) for i in sample_a.track_ids]
    keys_b = [(sample_b.source_id, int(i)) for i in sample_b.track_ids]
    keys = keys_a + [k for k in keys_b if k not in set(keys_a)]
    _, h, w = sample_a.valid.shape
    masks = np.zeros((len(keys), 2, h, w), bool)
    labels = np.zeros(len(keys), np.int64)
    slot = {k: i for i, k in enumerate(keys)}
    for f, (sample, sample_keys) in enumerate(((sample_a, keys_a), (sample_b, keys_b))):
        for j, key in enumerate(sample_keys):
            masks[slot[key], f] = sample.masks[j, 0]
            labels[slot[key]] = sample.labels[j]
    source = sample_a.source_id if sample_a.source_id == sample_b.source_id else -1
    return ClipSample(np.concatenate([sample_a.frames, sample_b.frames]), masks, labels,
                      np.arange(1, len(keys) + 1, dtype=np.int64),
                      np.concatenate([sample_a.valid, sample_b.valid]), source)


def _resize_nearest(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """(K, H, W) bool → (K, height, width) bool, in chunks (cv2 takes at most 512 channels)."""
    out = np.zeros((len(masks), height, width), bool)
    for start in range(0, len(masks), 256):
        chunk = np.ascontiguousarray(masks[start:start + 256].transpose(1, 2, 0), np.uint8)
        resized = cv2.resize(chunk, (width, height), interpolation=cv2.INTER_NEAREST_EXACT)
        out[start:start + 256] = resized.reshape(height, width, -1).transpose(2, 0, 1) > 0
    return out
