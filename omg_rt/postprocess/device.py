"""Mask post-processing on a PyTorch device (a GPU), for runtimes whose graphs run there.

On a CPU, :class:`~omg_rt.postprocess.tiles.TiledLogits` avoids resizing most of the (query,
pixel) pairs: resizing 300 queries to a 1024x768 photo is ~240 M samples, the bulk of the host's
post-processing. On a GPU the same dense work takes milliseconds, while the host's tile bounds
still cost hundreds (H200 run, 2026-12-04: post-processing 390 ms of a 623 ms panoptic call).
:class:`DeviceLogits` is the dense form, on the device: the official resize sequence with
``torch.nn.functional.interpolate`` (bilinear, ``align_corners=False``: to the padded size, crop,
to the original size), then the per-pixel winner of ``score * sigmoid`` (panoptic), the
``logit > 0`` masks with their sums and boxes (instances, prompts), or the per-pixel best class
(semantic), a block of queries at a time so that memory stays bounded. Only (H, W) maps, masks
packed eight pixels a byte, and per-query numbers come back to the host.

The logits may already be there: the PyTorch backend leaves the query decoder's mask logits on its
device (:mod:`omg_rt.arrays`), and they are read without a copy; host logits are uploaded.
PyTorch is imported when a :class:`DeviceLogits` is made; the rest of ``omg_rt`` stays torch-free.
The host path (:mod:`omg_rt.postprocess.panoptic`) is its reference: the same winners except
where two queries' ``score * sigmoid`` are within rounding of each other
(``tests/omg_rt/test_postprocess_device.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from omg_rt.arrays import Array, dtype_name, is_tensor
from omg_rt.errors import BackendUnavailableError, InvalidInputError, describe
from omg_rt.postprocess._common import check_array, sigmoid_threshold
from omg_rt.postprocess.masks import upsample_masks

# Output samples per block of queries (float32: 256 MB), which bounds the device memory used.
_BLOCK_ELEMENTS = 1 << 26


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(
            f"post-processing on a device needs PyTorch ({exc}); pip install torch, or "
            "post_device=None for the host"
        ) from exc
    return torch


def resolve_post_device(post_device: str | None, backend_on_gpu: bool) -> str | None:
    """The torch device that post-processes, or None for the host (numpy).

    ``"auto"``: ``"cuda"`` when the graphs run on a GPU and PyTorch sees one, else None; None: the
    host; any other string: that torch device, which must exist.

    Raises:
        InvalidInputError: a device string torch does not know or cannot use here.
        BackendUnavailableError: a device asked for without PyTorch installed.
    """
    if post_device is None:
        return None
    if post_device == "auto":
        if not backend_on_gpu:
            return None
        try:
            import torch
        except ImportError:
            return None
        return "cuda" if torch.cuda.is_available() else None
    torch = _torch()
    try:
        device = torch.device(post_device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidInputError(
            f"post_device: expected 'auto', None or a torch device, got {post_device!r}"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"post_device: {post_device!r}, but PyTorch sees no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InvalidInputError(
            f"post_device: {post_device!r}, but PyTorch sees {torch.cuda.device_count()} CUDA "
            "device(s)")
    return str(device)


class DeviceLogits:
    """Stride-4 mask logits of the padded input, resized to the original size on ``device``.

    Args:
        mask_logits: (Q, h4, w4) float32, numpy or a tensor (moved to ``device`` once, where it
            is elsewhere)
        padded_hw, resized_hw, original_hw: as :func:`~omg_rt.postprocess.masks.upsample_masks`.
        device: a torch device string (``cuda``, ``cuda:1``, ``cpu``).
    """

    def __init__(
        self,
        mask_logits: Array,
        padded_hw: Sequence[int],
        resized_hw: Sequence[int],
        original_hw: Sequence[int],
        device: str,
    ) -> None:
        self._torch = _torch()
        if is_tensor(mask_logits):
            if mask_logits.ndim != 3 or dtype_name(mask_logits) != "float32":
                raise InvalidInputError(
                    f"mask_logits: expected float32 (Q, h4, w4), got {describe(mask_logits)}")
            logits = mask_logits.detach().to(device)
        else:
            host = check_array(mask_logits, "mask_logits", 3, "float32", "float32 (Q, h4, w4)")
            logits = self._torch.from_numpy(np.ascontiguousarray(host)).to(device)
        # validates the sizes against the logits' (empty: no work)
        upsample_masks(np.empty((0, *logits.shape[1:]), np.float32), padded_hw, resized_hw,
                       original_hw)
        self.logits = logits
        self.padded_hw = (int(padded_hw[0]), int(padded_hw[1]))
        self.resized_hw = (int(resized_hw[0]), int(resized_hw[1]))
        self.original_hw = (int(original_hw[0]), int(original_hw[1]))
        self.device = device

    def _block(self) -> int:
        """Queries resized at once: :data:`_BLOCK_ELEMENTS` padded-size samples."""
        return max(1, _BLOCK_ELEMENTS // (self.padded_hw[0] * self.padded_hw[1]))

    def dense(self, queries: np.ndarray | slice | Any) -> Any:
        """(N,) int queries -> (N, H, W) float32 torch tensor on the device: ``upsample_masks`` of
        those queries. ``queries``: a numpy array, a slice, or an index already on the device
        (:meth:`_index`: a loop over blocks uploads its indices once, not once a block -- each
        upload of host memory waits for the device to finish what is queued)."""
        torch = self._torch
        functional = torch.nn.functional
        x = self.logits[self._index(queries) if isinstance(queries, np.ndarray) else queries]
        x = functional.interpolate(x[None], size=self.padded_hw, mode="bilinear",
                                   align_corners=False)
        x = x[:, :, : self.resized_hw[0], : self.resized_hw[1]]
        if self.resized_hw != self.original_hw:
            x = functional.interpolate(x, size=self.original_hw, mode="bilinear",
                                       align_corners=False)
        return x[0]

    def _index(self, queries: np.ndarray) -> Any:
        """(N,) int host indices -> an int64 index tensor on the device."""
        return self._torch.from_numpy(np.asarray(queries, np.int64)).to(self.device)

    def assign(
        self, kept: np.ndarray, scores: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per pixel, the kept query with the largest ``score * sigmoid`` (the first on ties, a
        NaN wins), whether its sigmoid is >= 0.5, and each query's ``sigmoid >= 0.5`` area.

        Args:
            kept: (N,) int query indices; scores: (N,) float32.

        Returns:
            winner (H, W) int64 slot into ``kept``, confident (H, W) bool, original_area (N,)
            int64 — as :func:`omg_rt.postprocess.panoptic._assign_pixels`.
        """
        assigned = self.assign_here(kept, scores)
        return (assigned.winner.cpu().numpy(), assigned.confident.cpu().numpy(),
                assigned.original_area.cpu().numpy())

    def assign_here(self, kept: np.ndarray, scores: np.ndarray) -> DeviceAssignment:
        """:meth:`assign`, its maps left on the device (:class:`DeviceAssignment`)."""
        torch = self._torch
        n = int(kept.shape[0])
        if n == 0:
            raise InvalidInputError("kept: expected at least one query, got none")
        h, w = self.original_hw
        block = self._block()
        thr = float(sigmoid_threshold())
        s = torch.from_numpy(np.ascontiguousarray(scores, np.float32)).to(self.device)
        kept_index = self._index(kept)
        best = torch.full((h, w), -float("inf"), device=self.device)
        winner = torch.zeros((h, w), dtype=torch.int64, device=self.device)
        confident = torch.zeros((h, w), dtype=torch.bool, device=self.device)
        area = torch.empty(n, dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            for a in range(0, n, block):
                logits = self.dense(kept_index[a : a + block])  # (m, H, W)
                above = logits >= thr
                area[a : a + logits.shape[0]] = above.sum((1, 2))
                values = torch.sigmoid(logits) * s[a : a + logits.shape[0], None, None]
                top, index = values.max(0)  # first maximum; NaN wins
                # a later block takes a pixel only with a larger value (or the first NaN)
                take = (top > best) | (top.isnan() & ~best.isnan())
                best = torch.where(take, top, best)
                winner = torch.where(take, index + a, winner)
                mine = above.gather(0, index[None])[0]
                confident = torch.where(take, mine, confident)
        return DeviceAssignment(torch, winner, confident, area)

    def binary_masks(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``sigmoid > 0.5`` masks of ``queries`` (the prompt branch,
        :func:`~omg_rt.postprocess.interactive.binary_masks`) and their boxes, computed here.

        Returns:
            masks (d, H, W) bool and boxes (d, 4) float32 as
            :func:`~omg_rt.postprocess.instance.masks_to_boxes` (on the host).
        """
        torch = self._torch
        thr = float(sigmoid_threshold(strict=True))
        packed, boxes = [], []
        index = self._index(queries)
        with torch.inference_mode():
            for a in range(0, queries.shape[0], self._block()):
                inside = self.dense(index[a : a + self._block()]) >= thr
                packed.append(_pack_bits(torch, inside))
                boxes.append(_boxes(torch, inside))
        if not packed:
            return np.empty((0, *self.original_hw), bool), np.empty((0, 4), np.float32)
        return self._unpack(packed), _cat_to_host(torch, boxes)

    def instance_masks(
        self, queries: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The ``logit > 0`` masks of ``queries`` and what instance results need of them,
        computed on the device (:func:`omg_rt.postprocess.instance.instances_from_tiles`).

        Returns:
            masks (d, H, W) bool, sums (d,) float64 of ``sigmoid`` over each mask, areas (d,)
            int64, boxes (d, 4) float32 as :func:`~omg_rt.postprocess.instance.masks_to_boxes`
            (all on the host).
        """
        torch = self._torch
        packed, sums, areas, boxes = [], [], [], []
        index = self._index(queries)
        with torch.inference_mode():
            for a in range(0, queries.shape[0], self._block()):
                logits = self.dense(index[a : a + self._block()])
                inside = logits > 0
                # summed in float64 as it is read (no float64 copy of the block)
                sigmoids = torch.where(inside, torch.sigmoid(logits), 0.0)
                sums.append(sigmoids.sum((1, 2), dtype=torch.float64))
                areas.append(inside.sum((1, 2)))
                boxes.append(_boxes(torch, inside))
                packed.append(_pack_bits(torch, inside))
        if not packed:
            return (np.empty((0, *self.original_hw), bool), np.empty(0, np.float64),
                    np.empty(0, np.int64), np.empty((0, 4), np.float32))
        return (self._unpack(packed), _cat_to_host(torch, sums), _cat_to_host(torch, areas),
                _cat_to_host(torch, boxes))

    def semantic(self, class_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mask2Former's per-pixel class argmax and the class scores, computed here: what
        :func:`~omg_rt.postprocess.semantic.semantic_with_scores` computes on the host (the same
        map except where two classes' scores are within float32 rounding of each other).

        Per pixel the K class scores ``sum_q class_probs[q, c] * sigmoid(logit_q)`` are summed a
        block of queries at a time into a block of classes (the dense logits recomputed for each
        block of classes: memory stays bounded whatever K is); a later block of classes takes a
        pixel only with a larger score (or the first NaN), as ``argmax``.

        Args:
            class_probs: (Q, K) float32 class probabilities (void dropped after the softmax).

        Returns:
            (H, W) int32 class indices and (K,) float32 scores (on the host).
        """
        torch = self._torch
        q, k = class_probs.shape
        h, w = self.original_hw
        probs = torch.from_numpy(np.ascontiguousarray(class_probs, np.float32)).to(self.device)
        classes = max(1, _BLOCK_ELEMENTS // (h * w))
        weight = torch.zeros(h * w, device=self.device)
        best = torch.full((h * w,), -float("inf"), device=self.device)
        label = torch.zeros(h * w, dtype=torch.int64, device=self.device)
        with torch.inference_mode():
            for c in range(0, k, classes):
                part = probs[:, c : c + classes]
                scores = torch.zeros((part.shape[1], h * w), device=self.device)
                for a in range(0, q, self._block()):
                    sig = torch.sigmoid(self.dense(slice(a, a + self._block())))
                    sig = sig.reshape(sig.shape[0], -1)
                    scores.addmm_(part[a : a + sig.shape[0]].T, sig)
                    if c == 0:
                        weight += sig.sum(0)
                top, index = scores.max(0)  # first maximum; NaN wins
                take = (top > best) | (top.isnan() & ~best.isnan())
                best = torch.where(take, top, best)
                label = torch.where(take, index + c, label)
            weight = weight.clamp_min(float(np.finfo(np.float32).tiny))
            score_sum = torch.bincount(label, weights=(best / weight).double(), minlength=k)
            area = torch.bincount(label, minlength=k)
            class_scores = torch.where(area > 0, score_sum / area.clamp_min(1), 0.0)
        return (label.reshape(h, w).to(torch.int32).cpu().numpy(),
                class_scores.float().cpu().numpy())

    def _unpack(self, packed: list[Any]) -> np.ndarray:
        """Blocks of :func:`_pack_bits` masks -> one (d, H, W) bool host array.

        Every block is queued on the device before anything is copied, so the device is not left
        idle while the host works; the host then unpacks once, straight into the result (the H200
        profile of 2026-12-04: a VIS frame's host work between the device's blocks, and the copy
        of each block's unpacked masks into the result, left the GPU idle ~45 ms a frame)."""
        bits = _cat_to_host(self._torch, packed)
        return np.unpackbits(bits, axis=-1, count=self.original_hw[1]).view(bool)


class DeviceAssignment:
    """The per-pixel winners of :meth:`DeviceLogits.assign_here`, still on the device, and the
    rest of the panoptic merge done there: only N areas and the final (H, W) map come back to
    the host (the host's bincounts and map were most of a panoptic call's post-processing on
    the H200).

    Attributes:
        winner: (H, W) int64 tensor, slot into the kept queries; confident: (H, W) bool tensor;
        original_area: (N,) int64 tensor.
    """

    def __init__(self, torch: Any, winner: Any, confident: Any, original_area: Any) -> None:
        self._torch = torch
        self.winner, self.confident, self.original_area = winner, confident, original_area

    def areas(self, filter_low_score: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per kept query (N,) int64: the pixels it won, those of them it paints (confident ones,
        or all of them without ``filter_low_score``), and its ``sigmoid >= 0.5`` pixels."""
        torch, n = self._torch, int(self.original_area.shape[0])
        won = torch.bincount(self.winner.flatten(), minlength=n)
        painted = torch.bincount(self.winner[self.confident], minlength=n) if filter_low_score \
            else won
        areas = torch.stack([won, painted, self.original_area]).cpu().numpy()  # one copy
        return areas[0], areas[1], areas[2]

    def paint(self, value: np.ndarray, void: int, filter_low_score: bool) -> np.ndarray:
        """(H, W) int32 host map: ``value[winner]`` where painted, else ``void``."""
        torch = self._torch
        values = torch.from_numpy(np.ascontiguousarray(value, np.int64)).to(self.winner.device)
        mapped = values[self.winner]
        if filter_low_score:
            mapped = torch.where(self.confident, mapped, void)
        out: np.ndarray = mapped.to(torch.int32).cpu().numpy()
        return out


def _pack_bits(torch: Any, values: Any) -> Any:
    """A bool tensor (..., W) -> uint8 (..., ceil(W / 8)) on its device, eight pixels a byte as
    ``np.packbits`` (big-endian bit order): the device-to-host copy is the instance path's
    bottleneck on a GPU (100 masks of a 720x960 frame are 69 MB; the H200 run spent 44 ms a VIS
    frame in it), unpacking on the host costs less."""
    pad = -values.shape[-1] % 8
    if pad:
        values = torch.nn.functional.pad(values, (0, pad))
    bits = values.reshape(*values.shape[:-1], -1, 8).to(torch.uint8)
    # made on the device: a tensor of host values would be a copy that waits for the device
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=values.device)
    return (bits << shifts).sum(-1, dtype=torch.uint8)


def _cat_to_host(torch: Any, blocks: list[Any]) -> np.ndarray:
    """Device tensors of the same trailing shape -> one host array (one copy)."""
    out: np.ndarray = (blocks[0] if len(blocks) == 1 else torch.cat(blocks)).cpu().numpy()
    return out


def _boxes(torch: Any, inside: Any) -> Any:
    """(m, H, W) bool tensor -> (m, 4) float32 ``(x1, y1, x2 + 1, y2 + 1)``, zeros when empty."""
    m, h, w = inside.shape
    rows, cols = inside.any(2), inside.any(1)  # (m, H), (m, W)

    def extent(hit: Any, size: int) -> tuple[Any, Any]:
        index = torch.arange(size, device=hit.device)
        first = torch.where(hit, index, size).amin(1)
        last = torch.where(hit, index, -1).amax(1) + 1
        return first, last

    y1, y2 = extent(rows, h)
    x1, x2 = extent(cols, w)
    boxes = torch.stack([x1, y1, x2, y2], 1).float()
    return torch.where(rows.any(1, keepdim=True), boxes, 0.0)
