"""Losses: hand-computed values, official normalisers, prompt pairing, tubes, a training step."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from training.losses import (
    SetCriterion,
    dice_loss,
    point_sample,
    sample_uncertain_points,
    sigmoid_ce_loss,
    sigmoid_focal_loss,
    tube_as_image,
)
from training.matcher import HungarianMatcher

LN2 = math.log(2.0)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _ce(logits: list[float], label: int) -> float:
    """-log softmax(logits)[label], by hand."""
    return math.log(sum(math.exp(v) for v in logits)) - logits[label]


def _focal(logit: float, target: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = _sigmoid(logit)
    bce = -(target * math.log(p) + (1 - target) * math.log(1 - p))
    p_wrong = target * (1 - p) + (1 - target) * p
    return bce * (alpha * target + (1 - alpha) * (1 - target)) * p_wrong**gamma


def _criterion(num_classes: int = 2, num_points: int = 64) -> SetCriterion:
    return SetCriterion(num_classes, HungarianMatcher(num_points=num_points), num_points=num_points)


def _half_masks(size: int) -> torch.Tensor:
    """(2, 1, size, size) bool: left half, right half."""
    masks = torch.zeros(2, 1, size, size, dtype=torch.bool)
    masks[0, 0, :, : size // 2] = True
    masks[1, 0, :, size // 2 :] = True
    return masks


# --- pure functions -------------------------------------------------------------------------


def test_point_sample_reads_pixel_values_at_pixel_centres():
    features = torch.arange(12.0).reshape(1, 1, 3, 4)
    # (x, y) of the centres of pixels (row 0, col 0), (row 2, col 3), (row 1, col 2).
    points = torch.tensor([[[0.5 / 4, 0.5 / 3], [3.5 / 4, 2.5 / 3], [2.5 / 4, 1.5 / 3]]])
    sampled = point_sample(features, points)
    assert sampled.shape == (1, 1, 3)
    torch.testing.assert_close(sampled[0, 0], torch.tensor([0.0, 11.0, 6.0]))


def test_point_sample_interpolates_linearly_and_pads_with_zeros():
    features = torch.tensor([[[[0.0, 10.0]]]])  # 1 x 2 map
    # Midway between the two pixel centres, and the left image border (half a pixel of padding).
    points = torch.tensor([[[0.5, 0.5], [0.0, 0.5]]])
    torch.testing.assert_close(point_sample(features, points)[0, 0], torch.tensor([5.0, 0.0]))


def test_tube_as_image_stacks_frames_along_the_height():
    tube = torch.arange(2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    image = tube_as_image(tube)
    assert image.shape == (2, 1, 6, 2)
    torch.testing.assert_close(image[1, 0, 2:4], tube[1, 1])


def test_uncertain_points_come_from_logits_near_zero():
    # Left half uncertain (logit 0), right half confident (logit 20).
    logits = torch.zeros(2, 1, 8, 8)
    logits[..., 4:] = 20.0
    generator = torch.Generator().manual_seed(0)
    points = sample_uncertain_points(logits, 40, 3.0, 1.0, generator=generator)
    assert points.shape == (2, 40, 2)
    # 120 uniform candidates hold ~60 on the left; the 40 most uncertain are all there.
    assert (points[..., 0] < 0.5).all()

    mixed = sample_uncertain_points(logits, 40, 3.0, 0.75, generator=generator)
    assert (mixed[:, :30, 0] < 0.5).all()  # int(0.75 * 40) = 30 importance-sampled points first
    assert (mixed[:, 30:, 0] >= 0.5).any()  # then 10 uniform ones, some on the right

    uniform = sample_uncertain_points(logits, 200, 1.0, 0.0, generator=generator)
    assert (uniform[..., 0] >= 0.5).float().mean() > 0.3


def test_sample_uncertain_points_rejects_bad_ratios():
    with pytest.raises(ValueError, match="oversample_ratio"):
        sample_uncertain_points(torch.zeros(1, 1, 4, 4), 8, 0.5, 0.75)
    with pytest.raises(ValueError, match="importance_sample_ratio"):
        sample_uncertain_points(torch.zeros(1, 1, 4, 4), 8, 3.0, 1.5)


def test_sigmoid_ce_loss_of_known_logits():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # BCE(x, 1) = log(1 + e^-x), BCE(x, 0) = log(1 + e^x); mean over points, sum over masks.
    per_mask = [
        (math.log1p(math.exp(0.0)) + math.log1p(math.exp(2.0))) / 2,
        (math.log1p(math.exp(1.0)) + math.log1p(math.exp(-3.0))) / 2,
    ]
    assert sigmoid_ce_loss(logits, targets, 2).item() == pytest.approx(sum(per_mask) / 2)
    assert sigmoid_ce_loss(logits, targets, 1).item() == pytest.approx(sum(per_mask))


def test_dice_loss_of_identical_masks_is_zero():
    targets = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    logits = 60.0 * (2 * targets - 1)
    assert dice_loss(logits, targets, 2).item() == pytest.approx(0.0, abs=1e-6)


def test_dice_loss_of_known_logits():
    logits = torch.zeros(1, 4)  # p = 0.5
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # 1 - (2 * 1 + 1) / (2 + 2 + 1)
    assert dice_loss(logits, targets, 1).item() == pytest.approx(0.4)
    # Disjoint confident masks: 1 - 1 / (2 + 2 + 1) with eps 1.
    disjoint = torch.tensor([[-60.0, -60.0, 60.0, 60.0]])
    assert dice_loss(disjoint, targets, 1).item() == pytest.approx(0.8, abs=1e-6)


def test_sigmoid_focal_loss_of_known_logits():
    logits = torch.tensor([0.0, 0.0, 2.0])
    targets = torch.tensor([1.0, 0.0, 0.0])
    expected = 0.25 * 0.25 * LN2 + 0.75 * 0.25 * LN2 + _focal(2.0, 0.0)
    assert sigmoid_focal_loss(logits, targets, 1.0).item() == pytest.approx(expected)
    assert sigmoid_focal_loss(logits, targets, 4.0).item() == pytest.approx(expected / 4)


# --- SetCriterion ---------------------------------------------------------------------------


def test_criterion_matches_hand_computed_losses_with_void_weight():
    # K = 2, two queries, one target of class 0. Zero mask logits and an empty target make the
    # mask terms exact; the class logits decide the match (query 0).
    num_points = 50
    class_logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    iou_logits = torch.tensor([[1.0, -0.5]])
    prediction = {
        "class_logits": class_logits,
        "mask_logits": torch.zeros(1, 2, 1, 4, 4),
        "iou_logits": iou_logits,
    }
    targets = [{"labels": torch.tensor([0]), "masks": torch.zeros(1, 1, 16, 16, dtype=torch.bool)}]
    losses = _criterion(num_points=num_points)([prediction], targets)

    # Matched query weighs 1, the void one 0.1; the normaliser is their sum.
    normaliser = 1.0 + 0.1
    expected_cls = 2.0 * (_ce([2.0, 0.0, 0.0], 0) + 0.1 * _ce([0.0, 0.0, 1.0], 2)) / normaliser
    expected_iou = 2.0 * (_focal(1.0, 1.0) + _focal(-0.5, 0.0)) / normaliser
    expected_mask = 5.0 * LN2  # one matched mask
    expected_dice = 5.0 * (1.0 - 1.0 / (0.5 * num_points + 1.0))
    assert losses["loss_cls"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["loss_iou"].item() == pytest.approx(expected_iou, rel=1e-5)
    assert losses["loss_mask"].item() == pytest.approx(expected_mask, rel=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(expected_dice, rel=1e-5)
    total = expected_cls + expected_iou + expected_mask + expected_dice
    assert losses["loss"].item() == pytest.approx(total, rel=1e-5)


def test_class_normaliser_is_clamped_to_one():
    # One void query only: normaliser 0.1 -> clamped to 1 (upstream max(avg_factor, 1)).
    prediction = {
        "class_logits": torch.tensor([[[0.5, -0.5, 0.0]]], requires_grad=True),
        "mask_logits": torch.zeros(1, 1, 1, 4, 4, requires_grad=True),
        "iou_logits": torch.tensor([[0.3]]),
    }
    targets = [{"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 1, 8, 8)}]
    losses = _criterion()([prediction], targets)
    assert losses["loss_cls"].item() == pytest.approx(2.0 * 0.1 * _ce([0.5, -0.5, 0.0], 2))
    assert losses["loss_iou"].item() == pytest.approx(2.0 * _focal(0.3, 0.0))
    # No match: zero mask losses that still reach the mask logits (DDP sees every parameter).
    assert losses["loss_mask"].item() == 0.0 and losses["loss_dice"].item() == 0.0
    losses["loss"].backward()
    assert prediction["mask_logits"].grad is not None


def test_losses_are_reported_per_prediction_and_summed():
    torch.manual_seed(0)
    predictions = [
        {
            "class_logits": torch.randn(2, 4, 3),
            "mask_logits": torch.randn(2, 4, 1, 4, 4),
            "iou_logits": torch.randn(2, 4),
        }
        for _ in range(3)
    ]
    targets = [
        {"labels": torch.tensor([0, 1]), "masks": _half_masks(16)},
        {"labels": torch.tensor([1]), "masks": _half_masks(16)[:1]},
    ]
    losses = _criterion()(predictions, targets)
    names = ["loss_cls", "loss_iou", "loss_mask", "loss_dice"]
    expected_keys = {f"d{i}.{n}" for i in range(2) for n in names} | set(names) | {"loss"}
    assert set(losses) == expected_keys
    parts = [value for key, value in losses.items() if key != "loss"]
    assert losses["loss"].item() == pytest.approx(torch.stack(parts).sum().item())
    assert all(value.dim() == 0 and torch.isfinite(value) for value in losses.values())


def test_every_prediction_is_matched_on_its_own():
    # Identical (zero) masks; the class logits put the target on query 1 in the first prediction
    # and on query 0 in the second. Each must be matched separately to get the low class loss.
    confident, void = [0.0, 6.0, 0.0], [0.0, 0.0, 6.0]
    predictions = [
        {
            "class_logits": torch.tensor([[void, confident]]),
            "mask_logits": torch.zeros(1, 2, 1, 4, 4),
        },
        {
            "class_logits": torch.tensor([[confident, void]]),
            "mask_logits": torch.zeros(1, 2, 1, 4, 4),
        },
    ]
    targets = [{"labels": torch.tensor([1]), "masks": torch.zeros(1, 1, 8, 8, dtype=torch.bool)}]
    losses = _criterion()(predictions, targets)
    expected = 2.0 * (_ce(confident, 1) + 0.1 * _ce(void, 2)) / 1.1
    assert losses["d0.loss_cls"].item() == pytest.approx(expected, rel=1e-4)
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-4)
    assert "loss_iou" not in losses  # no IoU head in these predictions


def test_unmatched_queries_get_no_mask_gradient():
    torch.manual_seed(0)
    class_logits = torch.zeros(1, 3, 3)
    class_logits[0, 1, 0] = 8.0  # query 1 is the only good match for the class-0 target...
    mask_logits = torch.randn(1, 3, 1, 4, 4)
    mask_logits[0, 1] = torch.where(_half_masks(4)[0], 5.0, -5.0)  # ...by class and by mask
    mask_logits.requires_grad_()
    targets = [{"labels": torch.tensor([0]), "masks": _half_masks(16)[:1]}]
    losses = _criterion()([{"class_logits": class_logits, "mask_logits": mask_logits}], targets)
    (losses["loss_mask"] + losses["loss_dice"]).backward()
    grad_norms = mask_logits.grad[0].flatten(1).norm(dim=1)  # (Q,)
    assert grad_norms[1] > 0
    assert grad_norms[0] == 0 and grad_norms[2] == 0


def test_prompt_mode_pairs_query_i_with_target_i():
    # Query 0 predicts target 1's mask and query 1 target 0's: matching would swap them, prompt
    # mode must not.
    masks = _half_masks(32)
    small = _half_masks(8)
    mask_logits = torch.stack(
        [torch.where(small[1], 10.0, -10.0), torch.where(small[0], 10.0, -10.0)]
    )
    class_logits = torch.tensor([[[0.5, 1.0, 0.0], [2.0, 0.0, 0.0]]])
    prediction = {
        "class_logits": class_logits,
        "mask_logits": mask_logits[None],
        "iou_logits": torch.tensor([[0.7, -0.2]], requires_grad=True),
    }
    targets = [{"labels": torch.tensor([1, -1]), "masks": masks}]  # prompt 1's class is unknown
    criterion = _criterion(num_points=128)

    prompt = criterion([prediction], targets, prompt_mode=True)
    matched = criterion([prediction], targets)
    assert prompt["loss_mask"] > 5 * matched["loss_mask"]
    assert prompt["loss_dice"] > 5 * matched["loss_dice"]
    # Upstream's prompt normaliser is 0 -> clamped to 1: a plain sum over labelled prompts.
    assert prompt["loss_cls"].item() == pytest.approx(2.0 * _ce([0.5, 1.0, 0.0], 1), rel=1e-5)
    # The IoU loss is zeroed for prompt data but stays in the graph.
    assert prompt["loss_iou"].item() == 0.0
    prompt["loss_iou"].backward()
    assert prediction["iou_logits"].grad is not None


def test_prompt_mode_drops_invalid_prompts():
    masks = _half_masks(16)
    torch.manual_seed(0)
    prediction = {"class_logits": torch.randn(1, 2, 3), "mask_logits": torch.randn(1, 2, 1, 4, 4)}
    criterion = _criterion()
    with_padding = criterion(
        [prediction],
        [{"labels": torch.tensor([0, 1]), "masks": masks, "valid": torch.tensor([True, False])}],
        prompt_mode=True,
        generator=torch.Generator().manual_seed(3),
    )
    only_first = criterion(
        [prediction],
        [{"labels": torch.tensor([0]), "masks": masks[:1]}],
        prompt_mode=True,
        generator=torch.Generator().manual_seed(3),
    )
    both = criterion(
        [prediction],
        [{"labels": torch.tensor([0, 1]), "masks": masks}],
        prompt_mode=True,
        generator=torch.Generator().manual_seed(3),
    )
    for name in ("loss_cls", "loss_mask", "loss_dice"):
        assert with_padding[name].item() == pytest.approx(only_first[name].item(), rel=1e-6)
        assert with_padding[name].item() != pytest.approx(both[name].item(), rel=1e-3)


def test_video_tubes_are_supervised_over_all_frames():
    # Target: left half in frame 0, right half in frame 1. Prediction A follows it; B repeats
    # frame 0. Both are right on frame 0, so only points in frame 1 tell them apart.
    halves = _half_masks(16)[:, 0]
    target_tube = torch.stack([halves[0], halves[1]])[None]  # (1, T=2, 16, 16)
    small = torch.where(_half_masks(4)[:, 0], 10.0, -10.0)
    following = torch.stack([small[0], small[1]])
    repeating = torch.stack([small[0], small[0]])
    targets = [{"labels": torch.tensor([0]), "masks": target_tube}]
    criterion = _criterion(num_points=256)

    def losses(tube: torch.Tensor) -> dict[str, torch.Tensor]:
        prediction = {
            "class_logits": torch.tensor([[[4.0, 0.0, 0.0]]]),
            "mask_logits": tube[None, None],
        }
        return criterion([prediction], targets, generator=torch.Generator().manual_seed(0))

    good, bad = losses(following), losses(repeating)
    assert bad["loss_mask"] > 3 * good["loss_mask"]
    assert bad["loss_dice"] > 3 * good["loss_dice"]


def test_seeded_generator_makes_losses_reproducible():
    torch.manual_seed(0)
    prediction = {
        "class_logits": torch.randn(1, 5, 3),
        "mask_logits": torch.randn(1, 5, 1, 8, 8),
        "iou_logits": torch.randn(1, 5),
    }
    targets = [{"labels": torch.tensor([0, 1]), "masks": _half_masks(32)}]
    criterion = _criterion(num_points=16)

    def run(seed: int) -> dict[str, torch.Tensor]:
        return criterion([prediction], targets, generator=torch.Generator().manual_seed(seed))

    first, again, other = run(1), run(1), run(2)
    for name in first:
        assert torch.equal(first[name], again[name])
    assert not torch.equal(first["loss_mask"], other["loss_mask"])


def test_a_few_adam_steps_reduce_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    num_layers, batch, queries, num_classes = 2, 2, 4, 3
    class_logits = torch.zeros(num_layers, batch, queries, num_classes + 1, requires_grad=True)
    mask_logits = torch.zeros(num_layers, batch, queries, 1, 8, 8)
    mask_logits = (0.1 * torch.randn_like(mask_logits)).requires_grad_()
    iou_logits = torch.zeros(num_layers, batch, queries, requires_grad=True)
    targets = [
        {"labels": torch.tensor([0, 2]), "masks": _half_masks(32)},
        {"labels": torch.tensor([1]), "masks": _half_masks(32)[1:]},
    ]
    criterion = _criterion(num_classes=num_classes, num_points=64)
    optimizer = torch.optim.Adam([class_logits, mask_logits, iou_logits], lr=0.2)
    generator = torch.Generator().manual_seed(0)

    def total_loss() -> torch.Tensor:
        predictions = [
            {
                "class_logits": class_logits[i],
                "mask_logits": mask_logits[i],
                "iou_logits": iou_logits[i],
            }
            for i in range(num_layers)
        ]
        return criterion(predictions, targets, generator=generator)["loss"]

    initial = total_loss().item()
    for _ in range(12):
        optimizer.zero_grad()
        total_loss().backward()
        optimizer.step()
    final = total_loss().item()
    assert final < 0.5 * initial, (initial, final)


def _distributed_worker(rank: int, world_size: int, port: int, results) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        # Rank 0 has two objects, rank 1 none: num_masks = mean(2, 0) = 1, class normaliser
        # = mean(1 + 1, 0.1 + 0.1) = 1.1.
        num_targets = 2 if rank == 0 else 0
        prediction = {
            "class_logits": torch.zeros(1, 2, 3),
            "mask_logits": torch.zeros(1, 2, 1, 4, 4),
        }
        targets = [
            {
                "labels": torch.zeros(num_targets, dtype=torch.long),
                "masks": torch.zeros(num_targets, 1, 8, 8, dtype=torch.bool),
            }
        ]
        losses = _criterion(num_points=8)([prediction], targets)
        results[rank] = {name: value.item() for name, value in losses.items()}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: ~10 s on 2 cores
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_normalisers_are_averaged_across_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    # spawn, not fork: forked workers hang once the parent has started torch's thread pools.
    mp.spawn(_distributed_worker, args=(2, port, results), nprocs=2, join=True)
    # Rank 0: two masks with zero logits -> 2 * ln 2 summed, divided by the mean count 1.
    assert results[0]["loss_mask"] == pytest.approx(5.0 * 2 * LN2 / 1.0, rel=1e-5)
    assert results[1]["loss_mask"] == 0.0
    ce_uniform = math.log(3.0)
    assert results[0]["loss_cls"] == pytest.approx(2.0 * 2 * ce_uniform / 1.1, rel=1e-5)
    assert results[1]["loss_cls"] == pytest.approx(2.0 * 0.2 * ce_uniform / 1.1, rel=1e-5)
