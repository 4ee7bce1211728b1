"""The ``omg-rt`` command line: outputs, and exit codes that mean something."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from omg_rt.cli import main
from omg_rt.errors import ExitCode
from tests.omg_rt.test_runtime_support import copy_bundle, moving_clip, scene, tiny_bundle


def _write(path, rgb):
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_segment_writes_json_and_pngs(tmp_path, task):
    a = _write(tmp_path / "a.png", scene(1))
    b = _write(tmp_path / "b.png", scene(2))
    out = tmp_path / "out"
    code = main(["segment", a, b, "--bundle", str(tiny_bundle()), "--task", task,
                 "--out", str(out), "--quiet", "--backend", "onnxruntime"])
    assert code == ExitCode.OK
    for stem in ("a", "b"):
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["task"] == task and (record["height"], record["width"]) == (96, 120)
        assert cv2.imread(str(out / f"{stem}_overlay.png")).shape == (96, 120, 3)
    if task == "panoptic":
        segments = json.loads((out / "a_segments.json").read_text())["segments_info"]
        assert cv2.imread(str(out / "a_panoptic.png")).shape == (96, 120, 3)
        assert all(s["area"] > 0 for s in segments)
    if task == "semantic":
        assert cv2.imread(str(out / "a_semantic.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_segment_with_a_vocabulary(tmp_path):
    a = _write(tmp_path / "a.png", scene(1))
    code = main(["segment", a, "--bundle", str(tiny_bundle()), "--task", "instance",
                 "--vocab", "zebra", "person,people", "--num-things", "2", "--out",
                 str(tmp_path / "o"), "--quiet", "--min-score", "0"])
    assert code == ExitCode.OK
    objects = json.loads((tmp_path / "o" / "a.json").read_text())["objects"]
    assert objects and {o["name"] for o in objects} <= {"zebra", "person,people"}


def test_segment_with_a_shipped_vocabulary_key(tmp_path):
    from omg_rt.vocabularies import VOCABULARIES

    a = _write(tmp_path / "a.png", scene(1))
    code = main(["segment", a, "--bundle", str(tiny_bundle()), "--task", "panoptic",
                 "--vocab", "ytvis", "--out", str(tmp_path / "o"), "--quiet"])
    assert code == ExitCode.OK
    objects = json.loads((tmp_path / "o" / "a.json").read_text())["objects"]
    assert objects and {o["name"] for o in objects} <= set(VOCABULARIES["ytvis"].names)


def test_min_score_keeps_the_confident_instances(tmp_path):
    a = _write(tmp_path / "a.png", scene(1))

    def scores(min_score: str) -> list[float]:
        out = tmp_path / min_score
        code = main(["segment", a, "--bundle", str(tiny_bundle()), "--task", "instance",
                     "--min-score", min_score, "--out", str(out), "--quiet"])
        assert code == ExitCode.OK
        return [o["score"] for o in json.loads((out / "a.json").read_text())["objects"]]

    everything = scores("0")  # the official top-100 (query, class) pairs
    threshold = float(np.median(everything))
    confident = scores(repr(threshold))
    assert 0 < len(confident) < len(everything)
    assert sorted(confident) == sorted(s for s in everything if s >= np.float32(threshold))


def test_prompt_writes_one_mask_per_prompt(tmp_path):
    a = _write(tmp_path / "a.png", scene(3))
    code = main(["prompt", a, "--bundle", str(tiny_bundle()), "--points", "10,20", "50,60,1",
                 "--boxes", "0,0,60,50", "--out", str(tmp_path / "o"), "--quiet"])
    assert code == ExitCode.OK
    assert len(json.loads((tmp_path / "o" / "a.json").read_text())["objects"]) == 3


def test_exit_codes_name_the_kind_of_failure(tmp_path, capsys):
    a = _write(tmp_path / "a.png", scene(3))
    bundle = str(tiny_bundle())
    assert main(["segment", str(tmp_path / "nope.png"), "--bundle", bundle, "--out",
                 str(tmp_path / "o"), "--quiet"]) == ExitCode.INPUT
    assert "cannot read an image" in capsys.readouterr().err
    assert main(["prompt", a, "--bundle", bundle, "--points", "500,5", "--out",
                 str(tmp_path / "o"), "--quiet"]) == ExitCode.INPUT
    assert main(["prompt", a, "--bundle", bundle, "--points", "5", "--out",
                 str(tmp_path / "o"), "--quiet"]) == ExitCode.INPUT
    broken = copy_bundle(tmp_path / "broken")
    (broken / "encoder.onnx").write_bytes(b"not a graph")
    assert main(["segment", a, "--bundle", str(broken), "--out", str(tmp_path / "o"),
                 "--quiet"]) == ExitCode.BUNDLE
    assert "encoder.onnx does not match" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["segment", a, "--bundle", bundle, "--task", "depth", "--out", "x"])
    assert exc.value.code == 2


@pytest.mark.parametrize("task", ["vis", "vos"])
def test_video_writes_an_overlay_mp4_and_one_record_per_frame(tmp_path, task):
    clip = moving_clip(7)
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (120, 96))
    for frame in clip:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    args = ["video", str(video), "--bundle", str(tiny_bundle()), "--task", task,
            "--clip-size", "3", "--out", str(tmp_path / "o"), "--quiet"]
    if task == "vos":
        first = np.zeros((96, 120), np.uint8)
        first[20:50, 5:35] = 1
        cv2.imwrite(str(tmp_path / "first.png"), first)
        args += ["--first-mask", str(tmp_path / "first.png")]
    assert main(args) == ExitCode.OK
    records = (tmp_path / "o" / "clip.jsonl").read_text().splitlines()
    assert [json.loads(r)["frame_index"] for r in records] == list(range(7))
    capture = cv2.VideoCapture(str(tmp_path / "o" / "clip_overlay.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 7
    assert main(["video", str(tmp_path / "none.mp4"), "--bundle", str(tiny_bundle()),
                 "--out", str(tmp_path / "o"), "--quiet"]) == ExitCode.INPUT
