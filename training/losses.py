"""OMG-Seg training losses: CE over classes + void, BCE and Dice on sampled mask points, IoU focal.

Follows the official `Mask2FormerVideoHead._loss_by_feat_single` (lxtGH/OMG-Seg,
`seg/models/heads/mask2former_vid.py`) with the weights of
`seg/configs/m2ov_train/omg_convl_vlm_fix_12e_ov_coco_vid_yt19_y21_vip_city_cocopansam.py`:

- class:  softmax cross-entropy over K + 1 logits, void weight 0.1, loss weight 2.0, divided by
  the class-weighted number of queries (matched 1.0 each, void 0.1 each), clamped to >= 1;
- mask:   sigmoid BCE on `num_points` importance-sampled points, weight 5.0, per matched mask;
- dice:   1 - (2 p.t + 1) / (sum p + sum t + 1) on the same points, weight 5.0, per matched mask;
- iou:    sigmoid focal loss (alpha 0.25, gamma 2) on the objectness logit with target 1 for
  matched queries and 0 for the rest, weight 2.0, same normaliser as the class loss. Upstream adds
  it into `loss_cls`; we report it as `loss_iou` so the total is the same.

Every prediction (the initial one and one per decoder layer) is matched and supervised on its own.
Video tube masks (T frames) are one mask of T*H x W, frames stacked along the height as upstream's
`flatten(2, 3)`; points are sampled over the whole tube. Prompt queries ("SAM" mode) are
supervised one-to-one with their targets and keep upstream's normalisers (see `SetCriterion`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "SetCriterion",
    "dice_loss",
    "point_sample",
    "sample_uncertain_points",
    "sigmoid_ce_loss",
    "sigmoid_focal_loss",
    "tube_as_image",
    "uniform_points",
]


class Matcher(Protocol):
    """What `SetCriterion` needs from a matcher (`training.matcher.HungarianMatcher`)."""

    def __call__(
        self,
        class_logits: Tensor,
        mask_logits: Tensor,
        targets: Sequence[dict[str, Tensor]],
        *,
        generator: torch.Generator | None = None,
    ) -> list[tuple[Tensor, Tensor]]: ...


class SetCriterion:
    """Matches every prediction to the targets and sums the weighted losses of all of them.

    Args:
        num_classes: K, the number of real classes; the class logits have K + 1 columns, the last
            one being void ("no object").
        matcher: assigns queries to targets per image, e.g. `HungarianMatcher()`.
        class_weight: weight of the classification loss (official 2.0).
        mask_weight: weight of the point-sampled sigmoid BCE (official 5.0).
        dice_weight: weight of the point-sampled Dice loss (official 5.0).
        iou_weight: weight of the objectness/IoU focal loss (official 2.0).
        void_weight: class weight of the void column in the cross-entropy (official 0.1).
        num_points: points sampled per mask for the mask losses (official 12544 = 112 * 112).
        oversample_ratio: candidate points per kept point for importance sampling (official 3.0).
        importance_sample_ratio: share of the kept points taken by uncertainty (official 0.75).
        focal_alpha, focal_gamma: the IoU focal loss parameters (mmdet defaults 0.25 and 2.0).
    """

    def __init__(
        self,
        num_classes: int,
        matcher: Matcher,
        *,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        iou_weight: float = 2.0,
        void_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
        if num_points < 1:
            raise ValueError(f"num_points: expected >= 1, got {num_points}")
        if oversample_ratio < 1:
            raise ValueError(f"oversample_ratio: expected >= 1, got {oversample_ratio}")
        if not 0.0 <= importance_sample_ratio <= 1.0:
            raise ValueError(
                f"importance_sample_ratio: expected in [0, 1], got {importance_sample_ratio}"
            )
        self.num_classes = num_classes
        self.matcher = matcher
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.iou_weight = iou_weight
        self.void_weight = void_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma

    def __call__(
        self,
        predictions: Sequence[dict[str, Tensor]],
        targets: Sequence[dict[str, Tensor]],
        *,
        prompt_mode: bool = False,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """Weighted losses of every prediction and their sum.

        Args:
            predictions: one dict per prediction (initial + every decoder layer, last = final):
                "class_logits" (B, Q, K+1) float (void last), "mask_logits" (B, Q, T, H, W) float,
                optional "iou_logits" (B, Q) float.
            targets: B dicts. Normal mode: "labels" (N,) int64 in [0, K), "masks" (N, T, Hm, Wm)
                bool at any resolution. Prompt mode: "masks" (P, T, Hm, Wm) with P <= Q, target i
                supervising query i; "labels" (P,) int64, -1 where unknown (optional, default all
                unknown); "valid" (P,) bool (optional) drops padded prompts.
            prompt_mode: supervise query i with target i instead of Hungarian matching.
            generator: source of the random points (matching and mask losses) for reproducibility.

        Returns:
            "loss_cls", "loss_mask", "loss_dice" (and "loss_iou" when the predictions carry
            "iou_logits") for the last prediction, "d{i}.loss_*" for prediction i of the earlier
            ones, each already multiplied by its weight, and "loss", their sum. Scalars.
        """
        if len(predictions) == 0:
            raise ValueError("predictions: expected at least one prediction dict, got none")
        losses: dict[str, Tensor] = {}
        last = len(predictions) - 1
        for i, prediction in enumerate(predictions):
            prefix = "" if i == last else f"d{i}."
            for name, value in self._prediction_losses(
                prediction, targets, prompt_mode=prompt_mode, generator=generator
            ).items():
                losses[prefix + name] = value
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses

    def _prediction_losses(
        self,
        prediction: dict[str, Tensor],
        targets: Sequence[dict[str, Tensor]],
        *,
        prompt_mode: bool,
        generator: torch.Generator | None,
    ) -> dict[str, Tensor]:
        class_logits = prediction["class_logits"]
        mask_logits = prediction["mask_logits"]
        iou_logits = prediction.get("iou_logits")
        _check_prediction(class_logits, mask_logits, iou_logits, targets, self.num_classes)
        batch_size, num_queries = class_logits.shape[:2]
        device = class_logits.device

        if prompt_mode:
            indices = [_prompt_pairs(target, num_queries) for target in targets]
        else:
            indices = self.matcher(class_logits, mask_logits, targets, generator=generator)

        # Class targets: void everywhere, then the matched (or paired) labels.
        labels = torch.full((batch_size, num_queries), self.num_classes, dtype=torch.long)
        label_weights = torch.ones(batch_size, num_queries)
        matched = torch.zeros(batch_size, num_queries)
        if prompt_mode:
            # Only real prompts are supervised; upstream has no padded prompt queries.
            label_weights.zero_()
        for b, (query_idx, target_idx) in enumerate(indices):
            target_labels = targets[b].get("labels")
            if target_labels is None:
                paired = torch.full((len(target_idx),), -1, dtype=torch.long)
            else:
                paired = target_labels.detach().cpu().long()[target_idx]
            labels[b, query_idx] = paired
            label_weights[b, query_idx] = 1.0
            matched[b, query_idx] = 1.0
        # Upstream sets unknown labels (-1) to class 0 with weight 0.
        unknown = labels < 0
        labels[unknown] = 0
        label_weights[unknown] = 0.0
        labels = labels.to(device)
        label_weights = label_weights.to(device)
        matched = matched.to(device)

        class_weights = torch.ones(self.num_classes + 1, device=device)
        class_weights[-1] = self.void_weight
        if prompt_mode:
            # Upstream: cls_avg_factor = 0 for SAM data, so after the clamp the class loss is a
            # plain sum over prompts.
            class_normaliser = torch.zeros((), device=device)
        else:
            class_normaliser = class_weights[labels].sum()
        class_normaliser = _mean_across_processes(class_normaliser).clamp(min=1.0)

        # (B*Q,) class-weighted cross-entropy; reduction by hand to apply label_weights.
        ce = F.cross_entropy(
            class_logits.flatten(0, 1).float(),
            labels.flatten(),
            weight=class_weights,
            reduction="none",
        )
        losses = {
            "loss_cls": self.class_weight * (ce * label_weights.flatten()).sum() / class_normaliser
        }

        if iou_logits is not None:
            loss_iou = self.iou_weight * sigmoid_focal_loss(
                iou_logits.float(),
                matched,
                class_normaliser,
                alpha=self.focal_alpha,
                gamma=self.focal_gamma,
            )
            # Upstream zeroes the IoU loss for prompt data but keeps it in the graph.
            losses["loss_iou"] = loss_iou * 0.0 if prompt_mode else loss_iou

        num_matched = sum(len(query_idx) for query_idx, _ in indices)
        # Upstream's avg_factor: matched masks over the batch, or the number of prompt queries per
        # image for SAM data. Averaged over processes (every rank must reach this collective).
        mask_count = num_queries if prompt_mode else num_matched
        num_masks = torch.tensor(float(mask_count), device=device)
        num_masks = _mean_across_processes(num_masks).clamp(min=1.0)

        if num_matched == 0:
            zero = mask_logits.sum() * 0.0
            losses["loss_mask"] = zero
            losses["loss_dice"] = zero
            return losses

        # (M, 1, T*H, W) logits of the supervised queries, (M, 1, T*Hm, Wm) their targets.
        pred_masks = torch.cat(
            [tube_as_image(mask_logits[b, q.to(device)]) for b, (q, _) in enumerate(indices)]
        ).float()
        target_masks = torch.cat(
            [
                tube_as_image(targets[b]["masks"][t.to(targets[b]["masks"].device)])
                for b, (_, t) in enumerate(indices)
            ]
        ).to(device=device, dtype=torch.float32)

        with torch.no_grad():
            point_coords = sample_uncertain_points(
                pred_masks,
                self.num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
                generator=generator,
            )
            point_targets = point_sample(target_masks, point_coords).squeeze(1)  # (M, P)
        point_logits = point_sample(pred_masks, point_coords).squeeze(1)  # (M, P)

        losses["loss_mask"] = self.mask_weight * sigmoid_ce_loss(
            point_logits, point_targets, num_masks
        )
        losses["loss_dice"] = self.dice_weight * dice_loss(point_logits, point_targets, num_masks)
        return losses


def point_sample(features: Tensor, point_coords: Tensor, *, align_corners: bool = False) -> Tensor:
    """Bilinearly sample feature maps at normalised points (zeros outside the map).

    Same convention as detectron2 / mmcv `point_sample`: (0, 0) is the top-left corner of the
    top-left pixel and (1, 1) the bottom-right corner of the bottom-right one.

    Args:
        features: (N, C, H, W) float.
        point_coords: (N, P, 2) float, (x, y) in [0, 1].
        align_corners: passed to `F.grid_sample` (upstream uses False).

    Returns:
        (N, C, P), the same dtype as `features`.
    """
    if features.dim() != 4:
        raise ValueError(f"features: expected (N, C, H, W), got shape {tuple(features.shape)}")
    if point_coords.dim() != 3 or point_coords.shape[-1] != 2:
        raise ValueError(f"point_coords: expected (N, P, 2), got shape {tuple(point_coords.shape)}")
    grid = (2.0 * point_coords - 1.0).unsqueeze(2).to(features.dtype)  # (N, P, 1, 2)
    sampled = F.grid_sample(
        features, grid, mode="bilinear", padding_mode="zeros", align_corners=align_corners
    )
    return sampled.squeeze(3)


def uniform_points(
    num_masks: int,
    num_points: int,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform random (x, y) points in [0, 1).

    Args:
        num_masks: N, number of point sets.
        num_points: P, points per set.
        device, dtype: of the result.
        generator: random source; may live on another device than `device`.

    Returns:
        (N, P, 2) float.
    """
    source_device = generator.device if generator is not None else device
    points = torch.rand(
        num_masks, num_points, 2, generator=generator, device=source_device, dtype=dtype
    )
    return points.to(device)


