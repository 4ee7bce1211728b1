"""Class names -> the classifier's text bank, with the model's PyTorch CLIP text tower.

The rules (synonyms, the 14 ViLD templates, aggregation, padding) live in ``omg_rt.vocabulary``,
shared with the runtime's text-encoder graph; this module only runs ``model.text_encoder`` on the
prompt texts, in batches, in fp32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from omg_rt import vocabulary


@torch.no_grad()
def build_class_bank(
    model: nn.Module,
    names: Sequence[str],
    *,
    batch_size: int = vocabulary.TEXT_BATCH,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Class strings -> the (K, S, D) float32 text bank of unit rows.

    Args:
        model: an ``OMGSeg`` with a text encoder (``model.text_encoder``), or the
            ``CLIPTextEncoder`` itself.
        names: K class strings, synonyms separated by ``,`` (see
            :func:`omg_rt.vocabulary.split_label`).
        batch_size: prompts per text-encoder call.
        progress: called with the number of prompts encoded after each batch (a progress bar's
            ``update``).

    Returns:
        (K, S, D) float32 on the CPU; S = the largest synonym count.

    Raises:
        ValueError: the model has no text encoder; ``InvalidInputError`` (a ValueError):
            ``names`` is empty or a class has no synonym text.
    """
    encoder = _text_encoder(model)
    device = next(encoder.parameters()).device

    def embed_texts(texts: list[str]) -> np.ndarray:
        tokens = encoder.tokenize(texts).to(device)
        embeddings = encoder(tokens).float().cpu().numpy()  # (N, D)
        if progress is not None:
            progress(len(texts))
        return embeddings

    bank = vocabulary.build_class_bank(names, embed_texts, batch_size=batch_size)
    return torch.from_numpy(bank)


def _text_encoder(model: nn.Module) -> nn.Module:
    encoder = getattr(model, "text_encoder", model)
    if encoder is None or not hasattr(encoder, "tokenize"):
        raise ValueError(
            "model: expected an OMGSeg with a text encoder (or a CLIPTextEncoder), got "
            f"{type(model).__name__} without one; give a precomputed class bank instead"
        )
    return encoder
