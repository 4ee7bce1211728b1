"""Mask-logit resizing exactly as the official inference does it with ``F.interpolate``.

The official path (``Mask2FormerVideoHead.predict`` then ``OMGFusionHead.predict``):
stride-4 mask logits -> bilinear (``align_corners=False``) to the padded input size
(``batch_input_shape``) -> crop to the resized image (``img_shape``) -> bilinear to the original
image (``ori_shape``). Every binary mask, score and id map downstream is computed at the original
size from these logits.

OpenCV's ``INTER_LINEAR`` uses the same half-pixel sampling, but it rounds the source coordinate
differently from PyTorch (double precision, then float32) — off by up to ~6e-5 pixels, which is
~1e-4 relative on large logits. PyTorch's CPU kernel computes, in float32,
``src = max(scale * (dst + 0.5) - 0.5, 0)`` with ``scale = float32(in) / out`` and a fused
multiply-add (measured: the FMA variant reproduces its weights bit for bit), then
``i0 = min(floor(src), in - 1)``, ``l1 = clamp(src - i0, 0, 1)``, ``l0 = 1 - l1``,
``i1 = i0 + (i0 < in - 1)``; rows are interpolated first along W, then along H. We build those
taps in numpy and apply them separably. Where the two libraries' coordinates agree exactly
(equal sizes, or upsampling by a power of two — the stride-4 to padded step), OpenCV does the
work, one 2-D call per channel.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import cv2
import numpy as np

from omg_rt.errors import InvalidInputError

# Queries per block in upsample_masks: the padded-size intermediate of all 300 queries would be
# ~1 GB at 768x1024, and its first touch alone costs more than the arithmetic.
_QUERY_BLOCK = 16
# Channel chunk for the numpy path: bounds the temporaries to about this many floats (1 MB:
# they stay in cache between the passes, several times faster than blocks of 32 MB).
_CHUNK_ELEMENTS = 1 << 18


def _hw(value: Sequence[int], name: str) -> tuple[int, int]:
    if len(value) != 2 or any(int(v) != v or v <= 0 for v in value):
        raise InvalidInputError(f"{name}: expected two positive ints (h, w), got {tuple(value)!r}")
    return int(value[0]), int(value[1])


def _check_maps(maps: object, name: str) -> np.ndarray:
    if not isinstance(maps, np.ndarray) or maps.ndim != 3 or maps.dtype != np.float32:
        got = (
            f"{maps.dtype} {tuple(maps.shape)}"
            if isinstance(maps, np.ndarray)
            else type(maps).__name__
        )
        raise InvalidInputError(f"{name}: expected float32 (C, H, W), got {got}")
    if 0 in maps.shape[1:]:
        raise InvalidInputError(f"{name}: expected non-empty H and W, got {tuple(maps.shape)}")
    return maps


def linear_taps(
    in_size: int, out_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's CPU bilinear (``align_corners=False``) taps along one axis.

    Args:
        in_size: input length (>= 1).
        out_size: output length (>= 1).

    Returns:
        ``(i0, i1, l0, l1)``: (out_size,) int64 source indices and (out_size,) float32 weights;
        output ``d`` is ``x[i0[d]] * l0[d] + x[i1[d]] * l1[d]``.
    """
    scale = np.float32(np.float32(in_size) / np.float32(out_size))
    dst = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    # One rounding of scale * dst - 0.5 (a fused multiply-add): exact in float64, then float32.
    src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    l1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0))
    l0 = np.float32(1.0) - l1
    i1 = i0 + (i0 < in_size - 1)
    if in_size == out_size:  # PyTorch copies when the sizes match.
        i0 = i1 = np.arange(out_size, dtype=np.int64)
        l0 = np.ones(out_size, np.float32)
        l1 = np.zeros(out_size, np.float32)
    return i0, i1, l0.astype(np.float32), l1.astype(np.float32)


