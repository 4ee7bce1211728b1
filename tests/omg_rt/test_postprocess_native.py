"""The C post-processing (``omg_rt/postprocess/csrc/merge.c``) against plain references on fresh
random inputs every run (the seed is in each message): its resize is PyTorch's two
``F.interpolate`` calls bit for bit, and its panoptic merge is ``_assign_pixels`` (the argmax of
``score * sigmoid`` over every kept query at every pixel) of those logits, exactly, ties, NaN,
underflow and saturation included.

PyTorch resizes with its generic kernel when the output's H + W is above 128 (every mask of a
real image); smaller outputs take another kernel that rounds differently, so there the C resize
is within float32 rounding of it, and the merge is checked against its own resize.
"""

from __future__ import annotations

import numpy as np
import pytest

from omg_rt.errors import BackendUnavailableError, InvalidInputError
from omg_rt.postprocess import native, panoptic
from omg_rt.postprocess.instance import (
    instances_from_masks,
    instances_from_tiles,
    masks_of_ids,
    masks_to_boxes,
    select_instances,
)
from omg_rt.postprocess.masks import ResizePlan, upsample_masks
from omg_rt.postprocess.panoptic import _assign_pixels, panoptic_from_tiles, panoptic_results
from omg_rt.postprocess.semantic import semantic_from_tiles, semantic_with_scores
from omg_rt.postprocess.tiles import TiledLogits
from tests.omg_rt.test_postprocess_fast import (
    RESIZES,
    SMALL,
    _rng,
    _smooth,
    random_weight_logits,
)

torch = pytest.importorskip("torch")
# Both resizes on PyTorch's generic kernel (output H + W > 128): bit for bit.
EXACT = [s for s in RESIZES if sum(s[1]) > 128 and sum(s[3]) > 128]


@pytest.fixture(autouse=True)
def _built():
    if not native.available():
        pytest.skip("the C post-processing does not build here (no C compiler)")


def _torch_upsample(logits: np.ndarray, padded, resized, original) -> np.ndarray:
    """The official resize: stride 4 -> padded input, crop, -> original image."""
    x = torch.from_numpy(logits)[None]
    x = torch.nn.functional.interpolate(x, tuple(padded), mode="bilinear", align_corners=False)
    x = x[..., : resized[0], : resized[1]]
    x = torch.nn.functional.interpolate(x, tuple(original), mode="bilinear", align_corners=False)
    return x[0].numpy()


def _merge_and_reference(logits, scores, sizes):
    """The C merge and ``_assign_pixels`` of PyTorch's resize (of the C resize where PyTorch
    takes its other kernel)."""
    stride4, padded, resized, original = sizes
    kept = np.arange(logits.shape[0])
    got = native.panoptic_merge(TiledLogits(logits, padded, resized, original), kept, scores)
    if sizes in EXACT:
        resized_logits = _torch_upsample(logits, padded, resized, original)
    else:
        plan = ResizePlan(stride4, padded, resized, original)
        resized_logits = native.upsample_rows(logits, plan, 0, original[0])
    return got, _assign_pixels(resized_logits, scores)


def _assert_same(got, want, seed) -> None:
    for name, a, b in zip(("winner", "confident", "original_area"), got, want, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=f"{name}, seed {seed}")


@pytest.mark.parametrize("sizes", RESIZES, ids=lambda s: "x".join(map(str, s[3])))
def test_the_resize_is_pytorchs_bit_for_bit(sizes):
    stride4, padded, resized, original = sizes
    rng, seed = _rng()
    logits = (rng.standard_normal((5, *stride4)) * 20).astype(np.float32)
    want = _torch_upsample(logits, padded, resized, original)
    plan = ResizePlan(stride4, padded, resized, original)
    got = native.upsample_rows(logits, plan, 0, original[0])
    if sizes not in EXACT:  # PyTorch's small-output kernel: float32 rounding apart
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(seed))
        return
    np.testing.assert_array_equal(got, want, err_msg=str(seed))
    top, stop = original[0] // 3, original[0] // 3 + max(1, original[0] // 2)  # not on a band edge
    np.testing.assert_array_equal(native.upsample_rows(logits, plan, top, stop),
                                  want[:, top:stop], err_msg=str(seed))


@pytest.mark.parametrize("sizes", RESIZES, ids=lambda s: "x".join(map(str, s[3])))
def test_the_merge_is_the_argmax_of_every_query_at_every_pixel(sizes):
    """Random-weight outputs: ~all of 40 queries kept, near-identical masks (the hard case for
    skipping queries), scores spread as a softmax's."""
    rng, seed = _rng()
    _, masks = random_weight_logits(rng, 40, 3, sizes[0])
    scores = rng.uniform(0.2, 0.6, 40).astype(np.float32)
    _assert_same(*_merge_and_reference(masks, scores, sizes), seed)


