"""omg_rt.metrics against independent reference implementations, on hypothesis-drawn random cases.

| ours | reference |
|---|---|
| PQAccumulator | panopticapi's `pq_compute_single_core` (PyPI `panopticapi-lite`, run on PNG files) |
| VPQAccumulator | the same panopticapi code on each window's frames placed side by side — VIPSeg's VPQ^k |
| j_and_f | vos-benchmark's `Evaluator` (PyPI `vos-benchmark`, matches the DAVIS evaluator) |
| MaskAPAccumulator | COCOeval on COCO JSON files written with uncompressed RLEs (no code of ours) |
| VideoInstanceAPAccumulator | COCOeval on each video's frames side by side (tube IoU = IoU of the |
|   | concatenation), and ytvoseval's RLE `iou_seq` for the tube IoUs |

The references install with `pip install --no-deps panopticapi-lite vos-benchmark scikit-image`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from omg_rt.metrics import (
    VIPSEG_WINDOW_SIZES,
    MaskAPAccumulator,
    PQAccumulator,
    VideoInstanceAPAccumulator,
    VPQAccumulator,
    j_and_f,
    tube_iou,
)

panopticapi_evaluation = pytest.importorskip(
    "panopticapi.evaluation", reason="reference needs `pip install --no-deps panopticapi-lite`")
vos_evaluator = pytest.importorskip(
    "vos_benchmark.evaluator",
    reason="reference needs `pip install --no-deps vos-benchmark` and scikit-image")

SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
CATEGORIES = [{"id": 1, "isthing": 1}, {"id": 2, "isthing": 1},
              {"id": 3, "isthing": 0}, {"id": 4, "isthing": 0}]
GROUPS = (("all", None), ("things", True), ("stuff", False))


# ---------------------------------------------------------------------------------------------
# Random panoptic data


def _blocky(rng: np.random.Generator, h: int, w: int, values: np.ndarray) -> np.ndarray:
    """(h, w) map of random rectangles of `values`, made by stretching a small random grid."""
    ch, cw = int(rng.integers(1, h + 1)), int(rng.integers(1, w + 1))
    coarse = rng.choice(values, size=(ch, cw))
    return coarse[np.arange(h) * ch // h][:, np.arange(w) * cw // w]


def _random_prediction(rng, gt, gt_cats, pred_ids):
    """A prediction near `gt`: segments relabelled, some pixels scrambled, some frames shifted."""
    gt_ids = sorted(gt_cats)
    relabel = dict(zip(gt_ids, rng.permutation(pred_ids)[: len(gt_ids)].tolist(), strict=True))
    pred = np.zeros_like(gt)
    for g, p in relabel.items():
        pred[gt == g] = p
    if rng.random() < 0.3:
        pred = np.roll(pred, int(rng.integers(-1, 2)), axis=-1)
    noise = rng.random(gt.shape) < rng.uniform(0, 0.4)
    pred[noise] = rng.choice(np.concatenate([[0], pred_ids]), size=int(noise.sum()))
    pred_cats = {}
    for g, p in relabel.items():
        wrong = rng.random() < 0.2
        pred_cats[p] = int(rng.integers(1, 5)) if wrong else gt_cats[g][0]
    for p in pred_ids:
        pred_cats.setdefault(int(p), int(rng.integers(1, 5)))
    return pred, pred_cats


def _random_panoptic_image(rng, h, w):
    n_gt = int(rng.integers(1, 6))
    gt_ids = rng.choice(np.arange(1, 3000), n_gt, replace=False)
    gt = _blocky(rng, h, w, np.concatenate([[0], gt_ids]))
    gt_cats = {int(i): (int(rng.integers(1, 5)), int(rng.random() < 0.15)) for i in gt_ids}
    pred_ids = rng.choice(np.arange(1, 3000), n_gt + 2, replace=False)
    pred, pred_cats = _random_prediction(rng, gt, gt_cats, pred_ids)
    return gt, gt_cats, pred, pred_cats


def _present_segments(id_map, cats, with_crowd):
    present = set(np.unique(id_map).tolist()) - {0}
    out = []
    for i in sorted(cats):  # a fixed order: panopticapi's crowd rule depends on it
        if i in present:
            seg = {"id": int(i), "category_id": cats[i][0] if with_crowd else cats[i]}
            if with_crowd:
                seg["iscrowd"] = cats[i][1]
                seg["area"] = int((id_map == i).sum())
            out.append(seg)
    return out


# ---------------------------------------------------------------------------------------------
# panopticapi as the reference


def _id_to_rgb(id_map: np.ndarray) -> np.ndarray:
    ids = id_map.astype(np.uint32)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2], axis=-1).astype(np.uint8)


def _panopticapi_pq(images):
    """images: [(gt_map, gt_segments with iscrowd and area, pred_map, pred_segments)] → results
    of panopticapi's own code, run on PNG files as its command line tool does."""
    categories = {c["id"]: dict(c) for c in CATEGORIES}
    with tempfile.TemporaryDirectory() as tmp:
        gt_dir, pred_dir = Path(tmp, "gt"), Path(tmp, "pred")
        gt_dir.mkdir()
        pred_dir.mkdir()
        annotation_set = []
        for i, (gt, gt_segments, pred, pred_segments) in enumerate(images):
            name = f"{i}.png"
            Image.fromarray(_id_to_rgb(gt)).save(gt_dir / name)
            Image.fromarray(_id_to_rgb(pred)).save(pred_dir / name)
            annotation_set.append((
                {"image_id": i, "file_name": name, "segments_info": gt_segments},
                {"image_id": i, "file_name": name,
                 "segments_info": [dict(s) for s in pred_segments]},
            ))
        with contextlib.redirect_stdout(io.StringIO()):
            stat = panopticapi_evaluation.pq_compute_single_core(
                0, annotation_set, str(gt_dir), str(pred_dir), categories)
    result = {}
    for name, isthing in GROUPS:
        try:
            result[name], per_class = stat.pq_average(categories, isthing=isthing)
        except ZeroDivisionError:  # panopticapi divides by n = 0 when no category occurs
            result[name], per_class = {"pq": np.nan, "sq": np.nan, "rq": np.nan, "n": 0}, {}
        if name == "all":
            result["per_class"] = per_class
            result["counts"] = {c: (stat[c].tp, stat[c].fp, stat[c].fn) for c in categories}
    return result


