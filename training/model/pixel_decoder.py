"""Mask2Former's multi-scale deformable-attention pixel decoder
(mmdet ``MSDeformAttnPixelDecoder``).

Levels run low -> high resolution: level 0 = stride 32, 1 = stride 16, 2 = stride 8. A 6-layer
post-norm deformable encoder mixes them; an FPN step adds stride 4 and a 1x1 conv gives the mask
features the query decoder's masks are dot products with.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from training.model.position_encoding import sine_encoding_2d


class ConvNorm(nn.Module):
    """Conv2d + GroupNorm (+ optional ReLU), the mmcv ``ConvModule`` the official decoder uses."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        bias: bool,
        num_groups: int,
        relu: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )
        self.norm = nn.GroupNorm(num_groups, out_channels)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.relu(x) if self.relu else x


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR), mmcv's module layout.

    out = output_proj(sum_{l,p} A_{lp} * V_l(ref + offset_{lp} / (W_l, H_l))); residual outside.
    """

    def __init__(self, *, embed_dim: int, num_heads: int, num_levels: int, num_points: int) -> None:
        super().__init__()
        self.num_heads, self.num_levels, self.num_points = num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)

    def forward(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """
        Args:
            query: (N, S, C) with positional code added.
            value: (N, S, C) the encoder input (no positional code).
            reference_points: (S, 2) normalised (x, y) pixel centres, shared by all levels.
            spatial_shapes: (L, 2) int64 (H_l, W_l).
            level_start_index: (L,) int64.

        Returns:
            (N, S, C).
        """
        n, s, c = query.shape
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        value = self.value_proj(value).view(n, s, m, c // m)
        weights = (
            self.attention_weights(query).view(n, s, m, lv * p).softmax(-1).view(n, s, m, lv, p)
        )
        # ref + offset / (W_l, H_l) on the linear layer's (N, S, M*L*P*2) output, the
        # normaliser and the reference points laid out per column: the same divisions and sums
        # as broadcasting over (M, L, P), but along whole rows (exported, ONNX Runtime's
        # broadcasting Div and Add over (M, L, P) cost 8 % of the pixel decoder).
        normalizer = torch.stack(
            [spatial_shapes[..., 1], spatial_shapes[..., 0]], -1
        ).to(query.dtype)  # (L, 2) = (W, H)
        columns = normalizer[None, :, None, :].expand(m, lv, p, 2).reshape(-1)
        references = reference_points.repeat(1, m * lv * p)  # (S, M*L*P*2), x, y alternating
        locations = (references + self.sampling_offsets(query) / columns).view(n, s, m, lv, p, 2)
        out = kernels.ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(out)


class FFN(nn.Module):
    """Linear -> ReLU -> Linear with the residual added (mmcv ``FFN``)."""

    def __init__(self, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))


class DeformableEncoderLayer(nn.Module):
    """Post-norm: x = LN(x + MSDA(x + pos, x)); x = LN(FFN(x))."""

    def __init__(
        self, *, embed_dim: int, num_heads: int, num_levels: int, num_points: int, ffn_dim: int
    ) -> None:
        super().__init__()
        self.attn = MSDeformAttn(
            embed_dim=embed_dim, num_heads=num_heads, num_levels=num_levels, num_points=num_points
        )
        self.norm1 = nn.LayerNorm(embed_dim)
        self.ffn = FFN(embed_dim, ffn_dim)
        self.norm2 = nn.LayerNorm(embed_dim)

    def forward(
        self,
        x: torch.Tensor,
        pos: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        x = self.norm1(
            x + self.attn(x + pos, x, reference_points, spatial_shapes, level_start_index)
        )
        return self.norm2(self.ffn(x))


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone stage features -> three multi-scale memories + stride-4 mask features.

    Args:
        in_channels: backbone channels at strides 4, 8, 16, 32.
        embed_dim: decoder width (256).
        num_layers, num_heads, num_points, ffn_dim: the deformable encoder's shape.
        num_groups: GroupNorm groups (32).
    """

    STRIDES = (4, 8, 16, 32)

    def __init__(
        self,
        *,
        in_channels: tuple[int, ...],
        embed_dim: int,
        num_layers: int,
        num_heads: int,
        num_points: int,
        ffn_dim: int,
        num_groups: int,
        num_levels: int = 3,
    ) -> None:
        super().__init__()
        self.embed_dim, self.num_levels = embed_dim, num_levels
        # i = 0 is the lowest resolution (stride 32).
        self.input_projections = nn.ModuleList(
            ConvNorm(in_channels[-1 - i], embed_dim, 1, bias=True, num_groups=num_groups)
            for i in range(num_levels)
        )
        self.level_embed = nn.Embedding(num_levels, embed_dim)
        self.encoder = nn.ModuleList(
            DeformableEncoderLayer(
                embed_dim=embed_dim,
                num_heads=num_heads,
                num_levels=num_levels,
                num_points=num_points,
                ffn_dim=ffn_dim,
            )
            for _ in range(num_layers)
        )
        self.lateral_conv = ConvNorm(
            in_channels[0], embed_dim, 1, bias=False, num_groups=num_groups
        )
        self.output_conv = ConvNorm(
            embed_dim, embed_dim, 3, bias=False, num_groups=num_groups, relu=True
        )
        self.mask_projection = nn.Conv2d(embed_dim, embed_dim, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """
        Args:
            features: four backbone maps (N, C_i, H_i, W_i), strides 4, 8, 16, 32.

        Returns:
            mask_features: (N, C, H / 4, W / 4).
            memories: three (N, C, h_l, w_l) maps, strides 32, 16, 8 (low -> high resolution).
        """
        n = features[0].shape[0]
        device = features[0].device
        inputs, positions, references, sizes = [], [], [], []
        for i in range(self.num_levels):
            level = len(features) - 1 - i
            feat = features[level]
            # sizes read from the tensor stay symbolic when traced for ONNX (dynamic H, W)
            h, w = feat.shape[-2:]
            stride = self.STRIDES[level]
            inputs.append(self.input_projections[i](feat).flatten(2).transpose(1, 2))  # (N, hw, C)
            pos = sine_encoding_2d(h, w, self.embed_dim // 2, device)
            pos = self.level_embed.weight[i].view(-1, 1, 1) + pos
            positions.append(pos.flatten(1).transpose(0, 1))  # (hw, C)
            # pixel centres, computed as mmdet's point generator: ((x + 0.5) * s) / (W * s)
            xs = (torch.arange(w, device=device) + 0.5) * stride / (w * stride)
            ys = (torch.arange(h, device=device) + 0.5) * stride / (h * stride)
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            references.append(torch.stack([xx.reshape(-1), yy.reshape(-1)], -1))
            sizes.append((h, w))
        x = torch.cat(inputs, dim=1)
        pos = torch.cat(positions, dim=0)[None]
        reference_points = torch.cat(references, dim=0)
        spatial_shapes = _shape_table(sizes, device)
        counts = [h * w for h, w in sizes]
        level_start_index = torch.cat(
            [spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]]
        )
        for layer in self.encoder:
            x = layer(x, pos, reference_points, spatial_shapes, level_start_index)
        memories = [
            m.transpose(1, 2).reshape(n, self.embed_dim, h, w)
            for m, (h, w) in zip(x.split(counts, dim=1), sizes)
        ]
        lateral = self.lateral_conv(features[0])
        fused = lateral + F.interpolate(
            memories[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False
        )
        mask_features = self.mask_projection(self.output_conv(fused))
        return mask_features, memories


def _shape_table(sizes: list[tuple[Any, Any]], device: torch.device) -> torch.Tensor:
    """(L, 2) int64 (H_l, W_l) from python ints, or from 0-d size tensors while tracing (a
    ``torch.tensor`` of them would freeze the sizes into the graph)."""
    if torch.jit.is_tracing():
        rows = [torch.stack([torch.as_tensor(h), torch.as_tensor(w)]) for h, w in sizes]
        return torch.stack(rows).to(device=device, dtype=torch.int64)
    return torch.tensor(sizes, dtype=torch.int64, device=device)
