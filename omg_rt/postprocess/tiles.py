"""Mask logits at the original image size, computed only on the tiles a decision needs.

The official post-processing resizes every query's stride-4 logits to the original image
(:func:`~omg_rt.postprocess.masks.upsample_masks`) and then thresholds, compares or sums them.
Most of those full-size values never matter: far from its boundary a mask is clearly in or out,
and far from a segment border one query clearly wins. :class:`TiledLogits` cuts the original
image into ``TILE x TILE`` tiles and gives, per query and tile,

- :meth:`~TiledLogits.bounds`: every output of a bilinear resize is a convex combination of its
  source samples (non-negative weights summing to 1), so a tile's logits lie between the
  minimum and maximum of the stride-4 samples that feed it (widened by float32 rounding);
- :meth:`~TiledLogits.evaluate`: the tile's exact logits, bit for bit what ``upsample_masks``
  gives (same first stage, :class:`~omg_rt.postprocess.masks.ResizePlan`, and the same float32
  operations of the second, one element at a time).

Callers decide from the bounds and evaluate only the undecided (query, tile) pairs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from omg_rt.postprocess._common import check_array
from omg_rt.postprocess.masks import ResizePlan, _resize_separable, linear_taps, upsample_masks

TILE = 8
# Relative widening of the bounds: two bilinear stages, each a float32 convex combination with
# weights summing to 1 within 2**-24, move a value at most ~4e-7 of the window's magnitude.
_MARGIN = np.float32(2.0**-20)
_QUERY_BLOCK = 16  # queries whose padded-size logits are held at once (as upsample_masks)
# A query asked for on at least this fraction of the tiles is resized whole (upsample_masks's
# second stage), which is cheaper than gathering that many tiles one by one.
_DENSE_FRACTION = 0.2


@dataclass(frozen=True)
class _Axis:
    """One axis of the tiling.

    Attributes:
        valid: (T,) real output samples per tile (the last tile may be partial; its extra
            samples repeat the last output).
        outputs: (T, TILE) the output index of each tile sample.
        window: (T, P) crop indices tile t's second stage reads (a run, edge-clamped).
        t0, t1: (T, TILE) crop indices of each output's two taps; i0, i1 their positions in
            ``window``; l0, l1 their float32 weights (``linear_taps`` of the second stage).
        src_lo, src_hi: (T,) first and last stride-4 index feeding the tile.
    """

    valid: np.ndarray
    outputs: np.ndarray
    window: np.ndarray
    t0: np.ndarray
    t1: np.ndarray
    i0: np.ndarray
    i1: np.ndarray
    l0: np.ndarray
    l1: np.ndarray
    src_lo: np.ndarray
    src_hi: np.ndarray


def _axis(stage1: tuple[np.ndarray, ...], crop: int, out: int, copy: bool, tile: int) -> _Axis:
    n_tiles = -(-out // tile)
    outputs = np.minimum(np.arange(n_tiles * tile).reshape(n_tiles, tile), out - 1)
    valid = np.minimum(tile, out - np.arange(n_tiles) * tile)
    if copy:
        t0 = t1 = outputs
        w0, w1 = np.ones(outputs.shape, np.float32), np.zeros(outputs.shape, np.float32)
    else:
        i0, i1, l0, l1 = linear_taps(crop, out)
        t0, t1, w0, w1 = i0[outputs], i1[outputs], l0[outputs], l1[outputs]
    start = t0.min(1)
    width = int((np.maximum(t0, t1).max(1) - start).max()) + 1
    window = np.minimum(start[:, None] + np.arange(width), crop - 1)
    s0, s1 = stage1[0], stage1[1]
    return _Axis(
        valid=valid,
        outputs=outputs,
        window=window,
        t0=t0,
        t1=t1,
        i0=t0 - start[:, None],
        i1=t1 - start[:, None],
        l0=w0,
        l1=w1,
        src_lo=np.minimum(s0[window], s1[window]).min(1),
        src_hi=np.maximum(s0[window], s1[window]).max(1),
    )


class TiledLogits:
    """Stride-4 mask logits of the padded input seen as (Q, H, W) logits at the original size.

    Args:
        mask_logits: (Q, h4, w4) float32.
        padded_hw, resized_hw, original_hw: as :func:`~omg_rt.postprocess.masks.upsample_masks`.
        tile: tile edge in output pixels.
    """

    def __init__(
        self,
        mask_logits: np.ndarray,
        padded_hw: Sequence[int],
        resized_hw: Sequence[int],
        original_hw: Sequence[int],
        tile: int = TILE,
    ) -> None:
        mask_logits = check_array(mask_logits, "mask_logits", 3, "float32", "float32 (Q, h4, w4)")
        # upsample_masks validates the sizes (and is the dense form of this class).
        upsample_masks(mask_logits[:0], padded_hw, resized_hw, original_hw)
        hp, wp = (int(v) for v in padded_hw)
        hr, wr = (int(v) for v in resized_hw)
        h, w = (int(v) for v in original_hw)
        self.logits = np.ascontiguousarray(mask_logits)
        self._sizes = ((hp, wp), (hr, wr), (h, w))
        self.original_hw = (h, w)
        self.tile = tile
        self.plan = ResizePlan(mask_logits.shape[1:], (hp, wp), (hr, wr), (h, w))
        self.rows = _axis(self.plan.rows1, hr, h, self.plan.copy, tile)
        self.cols = _axis(self.plan.cols1, wr, w, self.plan.copy, tile)

    @property
    def grid(self) -> tuple[int, int]:
        """(tiles down, tiles across)."""
        return self.rows.valid.shape[0], self.cols.valid.shape[0]

    def valid(self) -> np.ndarray:
        """(ty, tx, TILE, TILE) bool: which tile samples are real pixels."""
        t = np.arange(self.tile)
        rows = t[None, :] < self.rows.valid[:, None]  # (ty, TILE)
        cols = t[None, :] < self.cols.valid[:, None]  # (tx, TILE)
        return rows[:, None, :, None] & cols[None, :, None, :]

    def assemble(self, tiles: np.ndarray) -> np.ndarray:
        """(ty, tx, TILE, TILE) per-tile values -> (H, W)."""
        ty, tx, t, _ = tiles.shape
        h, w = self.original_hw
        return tiles.transpose(0, 2, 1, 3).reshape(ty * t, tx * t)[:h, :w]

    def select(self, queries: np.ndarray) -> TiledLogits:
        """The same sizes with only ``queries``' logits, in that order (gathered once, so that
        several :meth:`row_bands` spans of them do not each copy them)."""
        return TiledLogits(self.logits[queries], *self._sizes, tile=self.tile)

    def dense(self, queries: np.ndarray) -> np.ndarray:
        """(N,) int queries -> (N, H, W) float32, ``upsample_masks`` of those queries."""
        return upsample_masks(self.logits[queries], *self._sizes)

    def row_bands(
        self,
        queries: np.ndarray,
        rows: int,
        resize_rows: int | None = None,
        span: tuple[int, int] | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """:meth:`dense` of ``queries``, ``rows`` output rows at a time, top to bottom.

        Args:
            queries: (N,) int query indices.
            rows: band height (>= 1).
            resize_rows: rows resized at once, a multiple of ``rows`` (default ``rows``). The
                first resize reads a margin of rows around each band, so taller ones waste less.
            span: ``(start, stop)``: only the bands of output rows ``[start, stop)``, ``start``
                a multiple of ``resize_rows`` (see :func:`row_spans`); they come from a copy of
                the resize plan with buffers of its own, so spans can run on several threads.
                Default: every row, on the shared plan.

        Yields:
            ``(top, logits)``: (N, b, W) float32 rows ``[top, top + b)`` of ``upsample_masks``
            of those queries, bit for bit (b = ``rows`` except at the bottom). A band may be a
            view into a buffer that the next band overwrites.
        """
        logits = self.logits if _is_all(queries, self.logits.shape[0]) else self.logits[queries]
        step = resize_rows or rows
        plan = self.plan if span is None else self.plan.clone()
        first, h = span or (0, self.original_hw[0])
        for top in range(first, h, step):
            chunk = plan.output_rows(logits, top, min(top + step, h))
            for start in range(0, chunk.shape[1], rows):
                yield top + start, chunk[:, start : start + rows]

    def bounds(
        self, queries: np.ndarray, tile_rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per query and tile, float32 ``(lo, hi)`` with ``lo <= logit <= hi`` on the whole tile.

        Args:
            queries: (N,) int query indices.
            tile_rows: (R,) int rows of tiles to bound (default: all ty).

        Returns:
            two (N, R, tx) float32 arrays.
        """
        logits = self.logits if _is_all(queries, self.logits.shape[0]) else self.logits[queries]
        r_lo, r_hi = self.rows.src_lo, self.rows.src_hi
        if tile_rows is not None:
            r_lo, r_hi = r_lo[tile_rows], r_hi[tile_rows]
        c_lo, c_hi = self.cols.src_lo, self.cols.src_hi
        lo = _window_reduce(np.minimum, logits, r_lo, r_hi, axis=1)
        lo = _window_reduce(np.minimum, lo, c_lo, c_hi, axis=2)
        hi = _window_reduce(np.maximum, logits, r_lo, r_hi, axis=1)
        hi = _window_reduce(np.maximum, hi, c_lo, c_hi, axis=2)
        margin = np.maximum(np.abs(lo), np.abs(hi)) * _MARGIN
        return lo - margin, hi + margin

    def evaluate(self, queries: np.ndarray, ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
        """Exact logits of (query, tile) pairs.

        Args:
            queries, ty, tx: (N,) int, the pairs' query and tile row / column.

        Returns:
            (N, TILE, TILE) float32, equal to ``upsample_masks`` on those tiles bit for bit.
        """
        out = np.empty((queries.shape[0], self.tile, self.tile), np.float32)
        if queries.shape[0] == 0:
            return out
        distinct, local = np.unique(queries, return_inverse=True)
        dense = np.bincount(local) >= _DENSE_FRACTION * self.grid[0] * self.grid[1]
        for start in range(0, distinct.shape[0], _QUERY_BLOCK):
            chunk = distinct[start : start + _QUERY_BLOCK]
            cropped = self.plan.padded_crop(self.logits[chunk])
            pick = np.flatnonzero((local >= start) & (local < start + chunk.shape[0]))
            whole = dense[local[pick]]
            if whole.any():
                slots = np.flatnonzero(dense[start : start + chunk.shape[0]])
                full = cropped[slots] if self.plan.copy else _resize_separable(
                    cropped[slots], self.plan.rows2, self.plan.cols2
                )
                at = np.searchsorted(slots, local[pick[whole]] - start)[:, None, None]
                rows = self.rows.outputs[ty[pick[whole]]][:, :, None]
                out[pick[whole]] = full[at, rows, self.cols.outputs[tx[pick[whole]]][:, None, :]]
            part = pick[~whole]
            out[part] = self._second_stage(cropped, local[part] - start, ty[part], tx[part])
        return out

    def _second_stage(
        self, cropped: np.ndarray, slot: np.ndarray, ty: np.ndarray, tx: np.ndarray
    ) -> np.ndarray:
        """The second bilinear stage on tiles, with the operations of ``_resize_separable``
        (along W then along H; ``a * l0``, ``b * l1``, then their sum, each rounded to float32)."""
        r, c = self.rows, self.cols
        slot = slot[:, None, None]
        if self.plan.copy:  # the tile's samples themselves
            samples: np.ndarray = cropped[slot, r.t0[ty][:, :, None], c.t0[tx][:, None, :]]
            return samples
        rows = r.window[ty][:, :, None]
        wide = cropped[slot, rows, c.t0[tx][:, None, :]] * c.l0[tx][:, None, :]
        wide += cropped[slot, rows, c.t1[tx][:, None, :]] * c.l1[tx][:, None, :]
        pair = np.arange(ty.shape[0])[:, None]
        out: np.ndarray = wide[pair, r.i0[ty]] * r.l0[ty][:, :, None]
        out += wide[pair, r.i1[ty]] * r.l1[ty][:, :, None]
        return out


def row_spans(height: int, step: int, parts: int) -> list[tuple[int, int]]:
    """``[0, height)`` cut into at most ``parts`` contiguous ``(start, stop)`` spans of about
    equal height, each starting at a multiple of ``step`` (for :meth:`TiledLogits.row_bands`)."""
    steps = -(-height // step)
    cuts = sorted({min(round(i * steps / max(parts, 1)) * step, height)
                   for i in range(max(parts, 1) + 1)})
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _is_all(queries: np.ndarray, q: int) -> bool:
    return queries.shape[0] == q and bool(np.all(queries == np.arange(q)))


def _window_reduce(
    ufunc: np.ufunc, values: np.ndarray, lo: np.ndarray, hi: np.ndarray, axis: int
) -> np.ndarray:
    """``ufunc`` over ``values[lo[t] : hi[t] + 1]`` along ``axis``, for every tile t (windows
    are a few samples wide: one gather per offset)."""
    out = np.take(values, lo, axis=axis)
    for offset in range(1, int((hi - lo).max()) + 1):
        ufunc(out, np.take(values, np.minimum(lo + offset, hi), axis=axis), out=out)
    return out
