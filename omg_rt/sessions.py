"""Typed session state: an image whose encoder work is done (:class:`ImageSession`), and a video
stream (:class:`VideoSession`) with its per-object :class:`TrackState`.

Video is clip-wise (MinVIS, as the official ``Mask2formerVideoMinVIS``): frames are encoded as
they arrive and kept only until their clip is decoded; each clip's queries are aligned to the
previous clip's by Hungarian matching on query embeddings, so an aligned query slot *is* an
identity; class (and IoU) logits are averaged over the clips seen so far. VOS matches the first
clip's proposals to the first-frame mask (the official DAVIS path) and then follows the matched
query slots. Memory per session is bounded by one clip of features, whatever the stream's length.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from omg_rt.cache import EncodedImage
from omg_rt.errors import InvalidInputError
from omg_rt.results import SegmentationResult

if TYPE_CHECKING:
    from omg_rt.segmenter import Segmenter

VIDEO_TASKS = ("vis", "vps", "vss", "vos")


@dataclass(frozen=True)
class ImageSession:
    """An image after the encoder and pixel decoder: prompts and task queries only decode.

    Attributes:
        key: encoder-cache key (bundle identity, precision, content hash).
        original_hw: (H, W) of the user's image.
        resized_hw: (Hr, Wr) after the keep-ratio resize.
        padded_hw: (Hp, Wp) the encoder's fixed input size.
        encoded: the cached decoder inputs.
    """

    key: tuple
    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    padded_hw: tuple[int, int]
    encoded: EncodedImage


@dataclass
class TrackState:
    """One identity of a video session.

    Attributes:
        track_id: the persistent id users see (aligned query slot + 1; the object id in VOS).
        query_slot: its aligned query slot.
        label: last class index (-1 for VOS objects).
        score: last score.
        first_frame: frame where it was first reported; last_frame: last frame it was reported.
    """

    track_id: int
    query_slot: int
    label: int
    score: float
    first_frame: int
    last_frame: int


@dataclass
class VideoSession:
    """A streaming video: ``step(frame)`` returns the results of the frames whose clip completed.

    Attributes:
        task: ``vis``, ``vps``, ``vss`` or ``vos``.
        clip_size: frames decoded together (tube length).
        first_mask: VOS only: (M, H, W) bool objects of frame 0 and their ids ``object_ids``.
        frames_seen: frames given to ``step``; clips_done: clips decoded.
        pending: the current clip's frames (index, ImageSession), released after decoding.
        target_embeddings: (Q, C) the previous clip's aligned query embeddings.
        class_logit_sum, iou_logit_sum: sums of aligned logits over the clips done.
        tracks: track id -> :class:`TrackState`.
        vos_slots: VOS: (query slot, object id) in painting order.
    """

    runtime: Segmenter
    task: str
    clip_size: int
    first_mask: np.ndarray | None = None
    object_ids: tuple[int, ...] = ()
    frames_seen: int = 0
    clips_done: int = 0
    pending: list[tuple[int, ImageSession]] = field(default_factory=list)
    target_embeddings: np.ndarray | None = None
    class_logit_sum: np.ndarray | None = None
    iou_logit_sum: np.ndarray | None = None
    tracks: dict[int, TrackState] = field(default_factory=dict)
    vos_slots: list[tuple[int, int]] | None = None
    closed: bool = False

    def step(self, frame: np.ndarray) -> list[SegmentationResult]:
        """Add one frame; returns the results of every frame whose clip is now complete
        (``clip_size`` frames at a time, in frame order; empty in between)."""
        if self.closed:
            raise InvalidInputError("session: this video session is finished; open a new one")
        image = self.runtime._frame_session(frame, f"frame {self.frames_seen}")
        if self.task == "vos" and self.frames_seen == 0 and self.first_mask is not None:
            if self.first_mask.shape[1:] != image.original_hw:
                raise InvalidInputError(
                    f"first_mask: expected the first frame's size {image.original_hw}, "
                    f"got {self.first_mask.shape[1:]}"
                )
        self.pending.append((self.frames_seen, image))
        self.frames_seen += 1
        if len(self.pending) < self.clip_size:
            return []
        return self._decode_pending()

    def finish(self) -> list[SegmentationResult]:
        """Decode the last, possibly shorter clip and close the session."""
        results = self._decode_pending() if self.pending else []
        self.closed = True
        return results

    def _decode_pending(self) -> list[SegmentationResult]:
        frames, self.pending = self.pending, []
        results = self.runtime._decode_video_clip(self, frames)
        self.clips_done += 1
        return results

    @property
    def memory_bytes(self) -> int:
        """Bytes the session holds (pending frame features + per-query state)."""
        total = sum(s.encoded.nbytes for _, s in self.pending)
        for array in (self.target_embeddings, self.class_logit_sum, self.iou_logit_sum):
            if array is not None:
                total += array.nbytes
        if self.first_mask is not None:
            total += self.first_mask.nbytes
        return total
