"""Training data: real-format readers, the synthetic world, prompts, augmentations, datasets.

``world`` draws the synthetic shapes world and ``synthetic`` writes it as COCO panoptic / COCO
instances / YouTube-VIS files; ``readers`` read them (and the real datasets: COCO, YouTube-VIS
2019/2021, ADE20K, DAVIS 2017, VIPSeg) lazily into typed records; ``prompts`` makes SAM-style
clicks and boxes from masks; ``transforms`` does large-scale jitter, flips and pseudo-videos;
``dataset`` (the only torch module, imported on first use of its names) gives the sample dicts
and the joint sampler.
"""

from __future__ import annotations

import importlib
from typing import Any

from training.data.formats import Categories, DataError, DataFormatError
from training.data.prompts import sample_box, sample_point
from training.data.readers import (
    ADE20KReader,
    DAVISReader,
    ImageRecord,
    VideoRecord,
    VIPSegReader,
    read_ade20k,
    read_coco_instances,
    read_coco_panoptic,
    read_davis,
    read_vipseg,
    read_ytvis,
)
from training.data.synthetic import SceneConfig, SceneGenerator, dataset_paths, generate_dataset
from training.data.transforms import ClipSample, large_scale_jitter, pseudo_video

_TORCH_NAMES = ("ImageDataset", "VideoDataset", "PromptDataset", "JointSampler",
                "collate_samples")

__all__ = [
    "ADE20KReader",
    "Categories",
    "ClipSample",
    "DAVISReader",
    "DataError",
    "DataFormatError",
    "ImageRecord",
    "SceneConfig",
    "SceneGenerator",
    "VIPSegReader",
    "VideoRecord",
    "dataset_paths",
    "generate_dataset",
    "large_scale_jitter",
    "pseudo_video",
    "read_ade20k",
    "read_coco_instances",
    "read_coco_panoptic",
    "read_davis",
    "read_vipseg",
    "read_ytvis",
    "sample_box",
    "sample_point",
    *_TORCH_NAMES,
]


def __getattr__(name: str) -> Any:
    # The torch datasets load lazily so the generator and readers work without torch.
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module("training.data.dataset"), name)
    raise AttributeError(f"module 'training.data' has no attribute {name!r}")
