"""Open-vocabulary class scores: the official ``Mask2formerVideo.open_voc_inference`` ensemble.

FC-CLIP's geometric ensemble of the learned classifier and the frozen CLIP classifier (CLIP's
dense features mask-pooled with each query's mask: :func:`mask_pooled_clip_features`, projected by
the CLIP head, then :func:`clip_class_logits`), all in float32:

- ``q = softmax(query_logits[:, :K])``, ``c = softmax(clip_logits)`` (void excluded from both);
- ``a = 0.4 * valid`` and ``b = 0.8 * valid``, where ``valid`` says the query's mask, resized to
  the CLIP feature map, has at least one logit > 0 (``ensemble_on_valid_mask``: otherwise the
  learned scores stand alone, since ``q ** 1 * c ** 0 == q``);
- ``e = log(q ** (1 - a) * c ** a)`` for classes seen in training, ``log(q ** (1 - b) * c ** b)``
  for unseen ones;
- ``p_void = softmax(query_logits)[:, K]``;
- result ``log([softmax(e) * (1 - p_void), p_void] + 1e-8)``, consumed by the usual
  softmax-based post-processing.

One deliberate difference: the official code blends the two branches as
``log(...) * seen + log(...) * (1 - seen)``, which yields NaN (``-inf * 0``) as soon as a
probability underflows to 0 in float32 (a class-logit gap above ~104). We select the branch
instead — identical whenever the official value is finite, ``-inf`` (probability 0) where it
would be NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from omg_rt.errors import InvalidInputError
from omg_rt.postprocess._common import check_array, softmax
from omg_rt.postprocess.masks import _resize_separable, linear_taps
from omg_rt.spec import PostprocessSpec

ALPHA = PostprocessSpec().ov_alpha  # CLIP weight for seen classes (Mask2formerVideo.__init__)
BETA = PostprocessSpec().ov_beta  # CLIP weight for unseen classes


def open_vocab_ensemble(
    query_logits: np.ndarray,
    clip_logits: np.ndarray,
    seen: np.ndarray,
    valid: np.ndarray,
    alpha: float = ALPHA,
    beta: float = BETA,
) -> np.ndarray:
    """Geometric ensemble of learned and CLIP class probabilities.

    Args:
        query_logits: (Q, K + 1) float32 learned class logits, void last (no IoU column).
        clip_logits: (Q, K) float32 CLIP mask-pooled class logits (void column dropped).
        seen: (K,) bool, True for classes in the training vocabulary.
        valid: (Q,) bool, True where the query's mask has a positive logit at CLIP resolution
            (see :func:`clip_valid_queries`).
        alpha: CLIP exponent for seen classes; beta: for unseen classes.

    Returns:
        (Q, K + 1) float32 log-probabilities ``log(p + 1e-8)``, void last.
    """
    query_logits = check_array(query_logits, "query_logits", 2, "float32", "float32 (Q, K + 1)")
    q, k1 = query_logits.shape
    k = k1 - 1
    clip_logits = check_array(clip_logits, "clip_logits", 2, "float32", f"float32 ({q}, {k})")
    seen = check_array(seen, "seen", 1, "bool", f"bool ({k},)")
    valid = check_array(valid, "valid", 1, "bool", f"bool ({q},)")
    if clip_logits.shape != (q, k):
        raise InvalidInputError(
            f"clip_logits: expected float32 ({q}, {k}), got float32 {clip_logits.shape}"
        )
    if seen.shape != (k,):
        raise InvalidInputError(f"seen: expected bool ({k},), got bool {seen.shape}")
    if valid.shape != (q,):
        raise InvalidInputError(f"valid: expected bool ({q},), got bool {valid.shape}")

    query_probs = softmax(query_logits[:, :k])
    clip_probs = softmax(clip_logits)
    valid32 = valid.astype(np.float32)[:, None]  # (Q, 1)
    a = np.float32(alpha) * valid32
    b = np.float32(beta) * valid32
    one = np.float32(1.0)
    with np.errstate(divide="ignore"):
        seen_term = np.log(query_probs ** (one - a) * clip_probs**a)
        unseen_term = np.log(query_probs ** (one - b) * clip_probs**b)
    ensembled = np.where(seen[None, :], seen_term, unseen_term).astype(np.float32)
    void = softmax(query_logits)[:, k:]  # (Q, 1)
    probs = np.concatenate([softmax(ensembled) * (one - void), void], axis=1)
    return np.log(probs + np.float32(1e-8)).astype(np.float32)


def clip_resolution_masks(
    mask_logits: np.ndarray, padded_hw: Sequence[int], clip_hw: Sequence[int]
) -> np.ndarray:
    """Mask logits at the CLIP feature resolution, as the official open-vocabulary path has them.

    The official code resizes the padded-size mask logits (themselves a bilinear upsample of the
    stride-4 logits) bilinearly to the CLIP map (stride 32). We evaluate that composition
    exactly, computing the padded-size samples only where the second resize reads them.

    Args:
        mask_logits: (Q, h4, w4) float32 at stride 4 of the padded input.
        padded_hw: (Hp, Wp) of the padded input.
        clip_hw: (hc, wc) of the CLIP feature map (Hp / 32, Wp / 32 for ConvNeXt).

    Returns:
        (Q, hc, wc) float32 logits.
    """
    mask_logits = check_array(mask_logits, "mask_logits", 3, "float32", "float32 (Q, h4, w4)")
    hp, wp = int(padded_hw[0]), int(padded_hw[1])
    hc, wc = int(clip_hw[0]), int(clip_hw[1])
    if min(hp, wp, hc, wc) <= 0:
        raise InvalidInputError(
            f"padded_hw, clip_hw: expected positive sizes, got {(hp, wp)}, {(hc, wc)}"
        )
    h4, w4 = mask_logits.shape[1:]

    def composed(
        in_size: int, mid_size: int, out_size: int
    ) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
        i0, i1, l0, l1 = linear_taps(mid_size, out_size)
        needed = np.unique(np.concatenate([i0, i1]))
        first = tuple(t[needed] for t in linear_taps(in_size, mid_size))
        second = (np.searchsorted(needed, i0), np.searchsorted(needed, i1), l0, l1)
        return first, second

    rows1, rows2 = composed(h4, hp, hc)
    cols1, cols2 = composed(w4, wp, wc)
    mid = _resize_separable(mask_logits, rows1, cols1)  # type: ignore[arg-type]
    return _resize_separable(mid, rows2, cols2)  # type: ignore[arg-type]


def clip_valid_queries(
    mask_logits: np.ndarray, padded_hw: Sequence[int], clip_hw: Sequence[int]
) -> np.ndarray:
    """Which queries have a positive mask logit at the CLIP feature resolution
    (:func:`clip_resolution_masks`). For a video tube, OR the per-frame results.

    Args:
        mask_logits: (Q, h4, w4) float32 at stride 4 of the padded input.
        padded_hw: (Hp, Wp) of the padded input.
        clip_hw: (hc, wc) of the CLIP feature map.

    Returns:
        (Q,) bool.
    """
    small = clip_resolution_masks(mask_logits, padded_hw, clip_hw)
    return np.asarray((small > 0).reshape(small.shape[0], -1).any(1))


def mask_pooled_clip_features(
    mask_logits: np.ndarray, clip_features: np.ndarray, padded_hw: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's CLIP features averaged over its mask (the official ``mask_pooling``).

    The mask of a query is ``clip_resolution_masks > 0`` in every frame of the tube; the pooled
    feature is the mean of the CLIP features under it (``sum / (area + 1e-8)``, zero for an empty
    mask).

    Args:
        mask_logits: (Q, T, h4, w4) float32 stride-4 logits of a tube of T frames.
        clip_features: (T, C, hc, wc) float32 CLIP backbone features (stride 32).
        padded_hw: (Hp, Wp) of the padded input.

    Returns:
        ``(pooled, valid)``: (Q, C) float32 pooled features and (Q,) bool, True where the mask
        is not empty (the ``valid`` of :func:`open_vocab_ensemble`).
    """
    mask_logits = check_array(
        mask_logits, "mask_logits", 4, "float32", "float32 (Q, T, h4, w4)"
    )
    clip_features = check_array(
        clip_features, "clip_features", 4, "float32", "float32 (T, C, hc, wc)"
    )
    q, t = mask_logits.shape[:2]
    if clip_features.shape[0] != t:
        raise InvalidInputError(
            f"clip_features: expected {t} frames (as mask_logits), got {clip_features.shape[0]}"
        )
    hc, wc = clip_features.shape[-2:]
    masks = np.stack(
        [
            clip_resolution_masks(np.ascontiguousarray(mask_logits[:, i]), padded_hw, (hc, wc))
            > 0
            for i in range(t)
        ],
        axis=1,
    )  # (Q, T, hc, wc)
    weights = masks.reshape(q, -1).astype(np.float32)
    weights /= weights.sum(1, keepdims=True) + np.float32(1e-8)
    feats = clip_features.transpose(1, 0, 2, 3).reshape(clip_features.shape[1], -1)  # (C, T*hc*wc)
    pooled = (weights @ feats.T).astype(np.float32)  # (Q, C)
    return pooled, np.asarray(masks.reshape(q, -1).any(1))


def clip_class_logits(
    clip_embeddings: np.ndarray, class_bank: np.ndarray, logit_scale: float
) -> np.ndarray:
    """CLIP classifier logits: scaled cosine similarity to each class's best synonym.

    Args:
        clip_embeddings: (Q, D) float32 projected, mask-pooled CLIP features.
        class_bank: (K, S, D) float32 unit text embeddings (S synonyms per class).
        logit_scale: CLIP's ``exp(logit_scale)``.

    Returns:
        (Q, K) float32.
    """
    unit = clip_embeddings / np.maximum(
        np.sqrt((clip_embeddings**2).sum(-1, keepdims=True)), np.float32(1e-12)
    )
    similarity = np.einsum("qd,ksd->qks", unit, class_bank).max(-1)
    logits: np.ndarray = (logit_scale * similarity).astype(np.float32)
    return logits
