"""One ``omg-bench`` run: data, model, targets, measurements, report files."""

from __future__ import annotations

import sys
import time
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from benchmarks.harness import detailed_environment
from benchmarks.omg_bench import accuracy as acc
from benchmarks.omg_bench import coldstart, latency, output
from benchmarks.omg_bench.dataset import Dataset
from benchmarks.omg_bench.options import BenchOptions
from benchmarks.omg_bench.targets import (
    check_model,
    open_targets,
    opened,
    resolve_model,
    vocabulary_for,
)
from omg_rt.spec import IMAGE_TASKS

SCHEMA_VERSION = 1


def _say(options: BenchOptions, message: str) -> None:
    if options.progress:
        print(f"omg-bench: {message}", file=sys.stderr, flush=True)


def run_benchmark(options: BenchOptions, command: str = "") -> dict[str, Any]:
    """Measure everything ``options`` asks for; write the report files; return report.json's
    content (``status`` is ``ok``, or ``failed`` when some target failed or none ran).

    Args:
        command: the command line, recorded in the reports.
    """
    started = time.perf_counter()
    check_model(options)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    show = options.progress
    env = detailed_environment()
    _say(options, f"writing to {out}")
    data = acc.load_dataset(options, out, show)
    model = resolve_model(options, vocabulary_for(data.categories), out,
                          lambda m: _say(options, m))
    images = [_resized(r.image, options.image_shape) for r in data.images]
    videos = [np.stack([_resized(f, options.frame_shape) for f in v.frames]) for v in data.videos]
    image_file = out / "coldstart_image.png"
    cv2.imwrite(str(image_file), cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR))

    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "command": command or "run_benchmark(...)",
        "environment": env,
        "options": output.jsonable(vars(options)),
        "model": {"source": model.source, "kind": model.kind,
                  "checkpoint": str(model.checkpoint) if model.checkpoint else None,
                  "bundles": {str(k): str(v) if v else None for k, v in model.bundles.items()},
                  "trained": model.trained, "note": model.note},
        "dataset": data.describe(),
    }
    _say(options, "opening every backend x precision")
    with opened(open_targets(options, model)) as targets:
        ok = [t for t in targets if t.status == "ok"]
        for t in ok:
            reason = acc.align_vocabulary(t, data.categories)
            if reason:
                t.status, t.reason = "failed", reason
        ok = [t for t in targets if t.status == "ok"]
        report["reference"] = _references(ok)

        lat: dict[str, Any] = {}
        cases = [c for t in ok for c in latency.image_cases(t, images, options.tasks)]
        latency.run_round_robin(cases, warmup=options.warmup, runs=options.runs,
                                desc="stages + end to end", progress=show)
        rows = latency.summarize(cases)
        lat["stages"] = [r for r in rows if r["section"] == "stage"]
        lat["end_to_end"] = [r for r in rows if r["section"] == "end_to_end"]
        if any(t in options.tasks for t in IMAGE_TASKS) or "prompt" not in options.tasks:
            cases = [c for t in ok for c in latency.throughput_cases(t, images, options.batches)]
            latency.run_round_robin(cases, warmup=1, runs=max(3, options.runs // 2),
                                    desc="throughput", progress=show)
            rows = latency.summarize(cases)
            for r in rows:
                r["images_per_s"] = r["batch"] * 1e3 / r["p50_ms"]
            lat["throughput"] = rows
        if "prompt" in options.tasks:
            cases = [c for t in ok for c in latency.prompt_cases(t, images, options.prompt_counts)]
            latency.run_round_robin(cases, warmup=options.warmup, runs=options.runs,
                                    desc="cached prompts", progress=show)
            lat["prompt"] = latency.summarize(cases)
        if "video" in options.tasks and videos:
            per = latency.video_latency(ok, videos, options.video_passes, show,
                                          warmup=min(options.warmup, 1))
            lat["video"] = [{**t.describe(), "case": "vis stream, ms per frame (amortised)",
                             **per[t.key]} for t in ok if t.key in per]
        lat["inputs"] = {"image_wh": list(images[0].shape[1::-1]) if images else None,
                         "frame_wh": list(videos[0].shape[2:0:-1]) if videos else None}
        report["latency"] = lat

        cold = []
        if options.cold_start:
            for t in tqdm(ok, desc="cold start", unit="target", disable=not show):
                bundle = model.bundles[t.image_size]
                measured = coldstart.measure(t.open_kwargs, str(bundle) if bundle else None,
                                             str(image_file), t.autocast, warm_calls=3)
                cold.append({**t.describe(), **measured})
        report["cold_start"] = cold

        accuracy_rows = []
        if options.accuracy and ok and data.ground_truth_from_reference:
            data = _reference_ground_truth(ok, report, data, options)
            report["dataset"] = data.describe()
        if options.accuracy and not data.ground_truth_from_reference:
            for t in tqdm(ok, desc="accuracy", unit="target", disable=not show):
                try:
                    metrics = acc.evaluate(t, data, options.tasks, show)
                except Exception as exc:  # noqa: BLE001 - recorded; other targets go on
                    t.status, t.reason = "failed", f"accuracy: {type(exc).__name__}: {exc}"
                    continue
                accuracy_rows.append({**t.describe(), "key": t.key, **metrics})
            acc.deltas(accuracy_rows, report["reference"])
        report["accuracy"] = accuracy_rows
        report["targets"] = [t.describe() for t in targets]
    failed = [t for t in report["targets"] if t["status"] == "failed"]
    report["status"] = "failed" if failed or not ok else "ok"
    report["elapsed_s"] = time.perf_counter() - started
    output.write_all(report, options)
    _say(options, f"report in {out / 'report.md'} ({report['elapsed_s']:.0f} s)")
    return report


def _resized(image: np.ndarray, shape: tuple[int, int] | None) -> np.ndarray:
    """``image`` resized to ``shape`` = (width, height) (bilinear), or as it is."""
    if shape is None or image.shape[1::-1] == shape:
        return image
    return cv2.resize(image, shape, interpolation=cv2.INTER_LINEAR)


def _reference_ground_truth(ok: list, report: dict[str, Any], data: Dataset,
                            options: BenchOptions) -> Dataset:
    """``data`` annotated by the reference of the first image size (``photos``: agreement with
    it is the accuracy); ``data`` unchanged, and that target failed, when it cannot run."""
    from benchmarks.omg_bench.photos import reference_ground_truth

    key = next(iter(report["reference"].values()))
    reference = next(t for t in ok if t.key == key)
    try:
        return reference_ground_truth(reference, data, options.tasks, options.progress)
    except Exception as exc:  # noqa: BLE001 - recorded; latency rows still stand
        reference.status = "failed"
        reference.reason = f"accuracy ground truth: {type(exc).__name__}: {exc}"
        return data


def _references(ok: list) -> dict[str, str]:
    """Per image size, the target every delta is against: FP32 PyTorch, else the first FP32
    target, else the first one."""
    refs: dict[str, str] = {}
    for size in dict.fromkeys(t.image_size for t in ok):
        here = [t for t in ok if t.image_size == size]
        best = next((t for t in here if t.backend == "torch" and t.precision == "fp32"),
                    next((t for t in here if t.precision == "fp32"), here[0]))
        refs[str(size)] = best.key
    return refs
