"""The CLIP text tower that turns class names into the classifier's text bank."""

from __future__ import annotations

import torch
from open_clip.model import CLIPTextCfg, _build_text_tower
from open_clip.tokenizer import SimpleTokenizer
from torch import nn


class CLIPTextEncoder(nn.Module):
    """OpenCLIP text transformer (token + positional embedding, causal transformer, final LN,
    end-of-text token, projection). Module names match OpenCLIP's CLIP model
    (``token_embedding``, ``positional_embedding``, ``transformer.*``, ``ln_final``,
    ``text_projection``).

    Args:
        embed_dim: joint embedding size (the projection's output).
        context_length, vocab_size, width, heads, layers: the tower's shape.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        context_length: int,
        vocab_size: int,
        width: int,
        heads: int,
        layers: int,
    ) -> None:
        super().__init__()
        cfg = CLIPTextCfg(
            context_length=context_length,
            vocab_size=vocab_size,
            width=width,
            heads=heads,
            layers=layers,
        )
        self.tower = _build_text_tower(embed_dim, cfg)
        self.context_length = context_length
        self._tokenizer = SimpleTokenizer(context_length=context_length)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(N,) strings -> (N, context_length) int64 token ids (start/end tokens, zero padded)."""
        return self._tokenizer(texts)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(N, context_length) int64 -> (N, embed_dim) float32 text embeddings (not normalised)."""
        return self.tower(token_ids)
