"""Runtime benchmark: ONNX Runtime FP32 against PyTorch eager on the same weights, a prompt on a
cached image against the full pipeline, and a 300-frame video stream's per-frame cost and memory.

    python -m benchmarks.bench_runtime [--frames 300] [--runs 10]

Everything runs side by side in one process on the tiny model (seeded ``build_model("tiny")``,
the CI model) exported at 128 px, on scenes of the synthetic world (``training.data.world``); the
goals are ratios: ORT / eager <= 0.6, cached prompt / full pipeline <= 0.05, video flat.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import types
from pathlib import Path

import cv2
import numpy as np

from benchmarks.harness import Row, Timing, environment, markdown_table, time_cpu


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _tiny_bundle(workdir: Path) -> tuple[Path, Path]:
    """The seeded tiny model as a checkpoint (for the eager backend) and exported at 128 px."""
    import torch

    from export import build_bundle
    from training.model import build_model
    from training.model.checkpoint import save_checkpoint

    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_model("tiny").eval(), workdir / "tiny")
    vocab = types.SimpleNamespace(names=("person", "car", "dog", "grass", "sky"), num_things=3)
    bundle = build_bundle(checkpoint, workdir / "bundle", image_size=128, vocab=vocab,
                          verify=False)
    return bundle, checkpoint


def _scenes(count: int, hw: tuple[int, int], video: bool = False) -> list[np.ndarray]:
    """``count`` images (or frames of one video) of the synthetic world, resized to ``hw``."""
    from training.data.world import SceneConfig, SceneGenerator

    world = SceneGenerator(0, config=SceneConfig(image_size=256), split="bench")
    frames = world.video(0, count).frames if video else [world.image(i).image
                                                         for i in range(count)]
    return [cv2.resize(f, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR) for f in frames]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)

    import torch

    from omg_rt.segmenter import Segmenter

    work = tempfile.TemporaryDirectory(prefix="bench-runtime-")  # removed with `work`
    bundle, checkpoint = _tiny_bundle(Path(work.name))
    ort = Segmenter.from_bundle(bundle, backend="onnxruntime", cache_bytes=0)
    eager = Segmenter.from_bundle(bundle, backend="torch", checkpoint=checkpoint, device="cpu",
                                  cache_bytes=0)
    images = _scenes(args.runs + 1, (480, 640))
    rows: list[Row] = []

    def cycle(seg, task):
        state = {"i": 0}

        def run():
            state["i"] = (state["i"] + 1) % len(images)
            return seg.segment(images[state["i"]], task)

        return run

    # 1. whole pipeline (preprocess, encoder, pixel decoder, query decoder, post-processing)
    for task in ("panoptic", "instance"):
        t_ort = time_cpu(cycle(ort, task), warmup=2, runs=args.runs)
        t_eager = time_cpu(cycle(eager, task), warmup=2, runs=args.runs)
        rows.append(Row("runtime", f"{task} 640x480, ORT fp32 (no cache)", t_ort))
        rows.append(Row("runtime", f"{task} 640x480, PyTorch eager (same code, no cache)", t_eager))
        rows.append(Row("ratio", f"{task}: ORT / eager = {t_ort.median_ms / t_eager.median_ms:.2f}"
                        " (goal <= 0.6)", t_ort))

    # graphs only: model.forward against the four ORT graphs on one preprocessed tensor
    prepared = ort.image_encoder.prepare(images[0], "image")
    tensor = ort.image_encoder.tensor(prepared)
    from training.model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    bank = torch.from_numpy(ort.vocabulary.class_bank.copy())
    with torch.inference_mode():
        t_model = time_cpu(lambda: model(torch.from_numpy(tensor), bank), warmup=2, runs=args.runs)
    t_graphs = time_cpu(lambda: ort._learned(ort.image_encoder.encode([prepared]), ort.vocabulary),
                        warmup=2, runs=args.runs)
    rows.append(Row("graphs", "encoder + pixel + query decoder, ORT fp32", t_graphs))
    rows.append(Row("graphs", "model.forward, PyTorch eager", t_model))

    # 2. prompt on a cached image against the full pipeline
    cached = Segmenter.from_bundle(bundle, backend="onnxruntime")
    handle = cached.set_image(images[0])
    t_prompt = time_cpu(lambda: cached.prompt(handle, points=[[320, 240]]), warmup=2,
                        runs=args.runs * 3)
    t_full = time_cpu(lambda: ort.prompt(images[0], points=[[320, 240]]), warmup=2, runs=args.runs)
    rows.append(Row("prompt", "1 click, cached image (decoder only)", t_prompt))
    rows.append(Row("prompt", "1 click, full pipeline (encoder + decoder)", t_full))
    rows.append(Row("ratio", f"cached prompt / full = {t_prompt.median_ms / t_full.median_ms:.3f}"
                    " (goal <= 0.05)", t_prompt))

    # 3. a long stream: per-frame cost and memory, early against late
    clip = _scenes(30, (240, 320), video=True)
    session = cached.open_video("vis", clip_size=5)
    per_frame, rss, held = [], [], []
    for i in range(args.frames):
        start = time.perf_counter()
        session.step(np.roll(clip[i % len(clip)], i // len(clip), axis=0))
        per_frame.append((time.perf_counter() - start) * 1e3)
        rss.append(_rss_mib())
        held.append(session.memory_bytes)
    session.finish()
    n = len(per_frame)
    for name, lo, hi in (("first 50", 0, min(50, n)), ("last 50", max(0, n - 50), n)):
        window = sorted(per_frame[lo:hi])
        timing = Timing(float(np.median(window)), float(np.percentile(window, 10)),
                        float(np.percentile(window, 90)), len(window))
        rows.append(Row("video", f"vis 320x240 per frame, {name} of {n}", timing, {
            "rss_mib": f"{rss[hi - 1]:.0f}", "session_kib": f"{held[hi - 1] / 1024:.0f}"}))
    env = environment()
    print(markdown_table(rows, env))
    print()
    print(f"video memory: RSS {rss[min(49, n - 1)]:.0f} MiB at frame 50 -> {rss[-1]:.0f} MiB at "
          f"frame {n}; session state max {max(held) / 1024:.0f} KiB, "
          f"last {held[-1] / 1024:.0f} KiB")
    print(f"backends: {ort.backend_name} vs {eager.backend_name}; torch threads "
          f"{torch.get_num_threads()}")


if __name__ == "__main__":
    main()
