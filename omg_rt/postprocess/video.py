"""Video post-processing: the official ``Mask2formerVideoMinVIS`` inference around the decoder.

- :func:`video_split` cuts a video into tubes (clips) decoded jointly;
- :func:`align_clips` links each tube's queries to the previous tube's by Hungarian matching on
  ``1 - cosine`` of the final query embeddings (MinVIS; the target is the previous tube's
  *aligned* embeddings);
- :func:`vps_results` gives per-frame panoptic maps (instance id = query index + 1);
- :func:`vos_proposals` and :func:`vos_assign_ids` are the official DAVIS path's top-25 IoU
  proposals and their matching to the first frame's objects.

The streaming :class:`omg_rt.video.VideoSession` averages the aligned class / IoU logits over
clips and assembles each frame's VIS / VPS / VSS / VOS result from these pieces; the official
video goldens run through it (tests/omg_rt/test_official_runtime.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from omg_rt.errors import InvalidInputError
from omg_rt.postprocess._common import check_array, sigmoid
from omg_rt.postprocess.panoptic import (
    FILTER_LOW_SCORE,
    IOU_THR,
    OBJECT_MASK_THR,
    PanopticResult,
    _panoptic,
)
from omg_rt.postprocess.topk import topk_indices
from omg_rt.spec import PostprocessSpec

_OFFICIAL = PostprocessSpec()

# Official YouTube-VIS / DAVIS settings (eval_m2_convl_300q_ov_{y19,y21,davis}.py), kept in
# omg_rt.spec.PostprocessSpec.
CLIP_SIZE = _OFFICIAL.clip_size
CLIP_SIZE_SMALL = _OFFICIAL.clip_size_small
SMALL_CLIP_THR = _OFFICIAL.small_clip_threshold
NUM_PROPOSALS = _OFFICIAL.num_proposals  # davis test_cfg num_proposals


def video_split(
    num_frames: int,
    clip_size: int = CLIP_SIZE,
    clip_size_small: int = CLIP_SIZE_SMALL,
    small_clip_thr: int = SMALL_CLIP_THR,
    overlap: int = 0,
) -> list[tuple[int, int]]:
    """Frame ranges of the tubes, as the official ``video_split``.

    Tubes hold ``clip_size`` frames when the video has more than ``small_clip_thr`` frames, else
    ``clip_size_small``. When the count does not divide, the last tubes shrink by one frame each
    (7 frames in tubes of 3 -> 3 + 2 + 2); if more frames are missing than there are tubes, the
    last tube takes the whole shortfall (11 in tubes of 5 -> 5 + 5 + 1).

    Args:
        num_frames: frames in the video (>= 1).
        clip_size, clip_size_small, small_clip_thr: as the official config.
        overlap: frames shared by consecutive tubes (0 in every official config).

    Returns:
        ``[(start, end), ...]`` half-open frame ranges in order.
    """
    if num_frames < 1:
        raise InvalidInputError(f"num_frames: expected >= 1, got {num_frames}")
    tube = clip_size if num_frames > small_clip_thr else clip_size_small
    if not 0 <= overlap < tube:
        raise InvalidInputError(f"overlap: expected 0 <= overlap < {tube}, got {overlap}")
    total, step = num_frames - overlap, tube - overlap
    splits = -(-total // step)
    ends = [(i + 1) * step for i in range(splits)]
    shortfall = ends[-1] - total
    if shortfall < splits:
        for i in range(shortfall):
            ends[splits - 1 - i] -= shortfall - i
    else:
        ends[-1] -= shortfall
    ends = [end + overlap for end in ends]
    starts = [0] + [end - overlap for end in ends[:-1]]
    return list(zip(starts, ends, strict=True))


def align_clips(query_embeddings: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per tube, the permutation of its queries that aligns them to the previous tube.

    Cost ``1 - cos(current_i, target_j)`` in float32 with L2-normalised embeddings; SciPy's
    ``linear_sum_assignment`` on the (target x current) cost gives, for each target slot j,
    the current query to put there. The target is the previous tube's embeddings *after* its
    own alignment.

    Args:
        query_embeddings: per tube, (Q, C) float32 final query embeddings.

    Returns:
        per tube, (Q,) int64 ``perm`` with ``aligned = tube_output[perm]``; the first is identity.
    """
    if len(query_embeddings) == 0:
        return []
    perms: list[np.ndarray] = []
    target: np.ndarray | None = None
    for index, emb in enumerate(query_embeddings):
        emb = check_array(emb, f"query_embeddings[{index}]", 2, "float32", "float32 (Q, C)")
        if target is None:
            perm = np.arange(emb.shape[0], dtype=np.int64)
        else:
            if emb.shape != target.shape:
                raise InvalidInputError(
                    f"query_embeddings[{index}]: expected float32 {target.shape}, "
                    f"got {emb.dtype} {emb.shape}"
                )
            cost = np.float32(1.0) - _unit(emb) @ _unit(target).T  # (current, target)
            _, perm = linear_sum_assignment(cost.T)
            perm = perm.astype(np.int64)
        perms.append(perm)
        target = emb[perm]
    return perms


