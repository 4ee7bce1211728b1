"""Image encoding: user images -> :class:`~omg_rt.sessions.ImageSession`, with the encoder
cache in front of the encoder and pixel decoder graphs.

An image is resized keeping its ratio into the bundle's image scale (video frames: its video
scale) and hashed (the cache key is the bundle identity, the precision and the resized pixels'
hash); only cache misses are normalised, zero padded to a multiple of 32 — the official model's
own shape, no square — and run through the encoder and the pixel decoder, batched per padded
size. A backend whose graphs take one fixed size (a fixed-shape engine) gets every image fitted
and padded into that size instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from omg_rt.cache import EncodedImage, EncoderCache
from omg_rt.inputs import read_image
from omg_rt.manifest import InputContract
from omg_rt.pipeline import Pipeline
from omg_rt.preprocess import keep_ratio_size, normalize_and_pad
from omg_rt.sessions import ImageSession
from omg_rt.spec import PreprocessSpec


@dataclass(frozen=True)
class ResizedImage:
    """An image resized for the encoder, not yet encoded.

    Attributes:
        key: encoder-cache key (bundle identity, precision, content hash).
        original_hw: (H, W) of the user's image.
        resized: (Hr, Wr, 3) uint8 after the keep-ratio resize.
        padded_hw: (Hp, Wp) the encoder input it is zero-padded to.
    """

    key: tuple[Any, ...]
    original_hw: tuple[int, int]
    resized: np.ndarray
    padded_hw: tuple[int, int]

    @property
    def resized_hw(self) -> tuple[int, int]:
        return int(self.resized.shape[0]), int(self.resized.shape[1])


class ImageEncoder:
    """The encoder and pixel decoder of a :class:`~omg_rt.pipeline.Pipeline` behind the encoder
    cache.

    Args:
        pipeline: the graphs.
        contract: the bundle's input sizes (scales, size divisor, fixed size if any).
        preprocess: normalisation constants.
        cache_prefix: (bundle identity, precision), the first part of every cache key.
        cache: the encoder cache.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        contract: InputContract,
        preprocess: PreprocessSpec,
        cache_prefix: tuple[str, str],
        cache: EncoderCache,
    ) -> None:
        self.pipeline = pipeline
        self.contract = contract
        self.cache = cache
        self._preprocess = preprocess
        self._cache_prefix = cache_prefix
        self.max_batch = pipeline.max_batch
        self.fixed_hw: tuple[int, int] | None = contract.fixed_hw or pipeline.fixed_hw
    def prepare(self, image: Any, name: str, *, video: bool = False) -> ResizedImage:
        """Check and resize an image (array or path; ``name`` for error messages) into the
        image scale, or the video scale for a video frame."""
        image = read_image(image, name)
        resized, padded = resize_for_encoder(image, self.contract, self.fixed_hw, video=video)
        digest = hashlib.blake2b(resized.tobytes(), digest_size=16)
        digest.update(np.asarray((*resized.shape, *padded), np.int64).tobytes())
        key = (*self._cache_prefix, digest.hexdigest())
        return ResizedImage(
            key=key, original_hw=image.shape[:2], resized=resized, padded_hw=padded
        )

    def tensor(self, prepared: ResizedImage) -> np.ndarray:
        """(1, 3, Hp, Wp) float32: normalised, zero padded to ``prepared.padded_hw``."""
        return encoder_tensor(prepared.resized, prepared.padded_hw, self._preprocess,
                              self.contract.size_divisor)

    def encode(self, prepared: list[ResizedImage]) -> list[EncodedImage]:
        """Encoder + pixel decoder, images of one padded size batched up to ``max_batch``
        (no cache); results in the order given."""
        encoded: list[EncodedImage | None] = [None] * len(prepared)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(prepared):
            by_size.setdefault(p.padded_hw, []).append(i)
        step = self.max_batch
        for indices in by_size.values():
            for start in range(0, len(indices), step):
                chunk = indices[start : start + step]
                for i, value in zip(chunk, self._encode_batch([prepared[i] for i in chunk])):
                    encoded[i] = value
        return encoded  # type: ignore[return-value]

    def _encode_batch(self, chunk: list[ResizedImage]) -> list[EncodedImage]:
        return self.pipeline.encode(np.concatenate([self.tensor(p) for p in chunk], axis=0))

    def frame_session(self, frame: Any, name: str) -> ImageSession:
        """A video frame's session: the cache serves repeated content, but frames are not
        stored in it (a long stream would evict every image entry)."""
        return self.sessions([self.prepare(frame, name, video=True)], store=False)[0]

    def sessions(self, prepared: list[ResizedImage], *, store: bool = True) -> list[ImageSession]:
        """Sessions for prepared images: cache hits reused, misses encoded together (each
        distinct image once) and, with ``store``, added to the cache."""
        found: list[EncodedImage | None] = [self.cache.get(p.key) for p in prepared]
        missing: dict[tuple[Any, ...], list[int]] = {}
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
                padded_hw=p.padded_hw,
                encoded=value,  # type: ignore[arg-type]
            )
            for p, value in zip(prepared, found, strict=True)
        ]


def resize_for_encoder(
    image: np.ndarray, contract: InputContract, fixed_hw: tuple[int, int] | None = None,
    *, video: bool = False
) -> tuple[np.ndarray, tuple[int, int]]:
    """(H, W, 3) uint8 RGB -> (the keep-ratio resize into the image or video scale, the padded
    (Hp, Wp) it goes into: a multiple of the size divisor, or ``fixed_hw`` — fitting the image
    into it — for a fixed-shape graph)."""
    hr, wr = keep_ratio_size(image.shape[:2], contract.video_scale if video
                             else contract.image_scale)
    if fixed_hw is not None:
        hin, win = fixed_hw
        if hr > hin or wr > win:  # does not fit the fixed input: fit it instead
            factor = min(hin / image.shape[0], win / image.shape[1])
            hr = min(hin, int(image.shape[0] * factor + 0.5))
            wr = min(win, int(image.shape[1] * factor + 0.5))
        padded = (hin, win)
    else:
        d = contract.size_divisor
        padded = (-(-hr // d) * d, -(-wr // d) * d)
    return cv2.resize(image, (wr, hr), interpolation=cv2.INTER_LINEAR), padded


def encoder_tensor(resized: np.ndarray, padded_hw: tuple[int, int], preprocess: PreprocessSpec,
                   size_divisor: int) -> np.ndarray:
    """(1, 3, Hp, Wp) float32: ``resized`` normalised and zero padded to ``padded_hw``."""
    tensor = normalize_and_pad(resized, preprocess.mean, preprocess.std, size_divisor)
    hp, wp = padded_hw
    if tensor.shape[2:] == (hp, wp):
        return tensor
    out = np.zeros((1, 3, hp, wp), np.float32)
    out[:, :, : tensor.shape[2], : tensor.shape[3]] = tensor[:, :, :hp, :wp]
    return out