def test_ties_go_to_the_first_kept_query():
    """Equal and nearly equal scores, duplicate masks, saturated sigmoids (value = score) and
    underflowing ones (value 0 everywhere: the first query wins)."""
    rng, seed = _rng()
    sizes = RESIZES[0]
    masks = (rng.standard_normal((12, *sizes[0])) * 4).astype(np.float32)
    masks[5] = masks[2]  # the same mask ...
    scores = rng.uniform(0.3, 0.5, 12).astype(np.float32)
    scores[5] = scores[2]  # ... and score: query 2 must win where either would
    scores[7] = np.nextafter(scores[3], np.float32(1.0))  # one float32 step apart
    masks[8] = masks[9] = np.float32(60.0)  # sigmoid 1: value = score exactly
    scores[9] = scores[8]
    _assert_same(*_merge_and_reference(masks, scores, sizes), seed)
    low = (rng.uniform(-130, -86, (6, *sizes[0]))).astype(np.float32)  # values 0 or subnormal
    _assert_same(*_merge_and_reference(low, rng.uniform(0.1, 0.9, 6).astype(np.float32), sizes),
                 seed)


def test_a_nan_or_infinite_logit_wins_as_in_argmax():
    rng, seed = _rng()
    sizes = RESIZES[1]
    masks = (rng.standard_normal((9, *sizes[0])) * 4).astype(np.float32)
    masks[4, 10, 10] = np.nan
    masks[2, 10:12, 11] = np.nan  # an earlier NaN on part of the same pixels
    masks[6, 30, 40] = np.inf
    masks[1, 20, 20] = -np.inf
    scores = rng.uniform(0.2, 0.8, 9).astype(np.float32)
    (winner, confident, area), want = _merge_and_reference(masks, scores, sizes)
    _assert_same((winner, confident, area), want, seed)
    assert np.isin([2, 4], winner).all(), seed  # the NaN pixels went to the NaN queries


@pytest.mark.parametrize("threads", [1, 3])
def test_any_number_of_threads_gives_the_same_bits(threads, monkeypatch):
    rng, seed = _rng()
    _, masks = random_weight_logits(rng, 60, 3, SMALL[0])
    scores = rng.uniform(0.2, 0.6, 60).astype(np.float32)
    want = _merge_and_reference(masks, scores, SMALL)[1]
    monkeypatch.setattr(native, "thread_count", lambda: threads)
    got = native.panoptic_merge(TiledLogits(masks, *SMALL[1:]), np.arange(60), scores)
    _assert_same(got, want, seed)


def test_panoptic_from_tiles_is_the_official_panoptic_of_pytorchs_resize():
    """The whole panoptic result (ids, segments, areas) through the C merge, image and video
    ids, against the plain merge of ``F.interpolate``'s logits; a subset of kept queries."""
    rng, seed = _rng()
    cls, _ = random_weight_logits(rng, 300, 139, SMALL[0])
    cls[rng.permutation(300)[:260], -1] += np.float32(8.0)  # void wins: some 40 queries kept
    masks = np.float32(6.0) * _smooth(rng, 300, SMALL[0], 6) - np.float32(9.0)  # blobs
    resized = _torch_upsample(masks, *SMALL[1:])
    tiles = TiledLogits(masks, *SMALL[1:])
    for ids in (None, np.arange(1, 301)):
        got = panoptic_from_tiles(cls, tiles, 80, thing_ids=ids)
        want = panoptic._panoptic(cls, resized, 80, panoptic.OBJECT_MASK_THR, panoptic.IOU_THR,
                                  panoptic.FILTER_LOW_SCORE, ids)
        np.testing.assert_array_equal(got.id_map, want.id_map, err_msg=str(seed))
        assert got.segments == want.segments, seed
    assert got.segments and (got.id_map != 139).any(), seed  # not an empty map


def test_without_a_compiler_the_numpy_merge_computes_the_panoptic(tmp_path, monkeypatch):
    rng, seed = _rng()
    cls, masks = random_weight_logits(rng, 30, 9, RESIZES[0][0])
    monkeypatch.setenv("OMG_RT_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-omg")
    native._library.cache_clear()
    try:
        assert not native.available()
        with pytest.raises(BackendUnavailableError, match="not available"):
            native.panoptic_merge(TiledLogits(masks, *RESIZES[0][1:]), np.arange(30),
                                  np.ones(30, np.float32))
        got = panoptic_from_tiles(cls, TiledLogits(masks, *RESIZES[0][1:]), 4)
    finally:
        native._library.cache_clear()
    want = panoptic_results(cls, upsample_masks(masks, *RESIZES[0][1:]), 4)
    np.testing.assert_array_equal(got.id_map, want.id_map, err_msg=str(seed))
    assert got.segments == want.segments, seed


