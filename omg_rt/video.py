"""Video decoding: a streaming :class:`VideoSession`, its clips, and identities across clips.

Video is clip-wise (MinVIS, as the official ``Mask2formerVideoMinVIS``): frames are encoded as
they arrive and kept only until their clip is decoded; each clip's queries are aligned to the
previous clip's by Hungarian matching on query embeddings, so an aligned query slot *is* an
identity; class (and IoU) logits are averaged over the clips seen so far. Per frame, the task
decides what the aligned slots become: instances (VIS), panoptic segments (VPS), a class map
(VSS), or, for VOS, the first clip's proposals matched to the first-frame mask (the official
DAVIS path), whose query slots are then followed. Memory per session is bounded by one clip of
features, whatever the stream's length.

With ``whole_video`` the session is the official offline evaluation: every clip is decoded as it
completes, but the frames' results come from :meth:`VideoSession.finish`, with the class and IoU
logits averaged over *all* clips (the VOS proposals too) — what the official YouTube-VIS and DAVIS
numbers are computed with. It keeps each frame's stride-4 mask logits until then (about
Q x H/4 x W/4 floats per frame: 57 MB for 300 queries at 736 x 992). ``clip_sizes`` cuts the
video into tubes as the official ``video_split`` does when the frame count is known.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from omg_rt.arrays import to_host
from omg_rt.assembly import (
    full_resolution,
    instance_result,
    panoptic_result,
    semantic_result,
    track_id_offset,
)
from omg_rt.errors import InvalidInputError
from omg_rt.manifest import Vocabulary
from omg_rt.postprocess._common import sigmoid
from omg_rt.postprocess.instance import masks_of_ids
from omg_rt.postprocess.panoptic import INSTANCE_OFFSET
from omg_rt.postprocess.video import align_clips, vos_assign_ids, vos_proposals
from omg_rt.results import SegmentationResult
from omg_rt.sessions import ImageSession

if TYPE_CHECKING:
    from omg_rt.segmenter import Segmenter



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

    Open one with :meth:`omg_rt.segmenter.Segmenter.open_video`.

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
        clip_sizes: frames per clip in order (the official tube split of a known frame count);
            empty = ``clip_size`` for every clip.
        whole_video: results only from :meth:`finish`, logits averaged over all clips.
        decoded: whole_video: every decoded clip's (frames, aligned (Q, T, h4, w4) mask logits).
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
    frame_hw: tuple[int, int] | None = None  # (H, W) of the first frame; all must match
    clip_sizes: tuple[int, ...] = ()
    whole_video: bool = False
    decoded: list[tuple[list[tuple[int, ImageSession]], np.ndarray]] = field(default_factory=list)
    vocabulary: Vocabulary | None = None  # the vocabulary of the clips decoded so far
    closed: bool = False

    def step(self, frame: np.ndarray) -> list[SegmentationResult]:
        """Add one frame; returns the results of every frame whose clip is now complete
        (``clip_size`` frames at a time, in frame order; empty in between)."""
        if self.closed:
            raise InvalidInputError("session: this video session is finished; open a new one")
        image = self.runtime.image_encoder.frame_session(frame, f"frame {self.frames_seen}")
        if self.frame_hw is None:
            self.frame_hw = image.original_hw
        elif image.original_hw != self.frame_hw:  # a clip is decoded as one tensor
            raise InvalidInputError(
                f"frame {self.frames_seen}: expected the stream's frame size {self.frame_hw}, "
                f"got {image.original_hw}"
            )
        if self.task == "vos" and self.frames_seen == 0 and self.first_mask is not None:
            if self.first_mask.shape[1:] != image.original_hw:
                raise InvalidInputError(
                    f"first_mask: expected the first frame's size {image.original_hw}, "
                    f"got {self.first_mask.shape[1:]}"
                )
        if self.clip_sizes and self.clips_done >= len(self.clip_sizes):
            raise InvalidInputError(
                f"frame {self.frames_seen}: this session was opened for "
                f"{sum(self.clip_sizes)} frames"
            )
        self.pending.append((self.frames_seen, image))
        self.frames_seen += 1
        if len(self.pending) < self._current_clip_size():
            return []
        return self._decode_pending()

    def finish(self) -> list[SegmentationResult]:
        """Decode the last, possibly shorter clip and close the session (``whole_video``:
        every frame's result, from the logits averaged over all clips)."""
        results = self._decode_pending() if self.pending else []
        self.closed = True
        if self.whole_video and self.class_logit_sum is not None:
            results = self._whole_video_results()
        # a finished session holds nothing but its tracks
        self.target_embeddings = self.class_logit_sum = self.iou_logit_sum = None
        self.first_mask = None
        return results

    def _whole_video_results(self) -> list[SegmentationResult]:
        """Every decoded frame's result from the class and IoU logits averaged over all clips."""
        assert self.class_logit_sum is not None and self.iou_logit_sum is not None
        assert self.vocabulary is not None  # set by every decoded clip
        results: list[SegmentationResult] = []
        n_clips = np.float32(self.clips_done)
        cls = (self.class_logit_sum / n_clips).astype(np.float32)
        iou = (self.iou_logit_sum / n_clips).astype(np.float32)
        decoded, self.decoded = self.decoded, []
        for frames, mask_logits in decoded:
            for t, (index, session) in enumerate(frames):
                result = self._frame_result(
                    session, index, cls, iou, mask_logits[:, t], self.vocabulary
                )
                self._update_tracks(result)
                results.append(result)
        return results

    def _current_clip_size(self) -> int:
        if self.clip_sizes:
            return self.clip_sizes[min(self.clips_done, len(self.clip_sizes) - 1)]
        return self.clip_size

    def run(self, frames: Iterable[np.ndarray]) -> list[SegmentationResult]:
        """Every frame's result, in frame order: ``step`` each frame, then ``finish``."""
        results = [result for frame in frames for result in self.step(frame)]
        return results + self.finish()

    @property
    def memory_bytes(self) -> int:
        """Bytes the session holds (pending frame features + per-query state)."""
        total = sum(s.encoded.nbytes for _, s in self.pending)
        total += sum(m.nbytes for _, m in self.decoded)
        for array in (self.target_embeddings, self.class_logit_sum, self.iou_logit_sum):
            if array is not None:
                total += array.nbytes
        if self.first_mask is not None:
            total += self.first_mask.nbytes
        return total

    # ------------------------------------------------------------------ one clip

    def _decode_pending(self) -> list[SegmentationResult]:
        frames, self.pending = self.pending, []
        results = self._decode_clip(frames)
        self.clips_done += 1
        return results

    def _decode_clip(self, frames: list[tuple[int, ImageSession]]) -> list[SegmentationResult]:
        """Decode one clip, align it to the previous one, return its frames' results."""
        predictions = self.runtime.predict_clip([s for _, s in frames])
        self.vocabulary = predictions.vocabulary
        perm = self._align(predictions.query_embeddings)
        cls, iou = self._average(predictions.class_scores[perm], predictions.iou_logits[perm])
        mask_logits = predictions.mask_logits[perm]  # (Q, T, h4, w4), aligned slots
        if self.whole_video:  # results at finish(), from the logits of every clip (kept on the
            # host: a whole video's logits do not belong in device memory)
            self.decoded.append((frames, to_host(mask_logits[:, : len(frames)])))
            return []
        results = []
        for t, (index, session) in enumerate(frames):
            result = self._frame_result(
                session, index, cls, iou, mask_logits[:, t], predictions.vocabulary
            )
            self._update_tracks(result)
            results.append(result)
        return results

    def _align(self, embeddings: np.ndarray) -> np.ndarray:
        """(Q,) permutation putting this clip's queries into the previous clip's slots."""
        if self.target_embeddings is None:
            perm = np.arange(embeddings.shape[0])
        else:
            perm = align_clips([self.target_embeddings, embeddings])[1]
        self.target_embeddings = embeddings[perm]
        return perm

    def _average(self, cls: np.ndarray, iou: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Aligned (Q, K + 1) class and (Q,) IoU logits -> their means over the clips so far."""
        if self.class_logit_sum is None or self.iou_logit_sum is None:
            self.class_logit_sum, self.iou_logit_sum = cls.copy(), iou.copy()
        else:
            self.class_logit_sum = self.class_logit_sum + cls
            self.iou_logit_sum = self.iou_logit_sum + iou
        n_clips = np.float32(self.clips_done + 1)
        return (
            (self.class_logit_sum / n_clips).astype(np.float32),
            (self.iou_logit_sum / n_clips).astype(np.float32),
        )

    def _frame_result(
        self,
        session: ImageSession,
        index: int,
        cls: np.ndarray,
        iou: np.ndarray,
        mask_logits: np.ndarray,
        vocabulary: Vocabulary,
    ) -> SegmentationResult:
        """One frame's result from the clip-averaged logits and its (Q, h4, w4) mask logits."""
        post = self.runtime.spec.postprocess
        if self.task == "vis":
            return instance_result(
                session, cls, mask_logits, vocabulary, post, track_ids=True, task="vis",
                frame_index=index, device=self.runtime.post_device,
            )
        if self.task == "vps":
            return panoptic_result(
                session, cls, mask_logits, vocabulary, post, video_ids=True, task="vps",
                frame_index=index, device=self.runtime.post_device,
            )
        if self.task == "vss":
            return semantic_result(
                session, cls, mask_logits, vocabulary, task="vss", frame_index=index,
                device=self.runtime.post_device,
            )
        return self._vos_result(session, iou, mask_logits, index)

    def _vos_result(
        self, session: ImageSession, iou: np.ndarray, mask_logits: np.ndarray, index: int
    ) -> SegmentationResult:
        """The first-frame objects painted by their query slots (matched on the first frame)."""
        assert self.first_mask is not None  # open_video checked it
        if self.vos_slots is None:
            proposals = vos_proposals(iou, self.runtime.spec.postprocess.num_proposals)
            proposal_masks = full_resolution(session, mask_logits[proposals]) > 0
            assignment = vos_assign_ids(proposal_masks, self.first_mask, self.object_ids)
            self.vos_slots = [(int(proposals[slot]), oid) for slot, oid in assignment.items()]
        slots = [s for s, _ in self.vos_slots]
        object_ids = [o for _, o in self.vos_slots]
        full = full_resolution(session, mask_logits[slots])
        id_map = np.zeros(session.original_hw, np.int32)
        for j, oid in enumerate(object_ids):  # later slots painted on top (official order)
            id_map[full[j] > 0] = oid
        order = np.argsort(object_ids)
        ids = np.asarray(object_ids, np.int64)[order]
        masks, boxes = masks_of_ids(id_map, ids)
        return SegmentationResult(
            task="vos",
            masks=masks,
            scores=sigmoid(iou[np.asarray(slots, np.int64)[order]]).astype(np.float32),
            labels=np.full(len(ids), -1, np.int64),
            ids=ids,
            boxes=boxes,
            id_map=id_map,
            is_thing=np.ones(len(ids), bool),
            frame_index=index,
        )

    # ------------------------------------------------------------------ identities

    def _update_tracks(self, result: SegmentationResult) -> None:
        index = result.frame_index if result.frame_index is not None else self.frames_seen
        for track_id, label, score in zip(result.ids, result.labels, result.scores, strict=True):
            tid = int(track_id)
            state = self.tracks.get(tid)
            if state is None:
                self.tracks[tid] = TrackState(
                    track_id=tid,
                    query_slot=self._query_slot(tid),
                    label=int(label),
                    score=float(score),
                    first_frame=index,
                    last_frame=index,
                )
            else:
                state.label, state.score, state.last_frame = int(label), float(score), index

    def _query_slot(self, track_id: int) -> int:
        if self.task == "vos" and self.vos_slots:
            return next((s for s, o in self.vos_slots if o == track_id), -1)
        if self.task in ("vis", "vps") and self.class_logit_sum is not None:
            if self.task == "vis":
                return track_id // track_id_offset(self.class_logit_sum.shape[1] - 1) - 1
            return track_id // INSTANCE_OFFSET - 1
        return -1
