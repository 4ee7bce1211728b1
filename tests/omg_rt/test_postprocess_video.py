"""Video post-processing follows Mask2formerVideoMinVIS: tubes, alignment, VPS ids, VOS proposals
and their first-frame matching (VideoSession, which assembles VIS / VOS from them, is tested in
test_runtime.py and against the official goldens in test_official_runtime.py)."""

from __future__ import annotations

import numpy as np
import pytest

from omg_rt.errors import InvalidInputError
from omg_rt.postprocess.video import (
    align_clips,
    video_split,
    vos_assign_ids,
    vos_proposals,
    vps_results,
)
from tests.conftest import OFFICIAL_FIXTURES

VIDEO_GOLDEN = OFFICIAL_FIXTURES / "official_golden" / "video_golden.npz"


@pytest.mark.parametrize(
    ("frames", "sizes"),
    [
        (6, [3, 3]),  # the golden video
        (7, [3, 2, 2]),
        (1, [1]),
        (11, [3, 3, 3, 2]),
        (15, [3, 3, 3, 3, 3]),  # at the threshold: still small tubes
        (16, [5, 5, 5, 1]),  # shortfall 4 >= 4 tubes: the last one takes it all
        (17, [5, 4, 4, 4]),
    ],
)
def test_video_split_tube_sizes(frames, sizes):
    ranges = video_split(frames)
    assert [end - start for start, end in ranges] == sizes
    assert ranges[0][0] == 0 and ranges[-1][1] == frames
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))


def test_align_clips_recovers_known_permutations_through_a_chain():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((50, 16)).astype(np.float32)
    p1, p2 = rng.permutation(50), rng.permutation(50)
    clip1 = base[p1] * 3 + 0.01 * rng.standard_normal((50, 16)).astype(np.float32)
    clip2 = clip1[p2] + 0.01 * rng.standard_normal((50, 16)).astype(np.float32)
    perms = align_clips([base, clip1, clip2])
    np.testing.assert_array_equal(perms[0], np.arange(50))
    np.testing.assert_array_equal(p1[perms[1]], np.arange(50))  # clip1[perm] lines up with base
    np.testing.assert_array_equal(p1[p2[perms[2]]], np.arange(50))


def test_align_clips_reproduces_the_official_match():
    golden = np.load(VIDEO_GOLDEN)
    perms = align_clips([golden["tube0_query"], golden["tube1_query"]])
    np.testing.assert_array_equal(perms[1], golden["match1"])


def test_vos_proposals_are_the_top_iou_queries_lowest_score_first():
    iou = np.array([0.0, 3.0, 1.0, -2.0], np.float32)
    proposals = vos_proposals(iou, num_proposals=3)
    assert proposals.tolist() == [0, 2, 1]  # ascending score: query 1 is the best, painted last


def test_vos_assignment_maximises_iou():
    proposals = np.zeros((3, 1, 4), bool)
    proposals[0, 0, :2] = True
    proposals[1, 0, :3] = True
    proposals[2, 0, 2:] = True
    objects = np.zeros((2, 1, 4), bool)
    objects[0, 0, :3] = True
    objects[1, 0, 3:] = True
    assert vos_assign_ids(proposals, objects, [1, 2]) == {1: 1, 2: 2}


def test_vps_thing_ids_are_query_index_plus_one_in_every_frame():
    cls = np.zeros((3, 3), np.float32)  # K = 2: class 0 thing, class 1 stuff
    cls[0, 0] = cls[1, 0] = 6.0
    cls[2, 1] = 6.0
    masks = np.full((3, 2, 3), -9.0, np.float32)
    masks[1, :, 0] = 9.0  # query 0 never wins anything; query 1 is a thing
    masks[2, :, 1:] = 9.0
    frame_b = masks.copy()
    frame_b[0, :, 0] = 9.5  # now query 0 shows up too (equal saturated scores: q0 wins ties)
    maps = [r.id_map for r in vps_results(cls, [masks, frame_b], num_things=1)]
    assert maps[0][:, 0].tolist() == [0 + 2 * 1000] * 2
    assert maps[1][:, 0].tolist() == [0 + 1 * 1000] * 2
    assert np.all(maps[0][:, 1:] == 1) and np.all(maps[1][:, 1:] == 1)


def test_vps_on_a_query_subset_gives_the_ids_of_the_full_query_set():
    rng = np.random.default_rng(3)
    cls = rng.standard_normal((6, 4)).astype(np.float32) * 3  # K = 3: classes 0, 1 things
    cls[[0, 3], -1] = 20.0  # void queries: they can never paint
    masks = (rng.standard_normal((6, 5, 7)) * 4).astype(np.float32)
    kept = np.array([1, 2, 4, 5])
    full = vps_results(cls, [masks], num_things=2)[0]
    subset = vps_results(cls[kept], [masks[kept]], num_things=2, query_ids=kept)[0]
    assert any(s["isthing"] for s in full.segments)
    np.testing.assert_array_equal(subset.id_map, full.id_map)
    assert subset.segments == full.segments
    with pytest.raises(InvalidInputError, match="query_ids"):
        vps_results(cls[kept], [masks[kept]], num_things=2, query_ids=kept[:2])


def test_bad_video_inputs_raise():
    with pytest.raises(InvalidInputError, match="num_frames"):
        video_split(0)
    with pytest.raises(InvalidInputError, match=r"query_embeddings\[1\]"):
        align_clips([np.zeros((3, 4), np.float32), np.zeros((2, 4), np.float32)])