@pytest.mark.parametrize("sizes", [EXACT[0], EXACT[-1]], ids=lambda s: "x".join(map(str, s[3])))
def test_instances_are_the_official_ones_of_pytorchs_resize(sizes):
    """Masks, mask scores and boxes of the selected queries (a saturated mask, an empty one, one
    whose upper rows are all <= 0 -- bands the C kernel does not resize -- with a -0.0, a -inf
    and a NaN there, and a query selected under two labels among them) against
    ``instances_from_masks`` of ``F.interpolate``'s logits."""
    stride4, padded, resized, original = sizes
    rng, seed = _rng()
    cls, logits = random_weight_logits(rng, 100, 20, stride4)
    logits[7] = np.float32(60.0)  # sigmoid exactly 1 everywhere
    logits[8] = np.float32(-5.0)  # an empty mask
    top = logits[10, : stride4[0] // 2]
    top[...] = -np.abs(top)  # bands reading only these rows hold no pixel of query 10
    top[0, 0], top[1, 1], top[2, 2] = -0.0, -np.inf, np.nan
    logits[10, stride4[0] // 2 :] = np.abs(logits[10, stride4[0] // 2 :]) + np.float32(0.5)
    cls[[7, 8, 10], 3] = cls[9, [2, 4]] = np.float32(9.0)  # query 9: two labels
    probs, labels, queries = select_instances(cls, 15, 30)
    assert {7, 8, 9, 10} <= set(queries.tolist()) and (queries == 9).sum() == 2, seed
    got = instances_from_tiles(probs, labels, queries, TiledLogits(logits, padded, resized,
                                                                   original))
    want = instances_from_masks(probs, labels, queries,
                                _torch_upsample(logits[queries], padded, resized, original))
    for name in ("scores", "labels", "query_indices", "masks", "boxes"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name),
                                      err_msg=f"{name}, seed {seed}")
    empty = instances_from_tiles(probs[:0], labels[:0], queries[:0],
                                 TiledLogits(logits, padded, resized, original))
    assert empty.masks.shape == (0, *original) and empty.boxes.shape == (0, 4), seed


@pytest.mark.parametrize("threads", [1, 3])
def test_id_masks_are_the_comparisons_of_the_map_with_each_id(threads, monkeypatch):
    """``masks_of_ids`` in C against ``id_map == id`` and ``masks_to_boxes``: a map of blocks,
    runs and single pixels (ids of 1..6 digits, -1 for void); asked ids in any order, some
    absent from the map (empty masks, zero boxes), some map ids not asked."""
    monkeypatch.setattr(native, "thread_count", lambda: threads)
    rng, seed = _rng()
    h, w = int(rng.integers(1, 90)), int(rng.integers(1, 120))
    values = np.array([-1, 0, 7, 133, 1005, 42_017, 300_133], np.int32)
    id_map = values[rng.integers(0, values.size, (h // 8 + 1, w // 8 + 1))]
    id_map = id_map.repeat(8, 0).repeat(8, 1)[:h, :w].copy()
    noise = rng.random((h, w)) < 0.05
    id_map[noise] = rng.choice(values, int(noise.sum()))
    for ids in (rng.permutation(values), np.array([133, 5, 300_133, -7], np.int64),
                np.unique(id_map), np.empty(0, np.int64)):
        got_masks, got_boxes = masks_of_ids(id_map, ids)
        want = id_map[None] == ids[:, None, None]
        np.testing.assert_array_equal(got_masks, want, err_msg=f"{seed} {ids}")
        np.testing.assert_array_equal(got_boxes, masks_to_boxes(want), err_msg=f"{seed} {ids}")
        assert got_masks.shape == (ids.size, h, w) and got_boxes.dtype == np.float32


def test_id_masks_outside_the_c_kernels_reach_fall_back_to_numpy():
    """Repeated ids, ids or maps beyond int32: numpy's comparisons, the same results."""
    id_map = np.array([[1, 2, 2], [2**40, 1, 1]], np.int64)
    for ids in (np.array([2, 1, 2]), np.array([2**40, 1])):
        masks, boxes = masks_of_ids(id_map, ids)
        np.testing.assert_array_equal(masks, id_map[None] == ids[:, None, None])
        np.testing.assert_array_equal(boxes, masks_to_boxes(masks))
    with pytest.raises(InvalidInputError, match="ids"):
        masks_of_ids(id_map, np.array([0.5]))
    with pytest.raises(InvalidInputError, match="id_map"):
        masks_of_ids(id_map.astype(np.float32), np.array([1]))


@pytest.mark.parametrize("sizes", [SMALL, EXACT[0]], ids=lambda s: "x".join(map(str, s[3])))
def test_semantic_from_tiles_is_the_semantic_of_pytorchs_resize(sizes):
    rng, seed = _rng()
    cls, logits = random_weight_logits(rng, 300, 40, sizes[0])
    cls[:, 5] = cls[:, 4]  # identical classes: exact ties go to the first
    want_map, want_scores = semantic_with_scores(cls, _torch_upsample(logits, *sizes[1:]))
    got_map, got_scores = semantic_from_tiles(cls, TiledLogits(logits, *sizes[1:]))
    np.testing.assert_array_equal(got_map, want_map, err_msg=str(seed))
    np.testing.assert_array_equal(got_scores, want_scores, err_msg=str(seed))
    assert not (got_map == 5).any() and len(np.unique(got_map)) > 5, seed
