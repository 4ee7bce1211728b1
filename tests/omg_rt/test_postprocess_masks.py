"""Mask resizing equals PyTorch's F.interpolate (bilinear, align_corners=False), up and down."""

from __future__ import annotations

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


@pytest.mark.parametrize(("n_in", "n_out"), [(768, 480), (1024, 640), (981, 480), (7, 13), (9, 9)])
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
        ((46, 62), (184, 248), (184, 245), (90, 120)),  # video-like (736x981 in 736x992, /4)
        ((8, 8), (32, 32), (30, 25), (60, 50)),  # crop + up
        ((8, 8), (32, 32), (32, 32), (32, 32)),  # nothing to crop or resize after x4
        ((10, 10), (33, 37), (30, 30), (45, 45)),  # padded size not a multiple of h4
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
    golden = np.load(GOLDEN / name)
    result = prompt_results(
        golden["mask_logits"], golden["cls_scores"][:, -1], (768, 1024), (768, 1024), (480, 640)
    )
    assert result.masks.shape == golden["final_masks"].shape
    assert (result.masks == golden["final_masks"]).mean() >= 0.999
    assert result.masks.any()
    assert result.scores.dtype == np.float32 and np.all((result.scores > 0) & (result.scores <= 1))
