"""The tiled fast paths equal the plain ones: resize everything with ``upsample_masks``, then the
straightforward post-processing. Fresh random inputs every run (the seed is in each message);
one case at the official fixture's sizes (from golden.json)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omg_rt.postprocess._common import sigmoid, sigmoid_saturation, sigmoid_threshold
from omg_rt.postprocess.instance import instances_from_masks, instances_from_tiles, select_instances
from omg_rt.postprocess.interactive import binary_masks, binary_masks_from_tiles, prompt_results
from omg_rt.postprocess.masks import upsample_masks
from omg_rt.postprocess.panoptic import panoptic_from_tiles, panoptic_results
from omg_rt.postprocess.tiles import TiledLogits
from omg_rt.postprocess.video import vps_results
from tests.conftest import OFFICIAL_FIXTURES

# the numpy merges against upsample_masks (the C merge: test_postprocess_native.py)
pytestmark = pytest.mark.usefixtures("numpy_merge")

GOLDEN = OFFICIAL_FIXTURES / "official_golden"


def _fixture_sizes() -> tuple[tuple[int, int], ...]:
    """(stride-4, padded, resized, original) sizes of the official image fixture."""
    path = GOLDEN / "golden.json"
    if not path.exists():
        pytest.skip(f"official fixtures not found at {GOLDEN}")
    meta = json.loads(path.read_text())
    h4, w4 = meta["mask_shape"][-2:]
    return (h4, w4), (4 * h4, 4 * w4), tuple(meta["resized_hw"]), tuple(meta["input_hw"])


SIZES = [  # (stride-4, padded, resized, original)
    ((24, 32), (96, 128), (96, 120), (61, 77)),  # crop, then down
    ((46, 62), (184, 248), (184, 245), (90, 120)),  # video-like: crop, then down by ~2
    ((8, 10), (32, 40), (30, 25), (60, 50)),  # crop, then up
    ((12, 16), (48, 64), (48, 64), (48, 64)),  # no second resize
    ((10, 10), (33, 37), (30, 30), (45, 45)),  # padded size not 4x: no OpenCV first stage
    ((12, 16), (48, 64), (48, 64), (48, 37)),  # one axis unchanged
]


def _rng() -> tuple[np.random.Generator, int]:
    seed = int(np.random.SeedSequence().entropy % (1 << 32))
    return np.random.default_rng(seed), seed


def _logits(rng: np.random.Generator, q: int, hw: tuple[int, int], scale: float) -> np.ndarray:
    """Smooth fields (segments with boundaries), some noise, a few exact ties and zeros."""
    h, w = hw
    coarse = rng.standard_normal((q, max(h // 4, 2), max(w // 4, 2))).astype(np.float32)
    ys = np.linspace(0, coarse.shape[1] - 1, h).round().astype(int)
    xs = np.linspace(0, coarse.shape[2] - 1, w).round().astype(int)
    smooth = coarse[:, ys][:, :, xs] + 0.3 * rng.standard_normal((q, h, w)).astype(np.float32)
    out = (smooth - 0.8) * np.float32(scale)
    out[1] = out[0]  # a duplicate query: ties go to the first
    out[2, : h // 2] = 0.0  # sigmoid exactly 0.5 on a block
    return out.astype(np.float32)


def _cells(rng: np.random.Generator, q: int, hw: tuple[int, int]) -> np.ndarray:
    """A trained model's look: each query ~+8 inside its Voronoi cell, falling by 4 per
    stride-4 pixel past the cell border, plus noise."""
    ys, xs = np.arange(hw[0]), np.arange(hw[1])
    centres = rng.uniform((0, 0), hw, (q, 2))
    dist = np.hypot(ys[None, :, None] - centres[:, :1, None], xs[None, None] - centres[:, 1:, None])
    cells = 8.0 - 4.0 * (dist - dist.min(0)) + rng.standard_normal((q, *hw))
    return np.maximum(cells, -15.0).astype(np.float32)


def _cls(rng: np.random.Generator, q: int, k: int, void_rows: int) -> np.ndarray:
    cls = (rng.standard_normal((q, k + 1)) * 3).astype(np.float32)
    cls[:, k] = 0.0
    cls[1] = cls[0]
    cls[q - void_rows :, k] = 30.0  # void queries
    return cls


@pytest.mark.parametrize("sizes", SIZES)
def test_tiles_equal_upsample_masks_bit_for_bit_and_lie_within_their_bounds(sizes):
    rng, seed = _rng()
    h4w4, padded, resized, original = sizes
    logits = _logits(rng, 5, h4w4, 10.0 ** rng.uniform(0, 5))
    tiles = TiledLogits(logits, padded, resized, original, tile=int(rng.integers(3, 10)))
    ty, tx = tiles.grid
    q, y, x = (a.ravel() for a in np.meshgrid(np.arange(5), np.arange(ty), np.arange(tx),
                                              indexing="ij"))
    values = tiles.evaluate(q, y, x).reshape(5, ty, tx, tiles.tile, tiles.tile)
    got = np.stack([tiles.assemble(v) for v in values])
    want = upsample_masks(logits, padded, resized, original)
    assert np.array_equal(got.view(np.int32), want.view(np.int32)), seed
    assert np.array_equal(tiles.dense(np.array([3, 1])), want[[3, 1]]), seed
    lo, hi = tiles.bounds(np.arange(5))
    valid = np.broadcast_to(tiles.valid(), values.shape)
    assert np.all((values >= lo[..., None, None])[valid]), seed
    assert np.all((values <= hi[..., None, None])[valid]), seed


def test_logit_thresholds_decide_what_the_float32_sigmoid_decides():
    """The logits where the float32 sigmoid is >= 0.5, > 0.5 and exactly 1.0 (the C instance
    masks add those as 1 without an expf) are the thresholds' halves of the line."""
    rng, seed = _rng()
    x = (rng.standard_normal(200_000) * 10.0 ** rng.uniform(-9, 1, 200_000)).astype(np.float32)
    x = np.r_[x, np.float32(0.0), sigmoid_threshold(), sigmoid_threshold(strict=True)]
    np.testing.assert_array_equal(sigmoid(x) >= 0.5, x >= sigmoid_threshold(), err_msg=str(seed))
    np.testing.assert_array_equal(sigmoid(x) > 0.5, x >= sigmoid_threshold(True), str(seed))
    below = np.nextafter(sigmoid_threshold(), np.float32(-1.0))
    assert sigmoid(np.array([below]))[0] < 0.5 <= sigmoid(np.array([sigmoid_threshold()]))[0]
    top = rng.uniform(14.0, 20.0, 100_000).astype(np.float32)
    top = np.r_[top, sigmoid_saturation(), np.nextafter(sigmoid_saturation(), np.float32(0.0))]
    np.testing.assert_array_equal(sigmoid(top) == 1.0, top >= sigmoid_saturation(), str(seed))