def _unit(emb: np.ndarray) -> np.ndarray:
    norm = np.sqrt((emb.astype(np.float32) ** 2).sum(-1, keepdims=True, dtype=np.float32))
    unit: np.ndarray = emb / norm
    return unit


def vps_results(
    cls_logits: np.ndarray,
    frame_mask_logits: Iterable[np.ndarray],
    num_things: int,
    object_mask_thr: float = OBJECT_MASK_THR,
    iou_thr: float = IOU_THR,
    filter_low_score: bool = FILTER_LOW_SCORE,
    query_ids: np.ndarray | None = None,
) -> list[PanopticResult]:
    """Video panoptic segmentation: per-frame panoptic maps with ids stable across frames.

    Same as the image panoptic post-processing except that a thing's id is
    ``label + (query_index + 1) * 1000``. (The official code restarts its instance counter in
    every frame, so its ids drift whenever a segment fails the area test in one frame only.)

    Args:
        cls_logits: (Q, K + 1) float32 tube-averaged class logits, void last.
        frame_mask_logits: per frame, (Q, H, W) float32 at the original size.
        num_things, object_mask_thr, iou_thr, filter_low_score: as
            :func:`omg_rt.postprocess.panoptic.panoptic_results`.
        query_ids: (Q,) int, the query index each row stands for (default ``arange(Q)``). Pass
            the indices of a subset of the queries (e.g. only those that can win a pixel) to get
            the ids the full query set would give.

    Returns:
        one :class:`~omg_rt.postprocess.panoptic.PanopticResult` per frame.
    """
    q = np.shape(cls_logits)[0]
    if query_ids is None:
        query_ids = np.arange(q, dtype=np.int64)
    query_ids = check_array(query_ids, "query_ids", 1, "int", f"int ({q},)")
    if query_ids.shape[0] != q:
        raise InvalidInputError(
            f"query_ids: expected int ({q},) (one per row of cls_logits), got {query_ids.shape}"
        )
    ids = query_ids.astype(np.int64) + 1
    return [
        _panoptic(cls_logits, masks, num_things, object_mask_thr, iou_thr, filter_low_score, ids)
        for masks in frame_mask_logits
    ]


def vos_proposals(iou_logits: np.ndarray, num_proposals: int = NUM_PROPOSALS) -> np.ndarray:
    """The official VOS proposals: top queries by ``sigmoid(iou_logit)``, lowest score first.

    ``torch.topk(sorted=True)`` on the float32 sigmoid, reversed; ties (e.g. saturated
    sigmoids) are ordered as PyTorch's CPU kernel orders them.

    Args:
        iou_logits: (Q,) float32 tube-averaged IoU logits.
        num_proposals: how many (25 in the DAVIS config), clamped to Q.

    Returns:
        (P,) int64 query indices in ascending score order (later ones are painted on top).
    """
    iou_logits = check_array(iou_logits, "iou_logits", 1, "float32", "float32 (Q,)")
    if num_proposals < 1:
        raise InvalidInputError(f"num_proposals: expected >= 1, got {num_proposals}")
    top = topk_indices(sigmoid(iou_logits), min(num_proposals, iou_logits.shape[0]), sorted=True)
    return top[::-1].copy()


def vos_assign_ids(
    proposal_masks: np.ndarray, first_frame_masks: np.ndarray, object_ids: Sequence[int]
) -> dict[int, int]:
    """Match first-frame proposals to the given objects by maximum mask IoU (Hungarian).

    IoU in float32 as the official ``intersection / union`` of int tensors; a pair whose union
    is empty counts as IoU 0 (the official code would hand SciPy a NaN and fail).

    Args:
        proposal_masks: (P, H, W) bool, frame 0's proposals in :func:`vos_proposals` order.
        first_frame_masks: (M, H, W) bool, the objects to follow.
        object_ids: (M,) their ids (> 0; 0 is background).

    Returns:
        ``{proposal slot: object id}``, in ascending slot order (the official painting order).
    """
    proposal_masks = check_array(proposal_masks, "proposal_masks", 3, "bool", "bool (P, H, W)")
    first_frame_masks = check_array(
        first_frame_masks, "first_frame_masks", 3, "bool", "bool (M, H, W)"
    )
    if first_frame_masks.shape[1:] != proposal_masks.shape[1:]:
        raise InvalidInputError(
            f"first_frame_masks: expected bool (M, {proposal_masks.shape[1]}, "
            f"{proposal_masks.shape[2]}), got bool {first_frame_masks.shape}"
        )
    ids = list(object_ids)
    if len(ids) != first_frame_masks.shape[0]:
        raise InvalidInputError(
            f"object_ids: expected {first_frame_masks.shape[0]} ids, got {len(ids)}"
        )
    a = proposal_masks.reshape(proposal_masks.shape[0], -1).astype(np.float32)
    b = first_frame_masks.reshape(first_frame_masks.shape[0], -1).astype(np.float32)
    intersection = a @ b.T  # exact: counts < 2**24
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, intersection / union, np.float32(0.0)).astype(np.float32)
    rows, cols = linear_sum_assignment(-iou)
    return {int(r): int(ids[c]) for r, c in zip(rows, cols, strict=True)}
