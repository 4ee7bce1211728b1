"""omg-bench end to end on a tiny checkpoint and a tiny generated dataset: every report section
holds finite numbers, same-weights FP32 backends agree on accuracy, the report files exist, the
RESULTS.md section is replaced and nothing else, bad requests exit 2 with a clear message, and an
unavailable backend is reported as skipped with its reason."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import cli
from benchmarks.omg_bench.output import update_results

REPO = Path(__file__).resolve().parents[2]
STAGES = ("preprocess", "encoder", "pixel decoder", "query decoder", "post-process")
METRICS = ("pq", "mask_ap", "miou", "interactive_miou_point", "interactive_miou_box", "jf")
RESULTS_BEFORE = """# Results

Hand-written introduction that omg-bench must keep.

<!-- omg-bench:start -->
stale table
<!-- omg-bench:end -->

## Kernels (gpu_check.sh)

<!-- gpu-check:start -->
kernel rows written by gpu_check.sh
<!-- gpu-check:end -->

Closing words.
"""


@pytest.fixture(scope="module")
def bench(tmp_path_factory, tiny_checkpoint):
    root = tmp_path_factory.mktemp("omg-bench")
    results = root / "RESULTS.md"
    results.write_text(RESULTS_BEFORE)
    out = root / "report"
    command = [
        sys.executable, "-m", "benchmarks.cli", str(tiny_checkpoint),
        "--backends", "torch,onnxruntime,tensorrt", "--precisions", "fp32,int8",
        "--batch", "1,2", "--prompts", "1,4", "--num-images", "3", "--num-videos", "1",
        "--frames", "6", "--image-shape", "96x72", "--frame-shape", "80x60", "--runs", "3", "--warmup", "1", "--video-passes", "1", "--threads", "1",
        "--out", str(out), "--results", str(results), "--quiet",
    ]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() \
        else None
    return done, out, results, report


def _finite(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _ok_targets(report):
    return [t for t in report["targets"] if t["status"] == "ok"]


def test_run_exits_zero_and_writes_report_json(bench):
    done, out, _, report = bench
    assert done.returncode == 0, done.stderr[-3000:]
    assert report is not None and report["status"] == "ok"
    keys = {(t["backend"], t["precision"]) for t in _ok_targets(report)}
    assert {("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")} <= keys


def test_every_section_has_finite_numbers_for_every_measured_target(bench):
    _, _, _, report = bench
    env = report["environment"]
    for key in ("cpu", "python", "git", "date", "onnxruntime"):
        assert env.get(key), key
    ok = {(t["backend"], t["precision"]) for t in _ok_targets(report)}
    lat = report["latency"]

    def rows(section, **match):
        return [r for r in lat[section] if all(r.get(k) == v for k, v in match.items())]

    for backend, precision in ok:
        mine = {"backend": backend, "precision": precision}
        assert {r["case"] for r in rows("stages", **mine)} == set(STAGES)
        assert {r["case"] for r in rows("end_to_end", **mine)} == {"panoptic", "instance",
                                                                   "semantic"}
        assert {r["batch"] for r in rows("throughput", **mine)} == {1, 2}
        assert {r["prompts"] for r in rows("prompt", **mine)} == {1, 4}
        assert len(rows("video", **mine)) == 1
        # one sample a frame (6 frames, 1 timed pass), whatever the clips: a short last clip
        # weighs its frames, not as much as a whole clip
        assert rows("video", **mine)[0]["runs"] == 6
        for section in ("stages", "end_to_end", "throughput", "prompt", "video"):
            for r in rows(section, **mine):
                assert all(_finite(r[k]) and r[k] > 0 for k in ("p50_ms", "p90_ms", "p99_ms"))
                assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        for r in rows("throughput", **mine):
            assert _finite(r["images_per_s"]) and r["images_per_s"] > 0
        cold = [r for r in report["cold_start"] if (r["backend"], r["precision"]) ==
                (backend, precision)]
        assert len(cold) == 1 and "error" not in cold[0], cold
        for k in ("import_s", "load_s", "first_call_s", "cold_start_s", "peak_rss_mib"):
            assert _finite(cold[0][k]) and cold[0][k] > 0, k
        acc = [r for r in report["accuracy"] if (r["backend"], r["precision"]) ==
               (backend, precision)]
        assert len(acc) == 1
        for metric in METRICS:
            assert _finite(acc[0][metric]) and 0 <= acc[0][metric] <= 1, metric
            assert _finite(acc[0][f"delta_{metric}"]), metric


def test_latency_runs_on_images_and_frames_resized_to_the_requested_shapes(bench):
    _, out, results, report = bench
    assert report["latency"]["inputs"] == {"image_wh": [96, 72], "frame_wh": [80, 60]}
    assert "images 96x72, video frames 80x60" in (out / "report.md").read_text()
    summary = results.read_text()
    assert "images 96x72, video frames 80x60" in summary
    assert "4 prompts cached ms" in summary and "Per stage, batch 1" in summary


def test_fp32_onnxruntime_accuracy_equals_fp32_torch_on_the_same_weights(bench):
    _, _, _, report = bench
    assert report["reference"] == {"128": "torch/fp32/128"}
    ort = next(r for r in report["accuracy"]
               if (r["backend"], r["precision"]) == ("onnxruntime", "fp32"))
    torch_row = next(r for r in report["accuracy"]
                     if (r["backend"], r["precision"]) == ("torch", "fp32"))
    for metric in METRICS:
        assert abs(ort[f"delta_{metric}"]) <= 5e-3, (metric, ort[metric], torch_row[metric])
        assert torch_row[f"delta_{metric}"] == 0.0


def test_unavailable_backends_are_reported_as_skipped_with_the_reason(bench):
    _, out, results, report = bench
    trt = [t for t in report["targets"] if t["backend"] == "tensorrt"]
    assert {t["precision"] for t in trt} == {"fp32", "int8"}
    torch_int8 = next(t for t in report["targets"]
                      if (t["backend"], t["precision"]) == ("torch", "int8"))
    assert torch_int8["status"] == "skipped" and "INT8" in torch_int8["reason"]
    if importlib.util.find_spec("tensorrt") is None:
        for t in trt:
            assert t["status"] == "skipped"
            assert "tensorrt" in t["reason"].lower()
        markdown = (out / "report.md").read_text()
        assert "tensorrt fp32 @128: **skipped**" in markdown
        assert "tensorrt fp32/int8 (skipped:" in results.read_text()


def test_report_markdown_and_plot_exist(bench):
    _, out, _, report = bench
    markdown = (out / "report.md").read_text()
    assert report["environment"]["git"] in markdown.splitlines()[2]
    for heading in ("## How measured", "## Latency per stage", "## End to end",
                    "## Throughput", "## Prompts on a cached image", "## Video",
                    "## Cold start and peak memory", "## Accuracy"):
        assert heading in markdown, heading
    png = (out / "plot.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert report["plot"]["file"] == "plot.png" and report["plot"]["y"] == "pq"


def test_results_section_is_replaced_and_the_rest_is_untouched(bench):
    _, _, results, _ = bench
    text = results.read_text()
    before_head, rest = RESULTS_BEFORE.split("<!-- omg-bench:start -->")
    before_tail = rest.split("<!-- omg-bench:end -->")[1]
    assert text.startswith(before_head + "<!-- omg-bench:start -->\n")
    assert text.endswith("<!-- omg-bench:end -->" + before_tail)
    section = text[len(before_head):-len(before_tail)]
    assert "stale table" not in section
    assert "| onnxruntime int8 @128 (cpu) |" in section


def test_update_results_appends_the_section_when_its_markers_are_missing(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\nkeep me")
    update_results(path, "omg-bench-gpu", "| a | b |")
    assert path.read_text() == ("# Results\nkeep me\n\n<!-- omg-bench-gpu:start -->\n| a | b |\n"
                                "<!-- omg-bench-gpu:end -->\n")
    update_results(path, "omg-bench-gpu", "new")
    assert path.read_text().count("omg-bench-gpu:start") == 1
    assert "new" in path.read_text() and "| a | b |" not in path.read_text()


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--backends", "torch,cuda-magic", "--backends: unknown 'cuda-magic'"),
    ("--precisions", "fp32,fp8", "--precisions: unknown 'fp8'"),
    ("--tasks", "panoptic,depth", "--tasks: unknown 'depth'"),
    ("--batch", "1,x", "--batch: expected comma-separated integers"),
    ("--image-size", "100", "--image-size: expected multiples of 32"),
    ("--image-shape", "1024", "--image-shape: expected WIDTHxHEIGHT"),
    ("--frame-shape", "8x8", "--frame-shape: expected WIDTHxHEIGHT of at least 16x16"),
])
def test_cli_rejects_unknown_names_with_a_clear_message_and_exit_2(tmp_path, capsys, flag,
                                                                   value, message):
    with pytest.raises(SystemExit) as exc:
        cli.main([str(tmp_path), flag, value, "--out", str(tmp_path / "out"), "--no-results"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "out").exists()  # rejected before any work


def test_cli_rejects_a_model_that_is_neither_bundle_nor_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([str(tmp_path / "missing"), "--out", str(tmp_path / "out"), "--no-results",
                  "--no-accuracy", "--quiet", "--num-images", "1", "--num-videos", "0"])
    assert exc.value.code == 2
    assert "is not a bundle, a checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # rejected before any work
