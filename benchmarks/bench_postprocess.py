"""Post-processing benchmark: each task's result assembly at the ConvNeXt-L shapes, on the CPU.

    python -m benchmarks.bench_postprocess [--runs 5] [--quick] [--kinds ...] [--only ...]
        [--baseline REV] [--device cuda] [--json rows.json]

What ``Segmenter.panoptic`` / ``instances`` / ``semantic`` / prompts and a video session's
per-frame results spend after the decoder: ``omg_rt.assembly`` from the stride-4 mask logits
to a :class:`~omg_rt.results.SegmentationResult` (resize, merge, masks, boxes). Shapes:

- image: 300 queries, (192, 256) stride-4 logits of a 768x1024 padded input, original 480x640
  (the 1024 demo scale), 240 classes (139 things);
- video frame: 720x960 at the official (1280, 736) video scale -> 736x981 in 736x992,
  (184, 248) logits, 40 classes (YouTube-VIS);
- photo: a photo at its own padded size, no second resize: (192, 256) -> 768x1024 and
  (120, 160) -> 480x640 (``random-model`` logits only);
- prompts: 1 and 16 prompt queries on the image.

Three kinds of logits: ``trained`` (a trained model's look: mask logits of magnitude ~10 with a
few large blobs per query, ~50 non-void queries), ``random`` (random weights, as the official
golden fixture: |mask logits| up to ~1e4, every query non-void) and ``random-model`` (the
exported ConvNeXt-L with random weights: near-uniform class logits, every query kept; mask
logits ~N(0, 3), smooth, near-identical across queries, so tile bounds decide almost nothing).

``--device DEV`` adds the panoptic, instance and semantic cases post-processed on a torch device
(``omg_rt.postprocess.device``, what ``Segmenter`` does when its graphs run on a GPU), each
beside its host case in the same run.

``--baseline REV`` also times the ``omg_rt`` of a git revision (``git archive``, in a child
process, same cases), each call alternating with one of the working tree so that both see the
same load, and prints both side by side. Prints a markdown table of medians with
provenance (benchmarks/harness.py).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# --baseline's child process: the omg_rt package of another revision, extracted there.
_TREE = "OMG_BENCH_OMG_RT_TREE"
if os.environ.get(_TREE):
    sys.path.insert(0, os.environ[_TREE])

QUERIES = 300
IMAGE = {"padded": (768, 1024), "resized": (768, 1024), "original": (480, 640),
         "classes": 240, "things": 139}
VIDEO = {"padded": (736, 992), "resized": (736, 981), "original": (720, 960),
         "classes": 40, "things": 40}
PHOTOS = {
    "photo 768x1024": {"padded": (768, 1024), "resized": (768, 1024), "original": (768, 1024),
                       "classes": 240, "things": 139},
    "photo 480x640": {"padded": (480, 640), "resized": (480, 640), "original": (480, 640),
                      "classes": 240, "things": 139},
}
KINDS = ("trained", "random", "random-model")


def synthetic_logits(
    kind: str, queries: int, classes: int, h4w4: tuple[int, int], seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(cls (Q, K + 2) float32 with void then IoU last, mask logits (Q, h4, w4) float32)."""
    rng = np.random.default_rng(seed)
    h4, w4 = h4w4
    coarse = rng.standard_normal((queries, max(h4 // 16, 2), max(w4 // 16, 2))).astype(np.float32)
    smooth = np.stack([cv2.resize(c, (w4, h4), interpolation=cv2.INTER_CUBIC) for c in coarse])
    cls = np.zeros((queries, classes + 2), np.float32)
    if kind == "random-model":
        # The exported ConvNeXt-L with random weights (benchmarks/RESULTS.md, issue #12): class
        # logits near-uniform (every query kept, best probabilities within a factor of a few);
        # mask logits ~N(0, 3), a field shared by every query plus a smaller one of each query's
        # own (measured on that model: across-query spread / spatial spread ~0.43), rough at
        # stride 4 (mean |neighbour difference| / std ~0.32).
        cls[:, : classes + 1] = rng.normal(0, 1, (queries, classes + 1))
        cells = (max(h4 // 4, 2), max(w4 // 4, 2))
        fields = rng.standard_normal((queries + 1, *cells)).astype(np.float32)
        fields = np.stack([cv2.resize(f, (w4, h4), interpolation=cv2.INTER_CUBIC)
                           for f in fields])
        fields /= fields.std()
        masks = np.float32(3.0) * (np.float32(0.92) * fields[:1] + np.float32(0.39) * fields[1:])
        cls[:, -1] = rng.normal(0, 2, queries)
        return cls, np.ascontiguousarray(masks, dtype=np.float32)
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
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
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


def cases(kinds: tuple[str, ...], device: str | None = None) -> list[tuple[str, str, object]]:
    """(subject, case, zero-argument callable) for every task, frame and logit kind; with a
    torch ``device``, also the panoptic, instance and semantic cases post-processed there."""
    from omg_rt import assembly
    from omg_rt.spec import PostprocessSpec

    post = PostprocessSpec()
    out = []
    frames = [("image 480x640", IMAGE, KINDS), ("video 720x960", VIDEO, ("trained", "random"))]
    frames += [(name, shape, ("random-model",)) for name, shape in PHOTOS.items()]
    for frame, shape, frame_kinds in frames:
        session, vocab = _session(shape), _vocabulary(shape)
        h4w4 = (shape["padded"][0] // 4, shape["padded"][1] // 4)
        for kind in (k for k in kinds if k in frame_kinds):
            cls_iou, masks = synthetic_logits(kind, QUERIES, shape["classes"], h4w4)
            cls = np.ascontiguousarray(cls_iou[:, :-1])
            case = f"{frame}, {kind}"
            video = frame.startswith("video")

            def panoptic(s=session, c=cls, m=masks, v=vocab, video=video, on=None):
                return assembly.panoptic_result(s, c, m, v, post, video_ids=video, device=on)

            def instance(s=session, c=cls, m=masks, v=vocab, video=video, on=None):
                return assembly.instance_result(s, c, m, v, post, track_ids=video, device=on)

            def semantic(s=session, c=cls, m=masks, v=vocab, on=None):
                return assembly.semantic_result(s, c, m, v, device=on)

            out += [("panoptic", case, panoptic), ("instance", case, instance),
                    ("semantic", case, semantic)]
            if device is not None:
                out += [(name, f"{case} [{device}]", functools.partial(fn, on=device))
                        for name, fn in (("panoptic", panoptic), ("instance", instance),
                                         ("semantic", semantic))]
            if frame.startswith("image"):
                for n in (1, 16):
                    def prompt(s=session, n=n, c=cls_iou, m=masks, v=vocab):
                        return assembly.prompt_result(s, m[:n], c[:n, -1], c[:n, :-1], v)

                    out.append(("prompt", f"{n} prompt{'s' * (n > 1)}, {case}", prompt))
    return out


def measure(kinds: tuple[str, ...], only: set[str], runs: int,
            baseline: Baseline | None = None, device: str | None = None) -> list:
    """Time every selected case: one warm-up call, then ``runs`` calls, each one alternating
    with a call of the baseline (when given) so that both see the same machine load."""
    from benchmarks.harness import Row

    rows = []
    for subject, case, fn in cases(kinds, device):
        if only and subject not in only:
            continue
        fn()
        if baseline is not None:
            baseline.time_ms(subject, case)
        now, then = [], []
        for _ in range(runs):
            if baseline is not None:
                then.append(baseline.time_ms(subject, case))
            start = time.perf_counter()
            fn()
            now.append((time.perf_counter() - start) * 1e3)
        extra = {} if baseline is None else {"baseline_ms": f"{statistics.median(then):.1f}"}
        rows.append(Row(subject, case, _timing(now), extra))
        old = f" (baseline {extra['baseline_ms']} ms)" if extra else ""
        print(f"{subject:9s} {case:36s} {rows[-1].timing.median_ms:9.1f} ms{old}",
              file=sys.stderr, flush=True)
    return rows


def _timing(samples: list[float]):
    """Median and spread of wall-time samples in ms, as benchmarks.harness.time_cpu reports."""
    from benchmarks.harness import Timing

    ordered = sorted(samples)
    deciles = statistics.quantiles(ordered, n=10) if len(ordered) > 1 else ordered * 9
    return Timing(statistics.median(ordered), deciles[0], deciles[-1], len(ordered))


class Baseline:
    """The ``omg_rt`` of git revision ``rev`` (``git archive``) in a child process running this
    script with ``--serve``: it builds the same cases and times one call per request."""

    def __init__(self, rev: str, kinds: tuple[str, ...]) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        archive = subprocess.run(["git", "archive", rev, "omg_rt"], cwd=REPO,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", self._tmp.name], input=archive, check=True)
        env = {**os.environ, _TREE: self._tmp.name}
        self._child = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_postprocess", "--serve",
             "--kinds", ",".join(kinds)],
            cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def time_ms(self, subject: str, case: str) -> float:
        assert self._child.stdin is not None and self._child.stdout is not None
        self._child.stdin.write(f"{subject}\t{case}\n")
        self._child.stdin.flush()
        reply = self._child.stdout.readline()
        if not reply.startswith("ms "):
            raise RuntimeError(f"baseline process: expected 'ms <time>', got {reply!r}")
        return float(reply[3:])

    def close(self) -> None:
        if self._child.stdin is not None:
            self._child.stdin.close()
        self._child.wait()
        self._tmp.cleanup()


def serve(kinds: tuple[str, ...]) -> None:
    """--serve: per stdin line ``subject<TAB>case``, time one call and print ``ms <time>``."""
    table = {(subject, case): fn for subject, case, fn in cases(kinds)}
    for line in sys.stdin:
        fn = table[tuple(line.rstrip("\n").split("\t"))]
        start = time.perf_counter()
        fn()
        print(f"ms {(time.perf_counter() - start) * 1e3}", flush=True)


def side_by_side(rows: list, rev: str, env: dict) -> str:
    """Markdown table: baseline and current medians per case, and the speed-up."""
    lines = [
        f"_{env.get('date')} · {env.get('cpu')} · {env.get('threads', '?')} threads · "
        f"git {env.get('git')} (working tree) vs {rev}, runs interleaved_",
        "",
        f"| subject | case | {rev} median ms | current median ms | speed-up | runs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        old, new = float(r.extra["baseline_ms"]), r.timing.median_ms
        lines.append(f"| {r.subject} | {r.case} | {old:.1f} | {new:.1f} | {old / new:.1f}x "
                     f"| {r.timing.runs} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.harness import environment, markdown_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="trained-like logits only")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated logit kinds ({', '.join(KINDS)})")
    parser.add_argument("--only", default="", help="comma-separated subjects to run")
    parser.add_argument("--baseline", metavar="REV",
                        help="also time this git revision's omg_rt, side by side")
    parser.add_argument("--device", help="also post-process panoptic, instance and semantic "
                        "cases on this torch device (cuda)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # Baseline's
    args = parser.parse_args(argv)
    kinds = ("trained",) if args.quick else tuple(k for k in args.kinds.split(",") if k)
    unknown = set(kinds) - set(KINDS)
    if unknown:
        parser.error(f"--kinds: expected some of {', '.join(KINDS)}, got {sorted(unknown)}")
    only = {s for s in args.only.split(",") if s}
    if args.device and args.baseline:
        parser.error("--device: not with --baseline (the baseline revision has no device path)")
    if args.serve:
        serve(kinds)
        return 0
    baseline = Baseline(args.baseline, kinds) if args.baseline else None
    try:
        rows = measure(kinds, only, args.runs, baseline, args.device)
    finally:
        if baseline is not None:
            baseline.close()
    env = environment()
    if baseline is None:
        print(markdown_table(rows, env))
    else:
        print(side_by_side(rows, args.baseline, env))
    if args.json:
        args.json.write_text(json.dumps({"env": env, "rows": [r.as_dict() for r in rows]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
