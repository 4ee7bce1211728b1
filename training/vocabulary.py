"""Class names -> the classifier's text bank, as the official ``tools/gen_cls.py`` builds it.

Each class string holds comma-separated synonyms (``split_label``). Every synonym is written into
the 14 ViLD templates, encoded by the CLIP text tower, and aggregated: normalise each template
embedding, average over templates, normalise again. Classes with fewer synonyms than the
vocabulary's maximum S are padded by repeating their first synonym, giving a (K, S, D) bank of unit
rows; the classifier scores a class by its best synonym. Nothing is cached on disk here (the
official tool writes ``~/.cache/embd``; our bank travels in the export bundle).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The ViLD prompt templates (FC-CLIP's list, used verbatim by the official gen_cls).
VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)


def split_label(name: str) -> list[str]:
    """One class string -> its synonyms, as the official ``split_label``.

    ``_or_`` and ``/`` separate synonyms like ``,``; ``_`` becomes a space; lower case; each
    synonym stripped. ``"parasol_or_umbrella"`` -> ``["parasol", "umbrella"]``.
    """
    name = name.replace("_or_", ",").replace("/", ",").replace("_", " ").lower()
    return [part.strip() for part in name.split(",")]


def class_overlap(training_names: Sequence[str], names: Sequence[str]) -> list[bool]:
    """Which classes were seen in training (the official ``calculate_class_overlapping``).

    A class is seen when any of its comma-separated words is one of the training vocabulary's
    words (exact string match, as the official rule). Used by the open-vocabulary ensemble
    (CLIP weight alpha for seen classes, beta for unseen ones).
    """
    words = {word for item in training_names for word in item.split(",")}
    return [any(word in words for word in item.split(",")) for item in names]


@torch.no_grad()
def build_class_bank(
    model: nn.Module,
    names: Sequence[str],
    *,
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Class strings -> the (K, S, D) float32 text bank of unit rows.

    Args:
        model: an ``OMGSeg`` with a text encoder (``model.text_encoder``), or the
            ``CLIPTextEncoder`` itself.
        names: K class strings, synonyms separated by ``,`` (see :func:`split_label`).
        batch_size: prompts per text-encoder call.
        progress: called with the number of prompts encoded after each batch (a progress bar's
            ``update``).

    Returns:
        (K, S, D) float32 on the CPU; S = the largest synonym count.

    Raises:
        ValueError: ``names`` is empty, a class has no synonym text, or the model has no text
            encoder.
    """
    encoder = getattr(model, "text_encoder", model)
    if encoder is None or not hasattr(encoder, "tokenize"):
        raise ValueError(
            "model: expected an OMGSeg with a text encoder (or a CLIPTextEncoder), got "
            f"{type(model).__name__} without one; give a precomputed class bank instead"
        )
    if len(names) == 0:
        raise ValueError("names: expected at least one class name, got none")
    synonyms = [split_label(name) for name in names]
    for name, words in zip(names, synonyms):
        if not any(words):
            raise ValueError(f"names: expected non-empty class names, got {name!r}")
    prompts = [t.format(word) for words in synonyms for word in words for t in VILD_TEMPLATES]
    device = next(encoder.parameters()).device
    chunks = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        chunks.append(encoder(encoder.tokenize(batch).to(device)).float().cpu())
        if progress is not None:
            progress(len(batch))
    features = torch.cat(chunks)  # (sum of synonyms * templates, D)
    features = F.normalize(features, dim=-1).unflatten(0, (-1, len(VILD_TEMPLATES)))
    per_synonym = F.normalize(features.mean(dim=1), dim=-1)  # (sum of synonyms, D)
    widest = max(len(words) for words in synonyms)
    bank, start = [], 0
    for words in synonyms:
        rows = per_synonym[start : start + len(words)]
        start += len(words)
        padding = rows[:1].expand(widest - len(words), -1)  # repeat the first synonym
        bank.append(torch.cat([rows, padding]))
    return torch.stack(bank).contiguous()
