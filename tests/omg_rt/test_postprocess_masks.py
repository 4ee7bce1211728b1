"""Mask resizing equals PyTorch's F.interpolate (bilinear, align_corners=False), up and down."""

from __future__ import annotations

import json

import numpy as np
import pytest

from omg_rt.errors import InvalidInputError
from omg_rt.postprocess.interactive import prompt_results
from omg_rt.postprocess.masks import linear_taps, resize_bilinear, upsample_masks
from tests.conftest import OFFICIAL_FIXTURES, TOLERANCES

torch = pytest.importorskip("torch")
F = torch.nn.functional
GOLDEN = OFFICIAL_FIXTURES / "official_golden"
RTOL = TOLERANCES["float32"]["rtol"]


def _fixture_meta(name: str) -> dict | None:
    path = GOLDEN / name
    return json.loads(path.read_text()) if path.exists() else None


def _fixture_resizes() -> list[tuple[tuple[int, ...], ...]]:
    """(stride-4, padded, resized, original) of the official image and video fixtures: the
    stride-4 size from the image fixture's mask logits, the video's from its batch input."""
    cases = []
    image, video = _fixture_meta("golden.json"), _fixture_meta("video_golden.json")
    if image is not None:
        h4, w4 = image["mask_shape"][-2:]
        cases.append(((h4, w4), (4 * h4, 4 * w4), tuple(image["resized_hw"]),
                      tuple(image["input_hw"])))
    if video is not None:
        hp, wp = video["batch_input_hw"]
        cases.append(((hp // 4, wp // 4), (hp, wp), tuple(video["resized_hw"]),
                      tuple(video["input_hw"])))
    return cases


def _fixture_axes() -> list[tuple[int, int]]:
    """Every (in, out) length the fixtures' resizes use along one axis."""
    pairs = set()
    for h4w4, padded, resized, original in _fixture_resizes():
        for axis in (0, 1):
            pairs |= {(h4w4[axis], padded[axis]), (resized[axis], original[axis])}
    return sorted(pairs)


def _torch_resize(maps: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    out = F.interpolate(torch.from_numpy(maps)[None], size=hw, mode="bilinear", align_corners=False)
    return out[0].numpy()


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


@pytest.mark.parametrize(
    ("in_hw", "out_hw"),
    [
        ((48, 64), (192, 256)),  # x4, the stride-4 -> padded step (OpenCV path)
        ((192, 256), (120, 160)),  # padded -> original, factor 1.6 down
        ((184, 245), (90, 120)),  # video crop -> original
        ((23, 37), (5, 7)),  # strong down, primes
        ((7, 5), (97, 61)),  # odd up
        ((1, 1), (5, 3)),  # 1x1 source
        ((24, 32), (1, 1)),  # to a single pixel
        ((5, 5), (5, 9)),  # one axis unchanged
    ],
)
def test_resize_bilinear_matches_torch(in_hw, out_hw):
    maps = (np.random.default_rng(0).standard_normal((5, *in_hw)) * 1e4).astype(np.float32)
    got = resize_bilinear(maps, out_hw)
    want = _torch_resize(maps, out_hw)
    assert got.shape == want.shape and got.dtype == np.float32
    assert _relative_error(got, want) < RTOL


@pytest.mark.parametrize(("n_in", "n_out"), [*_fixture_axes(), (7, 13), (9, 9), (981, 470)])
def test_linear_taps_are_torch_weights_bit_for_bit(n_in, n_out):
    # Interpolating the identity gives each output's weights over the inputs exactly.
    eye = torch.eye(n_in).reshape(1, n_in, 1, n_in)
    want = F.interpolate(eye, size=(1, n_out), mode="bilinear", align_corners=False)[0, :, 0]
    i0, i1, l0, l1 = linear_taps(n_in, n_out)
    got = np.zeros((n_in, n_out), np.float32)
    np.add.at(got, (i0, np.arange(n_out)), l0)
    np.add.at(got, (i1, np.arange(n_out)), l1)
    np.testing.assert_array_equal(got, want.numpy())


@pytest.mark.parametrize(
    ("h4w4", "padded", "resized", "original"),
    [
        ((24, 32), (96, 128), (96, 120), (61, 77)),  # crop + down
        ((46, 62), (184, 248), (184, 245), (90, 120)),  # video-like: a crop, then down by ~2
        ((8, 8), (32, 32), (30, 25), (60, 50)),  # crop + up
        ((8, 8), (32, 32), (32, 32), (32, 32)),  # nothing to crop or resize after x4
        ((10, 10), (33, 37), (30, 30), (45, 45)),  # padded size not a multiple of h4
        *_fixture_resizes(),
    ],
)
def test_upsample_masks_is_the_official_resize_crop_resize(h4w4, padded, resized, original):
    logits = (np.random.default_rng(1).standard_normal((3, *h4w4)) * 1e5).astype(np.float32)
    stage = _torch_resize(logits, padded)[:, : resized[0], : resized[1]]
    want = _torch_resize(np.ascontiguousarray(stage), original)
    got = upsample_masks(logits, padded, resized, original)
    assert got.shape == (3, *original)
    assert _relative_error(got, want) < RTOL


def test_upsample_masks_handles_no_queries_and_rejects_bad_sizes():
    assert upsample_masks(np.zeros((0, 4, 4), np.float32), (16, 16), (16, 16), (9, 9)).shape == (
        0,
        9,
        9,
    )
    with pytest.raises(InvalidInputError, match="resized_hw"):
        upsample_masks(np.zeros((1, 4, 4), np.float32), (16, 16), (17, 16), (9, 9))
    with pytest.raises(InvalidInputError, match=r"mask_logits: expected float32 \(C, H, W\)"):
        upsample_masks(np.zeros((1, 4, 4), np.float64), (16, 16), (16, 16), (9, 9))


@pytest.mark.parametrize("name", ["golden_prompt.npz", "golden_points.npz"])
def test_prompt_masks_equal_the_official_final_masks(name):
    golden, meta = np.load(GOLDEN / name), _fixture_meta("golden.json")
    assert meta is not None
    h4, w4 = golden["mask_logits"].shape[-2:]  # stride 4 of the padded input
    result = prompt_results(
        golden["mask_logits"],
        golden["cls_scores"][:, -1],
        (4 * h4, 4 * w4),
        tuple(meta["resized_hw"]),
        tuple(meta["input_hw"]),
    )
    assert result.masks.shape == golden["final_masks"].shape
    assert (result.masks == golden["final_masks"]).mean() >= 0.999
    assert result.masks.any()
    assert result.scores.dtype == np.float32 and np.all((result.scores > 0) & (result.scores <= 1))
