"""The frozen CLIP image tower: an OpenCLIP ConvNeXt (timm trunk + CLIP projection head).

Module names match OpenCLIP's ``visual`` tower (``trunk.*``, ``head.mlp.*``), so an OpenCLIP
checkpoint's ``visual.*`` weights load by stripping the prefix.
"""

from __future__ import annotations

from collections import OrderedDict

import timm
import torch
from timm.layers import Mlp
from torch import nn


class OpenCLIPBackbone(nn.Module):
    """ConvNeXt trunk returning the four stage maps, plus the CLIP head for mask-pooled features.

    Args:
        timm_model: timm ConvNeXt name (``convnext_large`` for the official model).
        widths: channels of the four stages (strides 4/8/16/32).
        depths: blocks per stage.
        embed_dim: CLIP joint embedding size the head projects to.
        head: OpenCLIP ``timm_proj`` kind; ``"mlp"`` (ConvNeXt-L) or ``"linear"`` (ConvNeXt-XXL).
        frozen: no gradients and always eval mode, as the official model.
    """

    def __init__(
        self,
        *,
        timm_model: str,
        widths: tuple[int, ...],
        depths: tuple[int, ...],
        embed_dim: int,
        head: str = "mlp",
        frozen: bool = True,
    ) -> None:
        super().__init__()
        self.trunk = timm.create_model(
            timm_model,
            pretrained=False,
            dims=tuple(widths),
            depths=tuple(depths),
            drop_path_rate=0.0,
        )
        # OpenCLIP resets only the classifier: the head keeps its global pool + LayerNorm.
        self.trunk.reset_classifier(0)
        width = widths[-1]
        if head == "mlp":
            layers = OrderedDict(mlp=Mlp(width, 2 * embed_dim, embed_dim, bias=(True, False)))
        elif head == "linear":
            layers = OrderedDict(drop=nn.Dropout(0.0), proj=nn.Linear(width, embed_dim, bias=False))
        else:
            raise ValueError(f"backbone head: expected 'mlp' or 'linear', got {head!r}")
        self.head = nn.Sequential(layers)
        self.widths = tuple(widths)
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> OpenCLIPBackbone:
        return super().train(mode and not self.frozen)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Stage features.

        Args:
            images: (N, 3, H, W) float32, normalised, H and W multiples of 32.

        Returns:
            four maps (N, C_i, H / s_i, W / s_i) for strides 4, 8, 16, 32.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            x = self.trunk.stem(images)
            features = []
            for stage in self.trunk.stages:
                x = stage(x).contiguous()
                features.append(x)
        return features

    def clip_projection(self, pooled: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings of mask-pooled stride-32 features (``trunk.head`` + CLIP head).

        Args:
            pooled: (B, Q, C) mask-pooled features of the last stage.

        Returns:
            (B, Q, embed_dim).
        """
        b, q, c = pooled.shape
        x = self.trunk.forward_head(pooled.reshape(b * q, c, 1, 1), pre_logits=True)  # (BQ, C)
        return self.head(x).view(b, q, -1)