def _assert_same_pq(ours, ref):
    for name, _ in GROUPS:
        assert ours[name]["n"] == ref[name]["n"], name
        for key in ("pq", "sq", "rq"):
            np.testing.assert_allclose(ours[name][key], ref[name][key], rtol=0, atol=1e-12,
                                       err_msg=f"{name} {key}")
    for c, (tp, fp, fn) in ref["counts"].items():
        mine = ours["per_class"][c]
        assert (mine["tp"], mine["fp"], mine["fn"]) == (tp, fp, fn), f"category {c}"
        if tp + fp + fn:
            for key in ("pq", "sq", "rq"):
                assert mine[key] == pytest.approx(ref["per_class"][c][key], abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS, num_images=st.integers(1, 3))
def test_pq_equals_panopticapi(seed, num_images):
    rng = np.random.default_rng(seed)
    acc = PQAccumulator(CATEGORIES)
    images = []
    for _ in range(num_images):
        h, w = (int(v) for v in rng.integers(3, 14, 2))
        gt, gt_cats, pred, pred_cats = _random_panoptic_image(rng, h, w)
        gt_segments = _present_segments(gt, gt_cats, with_crowd=True)
        pred_segments = _present_segments(pred, pred_cats, with_crowd=False)
        acc.update(pred, pred_segments, gt, gt_segments)
        images.append((gt, gt_segments, pred, pred_segments))
    _assert_same_pq(acc.compute(), _panopticapi_pq(images))


