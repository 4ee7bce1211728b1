"""``omg-eval``: a bundle scored on dataset folders with the official metrics. An oracle model
(the ground truth behind the model's graph methods, run by the runtime's torch backend) scores
perfectly on COCO panoptic / instances and YouTube-VIS folders; omg-eval of an exported bundle
reproduces the PQ that training's own evaluation reports for the same model; bad folders get a
clear error."""

from __future__ import annotations

import json
import types

import numpy as np
import pytest
import torch

from benchmarks.omg_eval import evaluate_bundle, main
from omg_rt.segmenter import Segmenter
from tests.conftest import seeded_tiny
from tests.training.test_evaluate import Oracle
from training.data import DataError, SceneConfig, generate_dataset, read_coco_panoptic, read_ytvis
from training.data.layouts import locate
from training.evaluate import evaluate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    paths = generate_dataset(root, "val", num_images=6, num_videos=2, frames_per_video=6,
                             seed=5, config=SceneConfig(image_size=64), progress=False)
    images = read_coco_panoptic(paths.panoptic_json, paths.panoptic_dir, paths.image_dir)
    videos = read_ytvis(paths.ytvis_json, paths.video_dir)
    return root, paths, images, videos


@pytest.fixture(scope="module")
def oracle(world):
    _, _, images, videos = world
    cats = images.categories
    dim = seeded_tiny(0).config.backbone.embed_dim
    bank = np.eye(cats.num_classes, dim, dtype=np.float32)[:, None]
    return Segmenter.from_checkpoint(Oracle(images, videos), vocabulary=list(cats.names),
                                     num_things=cats.num_things, class_bank=bank, device="cpu")


def test_the_root_layout_of_the_training_world_is_found(world):
    root, paths, _, _ = world
    found = locate("coco-panoptic", str(root))
    assert (found.images, found.annotations, found.masks) == (
        paths.image_dir, paths.panoptic_json, paths.panoptic_dir)
    assert locate("ytvis19", str(root)).annotations == paths.ytvis_json
    with pytest.raises(DataError, match="no ade20k layout found"):
        locate("ade20k", str(root))
    with pytest.raises(DataError, match="images/train"):  # the world here has a val split only
        locate("coco-panoptic", str(root), split="train")


@pytest.mark.parametrize("dataset", ["coco-panoptic", "coco-instances", "ytvis19"])
def test_the_ground_truth_scores_perfectly(world, oracle, dataset, tmp_path):
    root = world[0]
    paths = locate(dataset, str(root))
    report = evaluate_bundle(oracle, dataset, paths, tmp_path, progress=False)
    metrics = report["metrics"]
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["metrics"] == pytest.approx(metrics, nan_ok=True)
    assert (tmp_path / "metrics.md").read_text().startswith(f"# {dataset}")
    if dataset == "coco-panoptic":
        assert metrics["rq"] == pytest.approx(100.0) and metrics["pq"] > 85  # stride-4 masks
        assert len(json.loads((tmp_path / "panoptic.json").read_text())["annotations"]) == 6
        assert len(list((tmp_path / "panoptic").glob("*.png"))) == 6
    else:  # masks from stride-4 logits on 64 px images: not pixel-perfect, matched at IoU 0.5
        assert metrics["ap50"] > 95, metrics
        assert metrics["ap"] > 60, metrics
        assert json.loads((tmp_path / "results.json").read_text())


def test_omg_eval_of_the_bundle_reproduces_trainings_pq(world, tmp_path):
    from export import build_bundle

    root, _, images, _ = world
    cats = images.categories
    model = seeded_tiny(3)
    bundle = build_bundle(model, tmp_path / "bundle", image_size=64, verify=False,
                          vocab=types.SimpleNamespace(names=list(cats.names),
                                                      num_things=cats.num_things),
                          progress=False)
    exported = Segmenter.from_bundle(bundle, backend="onnxruntime").vocabulary.class_bank
    trained = evaluate(model, torch.from_numpy(exported), images, None,
                       num_things=cats.num_things)
    assert main([str(bundle), "--dataset", "coco-panoptic", "--root", str(root), "--quiet",
                 "--backend", "onnxruntime", "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["metrics"]["pq"] == pytest.approx(trained["pq"], abs=0.5)
    assert report["metrics"]["sq"] == pytest.approx(trained["sq"], abs=0.5)


def test_bad_folders_are_clear_errors(world, tmp_path, capsys):
    root, paths, _, _ = world
    assert main([str(tmp_path), "--dataset", "coco-panoptic", "--root", str(root),
                 "--out", str(tmp_path / "o")]) == 4  # not a bundle
    assert "bad bundle" in capsys.readouterr().err
    assert main(["b", "--dataset", "coco-panoptic", "--root", str(tmp_path), "--out",
                 str(tmp_path / "o")]) == 3
    assert "no coco-panoptic layout found" in capsys.readouterr().err
    with pytest.raises(DataError, match="masks"):
        locate("coco-panoptic", images=paths.image_dir, annotations=paths.panoptic_json)


def test_omg_bench_reports_precision_deltas_on_a_dataset(world, tmp_path):
    from benchmarks.cli import main as bench
    from export import build_bundle

    root, _, images, _ = world
    cats = images.categories
    bundle = build_bundle(seeded_tiny(3), tmp_path / "bundle", image_size=64, verify=False,
                          precisions=("fp32", "fp16"), progress=False,
                          vocab=types.SimpleNamespace(names=list(cats.names),
                                                      num_things=cats.num_things))
    out = tmp_path / "bench"
    assert bench([str(bundle), "--dataset", f"coco-panoptic:{root}", "--precisions",
                  "fp32,fp16,int8", "--num-images", "3", "--quiet", "--out", str(out)]) == 0
    rows = json.loads((out / "precisions.json").read_text())
    assert [r["precision"] for r in rows] == ["fp32", "fp16"]  # the bundle has no int8
    assert rows[0]["delta_pq"] == 0.0
    assert rows[1]["delta_pq"] == pytest.approx(rows[1]["pq"] - rows[0]["pq"])
    single = json.loads((out / "fp32" / "metrics.json").read_text())
    assert single["metrics"]["pq"] == rows[0]["pq"]
    assert "| fp16 |" in (out / "precisions.md").read_text()
