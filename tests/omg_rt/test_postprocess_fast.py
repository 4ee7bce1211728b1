"""The banded fast paths equal the plain post-processing bit for bit: rows of ``upsample_masks``
computed a band at a time, the dense panoptic assignment (no sigmoid of every query at every
pixel) and the banded semantic map. The hard case is a random-weight model's output: every query
kept, near-uniform scores and near-identical masks, so tile bounds decide almost nothing.
Fresh random inputs every run (the seed is in each message)."""

from __future__ import annotations

import numpy as np
import pytest

from omg_rt.postprocess import panoptic
from omg_rt.postprocess.masks import ResizePlan, upsample_masks
from omg_rt.postprocess.panoptic import panoptic_from_tiles, panoptic_results
from omg_rt.postprocess.semantic import semantic_from_tiles, semantic_with_scores
from omg_rt.postprocess.tiles import TiledLogits
from omg_rt.postprocess.video import vps_results

# the numpy merges against upsample_masks (the C merge: test_postprocess_native.py)
pytestmark = pytest.mark.usefixtures("numpy_merge")

RESIZES = [  # (stride-4, padded, resized, original)
    ((24, 32), (96, 128), (96, 120), (61, 77)),  # crop, then down
    ((46, 62), (184, 248), (184, 245), (90, 120)),  # video-like
    ((8, 10), (32, 40), (30, 25), (60, 50)),  # crop, then up
    ((12, 16), (48, 64), (48, 64), (48, 64)),  # no second resize
    ((10, 10), (33, 37), (30, 30), (45, 45)),  # padded size not 4x: no OpenCV first stage
    ((1, 3), (4, 12), (4, 12), (7, 12)),  # a single stride-4 row
    ((192, 256), (768, 1024), (768, 1024), (480, 640)),  # the 1024 demo scale, 480x640 photo
    ((192, 256), (768, 1024), (768, 1024), (768, 1024)),  # ... and a 768x1024 photo
    ((184, 248), (736, 992), (736, 981), (720, 960)),  # the official video scale
]
# A random-weight model at a small size: 300 queries, (48, 64) logits -> 150x250 photo.
SMALL = ((48, 64), (192, 256), (154, 256), (150, 250))


def _rng() -> tuple[np.random.Generator, int]:
    seed = int(np.random.SeedSequence().entropy % (1 << 32))
    return np.random.default_rng(seed), seed


