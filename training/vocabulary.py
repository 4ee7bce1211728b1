"""Class names -> the classifier's text bank, with the model's PyTorch CLIP text tower.

The rules (synonyms, the 14 ViLD templates, aggregation, padding) and the on-disk cache live in
``omg_rt.vocabulary``, shared with the runtime's text-encoder graph; this module only runs
``model.text_encoder`` on the prompt texts, in batches, in fp32, and hashes its weights for the
cache key.
"""

from __future__ import annotations

import hashlib
import os
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
    cache_dir: str | os.PathLike[str] | None = None,
) -> torch.Tensor:
    """Class strings -> the (K, S, D) float32 text bank of unit rows.

    Args:
        model: an ``OMGSeg`` with a text encoder (``model.text_encoder``), or the
            ``CLIPTextEncoder`` itself.
        names: K class strings, synonyms separated by ``,`` (see
            :func:`omg_rt.vocabulary.split_label`).
        batch_size: prompts per text-encoder call.
        progress: called with the number of prompts encoded after each batch (a progress bar's
            ``update``); not called when the bank comes from the cache.
        cache_dir: keep banks in ``<cache_dir>/vocab/<key>.npy`` (default: ``$OMG_RT_CACHE``;
            neither set: no cache). The key covers the model's spec name, the text encoder's
            weights, the names and the templates (:func:`omg_rt.vocabulary.class_bank_key`).

    Returns:
        (K, S, D) float32 on the CPU; S = the largest synonym count.

    Raises:
        ValueError: the model has no text encoder; ``InvalidInputError`` (a ValueError):
            ``names`` is empty or a class has no synonym text.
    """
    encoder = _text_encoder(model)
    names = vocabulary.check_names(names)
    root = vocabulary.resolve_cache_dir(cache_dir)
    path = None
    if root is not None:
        key = vocabulary.class_bank_key(_model_name(model, encoder), text_encoder_sha256(encoder),
                                        names)
        path = vocabulary.class_bank_path(root, key)
        cached = vocabulary.read_cached_bank(path, names)
        if cached is not None:
            return torch.from_numpy(cached)
    device = next(encoder.parameters()).device

    def embed_texts(texts: list[str]) -> np.ndarray:
        tokens = encoder.tokenize(texts).to(device)
        embeddings = encoder(tokens).float().cpu().numpy()  # (N, D)
        if progress is not None:
            progress(len(texts))
        return embeddings

    bank = vocabulary.build_class_bank(names, embed_texts, batch_size=batch_size)
    if path is not None:
        vocabulary.write_cached_bank(path, bank)
    return torch.from_numpy(bank)


def text_encoder_sha256(encoder: nn.Module) -> str:
    """Hex sha256 of a text encoder's state dict: every entry's name, dtype, shape and raw bytes,
    in name order (the same weights on any device give the same hash)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())  # raw bytes, no copy
    return digest.hexdigest()


def _text_encoder(model: nn.Module) -> nn.Module:
    encoder = getattr(model, "text_encoder", model)
    if encoder is None or not hasattr(encoder, "tokenize"):
        raise ValueError(
            "model: expected an OMGSeg with a text encoder (or a CLIPTextEncoder), got "
            f"{type(model).__name__} without one; give a precomputed class bank instead"
        )
    return encoder


def _model_name(model: nn.Module, encoder: nn.Module) -> str:
    """The spec name (``model.config.name``); a bare encoder is named by its class (its weights
    hash still tells encoders apart)."""
    spec = getattr(model, "config", None)
    return str(getattr(spec, "name", type(encoder).__name__))