def _random_video(rng, t, h, w):
    n_gt = int(rng.integers(1, 5))
    gt_ids = rng.choice(np.arange(1, 500), n_gt, replace=False)
    gt_cats = {int(i): (int(rng.integers(1, 5)), int(rng.random() < 0.1)) for i in gt_ids}
    gt = np.stack([_blocky(rng, h, w, np.concatenate([[0], gt_ids])) for _ in range(t)])
    pred_ids = rng.choice(np.arange(1, 500), n_gt + 2, replace=False)
    pred, pred_cats = _random_prediction(rng, gt, gt_cats, pred_ids)
    # id switches: from a random frame on, one predicted id becomes another of the same category
    if rng.random() < 0.5 and t > 1:
        start = int(rng.integers(1, t))
        a, b = (int(v) for v in rng.choice(pred_ids, 2, replace=False))
        pred_cats[b] = pred_cats[a]
        frames = pred[start:]
        frames[frames == a] = b
    return gt, gt_cats, pred, pred_cats


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, num_videos=st.integers(1, 2))
def test_vpq_equals_panopticapi_on_side_by_side_windows(seed, num_videos):
    rng = np.random.default_rng(seed)
    acc = VPQAccumulator(CATEGORIES)  # VIPSeg's windows 1, 2, 4, 6, 8
    windows = {k: [] for k in VIPSEG_WINDOW_SIZES}
    for _ in range(num_videos):
        t = int(rng.integers(1, 8))
        h, w = (int(v) for v in rng.integers(2, 7, 2))
        gt, gt_cats, pred, pred_cats = _random_video(rng, t, h, w)
        acc.update(pred, _present_segments(pred, pred_cats, False),
                   gt, _present_segments(gt, gt_cats, True))
        for k in VIPSEG_WINDOW_SIZES:
            for s in range(t - k + 1):
                gt_window = np.concatenate(list(gt[s:s + k]), axis=1)  # (h, k·w)
                pred_window = np.concatenate(list(pred[s:s + k]), axis=1)
                windows[k].append((gt_window, _present_segments(gt_window, gt_cats, True),
                                   pred_window, _present_segments(pred_window, pred_cats, False)))
    ours = acc.compute()
    expected = []
    for k, images in windows.items():
        assert ours["num_windows"][k] == len(images)
        if images:
            ref = _panopticapi_pq(images)
            _assert_same_pq(ours["per_window"][k], ref)
            expected.append(ref["all"]["pq"])
    assert ours["window_sizes"] == [k for k in VIPSEG_WINDOW_SIZES if windows[k]]
    np.testing.assert_allclose(ours["vpq"], np.mean(expected), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# vos-benchmark (DAVIS J&F) as the reference


@settings(max_examples=40, deadline=None)
@given(seed=SEEDS)
def test_j_and_f_equals_vos_benchmark(seed):
    rng = np.random.default_rng(seed)
    t = int(rng.integers(1, 4))
    # up to 100 × 100: radius ceil(0.008 × diagonal) takes values 1 and 2
    h, w = (int(v) for v in rng.integers(4, 101, 2))
    objects = np.arange(1, int(rng.integers(2, 5)))
    gt = np.stack([_blocky(rng, h, w, np.concatenate([[0], objects])) for _ in range(t)])
    # vos-benchmark starts an object's frame list when it is first seen; DAVIS (and we) score it
    # on every frame. Both agree when every object is in the first frame, as in DAVIS.
    gt[0].flat[rng.choice(h * w, len(objects), replace=False)] = objects
    pred = gt.copy()
    if rng.random() < 0.5:
        pred = np.roll(pred, tuple(int(v) for v in rng.integers(-3, 4, 2)), axis=(1, 2))
    noise = rng.random(gt.shape) < rng.uniform(0, 0.3)
    pred[noise] = rng.integers(0, len(objects) + 2, int(noise.sum()))

    reference = vos_evaluator.Evaluator()
    for frame in range(t):
        reference.feed_frame(pred[frame].astype(np.uint8), gt[frame].astype(np.uint8))
    ref_j, ref_f = reference.conclude()  # per-object means × 100

    ours = j_and_f(pred, gt)
    assert sorted(ours["j"]) == sorted(int(o) for o in ref_j)
    for o in ours["j"]:
        np.testing.assert_allclose(ours["j"][o], reference.object_iou[o], rtol=0, atol=1e-12)
        np.testing.assert_allclose(ours["f"][o], reference.boundary_f[o], rtol=0, atol=1e-12)
        assert 100 * ours["j"][o].mean() == pytest.approx(ref_j[o], abs=1e-9)
        assert 100 * ours["f"][o].mean() == pytest.approx(ref_f[o], abs=1e-9)
    assert 100 * ours["jf"] == pytest.approx(
        (np.mean(list(ref_j.values())) + np.mean(list(ref_f.values()))) / 2, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# COCOeval on files as the reference


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE written from scratch: run lengths of the column-major pixels,
    starting with a (possibly empty) run of zeros."""
    flat = mask.astype(np.uint8).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0] == 1:
        runs = [0] + runs
    return {"size": list(mask.shape), "counts": runs}


def _cocoeval_from_files(images, category_ids):
    """images: [(gt_masks, gt_labels, gt_crowd, pred_masks, pred_scores, pred_labels)] → the 12
    COCOeval stats (-1 → NaN) and per-category AP, via COCO JSON files and COCO.loadRes."""
    gt = {"images": [], "annotations": [], "categories": [{"id": c} for c in category_ids]}
    dets = []
    for image_id, (gt_masks, gt_labels, gt_crowd, pred_masks, scores, labels) in enumerate(
            images, start=1):
        h, w = gt_masks.shape[1:]
        gt["images"].append({"id": image_id, "height": h, "width": w})
        for m, c, crowd in zip(gt_masks, gt_labels, gt_crowd, strict=True):
            gt["annotations"].append({
                "id": len(gt["annotations"]) + 1, "image_id": image_id, "category_id": int(c),
                "segmentation": _uncompressed_rle(m), "area": float(m.sum()),
                "iscrowd": int(crowd), "bbox": [0, 0, 1, 1]})
        for m, s, c in zip(pred_masks, scores, labels, strict=True):
            rle = mask_utils.frPyObjects(_uncompressed_rle(m), h, w)
            rle["counts"] = rle["counts"].decode("ascii")
            dets.append({"image_id": image_id, "category_id": int(c), "segmentation": rle,
                         "score": float(s)})
    with tempfile.TemporaryDirectory() as tmp:
        gt_file, det_file = os.path.join(tmp, "gt.json"), os.path.join(tmp, "dets.json")
        Path(gt_file).write_text(json.dumps(gt))
        Path(det_file).write_text(json.dumps(dets))
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(gt_file)
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(det_file), iouType="segm")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
    stats = np.where(evaluator.stats == -1, np.nan, evaluator.stats)
    per_class = {}
    for k, c in enumerate(evaluator.params.catIds):
        p = evaluator.eval["precision"][:, :, k, 0, -1]
        per_class[c] = p[p > -1].mean() if (p > -1).any() else np.nan
    return stats, per_class


def _random_rect_masks(rng, n, h, w):
    masks = np.zeros((n, h, w), bool)
    for m in masks:
        y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
        m[y0:int(rng.integers(y0 + 1, h + 1)), x0:int(rng.integers(x0 + 1, w + 1))] = True
        if rng.random() < 0.3:  # a hole
            m[int(rng.integers(0, h)), :] = False
    return masks


def _jitter(rng, masks):
    out = masks.copy()
    for m in out:
        m[:] = np.roll(m, tuple(int(v) for v in rng.integers(-2, 3, 2)), axis=(0, 1))
        m[rng.random(m.shape) < 0.05] ^= True
    return out


def _random_instances(rng, h, w):
    n_gt = int(rng.integers(0, 5))
    gt_masks = _random_rect_masks(rng, n_gt, h, w)
    gt_labels = rng.integers(1, 4, n_gt)
    gt_crowd = rng.random(n_gt) < 0.1
    n_extra = int(rng.integers(0, 3))
    pred_masks = np.concatenate([_jitter(rng, gt_masks), _random_rect_masks(rng, n_extra, h, w)])
    pred_labels = np.concatenate([np.where(rng.random(n_gt) < 0.8, gt_labels,
                                           rng.integers(1, 4, n_gt)),
                                  rng.integers(1, 4, n_extra)])
    scores = rng.random(len(pred_masks))
    return gt_masks, gt_labels, gt_crowd, pred_masks, scores, pred_labels


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS, num_images=st.integers(1, 4))
def test_mask_ap_equals_cocoeval_on_json_files(seed, num_images):
    rng = np.random.default_rng(seed)
    images = []
    acc = MaskAPAccumulator(category_ids=[1, 2, 3])
    for _ in range(num_images):
        h, w = (int(v) for v in rng.integers(4, 60, 2))  # areas up to 3600: small and medium
        gt_masks, gt_labels, gt_crowd, pred_masks, scores, pred_labels = _random_instances(
            rng, h, w)
        acc.update(pred_masks, scores, pred_labels, gt_masks, gt_labels, gt_iscrowd=gt_crowd)
        images.append((gt_masks, gt_labels, gt_crowd, pred_masks, scores, pred_labels))
    if not any(len(image[3]) for image in images):
        return  # COCO.loadRes cannot load an empty result list
    ref_stats, ref_per_class = _cocoeval_from_files(images, [1, 2, 3])
    ours = acc.compute()
    from omg_rt.metrics.instance import SUMMARY_KEYS

    np.testing.assert_allclose([ours[k] for k in SUMMARY_KEYS], ref_stats, rtol=0, atol=1e-12)
    np.testing.assert_allclose([ours["per_class_ap"][c] for c in (1, 2, 3)],
                               [ref_per_class[c] for c in (1, 2, 3)], rtol=0, atol=1e-12)


def _random_tubes(rng, n, t, h, w):
    tubes = np.zeros((n, t, h, w), bool)
    for tube in tubes:
        visible = rng.random(t) < 0.8
        visible[int(rng.integers(0, t))] = True  # never empty everywhere
        tube[visible] = _random_rect_masks(rng, int(visible.sum()), h, w)
    return tubes


def _iou_seq_reference(pred_tubes, gt_tubes):
    """ytvoseval's `iou_seq`: per frame, merge the RLEs (intersection / union) and add areas."""
    def rles(tube):
        return mask_utils.encode(np.asfortranarray(tube.transpose(1, 2, 0).astype(np.uint8)))

    out = np.zeros((len(pred_tubes), len(gt_tubes)))
    for i, p in enumerate(pred_tubes):
        for j, g in enumerate(gt_tubes):
            inter = union = 0.0
            for d, e in zip(rles(p), rles(g), strict=True):
                inter += mask_utils.area(mask_utils.merge([d, e], intersect=True))
                union += mask_utils.area(mask_utils.merge([d, e], intersect=False))
            out[i, j] = inter / union if union > 0 else 0.0
    return out


@settings(max_examples=30, deadline=None)
@given(seed=SEEDS)
def test_tube_iou_equals_ytvoseval_rle_iou_seq(seed):
    rng = np.random.default_rng(seed)
    t, h, w = int(rng.integers(1, 5)), int(rng.integers(2, 12)), int(rng.integers(2, 12))
    gt = _random_tubes(rng, int(rng.integers(1, 4)), t, h, w)
    pred = np.concatenate([_jitter(rng, gt.reshape(-1, h, w)).reshape(gt.shape),
                           _random_tubes(rng, 2, t, h, w)])
    np.testing.assert_allclose(tube_iou(pred, gt), _iou_seq_reference(pred, gt), rtol=0,
                               atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(seed=SEEDS, num_videos=st.integers(1, 3))
def test_video_ap_equals_cocoeval_on_side_by_side_frames(seed, num_videos):
    # Tube IoU is the IoU of the frames laid side by side, so on everything but the area split
    # (YouTube-VIS uses the mean frame area and other ranges) video AP is COCO AP of those images.
    rng = np.random.default_rng(seed)
    acc = VideoInstanceAPAccumulator([1, 2, 3])
    images = []
    for _ in range(num_videos):
        t, h, w = int(rng.integers(1, 5)), int(rng.integers(3, 12)), int(rng.integers(3, 12))
        n_gt, n_extra = int(rng.integers(1, 4)), int(rng.integers(0, 3))
        gt = _random_tubes(rng, n_gt, t, h, w)
        pred = np.concatenate([_jitter(rng, gt.reshape(-1, h, w)).reshape(gt.shape),
                               _random_tubes(rng, n_extra, t, h, w)])
        gt_labels = rng.integers(1, 4, n_gt)
        pred_labels = np.concatenate([gt_labels, rng.integers(1, 4, n_extra)])
        scores = rng.random(len(pred))
        acc.update(pred, scores, pred_labels, gt, gt_labels)

        def side_by_side(tubes, t=t, h=h, w=w):
            return tubes.transpose(0, 2, 1, 3).reshape(len(tubes), h, t * w)

        images.append((side_by_side(gt), gt_labels, np.zeros(n_gt, bool), side_by_side(pred),
                       scores, pred_labels))
    ref_stats, ref_per_class = _cocoeval_from_files(images, [1, 2, 3])
    ours = acc.compute()
    for i, key in enumerate(("ap", "ap50", "ap75")):
        np.testing.assert_allclose(ours[key], ref_stats[i], rtol=0, atol=1e-12, err_msg=key)
    for i, key in enumerate(("ar1", "ar10", "ar100"), start=6):
        np.testing.assert_allclose(ours[key], ref_stats[i], rtol=0, atol=1e-12, err_msg=key)
    np.testing.assert_allclose([ours["per_class_ap"][c] for c in (1, 2, 3)],
                               [ref_per_class[c] for c in (1, 2, 3)], rtol=0, atol=1e-12)
