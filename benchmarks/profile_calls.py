"""Where a call's time goes: ``torch.profiler`` over the runtime's own calls on the real model.

ConvNeXt-L OMG-Seg (``preset:omg-convl``'s random weights, as omg-bench) through
``Segmenter.from_checkpoint`` on one device, at the official shapes: a panoptic call on a new
1024x768 photo, one click and 16 clicks on it once cached, and one VIS clip of 960x720 frames.
For each: the wall time (median of ``--runs`` after a warm-up), the device's busy time, and the
ops that take most of it, so that the next optimisation is chosen from a measurement. On a GPU
the clicks run twice: replayed from CUDA graphs (the runtime's default) and kernel by kernel.

    python -m benchmarks.profile_calls --device cuda [--runs 3] [--rows 12] [--out FILE.md]

On a CPU it runs too (slowly: minutes per ConvNeXt-L call); ``--preset tiny`` for a quick look.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def _photo(shape: tuple[int, int], seed: int) -> np.ndarray:
    """scikit-image's astronaut (a random scene where it is not installed) at ``shape``, shifted
    by ``seed`` so that each call is a new image to the encoder cache."""
    import cv2

    try:
        from skimage import data

        image = data.astronaut()
    except ImportError:
        image = np.random.default_rng(seed).integers(0, 255, (*shape, 3), np.uint8)
    moved = np.roll(image, seed * 17, axis=1)
    return np.ascontiguousarray(cv2.resize(moved, (shape[1], shape[0])))


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _profile(name: str, fn: Callable[[], Any], setup: Callable[[], Any], device: str, runs: int,
             rows: int) -> list[str]:
    from torch.profiler import ProfilerActivity, profile

    walls = []
    for _ in range(runs + 1):  # the first: warm-up (kernel choices, allocator)
        setup()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        walls.append((time.perf_counter() - start) * 1e3)
    activities = [ProfilerActivity.CPU]
    cuda = device.startswith("cuda")
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    setup()
    with profile(activities=activities) as prof:
        fn()
        _sync(device)
    everything = list(prof.key_averages())
    wall = statistics.median(walls[1:])
    lines = [f"### {name}", "", f"wall p50 {wall:.1f} ms over {runs} runs", ""]
    if cuda:  # the kernels and copies themselves (an op's device time repeats its kernels')
        from torch.autograd import DeviceType

        kernels = [e for e in everything if e.device_type == DeviceType.CUDA]
        lines += _table("kernel", kernels, "self_device_time_total", wall, "device busy", rows)
        host = [e for e in everything if e.device_type == DeviceType.CPU]
        lines += _table("host op (incl. launching)", host, "self_cpu_time_total", wall,
                        "host in ops", rows // 2)
    else:
        lines += _table("op", everything, "self_cpu_time_total", wall, "CPU in ops", rows)
    return [*lines, ""]


def _table(what: str, events: list[Any], key: str, wall: float, total_name: str,
           rows: int) -> list[str]:
    total = sum(getattr(e, key) for e in events) / 1e3
    lines = [f"{total_name} {total:.1f} ms ({100 * total / wall:.0f} % of the wall)", "",
             f"| {what} | calls | self ms | share |", "|---|---:|---:|---:|"]
    for e in sorted(events, key=lambda e: getattr(e, key), reverse=True)[:rows]:
        ms = getattr(e, key) / 1e3
        lines.append(f"| `{e.key[:70]}` | {e.count} | {ms:.2f} | "
                     f"{100 * ms / max(total, 1e-9):.1f} % |")
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="omg-convl")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--frames", type=int, default=3, help="frames of the VIS clip")
    parser.add_argument("--out", type=Path, help="also write the tables here (markdown)")
    args = parser.parse_args(argv)

    import torch

    from benchmarks.omg_bench.targets import lively_backbone
    from omg_rt import Segmenter
    from omg_rt.vocabularies import VOCABULARIES
    from training.model import build_model

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("profile_calls: no CUDA device", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    model = build_model(args.preset).eval()
    lively_backbone(model)
    coco = VOCABULARIES["coco"]
    opened = {"vocabulary": list(coco.names), "num_things": int(coco.num_things),
              "image_size": args.image_size, "device": args.device}
    seg = Segmenter.from_checkpoint(model, **opened)
    counter = {"i": 0}
    image = {"now": _photo((768, 1024), 0)}

    def new_image() -> None:
        counter["i"] += 1
        image["now"] = _photo((768, 1024), counter["i"])
        seg.cache.clear()

    cached = seg.set_image(_photo((768, 1024), 99))
    rng = np.random.default_rng(0)
    clicks = {n: rng.random((n, 2)) * [1023, 767] for n in (1, 16)}
    frames = [_photo((720, 960), 200 + t) for t in range(args.frames)]
    header = (f"Profile of `{args.preset}` on {args.device} "
              f"({torch.cuda.get_device_name() if args.device.startswith('cuda') else 'CPU'}, "
              f"torch {torch.__version__}), post-processing on {seg.post_device or 'the host'}")
    out = [header, ""]
    out += _profile("panoptic, new 1024x768 photo", lambda: seg.panoptic(image["now"]),
                    new_image, args.device, args.runs, args.rows)
    for n, points in clicks.items():
        out += _profile(f"{n} click(s) on a cached image", lambda p=points: seg.prompt(cached, p),
                        lambda: None, args.device, args.runs, args.rows)
    if args.device.startswith("cuda"):  # the same clicks with every kernel launched by the host
        eager = Segmenter.from_checkpoint(model, **opened, cuda_graphs=False)
        eager_cached = eager.set_image(_photo((768, 1024), 99))
        for n, points in clicks.items():
            out += _profile(f"{n} click(s) on a cached image, without CUDA graphs",
                            lambda p=points: eager.prompt(eager_cached, p), lambda: None,
                            args.device, args.runs, args.rows)
        eager.close()

    def clip() -> None:
        seg.cache.clear()
        seg.open_video("vis", clip_size=len(frames)).run(frames)

    out += _profile(f"VIS clip of {len(frames)} 960x720 frames (per clip)", clip, lambda: None,
                    args.device, args.runs, args.rows)
    text = "\n".join(out)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
