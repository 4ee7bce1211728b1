"""The open-vocabulary geometric ensemble equals the official open_voc_inference maths."""

from __future__ import annotations

import numpy as np
import pytest

from omg_rt.errors import InvalidInputError
from omg_rt.postprocess.open_vocab import (
    clip_resolution_masks,
    clip_valid_queries,
    mask_pooled_clip_features,
    open_vocab_ensemble,
)
from tests.conftest import OFFICIAL_FIXTURES


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_hand_computed_case_seen_unseen_and_invalid_queries():
    query = np.array([[2.0, 0.0, 1.0, 0.5], [0.0, 1.0, 3.0, -1.0]], np.float32)  # K = 3
    clip = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 0.0]], np.float32)
    seen = np.array([True, False, True])
    valid = np.array([True, False])
    got = open_vocab_ensemble(query, clip, seen, valid)

    q = _softmax(query[:, :3].astype(np.float64))
    c = _softmax(clip.astype(np.float64))
    # Query 0 (valid): seen classes 0, 2 use c ** 0.4, unseen class 1 uses c ** 0.8.
    e0 = np.log(q[0] ** np.array([0.6, 0.2, 0.6]) * c[0] ** np.array([0.4, 0.8, 0.4]))
    # Query 1 (mask empty at CLIP resolution): the learned scores alone.
    e1 = np.log(q[1])
    void = _softmax(query.astype(np.float64))[:, 3]
    expected = np.stack(
        [
            np.append(_softmax(e0) * (1 - void[0]), void[0]),
            np.append(_softmax(e1) * (1 - void[1]), void[1]),
        ]
    )
    assert got.dtype == np.float32 and got.shape == (2, 4)
    np.testing.assert_allclose(got, np.log(expected + 1e-8), rtol=1e-5)


def test_invalid_query_keeps_the_learned_distribution():
    rng = np.random.default_rng(0)
    query = rng.standard_normal((4, 6)).astype(np.float32)
    clip = rng.standard_normal((4, 5)).astype(np.float32) * 10
    got = open_vocab_ensemble(query, clip, np.ones(5, bool), np.zeros(4, bool))
    np.testing.assert_allclose(np.exp(got), _softmax(query) + 1e-8, rtol=1e-5)


def test_void_column_equals_the_official_run():
    golden = np.load(OFFICIAL_FIXTURES / "official_golden" / "golden_ov.npz")
    cls = np.load(OFFICIAL_FIXTURES / "official_golden" / "golden.npz")["cls_scores"][:, :241]
    clip = np.random.default_rng(1).standard_normal((300, 240)).astype(np.float32)
    got = open_vocab_ensemble(cls, clip, golden["seen"].astype(bool), np.ones(300, bool))
    # The void probability comes from the learned classifier alone, whatever CLIP says.
    np.testing.assert_allclose(got[:, 240], golden["ov_cls"][:, 240], rtol=1e-5)
    # The class part is a distribution scaled by (1 - p_void).
    total = np.exp(got.astype(np.float64)).sum(1)
    np.testing.assert_allclose(total, 1.0 + 241e-8, rtol=1e-5)


def test_underflowing_probabilities_give_minus_infinity_logs_not_nan():
    query = np.array([[200.0, 0.0, 0.0]], np.float32)  # class 1 underflows to 0
    clip = np.array([[0.0, 0.0]], np.float32)
    got = open_vocab_ensemble(query, clip, np.array([True, False]), np.array([True]))
    assert not np.isnan(got).any()
    assert got[0, 1] == pytest.approx(np.log(1e-8), rel=1e-5)


def test_valid_queries_at_clip_resolution():
    logits = np.full((3, 16, 16), -5.0, np.float32)
    # 64 -> 2 samples the padded map at 15.5 and 47.5, i.e. stride-4 rows/columns 3-4, 11-12.
    logits[1, 2:6, 10:14] = 5.0
    logits[2, 7:9, 7:9] = 5.0  # a blob between the samples: the CLIP map never sees it
    valid = clip_valid_queries(logits, (64, 64), (2, 2))
    assert valid.tolist() == [False, True, False]


def test_valid_queries_equal_the_two_torch_resizes():
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    logits = (np.random.default_rng(2).standard_normal((40, 24, 31)) * 3 - 4.5).astype(np.float32)
    padded = f.interpolate(torch.from_numpy(logits)[None], size=(96, 124), mode="bilinear")
    small = f.interpolate(padded, size=(3, 4), mode="bilinear")[0]
    want = (small > 0).flatten(1).any(1).numpy()
    got = clip_valid_queries(logits, (96, 124), (3, 4))
    assert want.any() and not want.all()
    np.testing.assert_array_equal(got, want)


def test_clip_resolution_masks_equal_the_two_torch_resizes():
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    logits = (np.random.default_rng(4).standard_normal((5, 24, 31)) * 3).astype(np.float32)
    padded = f.interpolate(torch.from_numpy(logits)[None], size=(96, 124), mode="bilinear")
    want = f.interpolate(padded, size=(3, 4), mode="bilinear")[0].numpy()
    got = clip_resolution_masks(logits, (96, 124), (3, 4))
    assert got.dtype == np.float32 and got.shape == (5, 3, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_mask_pooling_averages_clip_features_under_each_mask_over_the_tube():
    logits = np.full((2, 2, 16, 16), -5.0, np.float32)  # (Q, T, h4, w4), CLIP map 2 x 2
    logits[0, 0, 2:6, 2:6] = 5.0  # query 0: cell (0, 0) of frame 0 ...
    logits[0, 1, 10:14, 10:14] = 5.0  # ... and cell (1, 1) of frame 1; query 1: nothing
    features = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)  # (T, C, hc, wc)
    pooled, valid = mask_pooled_clip_features(logits, features, (64, 64))
    assert valid.tolist() == [True, False]
    want = (features[0, :, 0, 0] + features[1, :, 1, 1]) / (2 + 1e-8)
    np.testing.assert_allclose(pooled[0], want, rtol=1e-6)
    np.testing.assert_array_equal(pooled[1], np.zeros(3, np.float32))


def test_shape_mismatch_raises():
    with pytest.raises(InvalidInputError, match="clip_logits"):
        open_vocab_ensemble(
            np.zeros((2, 4), np.float32),
            np.zeros((2, 4), np.float32),
            np.ones(3, bool),
            np.ones(2, bool),
        )
