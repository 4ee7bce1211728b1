"""``omg-eval`` on ADE20K, DAVIS 2017 and VIPSeg folders written in their own formats (the tiny
format-faithful copies of the reader tests): the ground truth, turned into a model's predictions
by the oracle, scores (near) perfectly through the runtime, ``--root`` finds each usual layout,
and a known corruption costs what the metric's definition says it costs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.omg_eval import evaluate_bundle, main
from omg_rt.metrics import ConfusionMatrix
from omg_rt.segmenter import Segmenter
from tests.conftest import seeded_tiny
from tests.training.test_data_readers_datasets import write_ade, write_davis, write_vipseg
from tests.training.test_evaluate import Oracle
from training.data.layouts import locate
from training.data.readers import read_ade20k, read_davis, read_vipseg

pytestmark = pytest.mark.slow


@pytest.fixture
def ade(tmp_path):
    return write_ade(tmp_path)


@pytest.fixture
def davis(tmp_path):
    return write_davis(tmp_path)


def _segmenter(oracle: Oracle, categories) -> Segmenter:
    """The oracle behind the runtime with the dataset's own classes as its vocabulary (the oracle
    ignores the bank: any unit-norm rows)."""
    dim = seeded_tiny(0).config.backbone.embed_dim
    bank = np.random.default_rng(0).standard_normal((categories.num_classes, 1, dim))
    bank = (bank / np.linalg.norm(bank, axis=-1, keepdims=True)).astype(np.float32)
    return Segmenter.from_checkpoint(oracle, vocabulary=list(categories.names),
                                     num_things=categories.num_things, class_bank=bank,
                                     device="cpu")


def _evaluate(seg: Segmenter, dataset: str, root, out) -> dict:
    paths = locate(dataset, str(root))
    report = evaluate_bundle(seg, dataset, paths, out, progress=False)
    written = json.loads((out / "metrics.json").read_text())
    assert written["metrics"] == pytest.approx(report["metrics"], nan_ok=True)
    assert (out / "metrics.md").read_text().startswith(f"# {dataset}")
    return report["metrics"]


def test_ade20k_ground_truth_scores_near_perfect_miou(ade, tmp_path):
    images, annotations, _ = ade
    root = images.parent.parent  # ADEChallengeData2016/
    reader = read_ade20k(images, annotations)
    oracle = Oracle(reader, [], num_classes=150)
    metrics = _evaluate(_segmenter(oracle, reader.categories), "ade20k", root, tmp_path)
    # 32 x 48 label maps predicted from stride-4 masks: the boundaries blur, nothing else
    assert metrics["miou"] > 95 and metrics["pixel_accuracy"] > 98, metrics


def test_ade20k_a_class_predicted_as_an_absent_one_costs_its_iou_twice(ade, tmp_path):
    """Every "bed" predicted as "car" (absent from the ground truth): bed's IoU becomes 0 and
    car joins the mean with IoU 0 (mmseg's rule), so mIoU = (sum of the other IoUs) / (n + 1)."""
    images, annotations, _ = ade
    root = images.parent.parent
    reader = read_ade20k(images, annotations)
    values = list(reader.categories.category_ids)  # objectInfo150 values: 8 bed, 21 car
    bed, car = values.index(8), values.index(21)
    good = Oracle(reader, [], num_classes=150)
    bad = Oracle(reader, [], num_classes=150)
    bad.truth = [(masks, np.where(labels == bed, car, labels)) for masks, labels in bad.truth]
    per_class = {}
    for name, oracle in (("good", good), ("bad", bad)):
        seg = _segmenter(oracle, reader.categories)
        confusion = ConfusionMatrix(150)
        for i in range(len(reader)):
            pred = seg.semantic(reader[i].image).id_map
            confusion.update(pred.astype(np.int64), reader.label_map(i))
        per_class[name] = confusion.compute()["iou"]
        metrics = _evaluate(seg, "ade20k", root, tmp_path / name)
        assert metrics["miou"] == pytest.approx(100 * np.nanmean(per_class[name]))
    good_iou = per_class["good"]
    present = ~np.isnan(good_iou)
    expected = (good_iou[present].sum() - good_iou[bed]) / (present.sum() + 1)
    assert np.nanmean(per_class["bad"]) == pytest.approx(expected, abs=0.02)
    assert per_class["bad"][car] == 0.0


def test_davis_ground_truth_scores_near_perfect_j_and_f(davis, tmp_path):
    root, written = davis
    reader = read_davis(root)
    oracle = Oracle([], reader, num_classes=1)
    seg = _segmenter(oracle, reader.categories)
    metrics = _evaluate(seg, "davis17", root, tmp_path)
    assert metrics["j_and_f"] > 90 and metrics["j_mean"] > 85, metrics
    assert set(metrics) >= {"j_and_f", "j_mean", "f_mean"}


def test_davis_an_object_lost_after_the_first_frame_lowers_j_and_f(davis, tmp_path):
    """The oracle forgets object 1 of 'bear' after frame 0: its J and F are 0 on the two later
    frames, which the official per-object mean counts."""
    root, _ = davis
    reader = read_davis(root)
    good = _evaluate(_segmenter(Oracle([], reader, num_classes=1), reader.categories), "davis17",
                     root, tmp_path / "good")
    lost = Oracle([], reader, num_classes=1)
    for t in (1, 2):  # truth entries: bear frames 0..2, then cows
        masks, labels = lost.truth[t]
        masks = masks.copy()
        masks[0] = False  # track 1 (the first object) vanishes
        lost.truth[t] = (masks, labels)
    bad = _evaluate(_segmenter(lost, reader.categories), "davis17", root, tmp_path / "bad")
    assert bad["j_mean"] < good["j_mean"] - 15, (good, bad)


@pytest.mark.parametrize("official", [False, True], ids=["nested", "official-720p"])
def test_vipseg_ground_truth_scores_near_perfect_vpq(tmp_path, official):
    root = tmp_path / "VIPSeg"
    write_vipseg(root, official)
    found = locate("vipseg", str(root))
    assert found.masks == root / ("panomasksRGB" if official else "panomasks")
    reader = read_vipseg(root)
    oracle = Oracle([], reader, num_classes=reader.categories.num_classes)
    metrics = _evaluate(_segmenter(oracle, reader.categories), "vipseg", root, tmp_path / "out")
    assert metrics["vpq"] > 90, metrics
    assert {"vpq_things", "vpq_stuff", "vpq_1"} <= set(metrics)


def test_omg_eval_command_on_a_davis_root_without_its_list_is_a_clear_error(davis, tmp_path,
                                                                            capsys):
    root, _ = davis
    (root / "ImageSets" / "2017" / "val.txt").unlink()
    assert main(["b", "--dataset", "davis17", "--root", str(root), "--out",
                 str(tmp_path / "o")]) == 3
    assert "no davis17 layout found" in capsys.readouterr().err
