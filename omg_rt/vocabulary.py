"""Class names -> the classifier's text bank (K, S, D), without torch.

As the official ``tools/gen_cls.py``: each class name holds comma-separated synonyms
(``split_label``: ``_or_`` and ``/`` become commas, ``_`` a space, lowercase, strip); every synonym
is written into the 14 ViLD templates, each template's text embedding is L2-normalised, the mean
over templates is L2-normalised again (one vector per synonym), and a class's synonym list is
padded to the vocabulary's largest count S by repeating its first synonym. The classifier takes
the max over synonyms, so the padding changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from omg_rt.errors import InvalidInputError

# The ViLD prompt templates (FC-CLIP's VILD_PROMPT, used by OMG-Seg's gen_cls).
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
_BATCH = 256  # texts per text-encoder call


def split_label(name: str) -> list[str]:
    """``"traffic_light/stop_light"`` -> ``["traffic light", "stop light"]`` (official rules)."""
    text = name.replace("_or_", ",").replace("/", ",").replace("_", " ").lower()
    return [part.strip() for part in text.split(",") if part.strip()]


def check_names(names: object) -> list[str]:
    """A non-empty sequence of non-empty strings, or InvalidInputError naming the problem."""
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise InvalidInputError(
            f"names: expected a non-empty list of class names, got {type(names).__name__}"
        )
    if len(names) == 0:
        raise InvalidInputError("names: expected a non-empty list of class names, got []")
    bad = [n for n in names if not isinstance(n, str) or not split_label(n)]
    if bad:
        raise InvalidInputError(f"names: expected non-empty strings, got {bad[:5]!r}")
    return list(names)


def check_num_things(num_things: object, k: int) -> int:
    """``num_things`` of a K-class vocabulary (None: all K), or InvalidInputError."""
    if num_things is None:
        return k
    if (
        isinstance(num_things, bool)
        or not isinstance(num_things, int | np.integer)
        or not (0 <= num_things <= k)
    ):
        raise InvalidInputError(f"num_things: expected an int in [0, {k}], got {num_things!r}")
    return int(num_things)


def seen_classes(
    names: Sequence[str], training_names: Sequence[str], training_seen: np.ndarray
) -> np.ndarray:
    """(K,) bool: a class is seen when one of its synonyms is verbatim a synonym of a seen
    training class (``training_seen``, one per ``training_names``)."""
    training = {
        s
        for name, ok in zip(training_names, training_seen, strict=True)
        if ok
        for s in split_label(name)
    }
    return np.array([bool(training & set(split_label(n))) for n in names], dtype=bool)


def build_class_bank(
    names: Sequence[str],
    embed_texts: Callable[[list[str]], np.ndarray],
    templates: Sequence[str] = VILD_TEMPLATES,
) -> np.ndarray:
    """Text bank of a vocabulary.

    Args:
        names: K class names, comma-separated synonyms allowed.
        embed_texts: N strings -> (N, D) float32 text embeddings (not normalised), e.g. the
            tokenizer followed by the text-encoder graph.
        templates: prompt templates with one ``{}``.

    Returns:
        (K, S, D) float32, every row unit-norm.
    """
    synonyms = [split_label(n) for n in check_names(names)]
    texts = [t.format(s) for syn in synonyms for s in syn for t in templates]
    chunks = [embed_texts(texts[i : i + _BATCH]) for i in range(0, len(texts), _BATCH)]
    embeddings = np.concatenate(chunks, axis=0).astype(np.float32)  # (sum S_k * T, D)
    t = len(templates)
    per_template = _normalise(embeddings.reshape(-1, t, embeddings.shape[-1]))
    per_synonym = _normalise(per_template.mean(axis=1))  # (sum S_k, D)
    s_max = max(len(s) for s in synonyms)
    bank = np.empty((len(synonyms), s_max, per_synonym.shape[-1]), dtype=np.float32)
    start = 0
    for k, syn in enumerate(synonyms):
        rows = per_synonym[start : start + len(syn)]
        bank[k, : len(syn)] = rows
        bank[k, len(syn) :] = rows[0]
        start += len(syn)
    return bank


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.sqrt((x.astype(np.float32) ** 2).sum(-1, keepdims=True))
    return (x / np.maximum(norm, np.float32(1e-12))).astype(np.float32)
