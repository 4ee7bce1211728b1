"""Hungarian matching: optimal on small costs, official cost terms, tube masks, reproducible."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from training.losses import uniform_points
from training.matcher import (
    HungarianMatcher,
    linear_assignment,
    pairwise_dice_cost,
    pairwise_sigmoid_ce_cost,
)


def _brute_force_min_cost(cost: torch.Tensor) -> float:
    """Smallest total cost of a one-to-one assignment of min(Q, N) pairs, by enumeration."""
    num_rows, num_cols = cost.shape
    if num_rows == 0 or num_cols == 0:
        return 0.0
    if num_rows >= num_cols:
        return min(
            sum(cost[rows[j], j].item() for j in range(num_cols))
            for rows in itertools.permutations(range(num_rows), num_cols)
        )
    return min(
        sum(cost[i, cols[i]].item() for i in range(num_rows))
        for cols in itertools.permutations(range(num_cols), num_rows)
    )


def _assignment_cost(cost: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> float:
    return cost[rows, cols].sum().item()


def _check_one_to_one(rows: torch.Tensor, cols: torch.Tensor, num_rows: int, num_cols: int):
    assert rows.dtype == torch.long and cols.dtype == torch.long
    assert len(rows) == len(cols) == min(num_rows, num_cols)
    assert len(set(rows.tolist())) == len(rows)
    assert len(set(cols.tolist())) == len(cols)
    assert rows.tolist() == sorted(rows.tolist())


def test_linear_assignment_finds_the_optimum_of_a_hand_built_matrix():
    # A greedy row-by-row choice takes (0, 0) = 1 and then pays 10; the optimum is 2 + 2.
    cost = torch.tensor([[1.0, 2.0], [2.0, 10.0]])
    rows, cols = linear_assignment(cost)
    assert rows.tolist() == [0, 1]
    assert cols.tolist() == [1, 0]
    assert _assignment_cost(cost, rows, cols) == pytest.approx(4.0)


def test_linear_assignment_leaves_the_costliest_query_unmatched():
    cost = torch.tensor([[5.0], [1.0], [3.0]])  # 3 queries, 1 target
    rows, cols = linear_assignment(cost)
    assert rows.tolist() == [1]
    assert cols.tolist() == [0]


@settings(max_examples=60, deadline=None)
@given(data=st.data(), num_rows=st.integers(1, 5), num_cols=st.integers(0, 5))
def test_linear_assignment_matches_brute_force(data, num_rows, num_cols):
    values = data.draw(
        st.lists(
            st.floats(-10.0, 10.0, allow_nan=False, width=32),
            min_size=num_rows * num_cols,
            max_size=num_rows * num_cols,
        )
    )
    cost = torch.tensor(values, dtype=torch.float32).reshape(num_rows, num_cols)
    rows, cols = linear_assignment(cost)
    _check_one_to_one(rows, cols, num_rows, num_cols)
    assert _assignment_cost(cost, rows, cols) == pytest.approx(
        _brute_force_min_cost(cost), abs=1e-4
    )


@settings(max_examples=25, deadline=None)
@given(
    num_queries=st.integers(1, 5),
    num_targets=st.lists(st.integers(0, 4), min_size=1, max_size=2),
    num_frames=st.integers(1, 2),
    seed=st.integers(0, 2**31 - 1),
)
def test_matcher_is_optimal_for_its_own_cost_matrix(num_queries, num_targets, num_frames, seed):
    torch.manual_seed(seed)
    batch, num_classes, height, width = len(num_targets), 3, 4, 5
    class_logits = torch.randn(batch, num_queries, num_classes + 1)
    mask_logits = 3 * torch.randn(batch, num_queries, num_frames, height, width)
    targets = [
        {
            "labels": torch.randint(0, num_classes, (n,)),
            "masks": torch.rand(n, num_frames, 4 * height, 4 * width) > 0.5,
        }
        for n in num_targets
    ]
    matcher = HungarianMatcher(num_points=32)
    indices = matcher(
        class_logits, mask_logits, targets, generator=torch.Generator().manual_seed(seed)
    )

    # Same generator stream, same order of draws (one point set per image) -> same points.
    generator = torch.Generator().manual_seed(seed)
    for b, (rows, cols) in enumerate(indices):
        points = uniform_points(1, 32, generator=generator)
        cost = matcher.cost_matrix(
            class_logits[b], mask_logits[b], targets[b]["labels"], targets[b]["masks"], points
        )
        assert cost.shape == (num_queries, num_targets[b])
        _check_one_to_one(rows, cols, num_queries, num_targets[b])
        assert _assignment_cost(cost, rows, cols) == pytest.approx(
            _brute_force_min_cost(cost), abs=1e-4
        )


def _block_masks(size: int) -> torch.Tensor:
    """(3, 1, size, size) bool: top-left, top-right and bottom halves of the image."""
    masks = torch.zeros(3, 1, size, size, dtype=torch.bool)
    half = size // 2
    masks[0, 0, :half, :half] = True
    masks[1, 0, :half, half:] = True
    masks[2, 0, half:, :] = True
    return masks


def test_matcher_recovers_permuted_predictions_of_targets_at_input_resolution():
    # Targets at the padded input resolution (32), predictions at stride 4 (8).
    target_masks = _block_masks(32)
    labels = torch.tensor([2, 0, 1])
    query_of_target = [3, 0, 1]  # queries 2 and 4 predict nothing
    class_logits = torch.zeros(1, 5, 4)
    mask_logits = torch.full((1, 5, 1, 8, 8), -10.0)
    small = _block_masks(8)
    for target, query in enumerate(query_of_target):
        mask_logits[0, query] = torch.where(small[target], 10.0, -10.0)
        class_logits[0, query, labels[target]] = 5.0
    targets = [{"labels": labels, "masks": target_masks}]

    rows, cols = HungarianMatcher(num_points=256)(class_logits, mask_logits, targets)[0]
    assigned = dict(zip(cols.tolist(), rows.tolist(), strict=True))
    assert assigned == {0: 3, 1: 0, 2: 1}


def test_class_cost_alone_decides_when_mask_costs_are_off():
    # Every query predicts the same mask; only the class probabilities tell them apart.
    class_logits = torch.tensor([[[0.0, 4.0, 0.0], [4.0, 0.0, 0.0]]])  # K = 2
    mask_logits = torch.zeros(1, 2, 1, 4, 4)
    targets = [
        {"labels": torch.tensor([0, 1]), "masks": torch.ones(2, 1, 16, 16, dtype=torch.bool)}
    ]
    matcher = HungarianMatcher(cost_mask=0.0, cost_dice=0.0, num_points=16)
    rows, cols = matcher(class_logits, mask_logits, targets)[0]
    assert rows.tolist() == [0, 1]
    assert cols.tolist() == [1, 0]


def test_mask_costs_decide_when_class_logits_are_uninformative():
    target_masks = _block_masks(16)[:2]  # top-left, top-right
    small = _block_masks(4)
    mask_logits = torch.stack([torch.where(small[1], 8.0, -8.0), torch.where(small[0], 8.0, -8.0)])
    targets = [{"labels": torch.tensor([0, 0]), "masks": target_masks}]
    rows, cols = HungarianMatcher(num_points=512)(torch.zeros(1, 2, 3), mask_logits[None], targets)[
        0
    ]
    assert rows.tolist() == [0, 1]
    assert cols.tolist() == [1, 0]


def test_tube_masks_are_matched_over_all_frames():
    # Both targets cover the left half in frame 0; they differ only in frame 1. Matching on the
    # first frame alone could not tell them apart.
    left = torch.zeros(16, 16, dtype=torch.bool)
    left[:, :8] = True
    right = ~left
    targets = [
        {
            "labels": torch.tensor([1, 1]),
            "masks": torch.stack([torch.stack([left, left]), torch.stack([left, right])]),
        }
    ]
    small_left = torch.where(left[::4, ::4], 8.0, -8.0)
    small_right = torch.where(right[::4, ::4], 8.0, -8.0)
    mask_logits = torch.stack(
        [torch.stack([small_left, small_right]), torch.stack([small_left, small_left])]
    )[None]  # (1, 2 queries, 2 frames, 4, 4)
    rows, cols = HungarianMatcher(num_points=512)(torch.zeros(1, 2, 3), mask_logits, targets)[0]
    assert dict(zip(rows.tolist(), cols.tolist(), strict=True)) == {0: 1, 1: 0}


def test_pairwise_costs_of_hand_computed_cases():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 0.0, 3.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])

    ce = pairwise_sigmoid_ce_cost(logits, targets)
    assert ce.shape == (2, 2)
    # A zero logit costs ln 2 against either label.
    assert ce[0, 0].item() == pytest.approx(math.log(2.0))
    assert ce[0, 1].item() == pytest.approx(math.log(2.0))

    def softplus(x):
        return math.log1p(math.exp(x))

    # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x).
    expected = (softplus(-2.0) + softplus(1.0) + softplus(0.0) + softplus(3.0)) / 4
    assert ce[1, 0].item() == pytest.approx(expected)
    expected = (softplus(2.0) + softplus(-1.0) + softplus(0.0) + softplus(3.0)) / 4
    assert ce[1, 1].item() == pytest.approx(expected)

    dice = pairwise_dice_cost(logits, targets)
    # p = 0.5 everywhere: 1 - (2 * 0.5 * 2 + 1) / (2 + 2 + 1) = 0.4; against an empty target
    # 1 - 1 / (2 + 0 + 1) = 2/3.
    assert dice[0, 0].item() == pytest.approx(0.4)
    assert dice[0, 1].item() == pytest.approx(2.0 / 3.0)
    sig = [1 / (1 + math.exp(-x)) for x in (2.0, -1.0, 0.0, 3.0)]
    expected = 1 - (2 * (sig[0] + sig[1]) + 1) / (sum(sig) + 2 + 1)
    assert dice[1, 0].item() == pytest.approx(expected)


def test_cost_matrix_combines_the_official_weights():
    # K = 2 with all-zero class logits: softmax 1/3 for every column. Zero mask logits and an
    # empty target make the mask terms exact: BCE = ln 2, Dice = 1 - 1 / (P / 2 + 1).
    num_points = 10
    matcher = HungarianMatcher(num_points=num_points)
    cost = matcher.cost_matrix(
        torch.zeros(1, 3),
        torch.zeros(1, 1, 4, 4),
        torch.tensor([1]),
        torch.zeros(1, 1, 16, 16, dtype=torch.bool),
        uniform_points(1, num_points, generator=torch.Generator().manual_seed(0)),
    )
    expected = 2.0 * (-1.0 / 3.0) + 5.0 * math.log(2.0) + 5.0 * (1.0 - 1.0 / (num_points / 2 + 1))
    assert cost.shape == (1, 1)
    assert cost.item() == pytest.approx(expected, rel=1e-6)


def test_images_without_targets_get_no_matches():
    indices = HungarianMatcher(num_points=8)(
        torch.zeros(2, 3, 4),
        torch.zeros(2, 3, 1, 4, 4),
        [
            {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 1, 16, 16)},
            {"labels": torch.tensor([1]), "masks": torch.ones(1, 1, 16, 16, dtype=torch.bool)},
        ],
    )
    assert [len(rows) for rows, _ in indices] == [0, 1]
    assert [len(cols) for _, cols in indices] == [0, 1]


def test_more_targets_than_queries_matches_every_query():
    torch.manual_seed(0)
    targets = [{"labels": torch.randint(0, 3, (4,)), "masks": torch.rand(4, 1, 8, 8) > 0.5}]
    rows, cols = HungarianMatcher(num_points=16)(
        torch.randn(1, 2, 4), torch.randn(1, 2, 1, 2, 2), targets
    )[0]
    assert rows.tolist() == [0, 1]
    assert len(set(cols.tolist())) == 2


def test_matching_is_reproducible_with_a_seeded_generator():
    torch.manual_seed(0)
    class_logits = torch.zeros(1, 6, 3)
    mask_logits = torch.randn(1, 6, 1, 6, 6)
    targets = [{"labels": torch.zeros(6, dtype=torch.long), "masks": torch.rand(6, 1, 6, 6) > 0.5}]
    matcher = HungarianMatcher(num_points=3)  # few points: the match depends on where they fall

    def match(seed: int) -> tuple[list[int], list[int]]:
        rows, cols = matcher(
            class_logits, mask_logits, targets, generator=torch.Generator().manual_seed(seed)
        )[0]
        return rows.tolist(), cols.tolist()

    assert match(7) == match(7)
    assert len({tuple(match(seed)[1]) for seed in range(20)}) > 1


def test_non_finite_costs_raise_a_value_error():
    class_logits = torch.zeros(1, 2, 3)
    class_logits[0, 0, 0] = float("nan")
    targets = [{"labels": torch.tensor([0]), "masks": torch.ones(1, 1, 4, 4, dtype=torch.bool)}]
    with pytest.raises(ValueError, match="non-finite"):
        HungarianMatcher(num_points=4)(class_logits, torch.zeros(1, 2, 1, 4, 4), targets)


def test_mismatched_batch_raises_a_value_error():
    with pytest.raises(ValueError, match="targets: expected 2"):
        HungarianMatcher(num_points=4)(torch.zeros(2, 2, 3), torch.zeros(2, 2, 1, 4, 4), [])
