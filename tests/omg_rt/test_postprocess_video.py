"""Video post-processing follows Mask2formerVideoMinVIS: tubes, alignment, VIS / VPS / VOS."""

from __future__ import annotations

import numpy as np
import pytest

from omg_rt.errors import InvalidInputError
from omg_rt.postprocess.video import (
    align_clips,
    average_clip_logits,
    video_split,
    vis_results,
    vos_assign_ids,
    vos_paint,
    vos_proposals,
    vos_results,
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


def test_average_clip_logits_aligns_then_averages():
    a = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    b = np.array([[30.0, 40.0], [10.0, 20.0]], np.float32)
    got = average_clip_logits([a, b], [np.arange(2), np.array([1, 0])])
    np.testing.assert_array_equal(got, [[5.5, 11.0], [16.5, 22.0]])


def test_vis_track_ids_and_labels_are_shared_by_all_frames():
    golden = np.load(VIDEO_GOLDEN)
    perms = align_clips([golden["tube0_query"], golden["tube1_query"]])
    cls = average_clip_logits([golden["tube0_cls"], golden["tube1_cls"]], perms)[:, :41]
    rng = np.random.default_rng(1)
    frames = [(rng.standard_normal((300, 6, 8)) * 5).astype(np.float32) for _ in range(2)]
    results = vis_results(cls, frames, num_things=40)
    assert len(results) == 2
    for frame, result in enumerate(results):
        np.testing.assert_array_equal(result.track_ids, np.arange(100) + 1)
        np.testing.assert_array_equal(result.instances.labels, golden[f"vis_labels{frame}"])
    np.testing.assert_array_equal(
        results[0].instances.query_indices, results[1].instances.query_indices
    )


def test_vos_higher_scored_proposal_is_painted_last():
    iou = np.array([0.0, 3.0, 1.0, -2.0], np.float32)
    proposals = vos_proposals(iou, num_proposals=3)
    assert proposals.tolist() == [0, 2, 1]  # ascending score: query 1 is the best
    masks = np.zeros((3, 1, 6), bool)
    masks[0, 0, 0:3] = True  # lowest score
    masks[1, 0, 2:5] = True
    masks[2, 0, 4:6] = True  # highest score
    painted = vos_paint(masks, {0: 7, 1: 8, 2: 9})
    assert painted.tolist() == [[7, 7, 8, 8, 9, 9]]


def test_vos_first_frame_matching_and_ids_follow_the_proposals():
    h, w = 4, 6
    iou = np.array([5.0, 1.0, 3.0], np.float32)  # proposal order: q1, q2, q0
    frame0 = np.full((3, h, w), -9.0, np.float32)
    frame0[0, :2, :3] = 9.0  # q0 matches object A (top-left)
    frame0[2, 2:, 3:] = 9.0  # q2 matches object B (bottom-right)
    frame1 = np.roll(frame0, 1, axis=2)  # everything moves right by one column
    objects = np.zeros((2, h, w), bool)
    objects[0, :2, :3] = True
    objects[1, 2:, 3:] = True
    maps = vos_results(iou, [frame0, frame1], objects, object_ids=[4, 6])
    assert maps[0].dtype == np.int32
    np.testing.assert_array_equal(maps[0], np.where(objects[0], 4, np.where(objects[1], 6, 0)))
    np.testing.assert_array_equal(maps[1], np.roll(maps[0], 1, axis=1))


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
