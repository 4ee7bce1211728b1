"""Hungarian matching of queries to ground-truth masks (Mask2Former / OMG-Seg).

The cost of assigning query q to target n, as the official config builds its mmdet
`HungarianAssigner` (lxtGH/OMG-Seg `seg/configs/m2ov_train/*cocopansam.py`):

    2.0 * -softmax(class_logits[q])[label[n]]               FlexibleClassificationCost (the IoU
                                                             column is left out of the softmax)
  + 5.0 * mean_p BCE(mask_logit[q, p], target[n, p])         CrossEntropyLossCost(use_sigmoid)
  + 5.0 * (1 - (2 sum_p s[q,p] t[n,p] + 1) / (sum s + sum t + 1))   DiceCost(pred_act, eps=1)

with s = sigmoid(mask_logit), over `num_points` uniform random points shared by predictions and
targets of one image (`torch.rand((1, num_points, 2))` in `_get_targets_single`). Tube masks are one
T*H x W image (frames stacked along the height), as upstream flattens the time axis. The assignment
is `scipy.optimize.linear_sum_assignment` on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from training.losses import point_sample, tube_as_image, uniform_points

__all__ = [
    "HungarianMatcher",
    "linear_assignment",
    "pairwise_dice_cost",
    "pairwise_sigmoid_ce_cost",
]


class HungarianMatcher:
    """One-to-one assignment of queries to targets minimising class + mask BCE + Dice costs.

    Args:
        cost_class: weight of the class cost (official 2.0).
        cost_mask: weight of the point-sampled sigmoid BCE cost (official 5.0).
        cost_dice: weight of the point-sampled Dice cost (official 5.0).
        num_points: uniform points per image for the mask costs (official 12544).
    """

    def __init__(
        self,
        *,
        cost_class: float = 2.0,
        cost_mask: float = 5.0,
        cost_dice: float = 5.0,
        num_points: int = 12544,
    ) -> None:
        if num_points < 1:
            raise ValueError(f"num_points: expected >= 1, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    @torch.no_grad()
    def __call__(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        targets: Sequence[dict[str, Tensor]],
        *,
        generator: torch.Generator | None = None,
    ) -> list[tuple[Tensor, Tensor]]:
        """Match every image of the batch.

        Args:
            class_logits: (B, Q, K+1) float, void last.
            mask_logits: (B, Q, T, H, W) float.
            targets: B dicts with "labels" (N,) int64 in [0, K) and "masks" (N, T, Hm, Wm) bool
                (any resolution: both sides are sampled at the same normalised points).
            generator: random source of the points, for reproducible matching.

        Returns:
            B pairs (query_idx, target_idx), int64 CPU tensors of length min(Q, N), sorted by
            query index: query query_idx[i] is assigned target target_idx[i].
        """
        if class_logits.dim() != 3:
            raise ValueError(
                f"class_logits: expected (B, Q, K+1), got shape {tuple(class_logits.shape)}"
            )
        if mask_logits.dim() != 5 or mask_logits.shape[:2] != class_logits.shape[:2]:
            raise ValueError(
                f"mask_logits: expected {tuple(class_logits.shape[:2])} + (T, H, W), "
                f"got {tuple(mask_logits.shape)}"
            )
        if len(targets) != class_logits.shape[0]:
            raise ValueError(
                f"targets: expected {class_logits.shape[0]} dicts (one per image), "
                f"got {len(targets)}"
            )
        indices = []
        for b, target in enumerate(targets):
            point_coords = uniform_points(
                1, self.num_points, device=mask_logits.device, generator=generator
            )
            cost = self.cost_matrix(
                class_logits[b], mask_logits[b], target["labels"], target["masks"], point_coords
            )
            if not torch.isfinite(cost).all():
                raise ValueError(
                    f"image {b}: the matching cost has non-finite entries "
                    "(NaN or inf in class_logits or mask_logits?)"
                )
            indices.append(linear_assignment(cost))
        return indices

    @torch.no_grad()
    def cost_matrix(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        labels: Tensor,
        masks: Tensor,
        point_coords: Tensor,
    ) -> Tensor:
        """Weighted matching cost of one image.

        Args:
            class_logits: (Q, K+1) float.
            mask_logits: (Q, T, H, W) float.
            labels: (N,) int64 in [0, K).
            masks: (N, T, Hm, Wm) bool or float.
            point_coords: (1, P, 2) float (x, y) in [0, 1], shared by predictions and targets.

        Returns:
            (Q, N) float32 cost.
        """
        num_queries, num_targets = class_logits.shape[0], labels.shape[0]
        if masks.shape[0] != num_targets:
            raise ValueError(
                f"masks: expected {num_targets} masks (one per label), got {masks.shape[0]}"
            )
        if masks.dim() != 4 or masks.shape[1] != mask_logits.shape[1]:
            raise ValueError(
                f"masks: expected (N, {mask_logits.shape[1]}, Hm, Wm), got {tuple(masks.shape)}"
            )
        device = class_logits.device
        if num_targets == 0:
            return torch.zeros(num_queries, 0, device=device)
        labels = labels.to(device)
        class_probs = F.softmax(class_logits.float(), dim=-1)  # (Q, K+1)
        class_cost = -class_probs[:, labels]  # (Q, N)

        pred_points = point_sample(
            tube_as_image(mask_logits.float()), point_coords.expand(num_queries, -1, -1)
        ).squeeze(1)  # (Q, P)
        target_points = point_sample(
            tube_as_image(masks.to(device=device, dtype=torch.float32)),
            point_coords.expand(num_targets, -1, -1),
        ).squeeze(1)  # (N, P)

        return (
            self.cost_class * class_cost
            + self.cost_mask * pairwise_sigmoid_ce_cost(pred_points, target_points)
            + self.cost_dice * pairwise_dice_cost(pred_points, target_points)
        )


def linear_assignment(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment of rows (queries) to columns (targets).

    Args:
        cost: (Q, N) float, finite.

    Returns:
        (row_idx, col_idx), int64 CPU tensors of length min(Q, N), sorted by row.
    """
    rows, cols = linear_sum_assignment(cost.detach().cpu().double().numpy())
    order = np.argsort(rows, kind="stable")
    return (
        torch.as_tensor(rows[order], dtype=torch.long),
        torch.as_tensor(cols[order], dtype=torch.long),
    )


