"""Image preprocessing exactly as OMG-Seg's test pipeline does it.

The official pipeline is mmcv ``Resize(scale=(long, short), keep_ratio=True)`` (OpenCV bilinear
on the uint8 image), then the data preprocessor: cast to float32, subtract the ImageNet mean and
divide by the std (``(img - mean) / std``, float32), then pad bottom/right with 0 to a multiple of
32. The padding value 0 is applied *after* normalisation, so padded pixels are 0 in normalised
space (not the mean colour).

Resizing an RGB image gives the same pixels as resizing the BGR image mmcv reads and then
swapping channels (OpenCV resizes channels independently), so we take RGB throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from omg_rt.errors import InvalidInputError, describe
from omg_rt.spec import IMAGENET_MEAN, IMAGENET_STD, SIZE_DIVISOR

# Test-time resize boxes (long edge, short edge) of the official configs.
IMAGE_DEMO_SCALE: tuple[int, int] = (1024, 1024)
COCO_SCALE: tuple[int, int] = (1333, 800)
VIDEO_SCALE: tuple[int, int] = (1280, 736)


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for the encoder, with the sizes post-processing needs to undo the resize.

    Attributes:
        tensor: (1, 3, Hp, Wp) float32, normalised, zero-padded bottom/right.
        original_hw: (H, W) of the input image (mmdet ``ori_shape``).
        resized_hw: (Hr, Wr) after the keep-ratio resize (mmdet ``img_shape``).
        padded_hw: (Hp, Wp), multiples of the size divisor (mmdet ``batch_input_shape``).
    """

    tensor: np.ndarray
    original_hw: tuple[int, int]
    resized_hw: tuple[int, int]
    padded_hw: tuple[int, int]


def check_rgb_image(image: object, name: str) -> np.ndarray:
    """``image`` if it is a non-empty uint8 (H, W, 3) array, else InvalidInputError naming
    ``name``."""
    if not isinstance(image, np.ndarray):
        raise InvalidInputError(
            f"{name}: expected uint8 (H, W, 3) numpy array, got {type(image).__name__}"
        )
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InvalidInputError(f"{name}: expected uint8 (H, W, 3), got {describe(image)}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise InvalidInputError(
            f"{name}: expected a non-empty uint8 (H, W, 3), got {describe(image)}"
        )
    return image


def _check_scale(scale: Sequence[int]) -> tuple[int, int]:
    if len(scale) != 2 or any(int(s) != s or s <= 0 for s in scale):
        raise InvalidInputError(
            f"scale: expected two positive ints (long, short), got {tuple(scale)!r}"
        )
    return int(scale[0]), int(scale[1])


def keep_ratio_size(hw: tuple[int, int], scale: Sequence[int]) -> tuple[int, int]:
    """The (h, w) mmcv ``rescale_size`` gives an image of size ``hw`` for a (long, short) box.

    ``s = min(max(scale) / max(h, w), min(scale) / min(h, w))`` and the new size is
    ``(int(h * s + 0.5), int(w * s + 0.5))`` (mmcv ``_scale_size``), in float64 as Python does.

    Args:
        hw: (H, W) of the input image.
        scale: (long, short) edges of the box the image must fit in; order does not matter.

    Returns:
        (Hr, Wr) of the resized image.
    """
    long_edge, short_edge = _check_scale(scale)
    h, w = int(hw[0]), int(hw[1])
    factor = min(max(long_edge, short_edge) / max(h, w), min(long_edge, short_edge) / min(h, w))
    return int(h * float(factor) + 0.5), int(w * float(factor) + 0.5)


def resize_keep_ratio(image: np.ndarray, scale: Sequence[int] = IMAGE_DEMO_SCALE) -> np.ndarray:
    """Resize an image to fit a (long, short) box keeping its aspect ratio, as mmcv ``imrescale``.

    Args:
        image: (H, W, 3) uint8 RGB.
        scale: (long, short) edges of the box, e.g. (1333, 800) for COCO, (1280, 736) for video.

    Returns:
        (Hr, Wr, 3) uint8 RGB, OpenCV bilinear (``cv2.INTER_LINEAR``) on the uint8 pixels.
    """
    image = check_rgb_image(image, "image")
    new_h, new_w = keep_ratio_size(image.shape[:2], scale)
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)


def normalize_and_pad(
    image: np.ndarray,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    size_divisor: int = SIZE_DIVISOR,
) -> np.ndarray:
    """Normalise an RGB uint8 image and zero-pad it bottom/right to a multiple of ``size_divisor``.

    ``(float32(image) - mean) / std`` with float32 mean and std (as the official preprocessor's
    float32 buffers), then padding with 0 — the padding is applied after normalisation.

    Args:
        image: (H, W, 3) uint8 RGB.
        mean: per-channel RGB mean, 3 floats.
        std: per-channel RGB standard deviation, 3 positive floats.
        size_divisor: padded height and width are multiples of this (>= 1).

    Returns:
        (1, 3, Hp, Wp) float32, C-contiguous.
    """
    image = check_rgb_image(image, "image")
    if len(mean) != 3:
        raise InvalidInputError(f"mean: expected 3 floats, got {len(mean)}")
    if len(std) != 3 or any(float(s) <= 0 for s in std):
        raise InvalidInputError(f"std: expected 3 positive floats, got {tuple(std)!r}")
    if int(size_divisor) != size_divisor or size_divisor < 1:
        raise InvalidInputError(f"size_divisor: expected a positive int, got {size_divisor!r}")
    h, w = image.shape[:2]
    hp = -(-h // size_divisor) * size_divisor
    wp = -(-w // size_divisor) * size_divisor
    mean32 = np.asarray(mean, dtype=np.float32)
    std32 = np.asarray(std, dtype=np.float32)
    tensor = np.empty((1, 3, hp, wp), dtype=np.float32)
    tensor[0, :, h:, :] = 0
    tensor[0, :, :h, w:] = 0
    # a channel at a time, straight into its plane: the same float32 subtract and divide as the
    # whole-array form, without its (3, H, W) temporaries (8x faster at 1024x768)
    for c in range(3):
        plane = tensor[0, c, :h, :w]
        np.subtract(image[:, :, c], mean32[c], out=plane, dtype=np.float32)
        np.divide(plane, std32[c], out=plane)
    return tensor


def prepare_image(
    image: np.ndarray,
    scale: Sequence[int] = IMAGE_DEMO_SCALE,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    size_divisor: int = SIZE_DIVISOR,
) -> PreparedImage:
    """Resize (keep ratio), normalise and pad one RGB image; record the three sizes.

    Args:
        image: (H, W, 3) uint8 RGB.
        scale: (long, short) resize box.
        mean: RGB mean; std: RGB std; size_divisor: padding multiple.

    Returns:
        A :class:`PreparedImage` whose ``tensor`` is (1, 3, Hp, Wp) float32.
    """
    image = check_rgb_image(image, "image")
    resized = resize_keep_ratio(image, scale)
    tensor = normalize_and_pad(resized, mean, std, size_divisor)
    return PreparedImage(
        tensor=tensor,
        original_hw=(int(image.shape[0]), int(image.shape[1])),
        resized_hw=(int(resized.shape[0]), int(resized.shape[1])),
        padded_hw=(int(tensor.shape[2]), int(tensor.shape[3])),
    )
