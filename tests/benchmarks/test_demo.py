"""The README's main job runs end to end (on a small untrained checkpoint here; the demo itself
trains the synthetic preset)."""

from __future__ import annotations

import json

import pytest

from benchmarks import demo
from training.config import get_train_preset
from training.data import SceneConfig, generate_dataset
from training.model import build_model
from training.model.checkpoint import save_checkpoint

pytestmark = pytest.mark.slow


def test_demo_exports_segments_and_reports(tmp_path):
    run = tmp_path / "run"
    model = build_model("synthetic-tiny")
    save_checkpoint(model, run)
    config = get_train_preset("synthetic-tiny")
    (run / "train_config.json").write_text(config.to_json())
    names = ["circle", "square", "triangle", "star", "sky", "grass", "wall"]
    (run / "vocabulary.json").write_text(json.dumps({"names": names, "num_things": 4}))
    (run / "metrics.json").write_text(json.dumps({"pq": 1.5, "step": 1}))
    # the run's own held-out split, where training keeps it (RUN/data)
    generate_dataset(run / "data", "val", num_images=3, num_videos=0, frames_per_video=2,
                     seed=1, config=SceneConfig(image_size=64), progress=False)

    out = tmp_path / "demo"
    assert demo.main(["--checkpoint", str(run), "--out", str(out), "--images", "2",
                      "--frames", "4"]) == 0

    report = json.loads((out / "report.json").read_text())
    assert report["backend"].startswith("onnxruntime")
    assert 0.0 <= report["panoptic"]["pq"] <= 100.0
    assert report["prompts"]["prompts"] > 0 and 0.0 <= report["prompts"]["click_miou"] <= 1.0
    assert report["video"]["frames"] == 4
    markdown = (out / "report.md").read_text()
    assert markdown.startswith("# omg-rt demo")
    # omg-eval scored the bundle on the run's held-out split, beside training's own PQ
    scored = report["omg_eval"]
    assert scored["images"] == 3 and 0.0 <= scored["pq"] <= 100.0
    assert json.loads((out / "omg-eval" / "metrics.json").read_text())["metrics"]["pq"] \
        == scored["pq"]
    assert "(training reported 1.5)" in markdown
    assert len(list((out / "panoptic").glob("*_overlay.png"))) == 2
    assert (out / "video" / "vis_overlay.mp4").stat().st_size > 0
    manifest = json.loads((out / "bundle" / "manifest.json").read_text())
    examples = sorted(p.name for p in (out / "bundle" / "examples").iterdir())  # for omg-rt ui
    assert examples == ["generated clip.avi"] + [f"generated scene {i}.png" for i in range(1, 5)]
    assert manifest["precisions"] == ["fp32", "int8"]
