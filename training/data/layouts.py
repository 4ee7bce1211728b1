"""Where each supported dataset keeps its files, and its reader opened from them.

One place for ``omg-eval`` (a bundle scored on a dataset folder) and ``omg-train`` (datasets
mixed into training) to turn ``NAME`` + a folder into a reader::

    files = locate("coco-panoptic", root="data/coco")   # or images= / annotations= / masks=
    reader = open_reader("coco-panoptic", files)

Torch-free, like the readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.data.formats import DataError
from training.data.readers import (
    read_ade20k,
    read_coco_instances,
    read_coco_panoptic,
    read_davis,
    read_vipseg,
    read_ytvis,
)

IMAGE_DATASETS = ("coco-panoptic", "coco-instances", "ade20k")
VIDEO_DATASETS = ("ytvis19", "ytvis21", "vipseg", "davis17")
DATASETS = IMAGE_DATASETS + VIDEO_DATASETS

# ``root`` layouts, first match wins: (images, annotations, masks) relative to the root;
# ``{split}`` is the split asked for ("val", "train"), ``{name}`` the dataset's own word for it.
LAYOUTS: dict[str, list[tuple[str, str, str | None]]] = {
    "coco-panoptic": [("{split}2017", "annotations/panoptic_{split}2017.json",
                       "annotations/panoptic_{split}2017"),
                      ("images/{split}", "panoptic_{split}.json", "panoptic_{split}")],  # omg-train
    "coco-instances": [("{split}2017", "annotations/instances_{split}2017.json", None),
                       ("images/{split}", "instances_{split}.json", None)],
    "ade20k": [("images/{name}", "annotations/{name}", None)],
    "ytvis19": [("{name}/JPEGImages", "{name}.json", None),
                ("videos/{split}", "ytvis_{split}.json", None)],
    "ytvis21": [("{name}/JPEGImages", "{name}/instances.json", None),
                ("videos/{split}", "ytvis_{split}.json", None)],
    # the 720P conversion (images/ + panomasksRGB/) before the nested imgs/ + panomasks/
    "vipseg": [("images", "panoptic_gt_VIPSeg_{split}.json", "panomasksRGB"),
               ("imgs", "panoptic_gt_VIPSeg_{split}.json", "panomasks")],
    # the root holds ImageSets/, JPEGImages/ and Annotations/; the list file names the split
    "davis17": [(".", "ImageSets/2017/{split}.txt", None)],
}
SPLIT_NAMES: dict[str, dict[str, str]] = {
    "ade20k": {"val": "validation", "train": "training"},
    "ytvis19": {"val": "valid"},
    "ytvis21": {"val": "valid"},
}
NEEDS_MASKS = ("coco-panoptic", "vipseg")


@dataclass(frozen=True)
class DatasetFiles:
    """A dataset's parts on disk (``masks``: the panoptic PNG folder where the format has one)."""

    images: Path
    annotations: Path
    masks: Path | None


def locate(dataset: str, root: str | Path | None = None, *, split: str = "val",
           images: str | Path | None = None, annotations: str | Path | None = None,
           masks: str | Path | None = None) -> DatasetFiles:
    """Explicit ``images`` + ``annotations`` win; otherwise the first of the dataset's
    :data:`LAYOUTS` for ``split`` found under ``root``. DAVIS: ``images`` is the dataset's root
    and ``annotations`` its ``ImageSets/<year>/<split>.txt`` list.

    Raises:
        DataError: an unknown dataset, no root and no explicit paths, no layout under the root,
            or no masks folder for a dataset that needs one.
    """
    if dataset not in LAYOUTS:
        raise DataError(f"dataset: expected one of {DATASETS}, got {dataset!r}")
    if images and annotations:
        files = DatasetFiles(Path(images), Path(annotations), Path(masks) if masks else None)
    elif root is None:
        raise DataError(f"{dataset}: give a root folder, or images and annotations")
    else:
        base = Path(root)
        words = {"split": split, "name": SPLIT_NAMES.get(dataset, {}).get(split, split)}
        layouts = [(i.format(**words), a.format(**words), m.format(**words) if m else None)
                   for i, a, m in LAYOUTS[dataset]]
        found = [(base / i, base / a, base / m if m else None) for i, a, m in layouts
                 if (base / i).exists() and (base / a).exists()]
        if not found:
            tried = ", ".join(f"{i} + {a}" for i, a, _ in layouts)
            raise DataError(f"root {str(root)!r}: no {dataset} layout found (tried {tried}); "
                            "give the images and annotations paths")
        files = DatasetFiles(*found[0])
    if dataset in NEEDS_MASKS and files.masks is None:
        raise DataError(f"{dataset}: the panoptic PNG folder (masks) is required")
    return files


def open_reader(dataset: str, files: DatasetFiles) -> Any:
    """The lazy reader of a located dataset (``reader[i]`` -> an image or video record)."""
    if dataset == "coco-panoptic":
        assert files.masks is not None  # locate() checked it
        return read_coco_panoptic(files.annotations, files.masks, files.images)
    if dataset == "coco-instances":
        return read_coco_instances(files.annotations, files.images)
    if dataset == "ade20k":
        return read_ade20k(files.images, files.annotations)
    if dataset in ("ytvis19", "ytvis21"):
        return read_ytvis(files.annotations, files.images)
    if dataset == "vipseg":
        return read_vipseg(files.images.parent, json_path=files.annotations,
                           image_dir=files.images, mask_dir=files.masks)
    if dataset == "davis17":  # annotations: ImageSets/<year>/<split>.txt
        return read_davis(files.images, year=files.annotations.parent.name,
                          split=files.annotations.stem)
    raise DataError(f"dataset: expected one of {DATASETS}, got {dataset!r}")
