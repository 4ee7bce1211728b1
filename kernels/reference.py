"""Plain PyTorch references for the two kernels (no Triton import).

These are the ground truth every fast path is tested against, the CPU path of the model, and the
portable ONNX path (``grid_sample`` exports as ONNX GridSample, opset >= 16).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def level_sizes(spatial_shapes: torch.Tensor | Sequence[Sequence[int]]) -> list[tuple[int, int]]:
    """``spatial_shapes`` (L, 2) as a list of ``(H, W)`` pairs: python ints, or, while tracing for
    ONNX, 0-d tensors read from ``spatial_shapes`` so the graph keeps dynamic spatial sizes."""
    if isinstance(spatial_shapes, torch.Tensor):
        if torch.jit.is_tracing():
            return [(spatial_shapes[i, 0], spatial_shapes[i, 1])  # type: ignore[misc]
                    for i in range(spatial_shapes.shape[0])]
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(int(h), int(w)) for h, w in spatial_shapes]


def ms_deform_attn_reference(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | Sequence[Sequence[int]],
    level_start_index: torch.Tensor | None,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Multi-scale deformable attention, the ``grid_sample`` form.

    out[n, q, m, :] = sum_{l, p} A[n, q, m, l, p] * bilinear(V_l[n, :, m, :], loc[n, q, m, l, p])
    with zero padding and ``align_corners=False`` (pixel centres at (i + 0.5) / size).

    Args:
        value: (N, S, M, D) with S = sum of H_l * W_l, levels concatenated row-major.
        spatial_shapes: (L, 2) int, (H_l, W_l) per level.
        level_start_index: (L,) int; implied by ``spatial_shapes`` and unused here.
        sampling_locations: (N, Lq, M, L, P, 2) normalised (x, y) in [0, 1].
        attention_weights: (N, Lq, M, L, P).

    Returns:
        (N, Lq, M * D) in the dtype of ``value``; accumulation is fp32.
    """
    del level_start_index
    sizes = level_sizes(spatial_shapes)
    n, _, m, d = value.shape
    _, lq, _, levels, points, _ = sampling_locations.shape
    out_dtype = value.dtype
    value = value.float()
    grids = 2.0 * sampling_locations.float() - 1.0
    per_level = value.split([h * w for h, w in sizes], dim=1)
    weights = attention_weights.float().transpose(1, 2).reshape(n * m, 1, lq, levels, points)
    out = None
    # level by level: stacking the (N*M, D, Lq, P) samples of every level first would copy them
    # all (a Concat as large as the samples in the exported graph, ~15 % of the pixel decoder)
    for level, (h, w) in enumerate(sizes):
        value_l = per_level[level].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        grid_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (N*M, Lq, P, 2)
        sampled = F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (N*M, D, Lq, P)
        term = (sampled * weights[..., level, :]).sum(-1)  # (N*M, D, Lq)
        out = term if out is None else out + term
    assert out is not None  # at least one level
    return out.view(n, m * d, lq).transpose(1, 2).to(out_dtype)


# The attention bias of a blocked key: finite, so that a row blocking every key subtracts to 0
# (-inf - -inf is NaN), and within float16's range (exported graphs converted to FP16).
BLOCKED = -30000.0


def attendable(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` (True = may attend) with Mask2Former's empty-row rule: a row that allows no key
    allows every key."""
    return mask | ~mask.any(dim=-1, keepdim=True)


def masked_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Scaled dot-product attention with a boolean mask and Mask2Former's empty-row rule.

    ``mask`` True = may attend (the ``scaled_dot_product_attention`` convention). A query row whose
    mask allows no key attends to every key (Mask2Former un-blocks such rows).

    Args:
        q: (B, M, Q, d).
        k: (B, M, K, d).
        v: (B, M, K, d).
        mask: (B, M or 1, Q, K) bool, or None for plain attention.

    Returns:
        (B, M, Q, d) in the dtype of ``q``; softmax and accumulation are fp32.
    """
    out_dtype = q.dtype
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if mask is not None:
        # BLOCKED where blocked, added: scores + 0 is the score itself, and a blocked key's
        # exp(score + BLOCKED - max) is exactly 0 (float32's exp is 0 below -104, and a row's
        # scores differ by far less than 29000), so the same bits as a -inf masked fill.
        # Exported, one (B, 1, Q, K) Where and a broadcast Add instead of a Where broadcast over
        # the heads (ONNX Runtime's broadcasting Where was 30 % of the query decoder). The
        # empty-row rule without a boolean any(): subtracting each row's largest bias leaves
        # rows that allow a key as they are (max 0) and zeroes rows that allow none (max
        # BLOCKED), one float ReduceMax instead of an int64 cast and sum of the mask (10 % of
        # ONNX Runtime's query decoder).
        bias = torch.where(mask, 0.0, BLOCKED)
        scores = scores + (bias - bias.amax(dim=-1, keepdim=True))
    attn = torch.softmax(scores, dim=-1)
    return torch.matmul(attn, v.float()).to(out_dtype)