def _smooth(rng: np.random.Generator, n: int, hw: tuple[int, int], cell: int) -> np.ndarray:
    """(n, h, w) float32 fields with unit spread varying over ~``cell`` samples."""
    h, w = hw
    coarse = rng.standard_normal((n, h // cell + 2, w // cell + 2)).astype(np.float32)
    ys = np.linspace(0, coarse.shape[1] - 1.001, h)
    xs = np.linspace(0, coarse.shape[2] - 1.001, w)
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None]
    c = coarse
    out = (c[:, y0][:, :, x0] * (1 - fy) * (1 - fx) + c[:, y0 + 1][:, :, x0] * fy * (1 - fx)
           + c[:, y0][:, :, x0 + 1] * (1 - fy) * fx + c[:, y0 + 1][:, :, x0 + 1] * fy * fx)
    return (out / out.std()).astype(np.float32)


def random_weight_logits(
    rng: np.random.Generator, q: int, k: int, hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """What a random-weight model gives: class logits ~N(0, 1) over K classes and void (almost
    every query kept, best probabilities within a factor of a few), mask logits ~N(0, 3), smooth,
    a field shared by all queries plus a smaller one of their own."""
    cls = rng.standard_normal((q, k + 1)).astype(np.float32)
    shared, own = _smooth(rng, 1, hw, 4), _smooth(rng, q, hw, 4)
    masks = np.float32(3.0) * (np.float32(0.92) * shared + np.float32(0.39) * own)
    return cls, masks.astype(np.float32)


def _assert_same_panoptic(got, want, seed: int) -> None:
    np.testing.assert_array_equal(got.id_map, want.id_map, err_msg=str(seed))
    assert got.segments == want.segments, seed


@pytest.fixture
def dense_calls(monkeypatch):
    """Counts the dense assignments panoptic_from_tiles hands over to."""
    calls = []
    dense = panoptic._assign_dense

    def spy(*args):
        calls.append(args[1].shape[0])
        return dense(*args)

    monkeypatch.setattr(panoptic, "_assign_dense", spy)
    return calls


@pytest.mark.parametrize("sizes", RESIZES)
def test_rows_of_upsample_masks_a_band_at_a_time_are_the_same_bits(sizes):
    rng, seed = _rng()
    h4w4, padded, resized, original = sizes
    logits = (rng.standard_normal((3, *h4w4)) * 10.0 ** rng.uniform(-1, 4)).astype(np.float32)
    want = upsample_masks(logits, padded, resized, original)
    plan = ResizePlan(h4w4, padded, resized, original)
    for rows in (1, 3, int(rng.integers(2, 40))):
        got = np.concatenate(
            [plan.output_rows(logits, top, min(top + rows, original[0])).copy()
             for top in range(0, original[0], rows)],
            axis=1,
        )
        assert np.array_equal(got.view(np.int32), want.view(np.int32)), (seed, rows)
    bands = TiledLogits(logits, padded, resized, original).row_bands(np.array([2, 0]), 7)
    got = np.concatenate([band.copy() for _, band in bands], axis=1)
    assert np.array_equal(got.view(np.int32), want[[2, 0]].view(np.int32)), seed


def test_random_weight_panoptic_takes_the_dense_path_and_equals_the_plain_one(dense_calls):
    rng, seed = _rng()
    h4w4, padded, resized, original = SMALL
    cls, logits = random_weight_logits(rng, 300, 240, h4w4)
    want = panoptic_results(cls, upsample_masks(logits, padded, resized, original), 139)
    got = panoptic_from_tiles(cls, TiledLogits(logits, padded, resized, original), 139)
    assert dense_calls and dense_calls[0] > 250, seed  # nearly every query kept, dense path
    _assert_same_panoptic(got, want, seed)
    # Video ids (label + (query + 1) * 1000) go through the same assignment.
    video = vps_results(cls, [upsample_masks(logits, padded, resized, original)], 139)[0]
    tiles = TiledLogits(logits, padded, resized, original)
    got = panoptic_from_tiles(cls, tiles, 139, thing_ids=np.arange(1, 301))
    _assert_same_panoptic(got, video, seed)


@pytest.mark.parametrize("threads", [1, 3])
def test_dense_assignment_on_several_threads_gives_the_same_bits(threads, monkeypatch):
    # Bands of 1-3 rows cut into row spans, one per thread: every band is computed as in a
    # single pass, so the map is the plain one bit for bit whatever the thread count.
    rows = int(np.random.default_rng().integers(1, 4))
    monkeypatch.setattr(panoptic, "_DENSE_ELEMENTS", rows * 300 * SMALL[3][1])
    monkeypatch.setattr(panoptic, "thread_count", lambda: threads)
    spans = []
    parallel_map = panoptic.parallel_map

    def spy(fn, items):  # the row spans (the winners' areas also run on the threads)
        if fn.__name__ == "assign_span":
            spans.append(list(items))
        return parallel_map(fn, items)

    monkeypatch.setattr(panoptic, "parallel_map", spy)
    rng, seed = _rng()
    h4w4, padded, resized, original = SMALL
    cls, logits = random_weight_logits(rng, 300, 240, h4w4)
    want = panoptic_results(cls, upsample_masks(logits, padded, resized, original), 139)
    got = panoptic_from_tiles(cls, TiledLogits(logits, padded, resized, original), 139)
    assert len(spans) == 1 and len(spans[0]) == threads, (seed, spans)
    assert spans[0][0][0] == 0 and spans[0][-1][1] == original[0], spans  # every row once
    assert all(a[1] == b[0] for a, b in zip(spans[0], spans[0][1:])), spans
    _assert_same_panoptic(got, want, seed)


@pytest.mark.parametrize("dense", [False, True])
def test_mixed_decided_and_undecided_tiles_give_the_plain_panoptic(dense, monkeypatch):
    # Left half: a trained model's look (one query clearly wins each region, decided by the
    # bounds); right half: random-weight logits (undecided). Both assignments must agree.
    monkeypatch.setattr(panoptic, "_dense_is_cheaper", lambda *_: dense)
    rng, seed = _rng()
    h4w4, padded, resized, original = SMALL
    q, k = 60, 12
    cls, logits = random_weight_logits(rng, q, k, h4w4)
    half = h4w4[1] // 2
    owner = rng.integers(0, 12, (h4w4[0] // 8 + 1, half // 8 + 1)).repeat(8, 0).repeat(8, 1)
    owner = owner[: h4w4[0], :half]
    decided = np.where(owner[None] == np.arange(q)[:, None, None], 12.0, -12.0)
    logits[:, :, :half] = decided + rng.standard_normal((q, h4w4[0], half))
    cls[:12, :k] += np.float32(4.0) * np.eye(12, k, dtype=np.float32)  # confident classes
    logits[1], cls[1] = logits[0], cls[0]  # a duplicate query: ties go to the first
    logits[3, :10] = 0.0  # sigmoid exactly 0.5
    logits[4, 10:14] = 40.0  # saturated: score * 1.0 ties with other saturated queries
    logits[5, 10:14] = 40.0
    cls[5] = cls[4]
    want = panoptic_results(cls, upsample_masks(logits, padded, resized, original), 7)
    got = panoptic_from_tiles(cls, TiledLogits(logits, padded, resized, original), 7)
    _assert_same_panoptic(got, want, seed)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0 in the resize
@pytest.mark.parametrize("sizes", [RESIZES[0], RESIZES[2], RESIZES[4], SMALL])
def test_dense_assignment_on_extreme_logits(sizes, monkeypatch):
    # Values that underflow to 0 everywhere (every query far below 0), saturated sigmoids,
    # infinities, and a NaN (argmax takes the first NaN, as the plain path).
    monkeypatch.setattr(panoptic, "_dense_is_cheaper", lambda *_: True)
    rng, seed = _rng()
    h4w4, padded, resized, original = sizes
    q, k = 40, 6
    cls = rng.standard_normal((q, k + 1)).astype(np.float32)
    cls[:, k] = -9.0
    logits = (rng.standard_normal((q, *h4w4)) * 1e4).astype(np.float32)
    top, left = slice(0, h4w4[0] // 2), slice(0, h4w4[1] // 2)
    logits[:, top] = -1e4  # top half: every value is exactly 0, query 0 wins ...
    logits[5, top, left] = -88.8  # ... here too (expit(-88.8) is 0 in float32) ...
    logits[6, top, h4w4[1] // 2 :] = -85.0  # ... but here query 6 has a tiny positive value
    logits[7, :, : h4w4[1] // 3] = np.inf
    logits[9, :, : h4w4[1] // 3] = np.inf
    logits[11, -1, -1] = -np.inf
    logits[13, -1, 0] = np.nan
    full = upsample_masks(logits, padded, resized, original)
    tiles = TiledLogits(logits, padded, resized, original)
    for filtered in (True, False):  # unfiltered: every won pixel is painted
        want = panoptic_results(cls, full, 3, filter_low_score=filtered)
        got = panoptic_from_tiles(cls, tiles, 3, filter_low_score=filtered)
        _assert_same_panoptic(got, want, seed)


def test_a_nan_logit_wins_its_pixels_as_in_the_plain_panoptic(monkeypatch):
    # argmax takes the first NaN: even the query with the lowest score wins where it is NaN.
    monkeypatch.setattr(panoptic, "_dense_is_cheaper", lambda *_: True)
    rng, seed = _rng()
    h4w4, padded, resized, original = SMALL
    cls, logits = random_weight_logits(rng, 80, 20, h4w4)
    cls[:, 20] = -9.0  # no void: every query kept
    last = int(np.argmin(cls[:, :20].max(1)))  # the lowest score
    logits[last, 20, 30] = np.nan
    full = upsample_masks(logits, padded, resized, original)
    tiles = TiledLogits(logits, padded, resized, original)
    for filtered in (True, False):
        want = panoptic_results(cls, full, 10, filter_low_score=filtered)
        got = panoptic_from_tiles(cls, tiles, 10, filter_low_score=filtered)
        _assert_same_panoptic(got, want, seed)


def test_random_weight_semantic_from_tiles_equals_the_plain_one():
    rng, seed = _rng()
    h4w4, padded, resized, original = SMALL
    cls, logits = random_weight_logits(rng, 300, 240, h4w4)
    cls[:, 5] = cls[:, 4]  # identical classes: exact ties go to the first
    want_map, want_scores = semantic_with_scores(
        cls, upsample_masks(logits, padded, resized, original)
    )
    got_map, got_scores = semantic_from_tiles(cls, TiledLogits(logits, padded, resized, original))
    np.testing.assert_array_equal(got_map, want_map, err_msg=str(seed))
    np.testing.assert_array_equal(got_scores, want_scores, err_msg=str(seed))
    assert not (got_map == 5).any() and len(np.unique(got_map)) > 10, seed


def test_semantic_result_assembles_the_banded_map():
    from omg_rt import assembly
    from omg_rt.bundle import Vocabulary
    from omg_rt.sessions import ImageSession

    rng, seed = _rng()
    h4w4, padded, resized, original = SMALL
    cls, logits = random_weight_logits(rng, 40, 30, h4w4)
    session = ImageSession(key=("test",), original_hw=original, resized_hw=resized,
                           padded_hw=padded, encoded=None)
    vocab = Vocabulary(names=tuple(map(str, range(30))), num_things=10, seen=np.ones(30, bool),
                       class_bank=np.zeros((30, 1, 1), np.float32))
    label_map, scores = semantic_with_scores(
        cls, upsample_masks(logits, padded, resized, original)
    )
    got = assembly.semantic_result(session, cls, logits, vocab)
    np.testing.assert_array_equal(got.id_map, label_map, err_msg=str(seed))
    np.testing.assert_array_equal(got.scores, scores[got.labels], err_msg=str(seed))
    np.testing.assert_array_equal(got.labels, np.unique(label_map), err_msg=str(seed))


def test_semantic_ties_and_nan_pick_the_first_class_as_argmax():
    cls = np.array([[1.0, 1.0, 0.0, -3.0], [0.0, 0.0, 2.0, -3.0]], np.float32)
    masks = np.array([[[5.0, -5.0, np.nan]], [[-5.0, 5.0, 0.0]]], np.float32)
    label_map, _ = semantic_with_scores(cls, masks)
    assert label_map.tolist() == [[0, 2, 0]]  # class 1 ties class 0; NaN column -> 0


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0 in the resize
@pytest.mark.parametrize("sizes", [RESIZES[0], RESIZES[3], SMALL])
def test_the_winners_sigmoid_areas_are_the_plain_counts(sizes):
    # _won_original_area: sigmoid >= 0.5 pixels of every query that wins a pixel, 0 for the
    # others, whether its tiles are decided by their bounds, evaluated, or the query resized
    # whole; a NaN or infinite sample leaves its tiles to be evaluated.
    rng, seed = _rng()
    h4w4, padded, resized, original = sizes
    q = 24
    logits = (_smooth(rng, q, h4w4, 3) * rng.choice([2.0, 40.0], (q, 1, 1))).astype(np.float32)
    logits[3:6] = 50.0  # wholly above: counted from the bounds ...
    logits[4, 1, 1] = np.nan  # ... but the tiles that read this sample: NaN bounds
    logits[5, 0, :] = np.inf
    logits[6, -1, -1] = -np.inf
    kept = np.sort(rng.choice(q, 20, replace=False))
    kept = np.union1d(kept, [3, 4, 5, 6])
    winner = rng.integers(0, kept.size, original).astype(np.int64)
    winner[winner == 1] = 0  # slot 1 wins nothing: its area is not counted
    tiles = TiledLogits(logits, padded, resized, original, tile=int(rng.integers(3, 10)))
    thr = panoptic.sigmoid_threshold()
    full = upsample_masks(logits[kept], padded, resized, original)
    want = (full >= thr).reshape(kept.size, -1).sum(1)
    want[np.bincount(winner.ravel(), minlength=kept.size) == 0] = 0
    np.testing.assert_array_equal(panoptic._won_original_area(tiles, kept, winner), want,
                                  err_msg=str(seed))
