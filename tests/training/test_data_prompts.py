"""SAM-style prompts from masks: clicks land inside, the centre click is the innermost pixel,
boxes contain their mask, and jitter stays within its bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from training.data.formats import DataError
from training.data.prompts import mask_box, point_pseudo_box, sample_box, sample_point


@st.composite
def masks(draw):
    """Random non-empty masks: unions of rectangles, sometimes touching the image edge."""
    h, w = draw(st.integers(4, 40)), draw(st.integers(4, 40))
    mask = np.zeros((h, w), bool)
    for _ in range(draw(st.integers(1, 3))):
        y0, x0 = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        y1, x1 = draw(st.integers(y0 + 1, h)), draw(st.integers(x0 + 1, w))
        mask[y0:y1, x0:x1] = True
    return mask


@settings(max_examples=60, deadline=None)
@given(masks(), st.integers(0, 2**32 - 1))
def test_clicks_land_inside_the_mask(mask, seed):
    rng = np.random.default_rng(seed)
    for mode in ("center", "random"):
        x, y = sample_point(mask, mode, rng)
        assert float(x).is_integer() and float(y).is_integer()
        assert mask[int(y), int(x)]


@settings(max_examples=60, deadline=None)
@given(masks())
def test_center_click_is_the_distance_transform_maximum(mask):
    x, y = sample_point(mask, "center")
    # Independent reference: exact Euclidean distance to the nearest background pixel, with
    # the outside of the image counting as background.
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    assert dist[int(y), int(x)] == pytest.approx(dist.max(), abs=1e-4)


def test_center_click_of_a_ring_like_shape_is_in_its_thickest_part():
    mask = np.zeros((30, 60), bool)
    mask[5:25, 5:25] = True  # a thick square ...
    mask[12:16, 25:58] = True  # ... with a long thin arm: the centroid would be near the joint
    x, y = sample_point(mask, "center")
    assert 12 <= x <= 17 and 12 <= y <= 17


def test_random_clicks_cover_the_mask_and_follow_the_seed():
    mask = np.zeros((10, 10), bool)
    mask[2:4, 3:6] = True
    seen = {tuple(sample_point(mask, "random", np.random.default_rng(s))) for s in range(200)}
    assert len(seen) == 6
    a = sample_point(mask, "random", np.random.default_rng(3))
    b = sample_point(mask, "random", np.random.default_rng(3))
    assert np.array_equal(a, b)


@settings(max_examples=60, deadline=None)
@given(masks())
def test_box_is_the_tight_box_of_the_mask(mask):
    x0, y0, x1, y1 = mask_box(mask).astype(int)
    ys, xs = np.nonzero(mask)
    assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert np.array_equal(sample_box(mask, 0.0), mask_box(mask))


@settings(max_examples=60, deadline=None)
@given(masks(), st.floats(0.01, 0.5), st.integers(0, 2**32 - 1))
def test_box_jitter_is_bounded_and_clipped_to_the_image(mask, jitter, seed):
    h, w = mask.shape
    tight = mask_box(mask)
    box = sample_box(mask, jitter, np.random.default_rng(seed))
    side = np.array([tight[2] - tight[0], tight[3] - tight[1]] * 2)
    assert box.dtype == np.float32
    assert np.all(box >= 0) and box[2] <= w and box[3] <= h
    assert box[0] < box[2] and box[1] < box[3]
    # Within the jitter bound, except where a 1-pixel minimum size had to be restored.
    assert np.all(np.abs(box - tight) <= jitter * side + 1.0)


def test_jittered_boxes_differ_between_draws():
    mask = np.zeros((50, 50), bool)
    mask[10:30, 15:40] = True
    boxes = {tuple(sample_box(mask, 0.2, np.random.default_rng(s))) for s in range(10)}
    assert len(boxes) == 10


def test_click_pseudo_box_is_six_pixels_wide():
    assert point_pseudo_box(np.array([10.0, 4.0])).tolist() == [7.0, 1.0, 13.0, 7.0]


def test_prompts_reject_bad_input():
    empty = np.zeros((5, 5), bool)
    with pytest.raises(DataError, match="mask"):
        sample_point(empty)
    with pytest.raises(DataError, match="mask"):
        sample_box(np.ones((5, 5), np.uint8))
    full = np.ones((5, 5), bool)
    with pytest.raises(DataError, match="mode"):
        sample_point(full, "middle")
    with pytest.raises(DataError, match="rng"):
        sample_point(full, "random")
    with pytest.raises(DataError, match="jitter"):
        sample_box(full, -0.1)
