"""Preprocessing follows the official mmcv Resize + data preprocessor, sizes from the fixtures."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from omg_rt.errors import InvalidInputError
from omg_rt.preprocess import (
    VIDEO_SCALE,
    keep_ratio_size,
    normalize_and_pad,
    prepare_image,
    resize_keep_ratio,
)
from omg_rt.spec import IMAGENET_MEAN, IMAGENET_STD
from tests.conftest import OFFICIAL_FIXTURES

GOLDEN = OFFICIAL_FIXTURES / "official_golden"


def _meta(name: str) -> dict:
    path = GOLDEN / name
    if not path.exists():
        pytest.skip(f"official fixtures not found at {GOLDEN}")
    return json.loads(path.read_text())


def _image_scale(meta: dict) -> tuple[int, int]:
    """The image fixture's resize box: square, its long edge the resized long edge (the 1024
    demo scale for the 640x480 fixture; ``tests.official_golden.official_bundle`` does the same)."""
    edge = max(meta["resized_hw"])
    return edge, edge


def _padded_hw(meta: dict) -> tuple[int, int]:
    """The padded input size: 4x the stride-4 mask logits the fixture records."""
    h4, w4 = meta["mask_shape"][-2:]
    return 4 * h4, 4 * w4


def test_keep_ratio_size_gives_the_fixtures_resized_sizes():
    image, video = _meta("golden.json"), _meta("video_golden.json")
    resized = keep_ratio_size(tuple(image["input_hw"]), _image_scale(image))
    assert resized == tuple(image["resized_hw"])
    assert keep_ratio_size(tuple(video["input_hw"]), VIDEO_SCALE) == tuple(video["resized_hw"])


@pytest.mark.parametrize(
    ("hw", "scale", "expected"),
    [
        ((480, 640), (1024, 1024), (768, 1024)),  # landscape in a square box
        ((360, 480), (1280, 736), (736, 981)),  # short edge binds (the video scale)
        ((640, 480), (1333, 800), (1067, 800)),  # portrait: short edge binds
        ((100, 1000), (1333, 800), (133, 1333)),  # long edge binds
        ((800, 1333), (800, 1333), (800, 1333)),  # (short, long) order is the same box
    ],
)
def test_keep_ratio_size_matches_mmcv_rescale_size(hw, scale, expected):
    assert keep_ratio_size(hw, scale) == expected


def test_video_frame_is_resized_and_padded_as_the_official_run():
    meta = _meta("video_golden.json")
    (h, w), (hr, wr) = meta["input_hw"], meta["resized_hw"]
    image = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    prepared = prepare_image(image, VIDEO_SCALE)
    assert prepared.original_hw == (h, w)
    assert prepared.resized_hw == (hr, wr)
    assert prepared.padded_hw == tuple(meta["batch_input_hw"])
    assert prepared.tensor.shape == (1, 3, *meta["batch_input_hw"])
    assert prepared.tensor.dtype == np.float32
    assert np.all(prepared.tensor[..., hr:, :] == 0) and np.all(prepared.tensor[..., wr:] == 0)


def test_golden_image_prepares_to_the_fixture_sizes():
    meta = _meta("golden.json")
    bgr = cv2.imread(str(GOLDEN / "image.png"), cv2.IMREAD_COLOR)
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    prepared = prepare_image(rgb, _image_scale(meta))
    hr, wr = meta["resized_hw"]
    assert prepared.original_hw == tuple(meta["input_hw"])
    assert prepared.resized_hw == (hr, wr)
    assert prepared.padded_hw == _padded_hw(meta)
    # Channel order: channel 0 holds the red plane, normalised with the red statistics.
    resized = cv2.resize(rgb, (wr, hr), interpolation=cv2.INTER_LINEAR)
    red = (resized[..., 0].astype(np.float32) - np.float32(123.675)) / np.float32(58.395)
    np.testing.assert_array_equal(prepared.tensor[0, 0, :hr, :wr], red)


def test_resizing_rgb_equals_resizing_bgr_then_swapping():
    image = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    rgb = resize_keep_ratio(image, (100, 70))
    bgr = cv2.resize(image[..., ::-1].copy(), (rgb.shape[1], rgb.shape[0]), cv2.INTER_LINEAR)
    assert rgb.shape == (70, 100, 3)
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])


def test_padding_is_zero_after_normalisation():
    image = np.full((33, 40, 3), 200, dtype=np.uint8)
    tensor = normalize_and_pad(image)
    assert tensor.shape == (1, 3, 64, 64)
    mean = np.asarray(IMAGENET_MEAN, np.float32)
    std = np.asarray(IMAGENET_STD, np.float32)
    np.testing.assert_array_equal(tensor[0, :, 0, 0], (np.float32(200) - mean) / std)
    assert np.all(tensor[0, :, 33:, :] == 0) and np.all(tensor[0, :, :, 40:] == 0)
    assert np.all(tensor[0, :, :33, :40] != 0)


def test_sizes_already_multiple_of_divisor_are_not_padded():
    assert normalize_and_pad(np.zeros((64, 32, 3), np.uint8)).shape == (1, 3, 64, 32)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 5)), "image: expected uint8 (H, W, 3), got float64 (4, 5)"),
        (np.zeros((4, 5, 4), np.uint8), "image: expected uint8 (H, W, 3), got uint8 (4, 5, 4)"),
        ([[0]], "image: expected uint8 (H, W, 3) numpy array, got list"),
    ],
)
def test_bad_images_raise_typed_errors_naming_the_argument(image, message):
    with pytest.raises(InvalidInputError) as info:
        prepare_image(image)
    assert str(info.value) == message


def test_bad_scale_and_std_raise():
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(InvalidInputError, match="scale"):
        resize_keep_ratio(image, (1024,))
    with pytest.raises(InvalidInputError, match="std"):
        normalize_and_pad(image, std=(1.0, 0.0, 1.0))


def test_normalisation_is_the_official_float32_arithmetic_bit_for_bit():
    # mmdet's DetDataPreprocessor: (float(image) - mean) / std on the (3, H, W) tensor, then zero
    # padding; fresh random sizes and pixels every run
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng()
    h, w = (int(v) for v in rng.integers(20, 90, 2))
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    want = (torch.from_numpy(image).permute(2, 0, 1).float() - mean) / std
    want = torch.nn.functional.pad(want, (0, -w % 32, 0, -h % 32))[None].numpy()
    got = normalize_and_pad(image)
    assert got.shape == want.shape, (h, w)
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=f"{h}x{w}")
