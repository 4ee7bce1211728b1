"""Panoptic segmentation from query outputs: the official ``OMGFusionHead.panoptic_postprocess``.

Mask2Former's panoptic inference with the OMG-Seg test config (``m2_convl_300q.py``):

1. ``score, label = softmax(cls_logits).max(-1)`` over the K classes *and* void; keep the queries
   whose label is not void and whose score exceeds ``object_mask_thr`` (0.0 in the config).
2. Every pixel goes to the kept query with the largest ``score * sigmoid(mask)`` (the first one
   on ties, as ``torch.argmax``).
3. Visiting the kept queries in query order: ``area`` = pixels won, ``original_area`` = pixels with
   ``sigmoid >= 0.5``; with ``filter_low_score`` (True) the painted region is the won pixels that
   also have ``sigmoid >= 0.5`` — but ``area`` is counted *before* that filter. A query is skipped
   when either area is 0 or ``area / original_area < iou_thr`` (0.8).
4. Stuff (label >= num_things) is painted as ``label`` (same-class stuff merges); things as
   ``label + instance_id * 1000`` with ``instance_id`` counting accepted things from 1. Pixels
   nobody paints are void = K.

Won regions are disjoint, so painting order cannot change the map; we paint with a lookup table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
from scipy.special import expit

from omg_rt.errors import InvalidInputError
from omg_rt.postprocess import native
from omg_rt.postprocess._common import (
    check_array,
    parallel_map,
    sigmoid,
    sigmoid_threshold,
    softmax,
    thread_count,
)
from omg_rt.postprocess.device import DeviceLogits
from omg_rt.postprocess.tiles import TiledLogits, row_spans

INSTANCE_OFFSET = 1000  # mmdet.evaluation.functional.INSTANCE_OFFSET
OBJECT_MASK_THR = 0.0  # m2_convl_300q.py test_cfg (the code default is 0.8)
IOU_THR = 0.8
FILTER_LOW_SCORE = True
# Pixels per band when scanning the masks: bounds the (Q, band) temporaries.
_BAND_ELEMENTS = 1 << 24
# Cost of a pixel evaluated on a tile (_assign_tiles) against a query-pixel of _assign_dense
# (measured: benchmarks/bench_postprocess.py); _assign_tiles hands over when it would cost more.
_TILE_COST = 10.0
# _won_original_area resizes a query whole when this fraction of its tiles are across 0.5.
_WHOLE_FRACTION = 0.3
# _assign_tiles first decides on every _SAMPLE-th row of tiles.
_SAMPLE = 4
# Query-pixels per band of _assign_dense (its logits, comparisons and candidate lists).
_DENSE_ELEMENTS = 1 << 22
# ... resized _RESIZE_BANDS bands at a time (less of the first resize's margin rows).
_RESIZE_BANDS = 4
# _assign_dense bounds the winner's value per group of this many queries of similar scores ...
_GROUP = 8
# ... from the largest logits of the first few groups (the best scores; all groups would
# bound it little better on random-weight logits, at ten times the cost).
_BOUND_GROUPS = 4
# Relative slack of _assign_dense's float32 bounds: their own rounding is below 1e-6.
_SLACK = np.float32(2e-4)
# Bounds below this are treated as 0: float32 products lose relative precision near 1e-38.
_TINY = np.float32(1e-30)
# expit(x) is exactly 0 for float32 x < -88.7228 (expf(-x) overflows).
_EXPIT_ZERO = np.float32(-89.0)


class PanopticSegment(TypedDict):
    """One COCO-panoptic ``segments_info`` entry."""

    id: int
    category_id: int
    isthing: bool
    score: float
    area: int


@dataclass(frozen=True)
class PanopticResult:
    """Panoptic output of one image (or one video frame).

    Attributes:
        id_map: (H, W) int32; stuff = class, thing = class + instance_id * 1000, void = K.
        segments: one entry per id present in ``id_map`` (void excluded), in id-assignment order.
    """

    id_map: np.ndarray
    segments: list[PanopticSegment] = field(default_factory=list)


def panoptic_results(
    cls_logits: np.ndarray,
    mask_logits: np.ndarray,
    num_things: int,
    object_mask_thr: float = OBJECT_MASK_THR,
    iou_thr: float = IOU_THR,
    filter_low_score: bool = FILTER_LOW_SCORE,
) -> PanopticResult:
    """The official panoptic post-processing of one image.

    Args:
        cls_logits: (Q, K + 1) float32 class logits, void last (no IoU column). Log-probabilities
            from :func:`omg_rt.postprocess.open_vocab.open_vocab_ensemble` work the same way.
        mask_logits: (Q, H, W) float32 mask logits at the output size (usually the original
            image, see :func:`omg_rt.postprocess.masks.upsample_masks`).
        num_things: classes ``[0, num_things)`` are things, ``[num_things, K)`` stuff.
        object_mask_thr: keep queries whose best non-void probability is above this.
        iou_thr: drop a segment keeping less than this fraction of its own ``sigmoid >= 0.5`` area.
        filter_low_score: paint only pixels where the winning query's sigmoid is >= 0.5.

    Returns:
        :class:`PanopticResult` with an (H, W) int32 id map.
    """
    return _panoptic(
        cls_logits, mask_logits, num_things, object_mask_thr, iou_thr, filter_low_score, None
    )


def panoptic_from_tiles(
    cls_logits: np.ndarray,
    tiles: TiledLogits | DeviceLogits,
    num_things: int,
    object_mask_thr: float = OBJECT_MASK_THR,
    iou_thr: float = IOU_THR,
    filter_low_score: bool = FILTER_LOW_SCORE,
    thing_ids: np.ndarray | None = None,
) -> PanopticResult:
    """:func:`panoptic_results` of the stride-4 logits resized to the image.

    On the host, the C merge (:mod:`omg_rt.postprocess.native`) resizes every kept query a band
    of rows at a time with PyTorch's arithmetic, bit for bit ``F.interpolate``; without a C
    compiler, numpy gives :func:`panoptic_results` of ``upsample_masks`` (within float32
    rounding of PyTorch's resize), resizing only where a pixel's winner or confidence is not
    clear from the tile bounds, or, when few tiles are clear, every kept query a band of rows at
    a time.

    Args:
        cls_logits: (Q, K + 1) float32, void last.
        tiles: the Q queries' stride-4 mask logits with the image's sizes (or on a device:
            every kept query resized there, :class:`~omg_rt.postprocess.device.DeviceLogits`).
        num_things, object_mask_thr, iou_thr, filter_low_score: as :func:`panoptic_results`.
        thing_ids: (Q,) int64 fixed instance id per query (video), or None for a counter from 1.
    """
    return _panoptic(
        cls_logits, tiles, num_things, object_mask_thr, iou_thr, filter_low_score, thing_ids
    )


def _panoptic(
    cls_logits: np.ndarray,
    mask_logits: np.ndarray | TiledLogits | DeviceLogits,
    num_things: int,
    object_mask_thr: float,
    iou_thr: float,
    filter_low_score: bool,
    thing_ids: np.ndarray | None,
) -> PanopticResult:
    """Shared by images (``thing_ids`` None: counter from 1) and video (fixed id per query);
    ``mask_logits`` at the output size, or tiled stride-4 logits."""
    cls_logits = check_array(cls_logits, "cls_logits", 2, "float32", "float32 (Q, K + 1)")
    if isinstance(mask_logits, TiledLogits | DeviceLogits):
        n_masks, (h, w) = mask_logits.logits.shape[0], mask_logits.original_hw
    else:
        mask_logits = check_array(mask_logits, "mask_logits", 3, "float32", "float32 (Q, H, W)")
        n_masks, (h, w) = mask_logits.shape[0], mask_logits.shape[1:]
    q, k1 = cls_logits.shape
    if n_masks != q:
        raise InvalidInputError(
            f"mask_logits: expected {q} masks (one per query of cls_logits), got {n_masks}"
        )
    num_classes = k1 - 1
    if num_classes < 1:
        raise InvalidInputError(f"cls_logits: expected at least 2 columns, got {k1}")
    if not 0 <= num_things <= num_classes:
        raise InvalidInputError(f"num_things: expected 0..{num_classes}, got {num_things}")
    if num_classes >= INSTANCE_OFFSET:
        raise InvalidInputError(
            f"cls_logits: expected fewer than {INSTANCE_OFFSET} classes, got {num_classes}"
        )

    probs = softmax(cls_logits)
    labels = probs.argmax(-1)  # first maximum on ties, as torch.max
    scores = probs[np.arange(q), labels]
    kept = np.flatnonzero((labels != num_classes) & (scores > np.float32(object_mask_thr)))
    id_map = np.full((h, w), num_classes, dtype=np.int32)
    if kept.size == 0:
        return PanopticResult(id_map=id_map, segments=[])

    on_device = None
    if isinstance(mask_logits, DeviceLogits):  # the merge's maps stay there
        on_device = mask_logits.assign_here(kept, scores[kept])
        won_area, painted_area, original_area = on_device.areas(filter_low_score)
    else:
        if isinstance(mask_logits, TiledLogits) and native.available():
            winner, painted, original_area = native.panoptic_merge(mask_logits, kept, scores[kept])
        elif isinstance(mask_logits, TiledLogits):
            winner, painted, original_area = _assign_tiles(mask_logits, kept, scores[kept])
        else:
            winner, painted, original_area = _assign_pixels(mask_logits[kept], scores[kept])
        won_area = np.bincount(winner.ravel(), minlength=kept.size)
        if not filter_low_score:
            painted = np.ones_like(painted)
        painted_area = np.bincount(winner.ravel(), weights=painted.ravel(), minlength=kept.size)

    value = np.full(kept.size, num_classes, dtype=np.int64)
    segments: list[PanopticSegment] = []
    stuff_entry: dict[int, PanopticSegment] = {}
    instance_id = 1
    for slot, query in enumerate(kept):
        label = int(labels[query])
        area, original = int(won_area[slot]), int(original_area[slot])
        if area == 0 or original == 0 or area / original < iou_thr:
            continue
        score = float(scores[query])
        painted_pixels = int(painted_area[slot])
        if label >= num_things:
            value[slot] = label
            if painted_pixels == 0:
                continue
            entry = stuff_entry.get(label)
            if entry is None:
                entry = PanopticSegment(
                    id=label, category_id=label, isthing=False, score=score, area=0
                )
                stuff_entry[label] = entry
                segments.append(entry)
            entry["area"] += painted_pixels
            entry["score"] = max(entry["score"], score)
        else:
            inst = instance_id if thing_ids is None else int(thing_ids[query])
            instance_id += 1
            value[slot] = label + inst * INSTANCE_OFFSET
            if painted_pixels:
                segments.append(
                    PanopticSegment(
                        id=int(value[slot]),
                        category_id=label,
                        isthing=True,
                        score=score,
                        area=painted_pixels,
                    )
                )
    if on_device is not None:
        id_map = on_device.paint(value, num_classes, filter_low_score)
    else:
        id_map[...] = np.where(painted, value[winner], num_classes)
    return PanopticResult(id_map=id_map, segments=segments)


def _assign_pixels(
    mask_logits: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel, the kept query with the largest ``score * sigmoid``, and its confidence.

    Args:
        mask_logits: (N, H, W) float32 of the kept queries.
        scores: (N,) float32.

    Returns:
        winner (H, W) int64 slot, confident (H, W) bool (winner's sigmoid >= 0.5),
        original_area (N,) int64 pixels with sigmoid >= 0.5 per query.
    """
    n, h, w = mask_logits.shape
    winner = np.empty((h, w), dtype=np.int64)
    confident = np.empty((h, w), dtype=bool)
    original_area = np.zeros(n, dtype=np.int64)
    band = max(1, _BAND_ELEMENTS // max(n * w, 1))
    for top in range(0, h, band):
        probs = sigmoid(mask_logits[:, top : top + band])  # (N, b, W)
        above = probs >= np.float32(0.5)
        original_area += above.reshape(n, -1).sum(1)
        probs *= scores.astype(np.float32)[:, None, None]
        best = probs.argmax(0)  # first maximum on ties, as torch.argmax
        winner[top : top + band] = best
        confident[top : top + band] = np.take_along_axis(above, best[None], 0)[0]
    return winner, confident, original_area


def _assign_tiles(
    tiles: TiledLogits, kept: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_assign_pixels` from tiled stride-4 logits, resizing only the undecided tiles.

    Per tile, the kept query ``z`` with the largest lower bound of ``score * sigmoid`` beats,
    at every pixel, each later query whose upper bound is at most that (ties go to the first)
    and every query whose upper bound is below it. Where ``z`` is the only query left it wins
    the whole tile; elsewhere the remaining candidates are evaluated exactly. Confidence
    (``sigmoid >= 0.5``) is the logit against :func:`sigmoid_threshold`. ``original_area`` is
    counted only for the queries that win a pixel (the others are dropped whatever it is).

    When the bounds leave more to evaluate than resizing every kept query costs (a random-weight
    model: every query kept, near-identical masks), :func:`_assign_dense` does it instead,
    decided first on every :data:`_SAMPLE`-th row of tiles so that it skips most bounds too.
    """
    n = kept.shape[0]
    s = scores.astype(np.float32)[:, None, None]
    thr = sigmoid_threshold()
    ty, tx = tiles.grid
    t = tiles.tile
    h, w = tiles.original_hw
    if ty >= 2 * _SAMPLE:  # decide on a sample of tile rows first: bounds cost too
        sample = np.arange(0, ty, _SAMPLE)
        *_, evaluated = _decide(*tiles.bounds(kept, sample), s, thr)
        if _dense_is_cheaper(evaluated * t * t * ty // sample.size, n * h * w):
            return _assign_dense(tiles, kept, scores)
    lo, hi = tiles.bounds(kept)  # (n, ty, tx)
    first, alive, alone, unsure, evaluated = _decide(lo, hi, s, thr)
    if _dense_is_cheaper(evaluated * t * t, n * h * w):
        return _assign_dense(tiles, kept, scores)
    z_lo = np.take_along_axis(lo, first[None], 0)[0]
    z_hi = np.take_along_axis(hi, first[None], 0)[0]
    winner = np.empty((ty, tx, t, t), np.int64)
    confident = np.empty((ty, tx, t, t), bool)

    # Tiles z wins outright: confident where its bounds say so. Then one exact evaluation for
    # z on the tiles where they do not, and for every candidate of the contested tiles.
    winner[alone] = first[alone][:, None, None]
    confident[alone & (z_lo >= thr)] = True
    confident[alone & (z_hi < thr)] = False
    uy, ux = np.nonzero(unsure)
    my, mx = np.nonzero(~alone)
    tile_of, slots = np.nonzero(alive[:, my, mx].T)  # tile-major, slots ascending
    logits = tiles.evaluate(
        kept[np.r_[first[uy, ux], slots]], np.r_[uy, my[tile_of]], np.r_[ux, mx[tile_of]]
    )
    confident[uy, ux] = logits[: uy.shape[0]] >= thr
    logits = logits[uy.shape[0] :]
    if my.size:  # the first largest score * sigmoid wins, tiles grouped by candidate count
        probs = sigmoid(logits) * s[slots]
        count = alive[:, my, mx].sum(0)
        starts = np.r_[0, np.cumsum(count)[:-1]]
        for c in np.unique(count):
            group = np.flatnonzero(count == c)
            rows = starts[group][:, None] + np.arange(c)  # (g, c) pairs of each tile
            pick = np.take_along_axis(rows, probs[rows].argmax(1).reshape(len(group), -1), 1)
            pick = pick.reshape(len(group), t, t)
            winner[my[group], mx[group]] = slots[pick]
            confident[my[group], mx[group]] = np.take_along_axis(logits, pick, 0) >= thr

    winner_map, confident_map = tiles.assemble(winner), tiles.assemble(confident)
    return winner_map, confident_map, _won_original_area(tiles, kept, winner_map, (lo, hi))


def _won_original_area(
    tiles: TiledLogits,
    kept: np.ndarray,
    winner: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """(N,) int64 ``sigmoid >= 0.5`` pixel counts of the kept queries that win a pixel of
    ``winner``, 0 for the others (they are dropped whatever it is): tiles wholly above the
    threshold counted from their bounds, the tiles across it evaluated, or the whole query
    resized (on the post-processing threads) when they are :data:`_WHOLE_FRACTION` of the tiles.

    Args:
        tiles: all queries' stride-4 logits; kept: (N,) int query indices.
        winner: (H, W) int64 slots of ``kept``.
        bounds: the kept queries' (N, ty, tx) tile bounds when already computed.
    """
    n = kept.shape[0]
    thr = sigmoid_threshold()
    won = np.flatnonzero(np.bincount(winner.ravel(), minlength=n))
    lo, hi = tiles.bounds(kept[won]) if bounds is None else (bounds[0][won], bounds[1][won])
    across = ~((lo >= thr) | (hi < thr))  # (w, ty, tx) undecided, NaN bounds included
    whole = across.sum((1, 2)) >= _WHOLE_FRACTION * across[0].size
    across[whole] = False
    original_area = np.zeros(n, np.int64)
    valid = tiles.valid()
    full = (lo >= thr) * valid.sum((2, 3))  # (w, ty, tx) pixels of tiles wholly above
    original_area[won] = full.sum((1, 2))
    wi, wy, wx = np.nonzero(across)
    if wi.size:
        above = (tiles.evaluate(kept[won[wi]], wy, wx) >= thr) & valid[wy, wx]
        counts = np.bincount(wi, weights=above.sum((1, 2)), minlength=won.size)
        original_area[won] += counts.astype(np.int64)

    def count(query: int) -> int:
        return int(np.count_nonzero(tiles.dense(np.array([query]))[0] >= thr))

    original_area[won[whole]] = parallel_map(count, kept[won[whole]])
    return original_area


def _decide(
    lo: np.ndarray, hi: np.ndarray, s: np.ndarray, thr: np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """What the tile bounds decide (:func:`_assign_tiles`).

    Args:
        lo, hi: (n, ty, tx) float32 logit bounds; s: (n, 1, 1) float32 scores; thr: the
            sigmoid threshold.

    Returns:
        ``first`` (ty, tx) int64 z, ``alive`` (n, ty, tx) bool candidates, ``alone`` (ty, tx)
        bool tiles z wins outright, ``unsure`` (ty, tx) bool of those where z's confidence is
        not decided, and the number of (query, tile) pairs to evaluate.
    """
    low, high = sigmoid(lo) * s, sigmoid(hi) * s
    first = low.argmax(0)  # (ty, tx) z: the first largest lower bound
    best = np.take_along_axis(low, first[None], 0)
    slot = np.arange(lo.shape[0])[:, None, None]
    alive = (high > best) | ((high >= best) & (slot < first)) | (slot == first)
    alone = alive.sum(0) == 1
    z_lo = np.take_along_axis(lo, first[None], 0)[0]
    z_hi = np.take_along_axis(hi, first[None], 0)[0]
    unsure = alone & (z_lo < thr) & (z_hi >= thr)
    return first, alive, alone, unsure, int(unsure.sum()) + int(alive[:, ~alone].sum())


def _dense_is_cheaper(tile_pixels: int, query_pixels: int) -> bool:
    """Whether :func:`_assign_dense` over ``query_pixels`` (kept queries x image pixels) costs
    less than evaluating ``tile_pixels`` pixels on tiles."""
    return tile_pixels * _TILE_COST > query_pixels


def _assign_dense(
    tiles: TiledLogits, kept: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_assign_pixels` of the resized kept queries, a band of rows at a time, without the
    sigmoid of every query at every pixel.

    Queries are sorted by score and cut into groups of :data:`_GROUP`. Per pixel, the largest
    logit ``M`` of each of the first :data:`_BOUND_GROUPS` groups gives a lower bound
    ``min score * sigmoid(M)`` of the best value ``v``; a query of a group can reach ``v`` only
    where ``sigmoid(logit) >= v / max score``, i.e. where its logit is at least
    ``logit(v / max score)`` (float32 bounds, widened by :data:`_SLACK`). Only those
    (query, pixel) candidates get the exact ``score * expit(logit)``; the first largest wins, as
    ``argmax``. Where every value may be 0 (the bound underflows) the candidates are the queries
    whose sigmoid can be positive and the first query, which wins all-zero ties (elsewhere the
    winner's value is positive, so queries whose sigmoid is exactly 0 never need evaluating).

    A NaN wins its pixel (``argmax``). Resized logits are NaN only where the stride-4 ones are
    not finite (``inf * 0``); then every group bounds the best value, a NaN makes the bound NaN,
    and a pixel left without candidates is evaluated whole.

    Args:
        tiles: all queries' stride-4 logits.
        kept: (N,) int query indices; scores: (N,) float32.

    Returns:
        as :func:`_assign_pixels`, ``original_area`` counted only for the queries that win a
        pixel (:func:`_won_original_area`).
    """
    n = kept.shape[0]
    h, w = tiles.original_hw
    scores = scores.astype(np.float32)
    order = np.argsort(-scores, kind="stable")  # position -> slot, best score first
    position = np.argsort(order)  # slot -> position
    ordered = scores[order]
    groups = [(a, min(a + _GROUP, n)) for a in range(0, n, _GROUP)]
    finite = bool(np.isfinite(tiles.logits).all())
    bounding = groups[:_BOUND_GROUPS] if finite else groups  # the best scores bound the value
    low_score = np.array([ordered[b - 1] for _, b in bounding], np.float32)[:, None]
    high_score = np.array([ordered[a] for a, _ in groups], np.float32)[:, None]
    thr = sigmoid_threshold()
    winner = np.empty(h * w, np.int64)
    confident = np.empty(h * w, bool)
    rows = max(1, _DENSE_ELEMENTS // max(n * w, 1))
    step = _RESIZE_BANDS * rows
    ranked = tiles.select(kept[order])  # the kept queries' logits in score order, gathered once
    every = np.arange(n)

    def assign_span(span: tuple[int, int]) -> None:
        """Assign the rows of ``span`` (writes ``winner`` / ``confident`` there)."""
        flags = np.empty(n * rows * w, bool)
        maxima = np.empty((len(bounding), rows * w), np.float32)
        for top, band in ranked.row_bands(every, rows, step, span):
            p = band.shape[1] * w
            logits = band.reshape(n, p)  # (N, P) in score order
            mask = flags[: n * p].reshape(n, p)
            for g, (a, b) in enumerate(bounding):
                np.maximum.reduce(logits[a:b], axis=0, out=maxima[g, :p])
            low = _value_lower_bound(maxima[:, :p], low_score)
            cutoff = _logit_cutoff(low, high_score)  # (G, P)
            for g, (a, b) in enumerate(groups):
                np.greater_equal(logits[a:b], cutoff[g], out=mask[a:b])
            mask[position[0], low == 0] = True  # all values may be 0: the first slot wins ties
            qi, pi = np.divmod(np.flatnonzero(mask), p)
            picked = logits[qi, pi]
            values = ordered[qi] * expit(picked)
            best = np.full(p, -np.inf, np.float32)
            np.maximum.at(best, pi, values)
            slot = order[qi]
            tie = values == best[pi]
            first = np.full(p, n, np.int64)
            np.minimum.at(first, pi[tie], slot[tie])
            mine = tie & (slot == first[pi])  # one entry per pixel: the winner's
            band_confident = np.empty(p, bool)
            band_confident[pi[mine]] = picked[mine] >= thr
            left = np.flatnonzero(first == n)
            if left.size:  # no candidate (NaN): as _assign_pixels
                rest = logits[position][:, left]  # (N, r) in slot order
                first[left] = (expit(rest) * scores[:, None]).argmax(0)
                band_confident[left] = rest[first[left], np.arange(left.size)] >= thr
            winner[top * w : top * w + p] = first
            confident[top * w : top * w + p] = band_confident

    # Spans of rows on the post-processing threads: every band is computed as in one pass.
    parallel_map(assign_span, row_spans(h, step, thread_count()))
    winner_map = winner.reshape(h, w)
    return winner_map, confident.reshape(h, w), _won_original_area(tiles, kept, winner_map)


def _value_lower_bound(maxima: np.ndarray, low_score: np.ndarray) -> np.ndarray:
    """(G, P) group maxima of the logits -> (P,) float32 lower bound of the best value (0 where
    it underflows; NaN where a logit is NaN)."""
    with np.errstate(over="ignore"):
        approx = low_score / (np.float32(1.0) + np.exp(-maxima))  # np.exp: a few ulp off expit
    low: np.ndarray = approx.max(0) * (np.float32(1.0) - _SLACK)
    low[low < _TINY] = 0.0
    return low


def _logit_cutoff(low: np.ndarray, high_score: np.ndarray) -> np.ndarray:
    """(G, P) float32 logit below which no query of a group (scores <= high_score) reaches the
    value bound ``low``: ``logit(low / high_score)``, lowered by :data:`_SLACK` (the ratio's
    slack is worth >= 1e-4 in logit, above float32's error of this log, < 3e-5 for |logit| <=
    104), and at least :data:`_EXPIT_ZERO`. NaN where the group cannot reach ``low`` (no logit
    compares >= NaN)."""
    ratio = low[None] * ((np.float32(1.0) - _SLACK) / high_score)  # (G, P)
    with np.errstate(divide="ignore", invalid="ignore"):
        cutoff: np.ndarray = np.log(ratio / (np.float32(1.0) - ratio))  # NaN for ratio > 1
    np.maximum(cutoff, _EXPIT_ZERO, out=cutoff)
    return cutoff
