"""Typed session state of an image whose encoder work is done (:class:`ImageSession`): prompts
and task queries on it only run the decoders. (A video stream's state is
:class:`omg_rt.video.VideoSession`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omg_rt.cache import EncodedImage


@dataclass(frozen=True)
class ImageSession:
    """An image after the encoder and pixel decoder: prompts and task queries only decode.

    Attributes:
        key: encoder-cache key (bundle identity, precision, content hash).
        original_hw: (H, W) of the user's image.
        resized_hw: (Hr, Wr) after the keep-ratio resize.
        padded_hw: (Hp, Wp) the encoder's fixed input size.
        encoded: the cached decoder inputs.
    """

    key: tuple[Any, ...]
    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    padded_hw: tuple[int, int]
    encoded: EncodedImage
