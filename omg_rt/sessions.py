"""Typed session state of an image whose encoder work is done (:class:`ImageSession`): prompts
and task queries on it only run the decoders. (A video stream's state is
:class:`omg_rt.video.VideoSession`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from omg_rt.cache import EncodedImage


class ImageSizes(Protocol):
    """The sizes post-processing needs: the user's image, the resized image, the padded input."""

    @property
    def original_hw(self) -> tuple[int, int]: ...

    @property
    def resized_hw(self) -> tuple[int, int]: ...

    @property
    def padded_hw(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class Sizes:
    """:class:`ImageSizes` on their own (a post-processing step that holds no encoder output)."""

    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    padded_hw: tuple[int, int]


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
