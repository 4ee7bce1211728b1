"""Video ID consistency: how steadily a prediction keeps one id on each ground-truth object.

Definition. For a ground-truth track g (a non-zero id of `gt_id_maps`), let F_g be the frames where
g has at least one pixel. In each t ∈ F_g, the matched prediction m_t is the non-zero predicted id
whose mask has the largest IoU with g's mask in that frame, provided that IoU ≥ `iou_threshold`
(0.5; ties go to the smaller id); otherwise g is unmatched in t. The track's majority id M_g is the
most frequent m_t over its matched frames (ties → the smaller id). Then

    consistency(g) = |{t ∈ F_g : g is matched in t and m_t = M_g}| / |F_g|

(0 for a track never matched), and ID consistency is the mean of consistency(g) over tracks.
A switch of id, a lost object and a frame where the mask is too poor to match all lower it; a
perfect tracker with good masks scores 1.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from omg_rt.errors import InvalidInputError
from omg_rt.metrics import _validation as check


def id_consistency(
    pred_id_maps: np.ndarray,
    gt_id_maps: np.ndarray,
    *,
    iou_threshold: float = 0.5,
) -> dict[str, Any]:
    """ID consistency of one video (see the module docstring).

    Args:
        pred_id_maps: (T, H, W) integer predicted object ids, 0 = none.
        gt_id_maps: (T, H, W) integer ground-truth track ids, 0 = none.
        iou_threshold: the IoU a prediction needs to match a track in a frame.

    Returns:
        `{"id_consistency": float (NaN without tracks), "per_track": {gt_id: float},
        "majority_id": {gt_id: int | None}}`. To average over several videos, average the
        per-track values of all of them.
    """
    pred = check.id_maps("pred_id_maps", pred_id_maps, 3)
    gt = check.id_maps("gt_id_maps", gt_id_maps, 3)
    check.same_shape("gt_id_maps", gt, "pred_id_maps", pred)
    if not 0 < iou_threshold <= 1:
        raise InvalidInputError(f"iou_threshold: expected in (0, 1], got {iou_threshold}")
    offset = np.uint64(2**32)
    present: dict[int, int] = {}  # track → frames where it occurs
    matches: dict[int, list[int]] = {}  # track → matched predicted id per matched frame
    for t in range(gt.shape[0]):
        keys, counts = np.unique(gt[t].ravel() * offset + pred[t].ravel(), return_counts=True)
        g_of, p_of = (keys // offset).tolist(), (keys % offset).tolist()
        gt_area: Counter[int] = Counter()
        pred_area: Counter[int] = Counter()
        for g, p, n in zip(g_of, p_of, counts.tolist(), strict=True):
            gt_area[g] += n
            pred_area[p] += n
        best: dict[int, tuple[float, int]] = {}
        for g, p, n in zip(g_of, p_of, counts.tolist(), strict=True):
            if g == 0 or p == 0:
                continue
            iou = n / (gt_area[g] + pred_area[p] - n)
            if iou >= iou_threshold and (g not in best or (-iou, p) < (-best[g][0], best[g][1])):
                best[g] = (iou, p)
        for g in gt_area:
            if g == 0:
                continue
            present[g] = present.get(g, 0) + 1
            if g in best:
                matches.setdefault(g, []).append(best[g][1])
    per_track: dict[int, float] = {}
    majority: dict[int, int | None] = {}
    for g in sorted(present):
        ids = Counter(matches.get(g, []))
        if not ids:
            per_track[g], majority[g] = 0.0, None
            continue
        top, votes = min(ids.items(), key=lambda item: (-item[1], item[0]))
        per_track[g], majority[g] = votes / present[g], top
    mean = float(np.mean(list(per_track.values()))) if per_track else float("nan")
    return {"id_consistency": mean, "per_track": per_track, "majority_id": majority}
