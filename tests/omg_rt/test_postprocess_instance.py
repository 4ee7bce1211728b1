"""Instance results follow the official instance_postprocess: top-k over Q x K, things only."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from omg_rt.errors import InvalidInputError
from omg_rt.postprocess.instance import (
    instance_results,
    instances_from_masks,
    masks_to_boxes,
    select_instances,
)
from omg_rt.postprocess.semantic import semantic_results, semantic_with_scores


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_top_k_order_queries_labels_and_scores_by_hand():
    # Q = 3, K = 3 (classes 0, 1 things; 2 stuff), void last.
    cls = np.array([[4.0, 1.0, 0.0, 0.0], [0.0, 3.0, 5.0, 0.0], [2.0, 2.5, 0.0, 1.0]], np.float32)
    masks = np.full((3, 4, 5), -6.0, np.float32)
    masks[0, :2, :3] = 3.0  # 6 pixels at sigmoid(3)
    masks[1, 1:, 1:] = 1.0
    masks[2, 3, 4] = 0.5
    result = instance_results(cls, masks, num_things=2, max_per_image=4)
    probs = _softmax(cls.astype(np.float64))[:, :3].reshape(-1)
    order = np.argsort(-probs)[:4]  # flat indices, best first; 4 * 64 > 9: nth_element path
    # By hand: q0c0, q1c2 (stuff, dropped), q2c1, q2c0 are the four best.
    assert sorted(order.tolist()) == [0, 5, 6, 7]
    assert result.query_indices.tolist() == [0, 2, 2]
    assert result.labels.tolist() == [0, 1, 0]
    mask_score = {0: expit(3.0), 2: expit(0.5)}
    expected = [probs[0] * mask_score[0], probs[7] * mask_score[2], probs[6] * mask_score[2]]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-5)
    assert result.masks.dtype == bool and result.masks[0].sum() == 6
    np.testing.assert_array_equal(result.boxes[0], [0, 0, 3, 2])
    np.testing.assert_array_equal(result.boxes[1], [4, 3, 5, 4])


def test_large_top_k_is_sorted_by_class_probability():
    rng = np.random.default_rng(0)
    cls = rng.standard_normal((300, 41)).astype(np.float32)
    probs, labels, queries = select_instances(cls, num_things=40)
    assert probs.shape == (100,) and np.all(np.diff(probs) <= 0)
    flat = _softmax(cls)[:, :40]
    np.testing.assert_allclose(probs, flat[queries, labels], rtol=1e-6)


def test_empty_mask_scores_zero_and_boxes_zero():
    cls = np.array([[3.0, 0.0]], np.float32)
    result = instance_results(cls, np.full((1, 3, 3), -1.0, np.float32), num_things=1)
    assert result.scores.tolist() == [0.0]
    np.testing.assert_array_equal(result.boxes, np.zeros((1, 4), np.float32))


def test_no_thing_class_in_the_top_k_gives_an_empty_result_of_the_right_shapes():
    # Q = 2, K = 3 (class 0 a thing); the top 2 are both stuff (classes 1 and 2).
    cls = np.array([[-5.0, 4.0, 0.0, 0.0], [-5.0, 0.0, 4.0, 0.0]], np.float32)
    result = instance_results(cls, np.ones((2, 5, 7), np.float32), num_things=1, max_per_image=2)
    expected = {"scores": ((0,), np.float32), "labels": ((0,), np.int64),
                "query_indices": ((0,), np.int64), "masks": ((0, 5, 7), bool),
                "boxes": ((0, 4), np.float32)}
    for name, (shape, dtype) in expected.items():
        value = getattr(result, name)
        assert (value.shape, value.dtype) == (shape, np.dtype(dtype)), name
    direct = instances_from_masks(np.zeros(0, np.float32), np.zeros(0, np.int64),
                                  np.zeros(0, np.int64), np.zeros((0, 5, 7), np.float32))
    assert direct.masks.shape == (0, 5, 7) and direct.boxes.shape == (0, 4)


def test_masks_to_boxes_is_exclusive_on_the_far_side():
    masks = np.zeros((1, 5, 6), bool)
    masks[0, 1:4, 2] = True
    np.testing.assert_array_equal(masks_to_boxes(masks), [[2, 1, 3, 4]])


def test_semantic_argmax_of_class_weighted_masks():
    # Two queries: q0 says class 1 (p ~ 0.84), q1 says class 0 (p ~ 0.67).
    cls = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, -5.0]], np.float32)
    masks = np.array(
        [[[9.0, 9.0, -9.0]], [[9.0, -9.0, 9.0]]], np.float32
    )  # pixel 0: both on; pixel 1: q0; pixel 2: q1
    sem = semantic_results(cls, masks)
    p = _softmax(cls.astype(np.float64))[:, :2]
    s = expit(masks[:, 0].astype(np.float64))  # (Q, 3)
    expected = np.argmax(p.T @ s, axis=0)
    assert sem.dtype == np.int32 and sem.shape == (1, 3)
    assert sem[0].tolist() == expected.tolist() == [1, 1, 0]


def test_semantic_class_score_is_the_mean_mask_weighted_class_probability():
    cls = np.array([[0.0, 2.0, 0.0], [1.0, 0.0, -5.0]], np.float32)  # K = 2
    masks = np.array([[[9.0, 9.0, -9.0]], [[9.0, -9.0, 9.0]]], np.float32)
    label_map, scores = semantic_with_scores(cls, masks)
    weights = expit(masks[:, 0].astype(np.float64))  # (Q, 3)
    per_pixel = _softmax(cls.astype(np.float64))[:, :2].T @ weights / weights.sum(0)
    np.testing.assert_array_equal(label_map, semantic_results(cls, masks))
    assert scores.dtype == np.float32 and scores.shape == (2,)
    np.testing.assert_allclose(scores[1], per_pixel[1, :2].mean(), rtol=1e-6)
    np.testing.assert_allclose(scores[0], per_pixel[0, 2], rtol=1e-6)


def test_semantic_score_is_zero_for_a_class_that_labels_no_pixel():
    cls = np.array([[5.0, 0.0, 0.0]], np.float32)
    _, scores = semantic_with_scores(cls, np.full((1, 2, 2), 3.0, np.float32))
    assert scores[1] == 0.0 and scores[0] > 0.9


def test_bad_inputs_raise():
    with pytest.raises(InvalidInputError, match=r"cls_logits: expected float32 \(Q, K \+ 1\)"):
        instance_results(np.zeros((2, 3)), np.zeros((2, 4, 4), np.float32), 1)
    with pytest.raises(InvalidInputError, match="mask_logits: expected 2 masks"):
        semantic_results(np.zeros((2, 3), np.float32), np.zeros((1, 4, 4), np.float32))
