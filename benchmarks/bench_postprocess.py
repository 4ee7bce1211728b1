"""Post-processing benchmark: each task's result assembly at the ConvNeXt-L shapes, on the CPU.

    python -m benchmarks.bench_postprocess [--runs 5] [--quick] [--json rows.json]

What ``Segmenter.panoptic`` / ``instances`` / ``semantic`` / prompts and a video session's
per-frame results spend after the decoder: ``omg_rt.assembly`` from the stride-4 mask logits
to a :class:`~omg_rt.results.SegmentationResult` (resize, merge, masks, boxes). Shapes:

- image: 300 queries, (192, 256) stride-4 logits of a 768x1024 padded input, original 480x640
  (the 1024 demo scale), 240 classes (139 things);
- video frame: 720x960 at the official (1280, 736) video scale -> 736x981 in 736x992,
  (184, 248) logits, 40 classes (YouTube-VIS);
- prompts: 1 and 16 prompt queries on the image.

Two kinds of logits: ``trained`` (a trained model's look: mask logits of magnitude ~10 with a
few large blobs per query, ~50 non-void queries) and ``random`` (random weights, as the official
golden fixture: |mask logits| up to ~1e4, every query non-void). Prints a markdown table of
medians with provenance (benchmarks/harness.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUERIES = 300
IMAGE = {"padded": (768, 1024), "resized": (768, 1024), "original": (480, 640),
         "classes": 240, "things": 139}
VIDEO = {"padded": (736, 992), "resized": (736, 981), "original": (720, 960),
         "classes": 40, "things": 40}


def synthetic_logits(
    kind: str, queries: int, classes: int, h4w4: tuple[int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(cls (Q, K + 2) float32 with void then IoU last, mask logits (Q, h4, w4) float32)."""
    rng = np.random.default_rng(seed)
    h4, w4 = h4w4
    coarse = rng.standard_normal((queries, max(h4 // 16, 2), max(w4 // 16, 2))).astype(np.float32)
    smooth = np.stack([cv2.resize(c, (w4, h4), interpolation=cv2.INTER_CUBIC) for c in coarse])
    cls = np.zeros((queries, classes + 2), np.float32)
    if kind == "random":
        # The golden fixture's statistics: class logits ~N(0, 3.4), void 0 (every query kept),
        # mask logits ~1e4 with ~8% positive.
        cls[:, :classes] = rng.normal(0, 3.4, (queries, classes))
        masks = (smooth - 1.4) * np.float32(1.2e4)
    elif kind == "trained":
        # Most queries predict void; ~50 predict a class confidently and tile the image like
        # a trained model's segments: logit ~+8 inside the query's cell, falling by 4 per
        # stride-4 pixel of distance past the cell border, to -15; a smooth +-3 wobble.
        # Void queries get 1-3 positive blobs on a negative background of magnitude ~10.
        cls[:, :classes] = rng.normal(0, 2, (queries, classes))
        cls[:, classes] = 9.0
        active = rng.choice(queries, 50, replace=False)
        cls[active, rng.integers(0, classes, active.size)] += 14.0
        masks = smooth * np.float32(3.0) - np.float32(8.0)
        ys, xs = np.arange(h4, dtype=np.float32), np.arange(w4, dtype=np.float32)
        for q in np.setdiff1d(np.arange(queries), active):
            for _ in range(rng.integers(1, 4)):
                cy, cx = rng.uniform(0, h4), rng.uniform(0, w4)
                radius = rng.uniform(4, h4 / 3)
                gy = np.exp(-0.5 * ((ys - cy) / radius) ** 2)
                gx = np.exp(-0.5 * ((xs - cx) / radius) ** 2)
                masks[q] += np.float32(rng.uniform(12, 25)) * np.outer(gy, gx)
        centres = rng.uniform((0, 0), (h4, w4), (active.size, 2)).astype(np.float32)
        dist = np.hypot(ys[None, :, None] - centres[:, 0, None, None],
                        xs[None, None, :] - centres[:, 1, None, None])  # (A, h4, w4)
        cells = np.float32(8.0) - np.float32(4.0) * (dist - dist.min(0))
        masks[active] = np.maximum(cells, np.float32(-15.0)) + smooth[active]
    else:
        raise ValueError(f"kind: expected 'trained' or 'random', got {kind!r}")
    cls[:, -1] = rng.normal(0, 2, queries)
    return cls, np.ascontiguousarray(masks, dtype=np.float32)


def _session(shape: dict):
    from omg_rt.sessions import ImageSession

    return ImageSession(key=("bench",), original_hw=shape["original"],
                        resized_hw=shape["resized"], padded_hw=shape["padded"], encoded=None)


def _vocabulary(shape: dict):
    from omg_rt.bundle import Vocabulary

    k = shape["classes"]
    return Vocabulary(names=tuple(f"class {i}" for i in range(k)), num_things=shape["things"],
                      seen=np.ones(k, bool), class_bank=np.zeros((k, 1, 1), np.float32))


def cases(quick: bool) -> list[tuple[str, str, object]]:
    """(subject, case, zero-argument callable) for every task and logit kind."""
    from omg_rt import assembly
    from omg_rt.spec import PostprocessSpec

    post = PostprocessSpec()
    out = []
    kinds = ["trained"] if quick else ["trained", "random"]
    for frame, shape in (("image 480x640", IMAGE), ("video 720x960", VIDEO)):
        session, vocab = _session(shape), _vocabulary(shape)
        h4w4 = (shape["padded"][0] // 4, shape["padded"][1] // 4)
        for kind in kinds:
            cls_iou, masks = synthetic_logits(kind, QUERIES, shape["classes"], h4w4)
            cls = np.ascontiguousarray(cls_iou[:, :-1])
            case = f"{frame}, {kind}"
            video = frame.startswith("video")

            def panoptic(s=session, c=cls, m=masks, v=vocab, video=video):
                return assembly.panoptic_result(s, c, m, v, post, video_ids=video)

            def instance(s=session, c=cls, m=masks, v=vocab, video=video):
                return assembly.instance_result(s, c, m, v, post, track_ids=video)

            def semantic(s=session, c=cls, m=masks, v=vocab):
                return assembly.semantic_result(s, c, m, v)

            out += [("panoptic", case, panoptic), ("instance", case, instance),
                    ("semantic", case, semantic)]
            if not video:
                for n in (1, 16):
                    def prompt(s=session, n=n, c=cls_iou, m=masks, v=vocab):
                        return assembly.prompt_result(s, m[:n], c[:n, -1], c[:n, :-1], v)

                    out.append(("prompt", f"{n} prompt{'s' * (n > 1)}, {case}", prompt))
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks.harness import Row, environment, markdown_table, time_cpu

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="trained-like logits only")
    parser.add_argument("--only", default="", help="comma-separated subjects to run")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    only = {s for s in args.only.split(",") if s}
    rows = []
    for subject, case, fn in cases(args.quick):
        if only and subject not in only:
            continue
        timing = time_cpu(fn, warmup=1, runs=args.runs)
        rows.append(Row(subject, case, timing))
        print(f"{subject:9s} {case:32s} {timing.median_ms:9.1f} ms", file=sys.stderr, flush=True)
    env = environment()
    print(markdown_table(rows, env))
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": [r.as_dict() for r in rows]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
