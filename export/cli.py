"""``omg-export``: checkpoint -> verified ONNX bundle (-> TensorRT engines)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from export.bundle import PRECISIONS, TARGETS, build_bundle
from export.verify import ParityError
from omg_rt.errors import (
    EXIT_CODES_HELP,
    BackendUnavailableError,
    CheckpointError,
    ExitCode,
    InvalidInputError,
    OmgRtError,
    report_failure,
)
from omg_rt.manifest import MANIFEST, Manifest
from omg_rt.vocabularies import VOCABULARIES

EPILOG = f"""\
{EXIT_CODES_HELP}

--vocab: {", ".join(VOCABULARIES)}; a names file (.txt one class per line, synonyms separated by
',', a line '---' before the stuff classes; or .json {{"names": [...], "num_things": n}}); or a
precomputed [K, S, D] bank (.pth as the official gen_cls writes, or .npy) whose names come from
BANK.names.txt/.json beside it, its official file name, or the one shipped vocabulary with K
classes.
"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="omg-export",
        description="Export an OMG-Seg checkpoint (official .pth or ours) to a bundle the "
                    "omg-rt runtime loads without torch: ONNX graphs, vocabulary, manifest, "
                    "parity report.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="official omg_seg_convl.pth, or our checkpoint "
                                           "directory / checkpoint.safetensors")
    parser.add_argument("-o", "--out", "--output", dest="output", metavar="BUNDLE",
                        help="bundle directory (default: ./<checkpoint name>.bundle)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--backbone-weights", metavar="OPEN_CLIP_FILE",
                        help="local OpenCLIP weights for the decoder-only official checkpoint "
                             "(offline use)")
    parser.add_argument("--image-size", type=int, default=1024,
                        help="images are resized keeping their ratio into an SxS box, then padded "
                             "to a multiple of 32 only (the graphs take any such size; default "
                             "1024, the official demo scale)")
    parser.add_argument("--vocab", default=None,
                        help="coco|ade|vipseg|ytvis|NAMES_FILE|BANK_FILE (default: the training "
                             "vocabulary of an omg-train run directory, else coco)")
    parser.add_argument("--precision", default="fp32",
                        help=f"comma-separated subset of {','.join(PRECISIONS)} (fp32 is always "
                             "exported; default fp32)")
    parser.add_argument("--calib-images", metavar="DIR",
                        help="images for INT8 calibration (default: synthetic scenes)")
    parser.add_argument("--engine", action="store_true",
                        help=f"also build TensorRT plans under engines/ (exit {ExitCode.BACKEND} "
                             "where TensorRT is missing)")
    parser.add_argument("--target", choices=TARGETS, default="cpu",
                        help="deployment target: cpu = portable graphs (GridSample deformable "
                             "attention); h100 / jetson-orin add the TensorRT plugin flavour "
                             "(default cpu)")
    parser.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                        help="run the parity checks against PyTorch (default on)")
    parser.add_argument("--triton-repo", metavar="DIR",
                        help="also write a Triton Inference Server model repository (graphs, "
                             "Python pre/post-processing, an ensemble) for the full server")
    parser.add_argument("--triton-backend", choices=("onnxruntime", "tensorrt"),
                        default="onnxruntime",
                        help="the repository's graph backend (tensorrt needs --engine plans)")
    parser.add_argument("--triton-precision", default="fp32",
                        help="the bundle precision the repository serves (default fp32)")
    return parser.parse_args(argv)


def default_vocab(checkpoint: str) -> str:
    """The vocabulary a checkpoint was trained with (``vocabulary.json`` of an ``omg-train`` run
    directory), else COCO (the official model's evaluation vocabulary)."""
    run = Path(checkpoint)
    run = run if run.is_dir() else run.parent
    trained = run / "vocabulary.json"
    return str(trained) if trained.is_file() else "coco"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.vocab is None:
        args.vocab = default_vocab(args.checkpoint)
    output = Path(args.output) if args.output else Path.cwd() / (
        Path(args.checkpoint).name.split(".")[0] + ".bundle")
    start = time.perf_counter()
    no_trt: BackendUnavailableError | None = None
    try:
        bundle = build_bundle(
            args.checkpoint, output, backbone_weights=args.backbone_weights,
            image_size=args.image_size, vocab=args.vocab,
            precisions=tuple(p.strip() for p in args.precision.split(",") if p.strip()),
            target=args.target, calib_images=args.calib_images, verify=args.verify,
            engine=args.engine, progress=not args.quiet)
    except (InvalidInputError, CheckpointError) as exc:
        print(f"omg-export: error: {exc}", file=sys.stderr)
        return ExitCode.INPUT
    except ParityError as exc:
        print(f"omg-export: parity check failed: {exc}", file=sys.stderr)
        return ExitCode.PARITY
    except BackendUnavailableError as exc:
        no_trt, bundle = exc, output
    print(summary(bundle, time.perf_counter() - start))
    if args.triton_repo:
        from export.triton_repo import write_triton_repo

        try:
            repo = write_triton_repo(bundle, args.triton_repo, backend=args.triton_backend,
                                     precision=args.triton_precision)
        except OmgRtError as exc:
            return report_failure("omg-export", exc, "--triton-repo")
        print(f"triton model repository: {repo} (tritonserver --model-repository {repo})")
    if no_trt is not None:
        print(f"omg-export: --engine: {no_trt}", file=sys.stderr)
        return ExitCode.BACKEND
    return ExitCode.OK


def summary(bundle: Path, seconds: float) -> str:
    """The table printed at the end: graphs per precision with sizes, verification results."""
    path = bundle / MANIFEST
    manifest = Manifest.from_json(path.read_bytes(), str(path))
    report = json.loads((bundle / manifest.verify_file).read_text())
    precisions = manifest.precisions
    rows = [["graph", *precisions]]
    for name, entry in manifest.graphs.items():
        cells = [name]
        for p in precisions:
            graph = bundle / entry.files[p]
            size = graph.stat().st_size
            data = graph.with_name(graph.name + ".data")
            size += data.stat().st_size if data.exists() else 0
            shared = p != "fp32" and entry.files[p] == entry.files["fp32"]
            cells.append("= fp32" if shared else f"{size / 2**20:.1f} MiB")
        rows.append(cells)
    max_h, max_w = manifest.input.max_hw
    lines = [f"bundle {bundle}  ({seconds:.0f} s, target {manifest.target}, "
             f"{len(manifest.vocabulary.names)} classes, input "
             f"scale {manifest.input.image_scale[0]}, any HxW up to {max_h}x{max_w})",
             _table(rows)]
    if report.get("skipped"):
        lines.append("verification: skipped (--no-verify)")
    else:
        rows = [["precision", "passed", "max |d class logit|", "mask IoU", "top-class",
                 "held-out mIoU (drop)"]]
        for p, entry in report["precisions"].items():
            tasks = entry["tasks"].values()
            metric = entry.get("held_out_metric")
            rows.append([
                p, "yes" if entry["passed"] else "NO",
                f"{max(t.get('class_logits_max_abs', 0.0) for t in tasks):.2e}",
                f"{min(t.get('mask_iou', 1.0) for t in tasks):.4f}",
                f"{min(t.get('top_class_agreement', 1.0) for t in tasks):.3f}",
                "-" if metric is None else f"{metric['value']:.4f} ({metric['drop']:+.4f})"])
        lines += ["verification (ONNX Runtime vs PyTorch):", _table(rows)]
    engines = manifest.engines
    lines.append("engines: " + (", ".join(e.key for e in engines) if engines else "none"))
    return "\n".join(lines)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*rows[0]), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*r) for r in rows[1:]]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
