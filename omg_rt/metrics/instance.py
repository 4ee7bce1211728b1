"""Mask AP for instance segmentation, computed by pycocotools' COCOeval (iouType="segm").

Nothing of COCO's matching or averaging is re-implemented here: this module builds the COCO
ground-truth and result objects from numpy masks and reads COCOeval's numbers back. Two traps it
closes: COCOeval stores the *id* of the matched annotation and treats id 0 as "unmatched", so an
annotation with id 0 makes a perfect prediction score below 1 — annotations are renumbered from 1;
and COCOeval prints to stdout — silenced.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from omg_rt.errors import InvalidInputError, describe
from omg_rt.metrics import _validation as check

# The 12 numbers COCOeval.summarize() fills in `stats`, in its order.
SUMMARY_KEYS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large",
                "ar1", "ar10", "ar100", "ar_small", "ar_medium", "ar_large")


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO compressed RLEs of binary masks.

    Args:
        masks: (N, H, W) bool (or 0/1 integer) masks.

    Returns:
        N dicts `{"size": [H, W], "counts": str}` (JSON-serialisable).
    """
    masks = check.binary_masks("masks", masks, 3)
    if masks.shape[0] == 0:
        return []
    # pycocotools wants (H, W, N) uint8 in Fortran order.
    fortran = np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8))
    rles: list[dict[str, Any]] = mask_utils.encode(fortran)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def mask_ap(gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """COCO mask AP of detections against a COCO-format ground truth.

    Args:
        gt: a COCO instances dict: `{"images": [{"id", "height", "width"}, ...], "annotations":
            [{"image_id", "category_id", "segmentation" (RLE or polygons), "iscrowd"?, "area"?},
            ...], "categories": [{"id"}, ...]}`. Annotation ids are replaced by 1..N (see the
            module docstring); a missing `area` is computed from the mask, `iscrowd` defaults to 0.
        detections: `[{"image_id", "category_id", "segmentation": RLE, "score": float}, ...]`, the
            RLE sized as its image (e.g. from `encode_masks`).

    Returns:
        `{"ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "ar1", "ar10", "ar100",
        "ar_small", "ar_medium", "ar_large": float, "per_class_ap": {category_id: float}}` in
        [0, 1], exactly COCOeval's `stats`; NaN where COCOeval reports -1 (no ground truth).
    """
    coco_gt = _ground_truth(gt)
    coco_dt = _results(coco_gt, detections)
    return evaluate(COCOeval(coco_gt, coco_dt, iouType="segm"))


class MaskAPAccumulator:
    """Accumulates per-image instance predictions; `compute()` gives COCO mask AP.

    Args:
        category_ids: the category ids evaluated (COCOeval averages over those with ground truth).
    """

    def __init__(self, category_ids: Sequence[int]) -> None:
        self._category_ids = check.distinct_ids("category_ids", category_ids)
        self._images: list[dict[str, Any]] = []
        self._annotations: list[dict[str, Any]] = []
        self._detections: list[dict[str, Any]] = []

    def update(
        self,
        pred_masks: np.ndarray,
        pred_scores: np.ndarray,
        pred_labels: np.ndarray,
        gt_masks: np.ndarray,
        gt_labels: np.ndarray,
        gt_iscrowd: np.ndarray | None = None,
    ) -> None:
        """Adds one image.

        Args:
            pred_masks: (N, H, W) bool predicted instance masks.
            pred_scores: (N,) float confidences.
            pred_labels: (N,) int category ids.
            gt_masks: (M, H, W) bool ground-truth instance masks.
            gt_labels: (M,) int category ids.
            gt_iscrowd: (M,) bool crowd flags; all False when omitted.
        """
        pred = check.binary_masks("pred_masks", pred_masks, 3)
        gtm = check.binary_masks("gt_masks", gt_masks, 3)
        if pred.shape[1:] != gtm.shape[1:]:
            raise InvalidInputError(f"pred_masks: expected (N, {gtm.shape[1]}, {gtm.shape[2]}) "
                                    f"like gt_masks, got {describe(pred)}")
        scores = check.vector("pred_scores", pred_scores, pred.shape[0], "float")
        labels = check.vector("pred_labels", pred_labels, pred.shape[0], "int")
        gt_cats = check.vector("gt_labels", gt_labels, gtm.shape[0], "int")
        crowd = (np.zeros(gtm.shape[0], bool) if gt_iscrowd is None
                 else check.vector("gt_iscrowd", gt_iscrowd, gtm.shape[0], "bool"))
        known = set(self._category_ids)
        for name, cats in (("pred_labels", labels), ("gt_labels", gt_cats)):
            unknown = sorted(set(cats.tolist()) - known)
            if unknown:
                raise InvalidInputError(f"{name}: unknown category ids {unknown}")
        image_id = len(self._images) + 1
        self._images.append({"id": image_id, "height": gtm.shape[1], "width": gtm.shape[2]})
        for rle, cat, is_crowd in zip(encode_masks(gtm), gt_cats.tolist(), crowd.tolist(),
                                      strict=True):
            self._annotations.append({"image_id": image_id, "category_id": cat,
                                      "segmentation": rle, "iscrowd": int(is_crowd)})
        for rle, cat, score in zip(encode_masks(pred), labels.tolist(), scores.tolist(),
                                   strict=True):
            self._detections.append({"image_id": image_id, "category_id": cat,
                                     "segmentation": rle, "score": score})

    def compute(self) -> dict[str, Any]:
        """`mask_ap` over the images added so far."""
        gt = {"images": self._images, "annotations": self._annotations,
              "categories": [{"id": c} for c in self._category_ids]}
        return mask_ap(gt, self._detections)


def evaluate(evaluator: COCOeval) -> dict[str, Any]:
    """Runs evaluate / accumulate / summarize quietly and returns the summary dict."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    result: dict[str, Any] = {key: _nan_if_missing(value)
                              for key, value in zip(SUMMARY_KEYS, evaluator.stats, strict=True)}
    # precision: (iou thresholds, recall thresholds, categories, area ranges, max dets); area
    # range 0 is "all", the last max-dets setting is 100 — COCOeval's own per-class AP slice.
    precision = evaluator.eval["precision"]
    per_class = {}
    for k, cat in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[int(cat)] = float(values.mean()) if values.size else float("nan")
    result["per_class_ap"] = per_class
    return result


def quiet_coco(dataset: dict[str, Any]) -> COCO:
    """A pycocotools COCO object over an in-memory dataset dict, without its prints."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _nan_if_missing(value: float) -> float:
    return float("nan") if value == -1 else float(value)


def _ground_truth(gt: Mapping[str, Any]) -> COCO:
    if not isinstance(gt, Mapping):
        raise InvalidInputError(f"gt: expected a COCO dict, got {describe(gt)}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), Sequence):
            raise InvalidInputError(f"gt: expected a list under {key!r}")
    dataset = {key: copy.deepcopy(list(gt[key])) for key in ("images", "annotations",
                                                                "categories")}
    image_ids = {img.get("id") for img in dataset["images"]}
    category_ids = {cat.get("id") for cat in dataset["categories"]}
    for i, ann in enumerate(dataset["annotations"]):
        if not isinstance(ann, dict) or "segmentation" not in ann:
            raise InvalidInputError(f"gt['annotations'][{i}]: expected a dict with a "
                                    f"'segmentation'")
        if ann.get("image_id") not in image_ids:
            raise InvalidInputError(f"gt['annotations'][{i}]: unknown image_id "
                                    f"{ann.get('image_id')!r}")
        if ann.get("category_id") not in category_ids:
            raise InvalidInputError(f"gt['annotations'][{i}]: unknown category_id "
                                    f"{ann.get('category_id')!r}")
        ann["id"] = i + 1  # COCOeval reads id 0 as "no match"
        ann.setdefault("iscrowd", 0)
    coco = quiet_coco(dataset)
    for ann in dataset["annotations"]:
        if "area" not in ann:
            ann["area"] = float(mask_utils.area(coco.annToRLE(ann)))
    return coco


def _results(coco_gt: COCO, detections: Iterable[Mapping[str, Any]]) -> COCO:
    """The result object COCO.loadRes builds for segm results (ids from 1, area and bbox from the
    RLE, iscrowd 0), made directly so that an empty detection list works too."""
    annotations = []
    for i, det in enumerate(detections):
        where = f"detections[{i}]"
        if not isinstance(det, Mapping) or not {"image_id", "category_id", "segmentation",
                                                 "score"} <= set(det):
            raise InvalidInputError(f"{where}: expected a dict with image_id, category_id, "
                                    f"segmentation and score")
        image = coco_gt.imgs.get(det["image_id"])
        if image is None:
            raise InvalidInputError(f"{where}: unknown image_id {det['image_id']!r}")
        if det["category_id"] not in coco_gt.cats:
            raise InvalidInputError(f"{where}: unknown category_id {det['category_id']!r}")
        rle = det["segmentation"]
        if not isinstance(rle, Mapping) or "counts" not in rle or "size" not in rle:
            raise InvalidInputError(f"{where}: segmentation must be a COCO RLE dict")
        if list(rle["size"]) != [image["height"], image["width"]]:
            raise InvalidInputError(f"{where}: segmentation size {list(rle['size'])} differs "
                                    f"from the image's [{image['height']}, {image['width']}]")
        rle = {"size": list(rle["size"]), "counts": rle["counts"]}
        annotations.append({
            "id": i + 1, "image_id": det["image_id"], "category_id": det["category_id"],
            "segmentation": rle, "score": float(det["score"]), "iscrowd": 0,
            "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
        })
    return quiet_coco({"images": copy.deepcopy(coco_gt.dataset["images"]),
                       "annotations": annotations,
                       "categories": copy.deepcopy(coco_gt.dataset["categories"])})
