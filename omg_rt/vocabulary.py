"""Class names -> the classifier's text bank (K, S, D), without torch.

The one home of the official ``tools/gen_cls.py`` rules; ``training.vocabulary`` (PyTorch text
tower) and ``Segmenter.set_vocabulary`` (text-encoder graph) only supply the text embeddings.

- ``split_label``: each class name holds comma-separated synonyms (``_or_`` and ``/`` become
  commas, ``_`` a space, lower case, each part stripped).
- ``expand_prompts``: every synonym written into the 14 ViLD templates, synonym-major.
- ``aggregate_class_bank``: each template's text embedding L2-normalised, the mean over templates
  L2-normalised again (one vector per synonym), and a class's synonyms padded to the vocabulary's
  largest count S by repeating its first synonym. The classifier takes the max over synonyms, so
  the padding changes nothing.

One deliberate difference from the official ``split_label``: empty parts (``"cat,"``) are dropped
instead of being embedded as the empty synonym ``"a photo of a ."``. No shipped vocabulary has any.
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
TEXT_BATCH = 256  # texts per text-encoder call (the official NUM_BATCH)


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


def class_overlap(training_names: Sequence[str], names: Sequence[str]) -> list[bool]:
    """Which classes were seen in training (the official ``calculate_class_overlapping``).

    A class is seen when any of its comma-separated words is one of the training vocabulary's
    words (exact string match, as the official rule). Used by the export for the open-vocabulary
    ensemble (CLIP weight alpha for seen classes, beta for unseen ones).
    """
    words = {word for item in training_names for word in item.split(",")}
    return [any(word in words for word in item.split(",")) for item in names]


def expand_prompts(
    names: Sequence[str], templates: Sequence[str] = VILD_TEMPLATES
) -> tuple[list[str], list[int]]:
    """Class names -> the texts to embed and each class's synonym count.

    Args:
        names: K class names, comma-separated synonyms allowed (see :func:`split_label`).
        templates: T prompt templates with one ``{}``.

    Returns:
        texts: sum(S_k) * T strings, synonym-major (``templates[t].format(synonym)`` at
            ``synonym_index * T + t``), as ``aggregate_class_bank`` expects them.
        synonym_counts: K ints, S_k >= 1.
    """
    synonyms = [split_label(n) for n in check_names(names)]
    texts = [t.format(s) for syn in synonyms for s in syn for t in templates]
    return texts, [len(syn) for syn in synonyms]


def aggregate_class_bank(
    embeddings: np.ndarray, synonym_counts: Sequence[int], num_templates: int
) -> np.ndarray:
    """Text embeddings of :func:`expand_prompts`'s texts -> the text bank.

    Args:
        embeddings: (sum(S_k) * T, D) text embeddings (any float dtype, not normalised).
        synonym_counts: K synonym counts S_k.
        num_templates: T.

    Returns:
        (K, S, D) float32, every row unit-norm; S = max S_k, rows past S_k repeat synonym 0.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    rows = sum(synonym_counts) * num_templates
    if embeddings.ndim != 2 or embeddings.shape[0] != rows:
        raise InvalidInputError(
            f"embeddings: expected ({rows}, D) for {len(synonym_counts)} classes x "
            f"{num_templates} templates, got {embeddings.shape}"
        )
    d = embeddings.shape[-1]
    per_template = _normalise(embeddings.reshape(-1, num_templates, d))  # (sum S_k, T, D)
    per_synonym = _normalise(per_template.mean(axis=1))  # (sum S_k, D)
    bank = np.empty((len(synonym_counts), max(synonym_counts), d), dtype=np.float32)
    start = 0
    for k, count in enumerate(synonym_counts):
        bank[k, :count] = per_synonym[start : start + count]
        bank[k, count:] = per_synonym[start]  # repeat the first synonym
        start += count
    return bank


def build_class_bank(
    names: Sequence[str],
    embed_texts: Callable[[list[str]], np.ndarray],
    templates: Sequence[str] = VILD_TEMPLATES,
    *,
    batch_size: int = TEXT_BATCH,
) -> np.ndarray:
    """Text bank of a vocabulary.

    Args:
        names: K class names, comma-separated synonyms allowed.
        embed_texts: N strings -> (N, D) float32 text embeddings (not normalised), e.g. the
            tokenizer followed by the text-encoder graph. Called with at most ``batch_size``
            strings at a time.
        templates: prompt templates with one ``{}``.
        batch_size: texts per ``embed_texts`` call.

    Returns:
        (K, S, D) float32, every row unit-norm.
    """
    texts, synonym_counts = expand_prompts(names, templates)
    chunks = [embed_texts(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    embeddings = np.concatenate(chunks, axis=0)  # (sum S_k * T, D)
    return aggregate_class_bank(embeddings, synonym_counts, len(templates))


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.sqrt((x.astype(np.float32) ** 2).sum(-1, keepdims=True))
    return (x / np.maximum(norm, np.float32(1e-12))).astype(np.float32)