@pytest.mark.parametrize("scale", [12.0, 1e4])  # trained-like logits, random weights' logits
@pytest.mark.parametrize("sizes", SIZES)
def test_panoptic_from_tiles_equals_panoptic_of_the_resized_masks(sizes, scale):
    rng, seed = _rng()
    h4w4, padded, resized, original = sizes
    q, k = 24, 7
    logits = _logits(rng, q, h4w4, scale)
    cls = _cls(rng, q, k, void_rows=4)
    tiles = TiledLogits(logits, padded, resized, original, tile=int(rng.integers(3, 10)))
    want = panoptic_results(cls, upsample_masks(logits, padded, resized, original), 4)
    got = panoptic_from_tiles(cls, tiles, 4)
    np.testing.assert_array_equal(got.id_map, want.id_map, err_msg=str(seed))
    assert got.segments == want.segments, seed
    # video ids: label + (query + 1) * 1000
    video = vps_results(cls, [upsample_masks(logits, padded, resized, original)], 4)[0]
    got = panoptic_from_tiles(cls, tiles, 4, thing_ids=np.arange(1, q + 1))
    np.testing.assert_array_equal(got.id_map, video.id_map, err_msg=str(seed))
    assert got.segments == video.segments, seed


def test_panoptic_from_tiles_at_the_fixture_sizes():
    rng, seed = _rng()
    h4w4, padded, resized, original = _fixture_sizes()
    logits = _cells(rng, 40, h4w4)
    cls = _cls(rng, 40, 11, void_rows=10)
    want = panoptic_results(cls, upsample_masks(logits, padded, resized, original), 6)
    got = panoptic_from_tiles(cls, TiledLogits(logits, padded, resized, original), 6)
    np.testing.assert_array_equal(got.id_map, want.id_map, err_msg=str(seed))
    assert got.segments == want.segments and len(got.segments) > 1, seed