def pairwise_sigmoid_ce_cost(pred_logits: Tensor, target_points: Tensor) -> Tensor:
    """Mean sigmoid BCE between every prediction and every target over the same points.

    Args:
        pred_logits: (Q, P) float.
        target_points: (N, P) float in [0, 1].

    Returns:
        (Q, N) float: cost[q, n] = mean_p BCE(pred_logits[q, p], target_points[n, p]).
    """
    num_points = pred_logits.shape[1]
    # BCE(x, t) = t * BCE(x, 1) + (1 - t) * BCE(x, 0), so the pairwise sum is two matmuls.
    pos = F.binary_cross_entropy_with_logits(
        pred_logits, torch.ones_like(pred_logits), reduction="none"
    )
    neg = F.binary_cross_entropy_with_logits(
        pred_logits, torch.zeros_like(pred_logits), reduction="none"
    )
    return (pos @ target_points.T + neg @ (1.0 - target_points).T) / num_points


def pairwise_dice_cost(pred_logits: Tensor, target_points: Tensor, *, eps: float = 1.0) -> Tensor:
    """Dice loss between every prediction and every target over the same points.

    Args:
        pred_logits: (Q, P) float; sigmoid is applied here (DiceCost `pred_act=True`).
        target_points: (N, P) float in [0, 1].
        eps: smoothing (official 1.0).

    Returns:
        (Q, N) float: 1 - (2 sum_p s t + eps) / (sum_p s + sum_p t + eps).
    """
    probs = pred_logits.sigmoid()
    numerator = 2.0 * probs @ target_points.T + eps
    denominator = probs.sum(dim=1)[:, None] + target_points.sum(dim=1)[None, :] + eps
    return 1.0 - numerator / denominator
