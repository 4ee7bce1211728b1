"""Large-scale jitter keeps masks on their pixels; flips; pseudo-videos share or separate tracks."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from training.data.formats import DataError
from training.data.transforms import (
    ClipSample,
    crop_and_pad,
    horizontal_flip,
    large_scale_jitter,
    pseudo_video,
)

RED, BLUE, GREEN = (230, 20, 20), (20, 40, 230), (20, 200, 20)


def _toy(source_id: int = 1, h: int = 40, w: int = 56) -> ClipSample:
    """A green field with a red box and a blue disc: three tracks of known colours."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:] = GREEN
    box = np.zeros((h, w), bool)
    box[4:18, 6:30] = True
    disc = np.zeros((h, w), np.uint8)
    cv2.circle(disc, (40, 26), 9, 1, -1)
    disc = disc.astype(bool)
    image[box], image[disc] = RED, BLUE
    field = ~(box | disc)
    masks = np.stack([box, disc, field])[:, None]
    return ClipSample(image[None], masks, np.array([0, 1, 5]), np.array([11, 12, 13]),
                      np.ones((1, h, w), bool), source_id)


COLOURS = {11: RED, 12: BLUE, 13: GREEN}


def _interior(mask: np.ndarray) -> np.ndarray:
    """Mask pixels at least 2 px from its border; the crop edge counts as a border, since the
    object may continue just outside the crop."""
    return cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8), iterations=2,
                     borderType=cv2.BORDER_CONSTANT, borderValue=0) > 0


@pytest.mark.parametrize("seed", range(12))
def test_lsj_keeps_masks_on_the_pixels_of_their_object(seed):
    rng = np.random.default_rng(seed)
    out = large_scale_jitter(_toy(), rng, 48, scale_range=(0.6, 2.0))
    frame = out.frames[0].astype(int)
    checked = right = 0
    assert out.frames.shape == (1, 48, 48, 3) and out.masks.shape[1:] == (1, 48, 48)
    for mask, track in zip(out.masks[:, 0], out.track_ids, strict=True):
        colour = np.array(COLOURS[int(track)])
        inner = _interior(mask)
        checked += inner.sum()
        # Interiors are exactly the object's colour; bilinear blending touches only the rim.
        assert np.abs(frame[inner] - colour).max(initial=0) <= 2
        right += (np.abs(frame[mask] - colour).max(axis=1) <= 10).sum()
    assert checked > 0.3 * out.valid.sum()  # the interior check is not vacuous
    assert right > 0.85 * out.valid.sum()  # and nearly every pixel has its mask's colour
    # Padding is empty: no image, no mask.
    assert not out.frames[0][~out.valid[0]].any()
    assert not (out.masks[:, 0] & ~out.valid[0]).any()


def test_a_shifted_mask_would_be_caught_by_the_colour_check():
    clip = _toy()
    shifted = np.roll(clip.masks[0, 0], 4, axis=1)
    assert np.abs(clip.frames[0][shifted].astype(int) - RED).max() > 100


def test_lsj_at_fixed_scale_fits_the_image_top_left():
    out = large_scale_jitter(_toy(h=40, w=56), np.random.default_rng(0), 28, scale_range=(1, 1))
    # 56 × 40 fits 28 × 28 at factor 0.5 → 28 wide, 20 high, no crop needed.
    assert out.valid[0, :20].all() and not out.valid[0, 20:].any()
    assert out.masks[:, 0].sum(axis=0)[:20].min() == 1  # the three masks tile the image


def test_tracks_that_leave_the_crop_are_dropped():
    clip = _toy()
    window = crop_and_pad(clip, 30, 0, 10, 20)  # a strip of the field only
    assert window.frames.shape == (1, 10, 20, 3)
    kept = window.drop_empty()
    assert kept.track_ids.tolist() == [13]
    counts = {len(large_scale_jitter(clip, np.random.default_rng(s), 16, (3.0, 4.0)).labels)
              for s in range(30)}
    assert min(counts) < 3  # some crops lose an object
    for s in range(30):
        out = large_scale_jitter(clip, np.random.default_rng(s), 16, (3.0, 4.0))
        assert out.masks.reshape(len(out.masks), -1).any(axis=1).all()


