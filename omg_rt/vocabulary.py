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

On-disk cache (opt-in; the official ``~/.cache/embd`` is exactly the hidden path we avoid): a bank
is stored as ``<cache_dir>/vocab/<key>.npy``, ``cache_dir`` given by the caller or by the
``OMG_RT_CACHE`` environment variable, never a default. The key (``class_bank_key``) is the sha256
of the model's name, the sha256 of its text-encoder weights, the exact names and the templates.
Files are written atomically; a file that does not hold a bank of the expected shape is rebuilt
with a warning, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from omg_rt.errors import InvalidInputError
from omg_rt.files import atomic_path

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
CACHE_ENV = "OMG_RT_CACHE"
# Part of every cache key: bump it when the bank a key names changes (split, aggregation, padding).
CACHE_FORMAT = 1


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


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None) -> Path | None:
    """``cache_dir`` if given, else ``$OMG_RT_CACHE`` if set and non-empty, else None (no cache;
    there is no default location)."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(CACHE_ENV, "")
    return Path(env) if env else None


def class_bank_key(
    model_name: str,
    weights_sha256: str,
    names: Sequence[str],
    templates: Sequence[str] = VILD_TEMPLATES,
) -> str:
    """The cache key of a bank: hex sha256 of a canonical JSON document holding the cache format,
    the model's spec name, the sha256 of its text-encoder weights, the exact names (order and
    spelling as given) and the templates."""
    document = {
        "format": CACHE_FORMAT,
        "model": model_name,
        "text_encoder_sha256": weights_sha256,
        "names": list(names),
        "templates": list(templates),
    }
    text = json.dumps(document, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def class_bank_path(cache_dir: Path, key: str) -> Path:
    """``<cache_dir>/vocab/<key>.npy``."""
    return Path(cache_dir) / "vocab" / f"{key}.npy"


def read_cached_bank(path: Path, names: Sequence[str]) -> np.ndarray | None:
    """The bank cached at ``path`` for ``names``, or None when there is none.

    A file that cannot be read as a (K, S, D) float32 array of finite unit rows with K = len(names)
    and S = the names' largest synonym count is reported with a ``RuntimeWarning`` and ignored
    (the caller rebuilds and overwrites it).
    """
    try:
        bank = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError) as exc:  # truncated, not .npy, or unreadable
        _warn_corrupt(path, f"unreadable ({exc})")
        return None
    expected = (len(names), max(len(split_label(n)) for n in names))
    if not isinstance(bank, np.ndarray) or bank.dtype != np.float32 or bank.ndim != 3:
        _warn_corrupt(path, f"expected a float32 (K, S, D) array, got {bank.dtype} {bank.shape}")
        return None
    if bank.shape[:2] != expected:
        _warn_corrupt(path, f"expected shape {expected + ('D',)}, got {bank.shape}")
        return None
    norms = np.linalg.norm(bank, axis=-1)
    if not np.all(np.isfinite(bank)) or not np.allclose(norms, 1.0, atol=1e-3):
        _warn_corrupt(path, "expected finite unit-norm rows")
        return None
    return bank


def write_cached_bank(path: Path, bank: np.ndarray) -> None:
    """Store ``bank`` at ``path`` atomically (a temporary file in the same folder, then a rename:
    readers see the old file or the whole new one). An OSError (read-only or full disk) is
    reported with a ``RuntimeWarning``: the bank is still returned to the caller, only not cached.
    """
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(bank, dtype=np.float32))
    except OSError as exc:
        warnings.warn(f"class bank cache {path}: not written ({exc})", RuntimeWarning,
                      stacklevel=2)


def _warn_corrupt(path: Path, reason: str) -> None:
    warnings.warn(f"class bank cache {path}: {reason}; rebuilding it", RuntimeWarning,
                  stacklevel=3)


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.sqrt((x.astype(np.float32) ** 2).sum(-1, keepdims=True))
    out: np.ndarray = (x / np.maximum(norm, np.float32(1e-12))).astype(np.float32)
    return out
