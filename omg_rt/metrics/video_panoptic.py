"""Video panoptic quality (VPQ), as VIPSeg's `eval_vpq_vspw.py` computes it.

VPQ (Kim et al., CVPR 2020; VIPSeg, Miao et al., CVPR 2022): for a window size k, every run of k
consecutive frames of a video (stride 1; a video shorter than k gives no window) is scored as
one image whose segments are the id tubes inside the window — tube IoU is the intersection summed
over the window's frames over the union summed likewise, void and crowd handled exactly as image PQ
(`panoptic.py`). TP / FP / FN / IoU sums accumulate over all windows of all videos, per category,
giving VPQ^k; the reported VPQ is the mean of VPQ^k over the window sizes.

Window sizes: VIPSeg's evaluator uses k ∈ {1, 2, 4, 6, 8} (our default). OMG-Seg's own VIPSeg
metric uses {1, 2, 4, 6}; pass `window_sizes=(1, 2, 4, 6)` to reproduce its numbers. The result
names the window sizes it averaged.

Ids are consistent over a video: one id is one tube, and one segment list per video gives each id
its category. Inside a window only the ids that occur there take part.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from omg_rt.errors import InvalidInputError
from omg_rt.metrics import _validation as check
from omg_rt.metrics.panoptic import PQStats, match_segments, merge_pair_counts, pixel_pair_counts

VIPSEG_WINDOW_SIZES = (1, 2, 4, 6, 8)
OMG_SEG_WINDOW_SIZES = (1, 2, 4, 6)


class VPQAccumulator:
    """Accumulates video panoptic quality over videos; `compute()` gives VPQ.

    Args:
        categories: `[{"id": int, "isthing": 0 | 1}, ...]`.
        window_sizes: the window lengths k (frames) to score and average; VIPSeg's by default.
    """

    def __init__(
        self,
        categories: Sequence[Mapping[str, Any]],
        window_sizes: Sequence[int] = VIPSEG_WINDOW_SIZES,
    ) -> None:
        self._categories = check.categories("categories", categories)
        sizes = [int(k) for k in window_sizes]
        if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
            raise InvalidInputError(f"window_sizes: expected distinct positive ints, "
                                    f"got {list(window_sizes)}")
        self.window_sizes = tuple(sizes)
        self._stats = {k: PQStats.zeros(list(self._categories)) for k in self.window_sizes}
        self._num_windows = dict.fromkeys(self.window_sizes, 0)

    def update(
        self,
        pred_id_maps: np.ndarray,
        pred_segments: Sequence[Mapping[str, Any]],
        gt_id_maps: np.ndarray,
        gt_segments: Sequence[Mapping[str, Any]],
    ) -> None:
        """Adds one video.

        Args:
            pred_id_maps: (T, H, W) integer predicted tube ids per frame, 0 = void; an id means
                the same object in every frame.
            pred_segments: `[{"id", "category_id"}, ...]`, one entry per predicted tube id.
            gt_id_maps: (T, H, W) integer ground-truth tube ids, 0 = void.
            gt_segments: `[{"id", "category_id", "iscrowd"?}, ...]`, one entry per gt tube id.

        Raises:
            InvalidInputError: wrong shapes or dtypes, an unlisted id, or an unknown category.
        """
        pred = check.id_maps("pred_id_maps", pred_id_maps, 3)
        gt = check.id_maps("gt_id_maps", gt_id_maps, 3)
        check.same_shape("gt_id_maps", gt, "pred_id_maps", pred)
        pred_segs = check.segments("pred_segments", pred_segments, self._categories)
        gt_segs = check.segments("gt_segments", gt_segments, self._categories)
        # Pixel-pair counts add over frames, so each window sums its frames' tables.
        frames = [pixel_pair_counts(gt[t], pred[t]) for t in range(gt.shape[0])]
        for k in self.window_sizes:
            for start in range(len(frames) - k + 1):
                keys, counts = merge_pair_counts(frames[start:start + k])
                match_segments(keys, counts, gt_segs, pred_segs, self._stats[k])
                self._num_windows[k] += 1

    def compute(self) -> dict[str, Any]:
        """VPQ so far.

        Returns:
            `{"vpq", "vpq_things", "vpq_stuff": float, "window_sizes": [k, ...],
            "per_window": {k: PQAccumulator.compute()-style dict}, "num_windows": {k: int}}`,
            scores in [0, 1]. `vpq*` average VPQ^k over the window sizes that had at least one
            window (listed in "window_sizes"); NaN when none had.
        """
        per_window = {k: self._stats[k].summarize(self._categories) for k in self.window_sizes}
        used = [k for k in self.window_sizes if self._num_windows[k] > 0]

        def mean(group: str) -> float:
            values = [per_window[k][group]["pq"] for k in used]
            return float(np.mean(values)) if values else float("nan")

        return {
            "vpq": mean("all"),
            "vpq_things": mean("things"),
            "vpq_stuff": mean("stuff"),
            "window_sizes": used,
            "per_window": per_window,
            "num_windows": dict(self._num_windows),
        }


def video_panoptic_quality(
    videos: Iterable[tuple[np.ndarray, Sequence[Mapping[str, Any]], np.ndarray,
                           Sequence[Mapping[str, Any]]]],
    categories: Sequence[Mapping[str, Any]],
    window_sizes: Sequence[int] = VIPSEG_WINDOW_SIZES,
) -> dict[str, Any]:
    """VPQ over a dataset in one call.

    Args:
        videos: `(pred_id_maps, pred_segments, gt_id_maps, gt_segments)` per video, as
            `VPQAccumulator.update` takes them.
        categories: `[{"id", "isthing"}, ...]`.
        window_sizes: window lengths k; VIPSeg's (1, 2, 4, 6, 8) by default.

    Returns:
        `VPQAccumulator.compute()`'s dict.
    """
    acc = VPQAccumulator(categories, window_sizes)
    for pred_id_maps, pred_segments, gt_id_maps, gt_segments in videos:
        acc.update(pred_id_maps, pred_segments, gt_id_maps, gt_segments)
    return acc.compute()