def test_crop_beyond_the_image_pads_with_invalid_pixels():
    out = crop_and_pad(_toy(), -5, -7, 20, 20)
    assert not out.valid[0, :5].any() and not out.valid[0, :, :7].any()
    assert out.valid[0, 5:, 7:].all()
    assert np.array_equal(out.frames[0, 5:, 7:], _toy().frames[0, :15, :13])


def test_horizontal_flip_mirrors_frames_and_masks_together():
    clip = _toy()
    flipped = horizontal_flip(clip)
    assert np.array_equal(flipped.frames[0], clip.frames[0, :, ::-1])
    assert np.array_equal(flipped.masks[0, 0], clip.masks[0, 0, :, ::-1])
    assert (flipped.frames[0][flipped.masks[0, 0]] == RED).all()
    back = horizontal_flip(flipped)
    assert np.array_equal(back.frames, clip.frames) and np.array_equal(back.masks, clip.masks)


def test_pseudo_video_of_one_image_keeps_each_object_in_one_track():
    rng = np.random.default_rng(4)
    a = large_scale_jitter(_toy(), rng, 32, (0.8, 1.2))
    b = large_scale_jitter(_toy(), rng, 32, (0.8, 1.2))
    clip = pseudo_video(a, b)
    assert clip.frames.shape == (2, 32, 32, 3) and clip.valid.shape == (2, 32, 32)
    assert len(clip.labels) == len(set(a.track_ids.tolist()) | set(b.track_ids.tolist()))
    assert clip.track_ids.tolist() == list(range(1, len(clip.labels) + 1))
    both = clip.masks.any(axis=(2, 3)).all(axis=1)
    assert both.sum() == len(set(a.track_ids.tolist()) & set(b.track_ids.tolist())) >= 1
    for k in range(len(clip.labels)):  # the shared track keeps one class
        assert clip.labels[k] in (0, 1, 5)


def test_pseudo_video_of_two_images_keeps_their_objects_apart():
    a, b = _toy(source_id=1), _toy(source_id=2)
    b = ClipSample(b.frames, b.masks[:2], np.array([3, 4]), b.track_ids[:2], b.valid, 2)
    clip = pseudo_video(a, b)
    assert clip.masks.shape == (5, 2, 40, 56)
    present = clip.masks.any(axis=(2, 3))
    assert present[:3].tolist() == [[True, False]] * 3
    assert present[3:].tolist() == [[False, True]] * 2
    assert clip.labels.tolist() == [0, 1, 5, 3, 4]
    assert np.array_equal(clip.masks[:3, 0], a.masks[:, 0])
    assert np.array_equal(clip.frames[1], b.frames[0])


def test_per_frame_crops_differ_but_stay_aligned():
    clip = _toy()
    twice = ClipSample(np.repeat(clip.frames, 2, 0), np.repeat(clip.masks, 2, 1), clip.labels,
                       clip.track_ids, np.repeat(clip.valid, 2, 0), 1)
    differ = 0
    for s in range(6):
        out = large_scale_jitter(twice, np.random.default_rng(s), 24, (1.5, 2.0),
                                 crop_per_frame=True)
        differ += not np.array_equal(out.frames[0], out.frames[1])
        for t in range(2):
            for mask, track in zip(out.masks[:, t], out.track_ids, strict=True):
                inner = _interior(mask)
                error = np.abs(out.frames[t][inner].astype(int) - COLOURS[int(track)])
                assert error.max(initial=0) <= 2
    assert differ >= 4


def test_transforms_reject_bad_input():
    with pytest.raises(DataError, match="scale_range"):
        large_scale_jitter(_toy(), np.random.default_rng(0), 32, (2.0, 1.0))
    clip = _toy()
    two = pseudo_video(clip, clip)
    with pytest.raises(DataError, match="sample_a"):
        pseudo_video(two, clip)
    with pytest.raises(DataError, match="sample_a, sample_b"):
        pseudo_video(clip, _toy(h=20))
