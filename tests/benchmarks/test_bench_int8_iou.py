"""bench_int8's kept-segment IoU: per reference segment, the best-overlapping segment of the other
result, of the same class or (masks alone) of any class."""

from __future__ import annotations

import types

import numpy as np

from benchmarks.bench_int8 import segment_iou


def _result(masks, labels):
    return types.SimpleNamespace(masks=np.array(masks, bool), labels=np.array(labels))


def test_a_flipped_class_scores_zero_by_class_and_its_overlap_by_mask():
    a = np.zeros((4, 4), bool)
    a[:2] = True  # 8 pixels
    b = a.copy()
    b[2, 0] = True  # 9 pixels, 8 shared
    reference = _result([a, ~a], [3, 5])
    other = _result([b, ~b], [4, 5])  # the first segment's class flipped 3 -> 4
    assert segment_iou(reference, other) == [(0.0, 8), (7 / 8, 8)]
    assert segment_iou(reference, other, same_class=False) == [(8 / 9, 8), (7 / 8, 8)]