def sample_uncertain_points(
    mask_logits: Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PointRend importance sampling, as Mask2Former's `get_uncertain_point_coords_with_randomness`.

    Draws `int(num_points * oversample_ratio)` uniform candidates per mask, keeps the
    `int(importance_sample_ratio * num_points)` whose sampled logit is closest to 0 (uncertainty
    = -|logit|), and fills the rest with fresh uniform points.

    Args:
        mask_logits: (N, 1, H, W) float.
        num_points: P, points kept per mask.
        oversample_ratio: >= 1.
        importance_sample_ratio: in [0, 1].
        generator: random source for reproducibility.

    Returns:
        (N, P, 2) float (x, y) in [0, 1), the uncertain points first.
    """
    if mask_logits.dim() != 4 or mask_logits.shape[1] != 1:
        raise ValueError(
            f"mask_logits: expected (N, 1, H, W), got shape {tuple(mask_logits.shape)}"
        )
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio: expected >= 1, got {oversample_ratio}")
    if not 0.0 <= importance_sample_ratio <= 1.0:
        raise ValueError(
            f"importance_sample_ratio: expected in [0, 1], got {importance_sample_ratio}"
        )
    num_masks = mask_logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    candidates = uniform_points(
        num_masks,
        num_candidates,
        device=mask_logits.device,
        dtype=mask_logits.dtype,
        generator=generator,
    )
    # Uncertainty from the sampled logits, not from the map, as upstream stresses.
    uncertainty = -point_sample(mask_logits, candidates)[:, 0].abs()  # (N, num_candidates)
    top = uncertainty.topk(num_uncertain, dim=1).indices  # (N, num_uncertain)
    uncertain = torch.gather(candidates, 1, top.unsqueeze(-1).expand(-1, -1, 2))
    num_random = num_points - num_uncertain
    if num_random == 0:
        return uncertain
    random = uniform_points(
        num_masks,
        num_random,
        device=mask_logits.device,
        dtype=mask_logits.dtype,
        generator=generator,
    )
    return torch.cat([uncertain, random], dim=1)


def sigmoid_ce_loss(mask_logits: Tensor, mask_targets: Tensor, num_masks: float | Tensor) -> Tensor:
    """Sigmoid binary cross-entropy, mean over points, summed over masks, divided by `num_masks`.

    Args:
        mask_logits: (M, P) float.
        mask_targets: (M, P) float in [0, 1].
        num_masks: normaliser (masks in the batch, averaged over processes).

    Returns:
        () float.
    """
    bce = F.binary_cross_entropy_with_logits(mask_logits, mask_targets, reduction="none")
    return bce.mean(dim=1).sum() / num_masks


def dice_loss(
    mask_logits: Tensor, mask_targets: Tensor, num_masks: float | Tensor, *, eps: float = 1.0
) -> Tensor:
    """Dice loss of sigmoid probabilities, summed over masks, divided by `num_masks`.

    Per mask: 1 - (2 sum(p t) + eps) / (sum p + sum t + eps), the "naive" Dice of mmdet `DiceLoss`
    (eps 1.0 in the official config) and Mask2Former's `dice_loss`.

    Args:
        mask_logits: (M, P) float.
        mask_targets: (M, P) float in [0, 1].
        num_masks: normaliser.
        eps: smoothing added to numerator and denominator.

    Returns:
        () float.
    """
    probs = mask_logits.sigmoid()
    numerator = 2.0 * (probs * mask_targets).sum(dim=1) + eps
    denominator = probs.sum(dim=1) + mask_targets.sum(dim=1) + eps
    return (1.0 - numerator / denominator).sum() / num_masks


def sigmoid_focal_loss(
    logits: Tensor,
    targets: Tensor,
    normaliser: float | Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
) -> Tensor:
    """Sigmoid focal loss (RetinaNet), summed and divided by `normaliser`.

    Per element: BCE(x, t) * (alpha t + (1 - alpha)(1 - t)) * (t (1 - p) + (1 - t) p)^gamma.

    Args:
        logits: (...) float.
        targets: (...) float in [0, 1], the shape of `logits`.
        normaliser: divisor of the sum.
        alpha, gamma: focal parameters (mmdet `FocalLoss` defaults 0.25 and 2.0).

    Returns:
        () float.
    """
    probs = logits.sigmoid()
    p_wrong = targets * (1.0 - probs) + (1.0 - targets) * probs
    balance = alpha * targets + (1.0 - alpha) * (1.0 - targets)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (bce * balance * p_wrong.pow(gamma)).sum() / normaliser


def tube_as_image(masks: Tensor) -> Tensor:
    """View tube masks as one image per mask, the frames stacked along the height.

    Upstream flattens (T, H) into T*H (`flatten(2, 3)`) for matching and losses, so a tube is
    one T*H x W mask and the sampled points spread over all frames.

    Args:
        masks: (M, T, H, W), any dtype.

    Returns:
        (M, 1, T*H, W), the same dtype.
    """
    if masks.dim() != 4:
        raise ValueError(f"masks: expected (M, T, H, W), got shape {tuple(masks.shape)}")
    num_masks, num_frames, height, width = masks.shape
    return masks.reshape(num_masks, 1, num_frames * height, width)


def _prompt_pairs(target: dict[str, Tensor], num_queries: int) -> tuple[Tensor, Tensor]:
    """(query_idx, target_idx) for prompt mode: query i <- target i, valid prompts only."""
    num_prompts = target["masks"].shape[0]
    if num_prompts > num_queries:
        raise ValueError(
            f"targets: prompt mode expects at most one target per query ({num_queries}), "
            f"got {num_prompts}"
        )
    index = torch.arange(num_prompts)
    valid = target.get("valid")
    if valid is not None:
        if valid.shape != (num_prompts,):
            raise ValueError(
                f"targets['valid']: expected ({num_prompts},) bool, got {tuple(valid.shape)}"
            )
        index = index[valid.detach().cpu().bool()]
    return index, index.clone()


def _mean_across_processes(value: Tensor) -> Tensor:
    """Mean of a scalar over all processes when torch.distributed is running, else itself."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    value = value.detach().clone()
    dist.all_reduce(value)
    return value / dist.get_world_size()


def _check_prediction(
    class_logits: Tensor,
    mask_logits: Tensor,
    iou_logits: Tensor | None,
    targets: Sequence[dict[str, Tensor]],
    num_classes: int,
) -> None:
    if class_logits.dim() != 3 or class_logits.shape[-1] != num_classes + 1:
        raise ValueError(
            f"class_logits: expected (B, Q, {num_classes + 1}), got {tuple(class_logits.shape)}"
        )
    batch_size, num_queries = class_logits.shape[:2]
    if mask_logits.dim() != 5 or mask_logits.shape[:2] != (batch_size, num_queries):
        raise ValueError(
            f"mask_logits: expected ({batch_size}, {num_queries}, T, H, W), "
            f"got {tuple(mask_logits.shape)}"
        )
    if iou_logits is not None and iou_logits.shape != (batch_size, num_queries):
        raise ValueError(
            f"iou_logits: expected ({batch_size}, {num_queries}), got {tuple(iou_logits.shape)}"
        )
    if len(targets) != batch_size:
        raise ValueError(
            f"targets: expected {batch_size} dicts (one per image), got {len(targets)}"
        )
    num_frames = mask_logits.shape[2]
    for b, target in enumerate(targets):
        masks = target["masks"]
        if masks.dim() != 4 or masks.shape[1] != num_frames:
            raise ValueError(
                f"targets[{b}]['masks']: expected (N, {num_frames}, Hm, Wm), "
                f"got {tuple(masks.shape)}"
            )