@pytest.mark.parametrize("scale", [12.0, 1e4])
@pytest.mark.parametrize("sizes", SIZES)
def test_instances_from_tiles_equal_instances_of_the_resized_masks(sizes, scale):
    rng, seed = _rng()
    h4w4, padded, resized, original = sizes
    logits = _logits(rng, 30, h4w4, scale)
    logits[5] = 40.0  # saturated everywhere: scored from the tile counts
    logits[6] = -40.0  # empty
    cls = _cls(rng, 30, 5, void_rows=3)
    probs, labels, queries = select_instances(cls, 4, max_per_image=60)
    full = upsample_masks(logits, padded, resized, original)
    want = instances_from_masks(probs, labels, queries, full[queries])
    tiles = TiledLogits(logits, padded, resized, original, tile=int(rng.integers(3, 10)))
    got = instances_from_tiles(probs, labels, queries, tiles)
    np.testing.assert_array_equal(got.masks, want.masks, err_msg=str(seed))
    np.testing.assert_array_equal(got.scores, want.scores, err_msg=str(seed))
    np.testing.assert_array_equal(got.boxes, want.boxes, err_msg=str(seed))
    np.testing.assert_array_equal(got.query_indices, want.query_indices, err_msg=str(seed))


@pytest.mark.parametrize("sizes", [*SIZES, "fixture"])
def test_prompt_masks_from_tiles_equal_the_thresholded_resized_masks(sizes):
    rng, seed = _rng()
    h4w4, padded, resized, original = _fixture_sizes() if sizes == "fixture" else sizes
    logits = _logits(rng, 6, h4w4, 10.0 ** rng.uniform(0, 4))
    want = binary_masks(upsample_masks(logits, padded, resized, original))
    tiles = TiledLogits(logits, padded, resized, original)
    np.testing.assert_array_equal(
        binary_masks_from_tiles(tiles, np.array([4, 0, 2])), want[[4, 0, 2]], err_msg=str(seed)
    )
    iou = rng.standard_normal(6).astype(np.float32)
    result = prompt_results(logits, iou, padded, resized, original)
    np.testing.assert_array_equal(result.masks, want, err_msg=str(seed))


def test_assembled_results_equal_the_plain_post_processing():
    from omg_rt import assembly
    from omg_rt.bundle import Vocabulary
    from omg_rt.sessions import ImageSession
    from omg_rt.spec import PostprocessSpec

    rng, seed = _rng()
    h4w4, padded, resized, original = SIZES[1]
    q, k, things = 30, 6, 4
    logits = _cells(rng, q, h4w4)
    cls = _cls(rng, q, k, void_rows=8)
    session = ImageSession(key=("test",), original_hw=original, resized_hw=resized,
                           padded_hw=padded, encoded=None)
    vocab = Vocabulary(names=tuple(map(str, range(k))), num_things=things, seen=np.ones(k, bool),
                       class_bank=np.zeros((k, 1, 1), np.float32))
    post = PostprocessSpec()
    full = upsample_masks(logits, padded, resized, original)

    for video in (False, True):
        got = assembly.panoptic_result(session, cls, logits, vocab, post, video_ids=video)
        plain = (vps_results(cls, [full], things)[0] if video
                 else panoptic_results(cls, full, things))
        np.testing.assert_array_equal(
            got.id_map, np.where(plain.id_map == k, -1, plain.id_map), err_msg=str(seed)
        )
        assert got.ids.tolist() == [s["id"] for s in plain.segments], seed
        assert len(got) > 1, seed

    got = assembly.instance_result(session, cls, logits, vocab, post)
    probs, labels, queries = select_instances(cls, things)
    plain = instances_from_masks(probs, labels, queries, full[queries])
    np.testing.assert_array_equal(got.masks, plain.masks, err_msg=str(seed))
    np.testing.assert_array_equal(got.scores, plain.scores, err_msg=str(seed))

    iou = rng.standard_normal(3).astype(np.float32)
    got = assembly.prompt_result(session, logits[:3], iou, cls[:3], vocab)
    np.testing.assert_array_equal(got.masks, binary_masks(full[:3]), err_msg=str(seed))