def _opencv_agrees(in_size: int, out_size: int) -> bool:
    """Whether OpenCV's INTER_LINEAR coordinates equal PyTorch's exactly along this axis."""
    if in_size == out_size:
        return True
    if out_size % in_size:
        return False
    factor = out_size // in_size
    return factor & (factor - 1) == 0 and out_size < (1 << 20)


def _resize_opencv(
    maps: np.ndarray, out_hw: tuple[int, int], out: np.ndarray | None = None
) -> np.ndarray:
    """OpenCV INTER_LINEAR, one 2-D call per channel (no HWC transposes of large arrays)."""
    if out is None:
        out = np.empty((maps.shape[0], *out_hw), dtype=np.float32)
    for index in range(maps.shape[0]):
        cv2.resize(
            maps[index], (out_hw[1], out_hw[0]), dst=out[index], interpolation=cv2.INTER_LINEAR
        )
    return out


def _resize_separable(
    maps: np.ndarray,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    cols: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Apply row and column taps (W first, then H, as PyTorch's kernel nests them).

    Works through channel blocks with reused buffers: fresh multi-megabyte temporaries would be
    page-faulted in on every block, which costs more than the arithmetic. ``np.take`` runs with
    ``mode="clip"`` (the indices are in range by construction) because ``mode="raise"`` buffers
    ``out``.
    """
    c = maps.shape[0]
    r0, r1, rl0, rl1 = rows
    c0, c1, cl0, cl1 = cols
    out_h, out_w = r0.shape[0], c0.shape[0]
    if out is None:
        out = np.empty((c, out_h, out_w), dtype=np.float32)
    # Only the input rows some output row reads need the W pass.
    read = np.zeros(maps.shape[1], dtype=bool)
    read[r0] = True
    read[r1] = True
    used_rows = np.flatnonzero(read)
    position = np.cumsum(read) - 1  # input row -> its row among used_rows
    u0, u1 = position[r0], position[r1]
    n_rows = used_rows.shape[0]
    all_rows = n_rows == maps.shape[1]
    step = max(1, min(c, _CHUNK_ELEMENTS // max(n_rows * max(out_w, maps.shape[2]), 1)))
    wide = np.empty((step, n_rows, out_w), dtype=np.float32)
    other = np.empty_like(wide)
    bottom = np.empty((step, out_h, out_w), dtype=np.float32)
    for start in range(0, c, step):
        n = min(step, c - start)
        src = maps[start : start + n] if all_rows else maps[start : start + n, used_rows]
        w_a, w_b, h_b = wide[:n], other[:n], bottom[:n]
        np.take(src, c0, axis=2, out=w_a, mode="clip")
        w_a *= cl0
        np.take(src, c1, axis=2, out=w_b, mode="clip")
        w_b *= cl1
        w_a += w_b  # (n, R, w_out)
        h_a = out[start : start + n]
        np.take(w_a, u0, axis=1, out=h_a, mode="clip")
        h_a *= rl0[:, None]
        np.take(w_a, u1, axis=1, out=h_b, mode="clip")
        h_b *= rl1[:, None]
        h_a += h_b  # (n, h_out, w_out)
    return out


def resize_bilinear(maps: np.ndarray, out_hw: Sequence[int]) -> np.ndarray:
    """``F.interpolate(maps[None], out_hw, mode="bilinear", align_corners=False)[0]`` in numpy.

    Matches PyTorch's CPU kernel to float32 rounding (~1e-7 relative), for up- and down-sampling
    (no antialiasing, as ``F.interpolate``'s default).

    Args:
        maps: (C, H, W) float32.
        out_hw: (H_out, W_out).

    Returns:
        (C, H_out, W_out) float32.
    """
    maps = _check_maps(maps, "maps")
    out_h, out_w = _hw(out_hw, "out_hw")
    in_h, in_w = maps.shape[1:]
    if (in_h, in_w) == (out_h, out_w):
        return maps.copy()
    if maps.shape[0] == 0:
        return np.empty((0, out_h, out_w), dtype=np.float32)
    if _opencv_agrees(in_h, out_h) and _opencv_agrees(in_w, out_w):
        return _resize_opencv(maps, (out_h, out_w))
    return _resize_separable(maps, linear_taps(in_h, out_h), linear_taps(in_w, out_w))


def upsample_masks(
    mask_logits: np.ndarray,
    padded_hw: Sequence[int],
    resized_hw: Sequence[int],
    original_hw: Sequence[int],
) -> np.ndarray:
    """Mask logits at stride 4 of the padded input -> logits at the original image size.

    Bilinear (``align_corners=False``) to ``padded_hw``, crop to ``resized_hw`` (top-left), then
    bilinear to ``original_hw`` — the official sequence, numerically as PyTorch's CPU kernel.
    Only the padded-size samples inside the crop are computed (each output sample of a bilinear
    resize depends on its own coordinate only, so this is exact).

    Args:
        mask_logits: (Q, h4, w4) float32, e.g. h4 = Hp / 4.
        padded_hw: (Hp, Wp), the encoder input size (``batch_input_shape``).
        resized_hw: (Hr, Wr) <= (Hp, Wp), the image inside the padding (``img_shape``).
        original_hw: (H, W) of the user's image (``ori_shape``).

    Returns:
        (Q, H, W) float32 logits.
    """
    mask_logits = _check_maps(mask_logits, "mask_logits")
    hp, wp = _hw(padded_hw, "padded_hw")
    hr, wr = _hw(resized_hw, "resized_hw")
    h, w = _hw(original_hw, "original_hw")
    if hr > hp or wr > wp:
        raise InvalidInputError(
            f"resized_hw: expected at most padded_hw {(hp, wp)}, got {(hr, wr)}"
        )
    plan = ResizePlan(mask_logits.shape[1:], (hp, wp), (hr, wr), (h, w))
    q = mask_logits.shape[0]
    out = np.empty((q, h, w), dtype=np.float32)
    for start in range(0, q, _QUERY_BLOCK):
        block = mask_logits[start : start + _QUERY_BLOCK]
        cropped = plan.padded_crop(block)
        if plan.copy:
            out[start : start + block.shape[0]] = cropped
        else:
            _resize_separable(
                cropped, plan.rows2, plan.cols2, out=out[start : start + block.shape[0]]
            )
    return out


_Taps = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _rows(taps: _Taps, top: int, stop: int) -> _Taps:
    """The taps of outputs ``[top, stop)``."""
    i0, i1, l0, l1 = taps
    return i0[top:stop], i1[top:stop], l0[top:stop], l1[top:stop]


class ResizePlan:
    """The taps of :func:`upsample_masks` for one set of sizes, and its first stage.

    Shared with :class:`omg_rt.postprocess.tiles.TiledLogits`, which evaluates the same second
    stage on tiles: both go through :meth:`padded_crop`, so their values agree bit for bit.
    :meth:`output_rows` gives the same values a band of output rows at a time.

    Attributes:
        rows1, cols1: stride-4 -> padded taps, cut to the crop (``linear_taps(h4, Hp)[:Hr]``).
        rows2, cols2: crop -> original taps.
        copy: the crop already has the original size (no second resize).
    """

    def __init__(
        self,
        stride4_hw: tuple[int, int],
        padded_hw: tuple[int, int],
        resized_hw: tuple[int, int],
        original_hw: tuple[int, int],
    ) -> None:
        (h4, w4), (hp, wp), (hr, wr), (h, w) = stride4_hw, padded_hw, resized_hw, original_hw
        self.padded_hw, self.resized_hw = (hp, wp), (hr, wr)
        self.use_opencv = _opencv_agrees(h4, hp) and _opencv_agrees(w4, wp)
        self.rows1 = _rows(linear_taps(h4, hp), 0, hr)
        self.cols1 = _rows(linear_taps(w4, wp), 0, wr)
        self.rows2, self.cols2 = linear_taps(hr, h), linear_taps(wr, w)
        self.original_hw = (h, w)
        self.copy = (hr, wr) == (h, w)
        self._buffer: np.ndarray | None = None
        self._window: np.ndarray | None = None

    def clone(self) -> ResizePlan:
        """The same plan with buffers of its own (one per thread)."""
        other = copy.copy(self)
        other._buffer = other._window = None
        return other

    def padded_crop(self, block: np.ndarray) -> np.ndarray:
        """(n <= 16, h4, w4) float32 -> (n, Hr, Wr) logits at the padded size, cropped (a view
        into a buffer reused by the next call on the OpenCV path)."""
        hp, wp = self.padded_hw
        hr, wr = self.resized_hw
        if not self.use_opencv:
            return _resize_separable(block, self.rows1, self.cols1)
        if self._buffer is None or self._buffer.shape[0] < block.shape[0]:
            self._buffer = np.empty((max(block.shape[0], 1), hp, wp), dtype=np.float32)
        return _resize_opencv(block, (hp, wp), self._buffer[: block.shape[0]])[:, :hr, :wr]

    def output_rows(
        self, block: np.ndarray, top: int, stop: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Rows ``[top, stop)`` of :func:`upsample_masks` of ``block``, bit for bit.

        Only the padded-size rows those output rows read are computed (see
        :meth:`_padded_rows`), a few queries at a time, so a caller can go through all queries a
        band of rows at a time.

        Args:
            block: (n, h4, w4) float32 stride-4 logits.
            top, stop: ``0 <= top < stop <= H``.
            out: optional (n, stop - top, W) float32 C-contiguous array to write into.

        Returns:
            (n, stop - top, W) float32: ``out`` when given; without ``out`` and a second
            resize, a view into a buffer reused by the next call.
        """
        n = block.shape[0]
        if self.copy and out is None and self.use_opencv:
            return self._padded_rows(block, top, stop)
        if out is None:
            out = np.empty((n, stop - top, self.original_hw[1]), dtype=np.float32)
        if self.copy:
            first, last, second = top, stop, None
        else:
            r0, r1, l0, l1 = _rows(self.rows2, top, stop)
            first, last = int(r0.min()), int(r1.max()) + 1
            second = (r0 - first, r1 - first, l0, l1)
        step = max(1, _CHUNK_ELEMENTS // max((last - first) * self.padded_hw[1], 1))
        for start in range(0, n, step):
            cropped = self._padded_rows(block[start : start + step], first, last)
            if second is None:
                out[start : start + step] = cropped
            else:
                _resize_separable(cropped, second, self.cols2, out=out[start : start + step])
        return out

    def _padded_rows(self, block: np.ndarray, top: int, stop: int) -> np.ndarray:
        """Rows ``[top, stop)`` of :meth:`padded_crop`: (n, stop - top, Wr) float32.

        OpenCV resizes only the stride-4 rows these rows read (their taps ``rows1``, plus one
        row of margin) by the same integer factor: each output row has the same source rows and
        weights as in the whole image, so the same values (tests/omg_rt/test_postprocess_fast.py
        checks every band of several sizes). The result is a view into a buffer reused by the
        next call on that path.
        """
        i0, i1, l0, l1 = _rows(self.rows1, top, stop)
        if not self.use_opencv:
            out: np.ndarray = _resize_separable(block, (i0, i1, l0, l1), self.cols1)
            return out
        hp, wp = self.padded_hw
        factor = hp // block.shape[1]
        # The stride-4 rows read, and one more on each side: OpenCV treats a window's first and
        # last rows as edges, so these must be the image's own edges or rows no output reads.
        first = max(int(i0.min()) - 1, 0)
        last = min(int(i1.max()) + 2, block.shape[1])
        rows = (last - first) * factor
        n = block.shape[0]
        if self._window is None or self._window.shape[0] < n or self._window.shape[1] < rows:
            self._window = np.empty((max(n, 1), rows, wp), dtype=np.float32)
        window = self._window[:n, :rows]
        for index in range(n):
            cv2.resize(
                block[index, first:last],
                (wp, rows),
                dst=window[index],
                interpolation=cv2.INTER_LINEAR,
            )
        offset = top - first * factor
        return window[:, offset : offset + stop - top, : self.resized_hw[1]]
