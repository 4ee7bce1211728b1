"""Panoptic merging follows the official panoptic_postprocess, checked on hand-built scenes."""

from __future__ import annotations

import numpy as np
import pytest

from omg_rt.errors import InvalidInputError
from omg_rt.postprocess.masks import upsample_masks
from omg_rt.postprocess.panoptic import INSTANCE_OFFSET, panoptic_results

BIG = 20.0  # logit that saturates the sigmoid


def _cls(rows: list[tuple[int, float]], num_classes: int) -> np.ndarray:
    """Class logits where each query's label gets ``margin`` over the other columns."""
    logits = np.zeros((len(rows), num_classes + 1), np.float32)
    for q, (label, margin) in enumerate(rows):
        logits[q, label] = margin
    return logits


def _masks(*regions: np.ndarray) -> np.ndarray:
    return np.stack([np.where(r, BIG, -BIG) for r in regions]).astype(np.float32)


def test_things_get_numbered_ids_stuff_merges_and_void_fills_the_rest():
    # K = 3: classes 0, 1 things, class 2 stuff; void = 3.
    h, w = 6, 8
    left = np.zeros((h, w), bool)
    left[:, :3] = True
    top_right = np.zeros((h, w), bool)
    top_right[:3, 5:] = True
    bottom_right = np.zeros((h, w), bool)
    bottom_right[3:, 5:] = True
    cls = _cls([(0, 5.0), (2, 5.0), (2, 4.0), (3, 9.0)], num_classes=3)  # query 3 is void
    masks = _masks(left, top_right, bottom_right, np.ones((h, w), bool))
    result = panoptic_results(cls, masks, num_things=2)
    assert result.id_map.dtype == np.int32 and result.id_map.shape == (h, w)
    assert np.all(result.id_map[left] == 0 + 1 * INSTANCE_OFFSET)
    assert np.all(result.id_map[top_right | bottom_right] == 2)  # two stuff queries, one segment
    assert np.all(result.id_map[:, 3:5] == 3)  # nobody is confident there: void
    segments = {s["id"]: s for s in result.segments}
    assert set(segments) == {1000, 2}
    assert segments[1000]["category_id"] == 0 and segments[1000]["isthing"]
    assert segments[2]["area"] == 18 and not segments[2]["isthing"]
    scores = np.exp(5.0) / (np.exp(5.0) + 3), np.exp(4.0) / (np.exp(4.0) + 3)
    assert segments[2]["score"] == pytest.approx(max(scores), rel=1e-6)


def test_a_segment_that_keeps_less_than_80_percent_of_its_area_is_dropped():
    h, w = 1, 10
    strong = np.zeros((h, w), bool)
    strong[0, 7:] = True  # 3 pixels, taken from the weak query
    weak = np.ones((h, w), bool)  # 10 pixels, would keep 7 = 70%
    cls = _cls([(0, 2.0), (1, 6.0)], num_classes=2)
    result = panoptic_results(cls, _masks(weak, strong), num_things=2)
    assert np.all(result.id_map[0, 7:] == 1 + 1 * INSTANCE_OFFSET)  # first accepted thing: id 1
    assert np.all(result.id_map[0, :7] == 2)  # weak one dropped: void (K = 2)
    # Losing exactly 20% keeps it (the test is ratio < 0.8).
    strong[0, 7] = False
    result = panoptic_results(cls, _masks(weak, strong), num_things=2)
    assert np.all(result.id_map[0, :8] == 0 + 1 * INSTANCE_OFFSET)
    assert np.all(result.id_map[0, 8:] == 1 + 2 * INSTANCE_OFFSET)


