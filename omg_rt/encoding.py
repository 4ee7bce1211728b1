"""Image encoding: user images -> :class:`~omg_rt.sessions.ImageSession`, with the encoder
cache in front of the encoder and pixel decoder graphs.

An image is resized keeping its ratio to the bundle's fixed input, hashed (the cache key is the
bundle identity, the precision and the resized pixels' hash), and only cache misses are
normalised, zero padded and run through the encoder and the pixel decoder, batched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from omg_rt.cache import EncodedImage, EncoderCache
from omg_rt.inputs import read_image
from omg_rt.preprocess import keep_ratio_size, normalize_and_pad
from omg_rt.sessions import ImageSession
from omg_rt.spec import ENCODER, PIXEL_DECODER, PreprocessSpec


@dataclass(frozen=True)
class ResizedImage:
    """An image resized for the encoder, not yet encoded.

    Attributes:
        key: encoder-cache key (bundle identity, precision, content hash).
        original_hw: (H, W) of the user's image.
        resized: (Hr, Wr, 3) uint8 after the keep-ratio resize.
    """

    key: tuple
    original_hw: tuple[int, int]
    resized: np.ndarray

    @property
    def resized_hw(self) -> tuple[int, int]:
        return int(self.resized.shape[0]), int(self.resized.shape[1])


class ImageEncoder:
    """The encoder and pixel decoder graphs behind the encoder cache.

    Args:
        runners: the opened graphs by name (``encoder`` and ``pixel_decoder`` are used).
        input_size: (H, W) fixed padded encoder input.
        preprocess: normalisation constants and size divisor.
        cache_prefix: (bundle identity, precision), the first part of every cache key.
        cache: the encoder cache.
        max_batch: images per encoder call when the encoder's batch axis is dynamic.
    """

    def __init__(
        self,
        runners: dict[str, Any],
        *,
        input_size: tuple[int, int],
        preprocess: PreprocessSpec,
        cache_prefix: tuple[str, str],
        cache: EncoderCache,
        max_batch: int,
    ) -> None:
        self._encoder = runners[ENCODER.name]
        self._pixel_decoder = runners[PIXEL_DECODER.name]
        self.input_size = input_size
        self.cache = cache
        self._preprocess = preprocess
        self._cache_prefix = cache_prefix
        batch_axis = self._encoder.inputs()["image"].shape[0]
        self._fixed_batch = isinstance(batch_axis, int)
        self.max_batch = batch_axis if self._fixed_batch else max(1, int(max_batch))

    def prepare(self, image: Any, name: str) -> ResizedImage:
        """Check and resize an image (array or path; ``name`` for error messages)."""
        image = read_image(image, name)
        hin, win = self.input_size
        long_edge, short_edge = max(hin, win), min(hin, win)
        hr, wr = keep_ratio_size(image.shape[:2], (long_edge, short_edge))
        if hr > hin or wr > win:  # a portrait image in a landscape input: fit it instead
            factor = min(hin / image.shape[0], win / image.shape[1])
            hr, wr = int(image.shape[0] * factor + 0.5), int(image.shape[1] * factor + 0.5)
        resized = cv2.resize(image, (wr, hr), interpolation=cv2.INTER_LINEAR)
        digest = hashlib.blake2b(resized.tobytes(), digest_size=16)
        digest.update(np.asarray(resized.shape, np.int64).tobytes())
        key = (*self._cache_prefix, digest.hexdigest())
        return ResizedImage(key=key, original_hw=image.shape[:2], resized=resized)

    def tensor(self, prepared: ResizedImage) -> np.ndarray:
        """(1, 3, Hin, Win) float32: normalised, zero padded to the fixed input size."""
        pre = self._preprocess
        tensor = normalize_and_pad(prepared.resized, pre.mean, pre.std, pre.size_divisor)
        hin, win = self.input_size
        out = np.zeros((1, 3, hin, win), np.float32)
        h, w = min(tensor.shape[2], hin), min(tensor.shape[3], win)
        out[:, :, :h, :w] = tensor[:, :, :h, :w]
        return out

    def encode(self, prepared: list[ResizedImage]) -> list[EncodedImage]:
        """Encoder + pixel decoder, batched up to ``max_batch`` (no cache)."""
        encoded: list[EncodedImage] = []
        step = self.max_batch
        for start in range(0, len(prepared), step):
            chunk = prepared[start : start + step]
            images = np.concatenate([self.tensor(p) for p in chunk], axis=0)
            n = images.shape[0]
            if self._fixed_batch and n < step:  # pad a fixed-batch engine with zeros
                images = np.concatenate(
                    [images, np.zeros((step - n, *images.shape[1:]), np.float32)], axis=0
                )
            features = self._encoder({"image": images})
            pixels = self._pixel_decoder({name: features[name] for name in PIXEL_DECODER.inputs})
            for i in range(n):
                encoded.append(
                    EncodedImage(
                        mask_features=_row(pixels["mask_features"], i),
                        memory_s32=_row(pixels["memory_s32"], i),
                        memory_s16=_row(pixels["memory_s16"], i),
                        memory_s8=_row(pixels["memory_s8"], i),
                        clip_features=_row(features["features_s32"], i),
                    )
                )
        return encoded

    def sessions(self, prepared: list[ResizedImage], *, store: bool = True) -> list[ImageSession]:
        """Sessions for prepared images: cache hits reused, misses encoded together (each
        distinct image once) and, with ``store``, added to the cache."""
        found: list[EncodedImage | None] = [self.cache.get(p.key) for p in prepared]
        missing: dict[tuple, list[int]] = {}
        for i, value in enumerate(found):
            if value is None:
                missing.setdefault(prepared[i].key, []).append(i)
        if missing:
            todo = [prepared[idx[0]] for idx in missing.values()]
            for p, value in zip(todo, self.encode(todo), strict=True):
                if store:
                    self.cache.put(p.key, value)
                for i in missing[p.key]:
                    found[i] = value
        return [
            ImageSession(
                key=p.key,
                original_hw=(int(p.original_hw[0]), int(p.original_hw[1])),
                resized_hw=p.resized_hw,
                padded_hw=self.input_size,
                encoded=value,  # type: ignore[arg-type]
            )
            for p, value in zip(prepared, found, strict=True)
        ]


def _row(array: np.ndarray, i: int) -> np.ndarray:
    return np.ascontiguousarray(array[i : i + 1], dtype=np.float32)
