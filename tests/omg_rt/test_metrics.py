"""omg_rt.metrics on hand-built cases whose values are worked out in the comments.

Comparisons with the reference implementations (panopticapi, vos-benchmark, COCOeval) on random
cases are in test_metrics_references.py.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from omg_rt.errors import InvalidInputError
from omg_rt.metrics import (
    OMG_SEG_WINDOW_SIZES,
    VIPSEG_WINDOW_SIZES,
    ConfusionMatrix,
    JFAccumulator,
    MaskAPAccumulator,
    PQAccumulator,
    VideoInstanceAPAccumulator,
    VPQAccumulator,
    boundary_f_measure,
    encode_masks,
    id_consistency,
    interactive_miou,
    j_and_f,
    mask_ap,
    mask_ious,
    mean_iou,
    panoptic_quality,
    region_similarity,
    rgb_to_id,
    tube_iou,
    video_instance_ap,
    video_panoptic_quality,
)

CATEGORIES = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 0}, {"id": 3, "isthing": 1}]


def segs(**categories: int) -> list[dict]:
    """segs(s10=1, s20=2) → [{"id": 10, "category_id": 1}, {"id": 20, "category_id": 2}]."""
    return [{"id": int(k[1:]), "category_id": c} for k, c in categories.items()]


# ---------------------------------------------------------------------------------------------
# Panoptic quality


def test_pq_of_a_hand_built_image():
    gt = np.array([[1, 1, 2, 2],
                   [1, 1, 2, 2],
                   [3, 3, 2, 2],
                   [0, 0, 2, 2]])
    pred = np.array([[10, 10, 20, 20],
                     [10, 30, 20, 20],
                     [30, 30, 20, 20],
                     [10, 0, 20, 0]])
    acc = PQAccumulator(CATEGORIES)
    acc.update(pred, segs(s10=1, s20=2, s30=1), gt, segs(s1=1, s2=2, s3=3))
    r = acc.compute()
    # pred 10 vs gt 1 (cat 1): intersection 3; its pixel at (3, 0) is void, so the union is
    # 4 + 4 - 3 - 1 = 4 → IoU 0.75, TP. pred 20 vs gt 2: 7 / 8 = 0.875, TP. pred 30 (cat 1)
    # overlaps gt 3 (cat 3, wrong category) and the already matched gt 1 → FP of cat 1; gt 3 → FN.
    assert r["per_class"][1] == pytest.approx({"pq": 0.75 / 1.5, "sq": 0.75, "rq": 1 / 1.5,
                                               "tp": 1, "fp": 1, "fn": 0})
    assert r["per_class"][2] == pytest.approx({"pq": 0.875, "sq": 0.875, "rq": 1.0,
                                               "tp": 1, "fp": 0, "fn": 0})
    assert r["per_class"][3] == pytest.approx({"pq": 0.0, "sq": 0.0, "rq": 0.0,
                                               "tp": 0, "fp": 0, "fn": 1})
    assert r["all"] == pytest.approx({"pq": (0.5 + 0.875 + 0) / 3, "sq": (0.75 + 0.875) / 3,
                                      "rq": (2 / 3 + 1) / 3, "n": 3})
    assert r["things"] == pytest.approx({"pq": 0.25, "sq": 0.375, "rq": 1 / 3, "n": 2})
    assert r["stuff"] == pytest.approx({"pq": 0.875, "sq": 0.875, "rq": 1.0, "n": 1})


def test_pq_needs_iou_strictly_above_one_half():
    gt = np.array([[1, 1]])
    pred = np.array([[5, 0]])  # IoU = 1 / 2: no match → one FP and one FN
    r = panoptic_quality([(pred, segs(s5=1), gt, segs(s1=1))], CATEGORIES)
    assert r["per_class"][1]["tp"] == 0
    assert (r["per_class"][1]["fp"], r["per_class"][1]["fn"]) == (1, 1)
    assert r["all"]["pq"] == 0.0


def test_pq_void_pixels_do_not_enlarge_the_union():
    gt = np.array([[1, 0], [0, 0]])
    pred = np.array([[5, 5], [5, 5]])  # spills over 3 void pixels: union = 4 + 1 - 1 - 3 = 1
    r = panoptic_quality([(pred, segs(s5=1), gt, segs(s1=1))], CATEGORIES)
    assert r["all"]["pq"] == 1.0


def test_pq_crowd_regions_are_not_matched_and_hide_same_category_false_positives():
    gt = np.array([[5, 5, 5, 5],
                   [6, 6, 6, 6]])
    pred = np.array([[7, 7, 7, 8],
                     [9, 9, 9, 9]])
    gt_segments = [{"id": 5, "category_id": 1, "iscrowd": 1}, {"id": 6, "category_id": 1}]
    r = panoptic_quality([(pred, segs(s7=1, s8=3, s9=1), gt, gt_segments)], CATEGORIES)
    # pred 7 (cat 1) lies inside the cat-1 crowd region → ignored; pred 8 is cat 3 → FP;
    # pred 9 = gt 6 → TP with IoU 1; the crowd segment is never a FN.
    assert (r["per_class"][1]["tp"], r["per_class"][1]["fp"], r["per_class"][1]["fn"]) == (1, 0, 0)
    assert (r["per_class"][3]["tp"], r["per_class"][3]["fp"]) == (0, 1)
    assert r["all"]["pq"] == pytest.approx(0.5)


def test_pq_accumulates_counts_over_images_not_per_image_scores():
    # image A: cat 1 TP with IoU 3/5 = 0.6; image B: a cat-1 gt segment nobody predicted (FN).
    a_gt, a_pred = np.array([[1, 1, 1, 1, 0]]), np.array([[0, 5, 5, 5, 5]])
    b_gt, b_pred = np.array([[1, 1]]), np.array([[0, 0]])
    r = panoptic_quality([(a_pred, segs(s5=1), a_gt, segs(s1=1)),
                          (b_pred, [], b_gt, segs(s1=1))], CATEGORIES)
    # union in A: 4 + 4 - 3 - 1 (void under the prediction) = 4 → IoU 0.75
    assert r["per_class"][1]["pq"] == pytest.approx(0.75 / (1 + 0.5))


def test_pq_categories_that_never_occur_are_nan_and_left_out():
    gt = np.array([[1, 1]])
    r = panoptic_quality([(gt.copy(), segs(s1=1), gt, segs(s1=1))], CATEGORIES)
    assert r["all"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 1}
    assert math.isnan(r["stuff"]["pq"]) and r["stuff"]["n"] == 0
    assert math.isnan(r["per_class"][2]["pq"])


@pytest.mark.parametrize(
    "pred, pred_segments, gt, gt_segments, match",
    [
        (np.array([[5, 6]]), segs(s5=1), np.array([[1, 1]]), segs(s1=1), "pred_segments"),
        (np.array([[5, 5]]), segs(s5=1), np.array([[1, 4]]), segs(s1=1), "gt_segments"),
        (np.array([[5, 5]]), segs(s5=9), np.array([[1, 1]]), segs(s1=1), "unknown category_id 9"),
        (np.array([[5, 5]]), segs(s5=1), np.array([[1, 1, 1]]), segs(s1=1), "shape"),
        (np.array([[5.0, 5.0]]), segs(s5=1), np.array([[1, 1]]), segs(s1=1), "pred_id_map"),
        (np.array([[-1, 5]]), segs(s5=1), np.array([[1, 1]]), segs(s1=1), "pred_id_map"),
        (np.array([[5, 5]]), segs(s5=1) * 2, np.array([[1, 1]]), segs(s1=1), "appears twice"),
    ],
)
def test_pq_rejects_bad_input_with_a_typed_error(pred, pred_segments, gt, gt_segments, match):
    acc = PQAccumulator(CATEGORIES)
    with pytest.raises(InvalidInputError, match=match):
        acc.update(pred, pred_segments, gt, gt_segments)


def test_rgb_to_id_decodes_coco_panoptic_png_colours():
    rgb = np.array([[[0, 0, 0], [1, 0, 0]], [[0, 1, 0], [3, 2, 1]]], np.uint8)
    np.testing.assert_array_equal(rgb_to_id(rgb), [[0, 1], [256, 3 + 2 * 256 + 65536]])
    with pytest.raises(InvalidInputError, match="rgb"):
        rgb_to_id(rgb.astype(np.int32))


def test_invalid_input_error_is_a_value_error():
    with pytest.raises(ValueError):
        PQAccumulator([{"id": 1}])  # no "isthing"


# ---------------------------------------------------------------------------------------------
# Video panoptic quality


def _id_switch_video():
    # One cat-1 track of 2 pixels in 3 frames; the prediction keeps id 5 for two frames and then
    # switches to id 6.
    gt = np.ones((3, 1, 2), np.int64)
    pred = np.array([[[5, 5]], [[5, 5]], [[6, 6]]])
    return pred, segs(s5=1, s6=1), gt, segs(s1=1)


def test_vpq_windows_of_a_hand_built_video():
    r = video_panoptic_quality([_id_switch_video()], CATEGORIES, window_sizes=(1, 2, 3, 4))
    # k=1: three windows, each a perfect TP → 1.
    # k=2: window 0-1 → TP (IoU 1); window 1-2: gt tube 4 px, tubes 5 and 6 have 2 px each →
    #      IoU 0.5 each, no match → 1 FN + 2 FP. PQ = 1 / (1 + 1 + 0.5) = 0.4.
    # k=3: tube 5 has IoU 4 / 6 → TP, tube 6 → FP. PQ = (2/3) / 1.5 = 4/9.
    # k=4: longer than the video, no window, not averaged.
    assert r["per_window"][1]["all"]["pq"] == pytest.approx(1.0)
    assert r["per_window"][2]["all"]["pq"] == pytest.approx(0.4)
    assert r["per_window"][3]["all"]["pq"] == pytest.approx(4 / 9)
    assert r["num_windows"] == {1: 3, 2: 2, 3: 1, 4: 0}
    assert r["window_sizes"] == [1, 2, 3]
    assert r["vpq"] == pytest.approx((1 + 0.4 + 4 / 9) / 3)
    assert r["vpq_things"] == pytest.approx(r["vpq"])
    assert math.isnan(r["vpq_stuff"])


def test_vpq_default_windows_are_vipseg_and_omg_seg_windows_are_available():
    assert VIPSEG_WINDOW_SIZES == (1, 2, 4, 6, 8)
    assert OMG_SEG_WINDOW_SIZES == (1, 2, 4, 6)
    assert VPQAccumulator(CATEGORIES).window_sizes == VIPSEG_WINDOW_SIZES


def test_vpq_with_one_frame_windows_is_pq_over_frames():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (5, 6, 7))
    noisy = np.where(rng.random(gt.shape) < 0.2, rng.integers(0, 4, gt.shape), gt)
    pred = np.where(noisy > 0, noisy + 10, 0)
    gt_segments = segs(s1=1, s2=2, s3=3)
    pred_segments = segs(s11=1, s12=2, s13=3)
    vpq = video_panoptic_quality([(pred, pred_segments, gt, gt_segments)], CATEGORIES, (1,))
    pq = panoptic_quality([(pred[t], [s for s in pred_segments if (pred[t] == s["id"]).any()],
                            gt[t], gt_segments) for t in range(5)], CATEGORIES)
    assert vpq["vpq"] == pytest.approx(pq["all"]["pq"], abs=1e-12)


def test_vpq_rejects_bad_window_sizes_and_frame_mismatch():
    with pytest.raises(InvalidInputError, match="window_sizes"):
        VPQAccumulator(CATEGORIES, window_sizes=(0, 2))
    pred, pred_segments, gt, gt_segments = _id_switch_video()
    with pytest.raises(InvalidInputError, match="shape"):
        VPQAccumulator(CATEGORIES).update(pred[:2], pred_segments, gt, gt_segments)


# ---------------------------------------------------------------------------------------------
# Semantic mIoU


def test_mean_iou_of_a_hand_built_confusion_matrix():
    confusion = np.array([[3, 1, 0],
                          [0, 4, 0],
                          [0, 0, 0]])
    r = mean_iou(confusion)
    # class 0: 3 / (3 + 1 + 0) = 0.75; class 1: 4 / (4 + 0 + 1) = 0.8; class 2 absent → NaN.
    assert r["iou"][:2] == pytest.approx([0.75, 0.8])
    assert math.isnan(r["iou"][2])
    assert r["miou"] == pytest.approx(0.775)
    assert r["pixel_accuracy"] == pytest.approx(7 / 8)


def test_confusion_matrix_counts_pixels_and_skips_ignored_ones():
    gt = np.array([[0, 0, 1], [255, 1, 2]])
    pred = np.array([[0, 1, 1], [2, 1, 0]])
    cm = ConfusionMatrix(num_classes=3, ignore_index=255)
    cm.update(pred, gt)
    expected = np.zeros((3, 3), np.int64)
    for g, p in [(0, 0), (0, 1), (1, 1), (1, 1), (2, 0)]:
        expected[g, p] += 1
    np.testing.assert_array_equal(cm.matrix, expected)
    # class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (2 + 3 - 2) = 2/3; class 2: 0 / 1 = 0
    assert cm.compute()["miou"] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_a_class_predicted_but_absent_from_the_ground_truth_counts_as_zero():
    cm = ConfusionMatrix(num_classes=2)
    cm.update(np.array([0, 1]), np.array([0, 0]))
    assert cm.compute()["iou"] == pytest.approx([0.5, 0.0])


def test_confusion_matrix_rejects_out_of_range_labels():
    cm = ConfusionMatrix(num_classes=2)
    with pytest.raises(InvalidInputError, match="pred_labels"):
        cm.update(np.array([0, 2]), np.array([0, 1]))
    with pytest.raises(InvalidInputError, match="gt_labels"):
        cm.update(np.array([0, 1]), np.array([0, 7]))
    with pytest.raises(InvalidInputError, match="confusion"):
        mean_iou(np.zeros((2, 3)))


# ---------------------------------------------------------------------------------------------
# Mask AP (COCOeval)


def _box_mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_mask_ap_of_a_perfect_prediction_is_one_even_with_annotation_ids_from_zero():
    masks = np.stack([_box_mask(20, 20, 2, 8, 2, 8), _box_mask(20, 20, 10, 18, 5, 15)])
    gt = {"images": [{"id": 7, "height": 20, "width": 20}],
          "categories": [{"id": 1}, {"id": 2}],
          "annotations": [{"id": i, "image_id": 7, "category_id": i + 1, "segmentation": rle,
                           "iscrowd": 0, "area": float(masks[i].sum())}
                          for i, rle in enumerate(encode_masks(masks))]}
    detections = [{"image_id": 7, "category_id": i + 1, "segmentation": rle, "score": 0.9}
                  for i, rle in enumerate(encode_masks(masks))]
    r = mask_ap(gt, detections)
    # (COCOeval's precision is tp / (tp + fp + eps), so "1" is 1 - 2e-16)
    assert (r["ap"], r["ap50"], r["ar100"]) == pytest.approx((1.0, 1.0, 1.0), abs=1e-12)
    assert r["per_class_ap"] == pytest.approx({1: 1.0, 2: 1.0}, abs=1e-12)

    # The trap itself: COCOeval run directly on annotation id 0 scores the same input below 1.
    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    raw = COCOeval(coco_gt, coco_gt.loadRes(detections), iouType="segm")
    raw.evaluate()
    raw.accumulate()
    raw.summarize()
    assert raw.stats[0] < 0.999


def test_mask_ap_counts_the_iou_thresholds_a_match_passes():
    acc = MaskAPAccumulator(category_ids=[1])
    gt_mask = _box_mask(10, 10, 0, 5, 0, 5)  # 25 px
    pred_mask = _box_mask(10, 10, 0, 4, 0, 4)  # 16 px inside it → IoU 0.64
    acc.update(pred_mask[None], np.array([0.8]), np.array([1]), gt_mask[None], np.array([1]))
    r = acc.compute()
    # matched at thresholds 0.50, 0.55, 0.60 of the ten → AP = 3 / 10
    assert r["ap"] == pytest.approx(0.3)
    assert (r["ap50"], r["ap75"]) == pytest.approx((1.0, 0.0), abs=1e-12)
    assert r["ap_small"] == pytest.approx(0.3)
    assert math.isnan(r["ap_medium"]) and math.isnan(r["ap_large"])


def test_mask_ap_without_detections_is_zero_and_crowd_only_ground_truth_is_undefined():
    acc = MaskAPAccumulator(category_ids=[1, 2])
    acc.update(np.zeros((0, 8, 8), bool), np.zeros(0), np.zeros(0, np.int64),
               _box_mask(8, 8, 0, 4, 0, 4)[None], np.array([1]))
    acc.update(_box_mask(8, 8, 0, 4, 0, 4)[None], np.array([0.5]), np.array([2]),
               _box_mask(8, 8, 0, 4, 0, 4)[None], np.array([2]), gt_iscrowd=np.array([1]))
    r = acc.compute()
    assert r["per_class_ap"][1] == 0.0
    assert math.isnan(r["per_class_ap"][2])
    assert r["ap"] == 0.0


# pycocotools' decode warns about numpy 2's __array__ copy keyword; not ours.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_encode_masks_round_trips_through_pycocotools():
    masks = np.random.default_rng(1).random((3, 9, 11)) < 0.4
    rles = encode_masks(masks)
    assert all(isinstance(r["counts"], str) and r["size"] == [9, 11] for r in rles)
    np.testing.assert_array_equal(mask_utils.decode(rles).transpose(2, 0, 1).astype(bool), masks)


def test_mask_ap_rejects_bad_detections():
    gt = {"images": [{"id": 1, "height": 4, "width": 4}], "categories": [{"id": 1}],
          "annotations": []}
    rle = encode_masks(np.ones((1, 5, 5), bool))[0]
    with pytest.raises(InvalidInputError, match="size"):
        mask_ap(gt, [{"image_id": 1, "category_id": 1, "segmentation": rle, "score": 1.0}])
    with pytest.raises(InvalidInputError, match="image_id"):
        mask_ap(gt, [{"image_id": 2, "category_id": 1, "segmentation": rle, "score": 1.0}])
    with pytest.raises(InvalidInputError, match="pred_labels"):
        MaskAPAccumulator([1]).update(np.ones((1, 4, 4), bool), np.ones(1), np.array([3]),
                                      np.ones((1, 4, 4), bool), np.array([1]))


# ---------------------------------------------------------------------------------------------
# Video instance AP (YouTube-VIS)


def test_tube_iou_sums_intersections_and_unions_over_frames():
    pred = np.array([[[1, 1, 0, 0]], [[1, 1, 1, 1]]], bool)[None]  # (1, T=2, 1, 4)
    gt = np.array([[[1, 1, 1, 0]], [[0, 0, 0, 0]]], bool)[None]
    # intersections 2 + 0, unions 3 + 4 → 2 / 7
    np.testing.assert_allclose(tube_iou(pred, gt), [[2 / 7]])
    np.testing.assert_array_equal(tube_iou(np.zeros_like(pred), np.zeros_like(gt)), [[0.0]])


def _tube(frames):
    return np.stack(frames)[None]


def test_video_ap_counts_thresholds_passed_by_the_tube_iou():
    h, w = 6, 6
    gt = _tube([_box_mask(h, w, 0, 2, 0, 5), _box_mask(h, w, 0, 3, 0, 5)])  # 10 + 15 px
    pred = _tube([_box_mask(h, w, 0, 2, 0, 4), _box_mask(h, w, 0, 2, 0, 4)])  # 8 + 8 px inside
    r = video_instance_ap([(pred, np.array([0.9]), np.array([1]), gt, np.array([1]))], [1])
    # tube IoU = 16 / 25 = 0.64 → matched at 0.50, 0.55, 0.60 → AP 0.3
    assert r["ap"] == pytest.approx(0.3)
    assert (r["ap50"], r["ap75"]) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_video_ap_uses_tube_iou_not_the_mean_of_frame_ious():
    h, w = 1, 10
    gt = _tube([_box_mask(h, w, 0, 1, 0, 1), _box_mask(h, w, 0, 1, 0, 10)])  # 1 + 10 px
    pred = _tube([_box_mask(h, w, 0, 1, 0, 1), _box_mask(h, w, 0, 1, 0, 2)])
    # per-frame IoUs 1 and 0.2 (mean 0.6), but the tube IoU is 3 / 11 < 0.5 → AP 0
    r = video_instance_ap([(pred, np.array([0.9]), np.array([1]), gt, np.array([1]))], [1])
    assert r["ap"] == 0.0 and r["ap50"] == 0.0


def test_video_ap_of_perfect_tubes_is_one_and_a_late_duplicate_does_not_lower_it():
    gt = np.stack([_tube([_box_mask(8, 8, 0, 3, 0, 3)] * 3)[0],
                   _tube([_box_mask(8, 8, 4, 8, 4, 8)] * 3)[0]])
    pred = np.concatenate([gt, gt[:1]])
    acc = VideoInstanceAPAccumulator([1, 2])
    acc.update(pred, np.array([0.9, 0.8, 0.1]), np.array([1, 2, 1]), gt, np.array([1, 2]))
    r = acc.compute()
    assert (r["ap"], r["ar1"]) == pytest.approx((1.0, 1.0), abs=1e-12)
    assert r["per_class_ap"] == pytest.approx({1: 1.0, 2: 1.0}, abs=1e-12)


def test_video_ap_area_split_uses_the_mean_non_empty_frame_area():
    # 130 × 130 px in one frame, empty in the other: mean non-empty area 16900 ≥ 128² → "medium"
    # in YouTube-VIS's ranges (it would be "large" by COCO's).
    big = _box_mask(140, 140, 0, 130, 0, 130)
    gt = _tube([big, np.zeros_like(big)])
    r = video_instance_ap([(gt.copy(), np.array([1.0]), np.array([1]), gt, np.array([1]))], [1])
    assert r["ap_medium"] == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(r["ap_small"]) and math.isnan(r["ap_large"])


# ---------------------------------------------------------------------------------------------
# J&F (DAVIS)


def _dot(h, w, y, x):
    m = np.zeros((h, w), bool)
    m[y, x] = True
    return m


def test_region_similarity_by_hand():
    pred = _box_mask(4, 4, 0, 2, 0, 2)  # 4 px
    gt = _box_mask(4, 4, 0, 2, 1, 4)  # 6 px, 2 shared → 2 / 8
    assert region_similarity(pred, gt) == pytest.approx(0.25)
    assert region_similarity(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0


def test_boundary_f_measure_by_hand():
    # 5×5 image: radius ceil(0.008 × 7.07) = 1, a plus-shaped disk. A one-pixel mask at (2, 2)
    # has boundary {(1,1), (1,2), (2,1), (2,2)} (boundaries sit half a pixel towards the origin);
    # one at (2, 4) has {(1,3), (1,4), (2,3), (2,4)}. Dilated by the plus, each covers half of the
    # other's boundary: P = R = 0.5 → F = 0.5.
    assert boundary_f_measure(_dot(5, 5, 2, 4), _dot(5, 5, 2, 2)) == pytest.approx(0.5)
    # 3 px apart: nothing within reach → 0; identical → 1; both empty → 1; one empty → 0.
    assert boundary_f_measure(_dot(5, 5, 0, 0), _dot(5, 5, 3, 3)) == 0.0
    assert boundary_f_measure(_dot(5, 5, 1, 1), _dot(5, 5, 1, 1)) == 1.0
    assert boundary_f_measure(np.zeros((5, 5), bool), np.zeros((5, 5), bool)) == 1.0
    assert boundary_f_measure(np.zeros((5, 5), bool), _dot(5, 5, 1, 1)) == 0.0
    # a tolerance of 2 px (bound_th ≥ 1 is pixels) reaches the whole other boundary
    assert boundary_f_measure(_dot(5, 5, 2, 4), _dot(5, 5, 2, 2), bound_th=2) == 1.0


def test_j_and_f_per_object_per_frame():
    gt = np.zeros((2, 5, 5), np.int64)
    gt[:, 2, 2] = 1
    gt[0, 0, 0] = 2  # object 2 leaves after frame 0
    pred = np.zeros_like(gt)
    pred[0, 2, 4] = 1
    pred[1, 2, 2] = 1
    pred[0, 0, 0] = 2
    r = j_and_f(pred, gt)
    np.testing.assert_allclose(r["j"][1], [0.0, 1.0])
    np.testing.assert_allclose(r["f"][1], [0.5, 1.0])
    # frame 1: object 2 absent and not predicted → J = F = 1
    np.testing.assert_allclose(r["j"][2], [1.0, 1.0])
    np.testing.assert_allclose(r["f"][2], [1.0, 1.0])
    assert r["j_mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert r["f_mean"] == pytest.approx((0.75 + 1.0) / 2)
    assert r["jf"] == pytest.approx((0.75 + 0.875) / 2)


def test_j_and_f_can_skip_first_and_last_frames_as_davis_does():
    gt = np.ones((3, 4, 4), np.int64)
    pred = np.zeros_like(gt)
    pred[1] = 1  # only the middle frame is right
    assert j_and_f(pred, gt, skip_first_and_last=True)["j_mean"] == 1.0
    assert j_and_f(pred, gt)["j_mean"] == pytest.approx(1 / 3)


def test_jf_accumulator_averages_over_objects_of_all_videos():
    acc = JFAccumulator()
    one = np.ones((1, 4, 4), np.int64)
    acc.update(one, one)  # one object, J = 1
    gt = np.zeros((1, 4, 4), np.int64)
    gt[0, :2], gt[0, 2:] = 1, 2
    pred = gt.copy()
    pred[0, 2:] = 0  # object 1 right (J = 1), object 2 missed (J = 0)
    acc.update(pred, gt)
    assert acc.compute()["j_mean"] == pytest.approx(2 / 3)  # objects, not videos (0.75)


# ---------------------------------------------------------------------------------------------
# Interactive mIoU


def test_interactive_miou_by_hand():
    gt = np.stack([_box_mask(4, 4, 0, 2, 0, 2), _box_mask(4, 4, 0, 4, 0, 4),
                   np.zeros((4, 4), bool)])
    pred = np.stack([_box_mask(4, 4, 0, 2, 0, 1), _box_mask(4, 4, 0, 4, 0, 4),
                     np.zeros((4, 4), bool)])
    np.testing.assert_allclose(mask_ious(pred, gt), [0.5, 1.0, 1.0])
    assert interactive_miou(pred, gt) == pytest.approx(2.5 / 3)
    with pytest.raises(InvalidInputError, match="gt_masks"):
        interactive_miou(pred, gt[:2])
    with pytest.raises(InvalidInputError, match="pred_masks"):
        interactive_miou(pred.astype(np.float32) * 0.5, gt)


# ---------------------------------------------------------------------------------------------
# ID consistency


def test_id_consistency_by_hand():
    t = 4
    gt = np.zeros((t, 2, 4), np.int64)
    gt[:, 0, :2] = 1  # track 1: 2 px in every frame
    gt[:2, 1, :] = 2  # track 2: 4 px in frames 0 and 1
    pred = np.zeros_like(gt)
    pred[0, 0, :2] = 7
    pred[1, 0, :2] = 7
    pred[2, 0, :2] = 9  # id switch
    pred[3, 0, 0] = 7
    pred[3, 0, 1:4] = 7  # frame 3: IoU of id 7 with track 1 = 2 / 4 ≥ 0.5 → still matched
    pred[:2, 1, :] = 3
    r = id_consistency(pred, gt)
    # track 1: matched ids 7, 7, 9, 7 → majority 7 in 3 of 4 frames; track 2: 3, 3 → 1
    assert r["per_track"] == pytest.approx({1: 0.75, 2: 1.0})
    assert r["majority_id"] == {1: 7, 2: 3}
    assert r["id_consistency"] == pytest.approx(0.875)


def test_id_consistency_counts_unmatched_frames_and_breaks_ties_by_the_smaller_id():
    gt = np.ones((4, 1, 4), np.int64)
    pred = np.zeros_like(gt)
    pred[0] = 9
    pred[1] = 7
    pred[2, 0, :1] = 5  # IoU 1/4 < 0.5 → unmatched
    r = id_consistency(pred, gt)  # ids 9, 7, -, - → tie, majority 7 → 1 of 4 frames
    assert r["majority_id"] == {1: 7}
    assert r["per_track"] == {1: 0.25}
    never = id_consistency(np.zeros_like(gt), gt)
    assert never["per_track"] == {1: 0.0} and never["majority_id"] == {1: None}
    assert math.isnan(id_consistency(pred, np.zeros_like(gt))["id_consistency"])


# ---------------------------------------------------------------------------------------------
# Packaging


def test_metrics_never_import_torch():
    code = ("import sys, omg_rt.metrics; "
            "bad = [m for m in ('torch', 'training', 'skimage', 'panopticapi') "
            "if m in sys.modules]; sys.exit(f'imported {bad}' if bad else 0)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("accumulator", [MaskAPAccumulator, VideoInstanceAPAccumulator])
@pytest.mark.parametrize("ids", [[], [3, 1, 3]])
def test_instance_accumulators_refuse_repeated_or_no_categories(accumulator, ids):
    with pytest.raises(InvalidInputError, match="category_ids: expected distinct ids"):
        accumulator(ids)
    assert accumulator([3, 1])._category_ids == [3, 1]