def test_area_is_counted_before_the_low_score_filter():
    # Query 0: confident on 10 pixels, loses 3 of them to query 1, but also wins 5 pixels where
    # every query is unconfident (it has the best score there). Area before the filter:
    # 7 + 5 = 12 >= 0.8 * 10, so it is kept; counted after the filter (7 / 10) it would drop.
    h, w = 1, 15
    mine = np.zeros((h, w), bool)
    mine[0, :10] = True
    theirs = np.zeros((h, w), bool)
    theirs[0, 7:10] = True
    cls = _cls([(0, 8.0), (1, 3.0)], num_classes=2)
    masks = _masks(mine, theirs)
    masks[0, 0, 7:10] = 0.1  # still confident (sigmoid 0.525) but query 1 outbids it there
    masks[:, 0, 10:] = -2.0  # nobody confident; query 0 has the larger score * sigmoid
    result = panoptic_results(cls, masks, num_things=2)
    assert np.all(result.id_map[0, :7] == 1000)
    assert np.all(result.id_map[0, 7:10] == 1 + 2000)
    assert np.all(result.id_map[0, 10:] == 2)  # won but filtered (sigmoid < 0.5): void
    # Without the filter the unconfident pixels are painted too.
    unfiltered = panoptic_results(cls, masks, num_things=2, filter_low_score=False)
    assert np.all(unfiltered.id_map[0, 10:] == 1000)


def test_ties_go_to_the_first_query_and_dropped_things_do_not_use_an_id():
    h, w = 2, 4
    everywhere = np.ones((h, w), bool)
    cls = _cls([(0, 5.0), (1, 5.0), (0, 5.0)], num_classes=2)  # equal scores, equal masks
    result = panoptic_results(cls, _masks(everywhere, everywhere, everywhere), num_things=2)
    # Query 0 wins every tie; queries 1 and 2 win nothing (area 0) and are skipped.
    assert np.all(result.id_map == 0 + 1 * INSTANCE_OFFSET)
    assert [s["id"] for s in result.segments] == [1000]


def test_object_mask_threshold_and_all_void_queries():
    cls = _cls([(0, 1.0)], num_classes=3)  # best probability e / (e + 3) ~ 0.475
    masks = _masks(np.ones((2, 2), bool))
    assert np.all(panoptic_results(cls, masks, 3, object_mask_thr=0.5).id_map == 3)
    assert np.all(panoptic_results(cls, masks, 3).id_map == 1000)
    void_only = _cls([(3, 5.0)], num_classes=3)
    result = panoptic_results(void_only, masks, 3)
    assert np.all(result.id_map == 3) and result.segments == []


def test_segments_never_overlap_and_list_exactly_the_painted_ids():
    rng = np.random.default_rng(3)
    for _ in range(10):
        q, k, h, w = 12, 6, 17, 23
        cls = (rng.standard_normal((q, k + 1)) * 3).astype(np.float32)
        masks = (rng.standard_normal((q, h, w)) * 4).astype(np.float32)
        result = panoptic_results(cls, masks, num_things=3)
        ids, counts = np.unique(result.id_map, return_counts=True)
        painted = {int(i): int(c) for i, c in zip(ids, counts, strict=True) if i != k}
        assert {s["id"]: s["area"] for s in result.segments} == painted
        assert len({s["id"] for s in result.segments}) == len(result.segments)
        for segment in result.segments:
            assert segment["isthing"] == (segment["category_id"] < 3)
            assert segment["id"] % INSTANCE_OFFSET == segment["category_id"]


def test_output_is_at_the_original_size_after_upsampling():
    rng = np.random.default_rng(4)
    logits = (rng.standard_normal((5, 8, 8)) * 10).astype(np.float32)
    full = upsample_masks(logits, (32, 32), (30, 24), (45, 36))
    cls = (rng.standard_normal((5, 4)) * 3).astype(np.float32)
    assert panoptic_results(cls, full, num_things=2).id_map.shape == (45, 36)


def test_mismatched_inputs_raise():
    with pytest.raises(InvalidInputError, match="mask_logits: expected 2 masks"):
        panoptic_results(np.zeros((2, 3), np.float32), np.zeros((3, 4, 4), np.float32), 1)
    with pytest.raises(InvalidInputError, match="num_things"):
        panoptic_results(np.zeros((2, 3), np.float32), np.zeros((2, 4, 4), np.float32), 5)
