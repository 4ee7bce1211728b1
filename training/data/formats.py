"""Pieces of the COCO / YouTube-VIS formats shared by the readers and the synthetic writer.

COCO panoptic PNGs encode a segment id as RGB: ``id = R + 256·G + 256²·B`` (id 0 = void).
Masks travel as pycocotools RLE; a category table puts things first, then stuff, each in the
order the JSON lists them, which gives the contiguous class indices the model trains on.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "Categories",
    "DataError",
    "DataFormatError",
    "id_to_rgb",
    "load_json",
    "mask_bbox_xywh",
    "rgb_to_id",
    "rle_decode",
    "rle_encode",
]


class DataError(ValueError):
    """A bad argument given to a data function (names the argument, expected vs got)."""


class DataFormatError(DataError):
    """A dataset file that does not follow its format (names the file and the field)."""


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colours to segment ids.

    Args:
        rgb: (H, W, 3) uint8 RGB.
    Returns:
        (H, W) int64 ids, ``R + 256·G + 256²·B``.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"rgb: expected (H, W, 3), got {rgb.shape}")
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids to COCO panoptic PNG colours.

    Args:
        ids: (H, W) integer ids in [0, 256³).
    Returns:
        (H, W, 3) uint8 RGB.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256**3):
        raise DataError(f"ids: expected values in [0, 16777216), got [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """A binary mask as compressed COCO RLE with a JSON-ready ``counts`` string.

    Args:
        mask: (H, W) bool.
    Returns:
        ``{"size": [H, W], "counts": str}``.
    """
    if mask.ndim != 2:
        raise DataError(f"mask: expected (H, W), got {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def rle_decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Any COCO segmentation (compressed RLE, uncompressed RLE, polygons) as a mask.

    Args:
        segmentation: a COCO ``segmentation`` field.
        height, width: the image size (polygons carry none).
    Returns:
        (H, W) bool.
    """
    if isinstance(segmentation, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
        rles = mask_utils.frPyObjects(segmentation, height, width)
        rle = mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)  # uncompressed RLE
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        counts = segmentation["counts"]
        rle = {"size": segmentation["size"], "counts": counts.encode("ascii")
               if isinstance(counts, str) else counts}
    else:
        raise DataFormatError(
            f"segmentation: expected polygons, RLE or uncompressed RLE, got {type(segmentation)}"
        )
    with warnings.catch_warnings():
        # pycocotools' compiled decode trips numpy 2's `__array__(copy=...)` deprecation; the
        # result is right, the warning is noise on every call.
        warnings.filterwarnings("ignore", message="__array__ implementation",
                                category=DeprecationWarning)
        mask = mask_utils.decode(rle).astype(bool)
    if mask.shape != (height, width):
        raise DataFormatError(
            f"segmentation: expected size ({height}, {width}), got {mask.shape}"
        )
    return mask


def mask_bbox_xywh(mask: np.ndarray) -> list[int]:
    """COCO ``bbox`` ``[x, y, w, h]`` of a mask (w = last column − first + 1); zeros if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0, 0, 0, 0]
    x0, y0 = int(xs.min()), int(ys.min())
    return [x0, y0, int(xs.max()) - x0 + 1, int(ys.max()) - y0 + 1]


def load_json(path: str | Path) -> dict[str, Any]:
    """Read a dataset JSON file, raising `DataFormatError` naming the path when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"json: expected an existing file, got {str(path)!r}")
    try:
        with path.open() as f:
            data = json.load(f)
    except json.JSONDecodeError as err:
        raise DataFormatError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise DataFormatError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Categories:
    """A dataset's vocabulary: things first, then stuff, each in the JSON's order.

    ``names[i]`` is the class of contiguous index ``i``; indices ``< num_things`` are things.
    """

    names: tuple[str, ...]
    category_ids: tuple[int, ...]
    num_things: int

    @classmethod
    def from_coco(cls, categories: Sequence[dict[str, Any]], source: str = "json") -> Categories:
        """From a COCO ``categories`` list; a category without ``isthing`` counts as a thing."""
        if not categories:
            raise DataFormatError(f"{source}: expected a non-empty 'categories' list, got none")
        things = [c for c in categories if int(c.get("isthing", 1)) == 1]
        stuff = [c for c in categories if int(c.get("isthing", 1)) == 0]
        ordered = things + stuff
        ids = tuple(int(c["id"]) for c in ordered)
        if len(set(ids)) != len(ids):
            raise DataFormatError(f"{source}: category ids are not unique: {sorted(ids)}")
        return cls(tuple(str(c["name"]) for c in ordered), ids, len(things))

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @property
    def thing_names(self) -> tuple[str, ...]:
        return self.names[: self.num_things]

    @property
    def stuff_names(self) -> tuple[str, ...]:
        return self.names[self.num_things :]

    def index(self, category_id: int) -> int:
        """The contiguous class index of a COCO category id."""
        try:
            return self._lookup[category_id]
        except KeyError:
            raise DataFormatError(
                f"category_id: expected one of {list(self.category_ids)}, got {category_id}"
            ) from None

    @property
    def _lookup(self) -> dict[int, int]:
        # Built on first use and cached on the frozen instance.
        cached = self.__dict__.get("_lookup_cache")
        if cached is None:
            cached = {cid: i for i, cid in enumerate(self.category_ids)}
            object.__setattr__(self, "_lookup_cache", cached)
        return cached
