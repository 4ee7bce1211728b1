"""OMG-Seg's open-vocabulary class head and the mask pooling it is built on.

A query's class embedding = MLP(query + proj(mask-pooled pixel features)); its logits are the
cosine similarities with the CLIP text bank times a fixed scale (100), max over synonyms. The
void class is a zero embedding, so its logit is always exactly 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mask_pool(features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Average of ``features`` over the pixels where a mask logit is > 0 (ODISE / official).

    Args:
        features: (B, C, H, W).
        mask_logits: (B, Q, H', W'); bilinearly resized to (H, W) if they differ.

    Returns:
        (B, Q, C); an empty mask gives zeros.
    """
    if features.shape[-2:] != mask_logits.shape[-2:]:
        mask_logits = F.interpolate(
            mask_logits, size=features.shape[-2:], mode="bilinear", align_corners=False
        )
    with torch.no_grad():
        mask = (mask_logits.detach() > 0).to(features.dtype)
        denominator = mask.sum(dim=(-1, -2), keepdim=True) + 1e-8
    # (B, Q, HW) x (B, HW, C): one batched product of the normalised masks (so the result
    # stays within the features' range, also in half precision)
    return torch.matmul((mask / denominator).flatten(2), features.flatten(2).transpose(1, 2))


def text_logits(
    embeddings: torch.Tensor, class_bank: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """Cosine-similarity logits against a text bank, max over synonyms, void appended as 0.

    Args:
        embeddings: (B, Q, D) class embeddings (not normalised).
        class_bank: (K, S, D) unit-norm text embeddings, S synonyms per class.
        logit_scale: multiplier (exp(4.6052) = 100 in the official model).

    Returns:
        (B, Q, K + 1) logits; the last column (void) is exactly 0.
    """
    similarity = torch.einsum("bqd,ksd->bqks", F.normalize(embeddings, dim=-1), class_bank)
    logits = logit_scale * similarity.max(-1).values
    return F.pad(logits, (0, 1))


class OpenVocabClassifier(nn.Module):
    """Mask-pooled pixel features + the query -> a CLIP-space class embedding."""

    def __init__(self, *, embed_dim: int, clip_dim: int) -> None:
        super().__init__()
        self.mask_pooling_proj = nn.Sequential(
            nn.LayerNorm(embed_dim), nn.Linear(embed_dim, embed_dim)
        )
        self.cls_proj = nn.Sequential(
            nn.Linear(embed_dim, embed_dim),
            nn.ReLU(inplace=True),
            nn.Linear(embed_dim, embed_dim),
            nn.ReLU(inplace=True),
            nn.Linear(embed_dim, clip_dim),
        )

    def forward(
        self, queries: torch.Tensor, mask_features: torch.Tensor, mask_logits: torch.Tensor
    ) -> torch.Tensor:
        """
        Args:
            queries: (B, Q, C) post-normed decoder queries.
            mask_features: (B, C, H, W) (a clip's frames stacked along H).
            mask_logits: (B, Q, H, W) the same queries' masks.

        Returns:
            (B, Q, clip_dim) class embeddings.
        """
        pooled = self.mask_pooling_proj(mask_pool(mask_features, mask_logits))
        return self.cls_proj(pooled + queries)
