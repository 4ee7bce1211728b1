"""Segmentation metrics over numpy arrays (no torch): used by the runtime's benchmarks and by the
training package.

| task | entry points | reference it matches |
|---|---|---|
| panoptic | `PQAccumulator`, `panoptic_quality`, `rgb_to_id` | panopticapi |
| instance | `MaskAPAccumulator`, `mask_ap`, `encode_masks` | pycocotools COCOeval (it runs it) |
| semantic | `ConfusionMatrix`, `mean_iou` | mmseg IoUMetric's definition |
| video panoptic | `VPQAccumulator`, `video_panoptic_quality` | VIPSeg eval_vpq_vspw.py |
| video instance | `VideoInstanceAPAccumulator`, `video_instance_ap`, `tube_iou` | ytvoseval |
| VOS | `j_and_f`, `JFAccumulator`, `region_similarity`, `boundary_f_measure` | DAVIS |
| interactive | `interactive_miou`, `mask_ious` | SAM-style per-prompt IoU |
| video ids | `id_consistency` | defined in `tracking.py` |
"""

from omg_rt.metrics.instance import MaskAPAccumulator, encode_masks, mask_ap
from omg_rt.metrics.interactive import interactive_miou, mask_ious
from omg_rt.metrics.panoptic import PQAccumulator, panoptic_quality, rgb_to_id
from omg_rt.metrics.semantic import ConfusionMatrix, mean_iou
from omg_rt.metrics.tracking import id_consistency
from omg_rt.metrics.video_instance import (
    VideoInstanceAPAccumulator,
    tube_iou,
    video_instance_ap,
)
from omg_rt.metrics.video_panoptic import (
    OMG_SEG_WINDOW_SIZES,
    VIPSEG_WINDOW_SIZES,
    VPQAccumulator,
    video_panoptic_quality,
)
from omg_rt.metrics.vos import (
    JFAccumulator,
    boundary_f_measure,
    j_and_f,
    region_similarity,
)

__all__ = [
    "OMG_SEG_WINDOW_SIZES",
    "VIPSEG_WINDOW_SIZES",
    "ConfusionMatrix",
    "JFAccumulator",
    "MaskAPAccumulator",
    "PQAccumulator",
    "VPQAccumulator",
    "VideoInstanceAPAccumulator",
    "boundary_f_measure",
    "encode_masks",
    "id_consistency",
    "interactive_miou",
    "j_and_f",
    "mask_ap",
    "mask_ious",
    "mean_iou",
    "panoptic_quality",
    "region_similarity",
    "rgb_to_id",
    "tube_iou",
    "video_instance_ap",
    "video_panoptic_quality",
]
