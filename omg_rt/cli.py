"""``omg-rt``: segment images, answer prompts, and follow videos from the command line.

    omg-rt segment IMAGES... --bundle B --task panoptic|instance|semantic [--vocab ...] --out DIR
    omg-rt prompt IMAGE --bundle B --points x,y[,label] ... --boxes x0,y0,x1,y1 ... --out DIR
    omg-rt video VIDEO --bundle B --task vis|vps|vss|vos [--first-mask PNG] --out DIR
    omg-rt serve BUNDLE [--port 8000] [--host 127.0.0.1] [--workers N]
    omg-rt ui [BUNDLE] [--port 7860] [--host 127.0.0.1]   (an interactive page; Gradio)

``segment``, ``prompt`` and ``video`` take ``--server http://HOST:PORT`` (an ``omg-rt serve``)
instead of ``--bundle`` and write the same files.

Outputs per image: ``<name>.json`` (every mask as COCO RLE with id, label, name, score, box) and
``<name>_overlay.png``; panoptic adds ``<name>_panoptic.png`` + ``<name>_segments.json`` (COCO
panoptic), semantic adds ``<name>_semantic.png`` (class index per pixel, 16-bit, 65535 = none).
Video writes ``<name>_overlay.mp4`` and ``<name>.jsonl`` (one JSON record per frame).

Exit codes: :class:`omg_rt.errors.ExitCode` (the same table for every omg-* command).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import cv2
import numpy as np

from omg_rt.errors import (
    EXIT_CODES_HELP,
    BackendUnavailableError,
    ExitCode,
    InvalidInputError,
    OmgRtError,
    report_failure,
)
from omg_rt.results import DEFAULT_MIN_SCORE, SegmentationResult
from omg_rt.spec import IMAGE_TASKS, VIDEO_TASKS
from omg_rt.vocabularies import VOCABULARIES

if TYPE_CHECKING:
    from omg_rt.client import Client
    from omg_rt.segmenter import Segmenter

_T = TypeVar("_T")



def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="omg-rt", description=__doc__.split("\n\n")[0],
                                     epilog=EXIT_CODES_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        where = p.add_mutually_exclusive_group(required=True)
        where.add_argument("--bundle", help="exported bundle directory")
        where.add_argument("--server", help="an omg-rt serve endpoint, http://HOST:PORT")
        p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"])
        p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.add_argument(
            "--vocab",
            nargs="+",
            help=f"a shipped vocabulary ({', '.join(VOCABULARIES)}), class names "
            "(comma-separated synonyms each), or one text file, one per line",
        )
        p.add_argument("--num-things", type=int, help="the first N vocabulary names are things")

    def min_score(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--min-score", type=float, default=DEFAULT_MIN_SCORE,
            help=f"instance / vis: write masks scoring at least this (default "
                 f"{DEFAULT_MIN_SCORE}; 0 = the "
                 "official top-100 for COCO / YouTube-VIS AP)",
        )

    seg = sub.add_parser("segment", help="panoptic / instance / semantic segmentation of images")
    seg.add_argument("images", nargs="+")
    seg.add_argument("--task", default="panoptic", choices=list(IMAGE_TASKS))
    min_score(seg)
    common(seg)

    prm = sub.add_parser("prompt", help="masks from clicks and boxes")
    prm.add_argument("image")
    prm.add_argument("--points", nargs="*", default=[], help="x,y or x,y,label (label 1)")
    prm.add_argument("--boxes", nargs="*", default=[], help="x0,y0,x1,y1")
    common(prm)

    vid = sub.add_parser("video", help="video instance / panoptic / semantic / object segmentation")
    vid.add_argument("video")
    vid.add_argument("--task", default="vis", choices=VIDEO_TASKS)
    vid.add_argument("--first-mask", help="VOS: PNG of frame 0's objects (index or colour)")
    vid.add_argument("--clip-size", type=int, help="frames decoded together")
    vid.add_argument("--max-frames", type=int, help="stop after this many frames")
    min_score(vid)
    common(vid)

    srv = sub.add_parser("serve", help="serve a bundle on Triton Inference Server (PyTriton)")
    srv.add_argument("bundle")
    srv.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    srv.add_argument("--port", type=int, default=8000, help="HTTP port; gRPC port+1, "
                     "metrics port+2")
    srv.add_argument("--workers", type=int, default=2, help="model instances per model (threads "
                     "sharing one Segmenter; default 2: a prompt need not wait for another)")
    srv.add_argument("--max-batch", type=int, default=4, help="images per dynamic batch")
    srv.add_argument("--max-queue", type=int, default=32,
                     help="waiting requests per model before answering busy")
    srv.add_argument("--idle-seconds", type=float, default=300.0,
                     help="free a video stream after this long without frames")
    srv.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"])
    srv.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    srv.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0 = all)")

    page = sub.add_parser("ui", help="an interactive page: clicks, boxes, tasks, vocabulary, "
                          "video (Gradio; pip install 'omg-rt[ui]')")
    page.add_argument("bundle", nargs="?", help="exported bundle directory (default: the "
                      "embedded synthetic-tiny bundle the main command writes, runs/demo/bundle)")
    page.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    page.add_argument("--port", type=int, default=7860, help="HTTP port")
    page.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"])
    page.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"segment": _segment, "prompt": _prompt, "video": _video,
                "serve": _serve, "ui": _ui}[args.command](args)
    except OmgRtError as exc:
        return report_failure("omg-rt", exc)


def _open(args: argparse.Namespace) -> Segmenter | Client:
    seg: Segmenter | Client
    if args.server:
        from omg_rt.client import Client

        seg = Client(args.server)
        if not seg.ready():
            raise BackendUnavailableError(f"--server: no ready omg-rt serve at {args.server}")
    else:
        from omg_rt.segmenter import Segmenter

        seg = Segmenter.from_bundle(args.bundle, backend=args.backend,
                                    precision=args.precision)
    if not args.quiet:
        print(f"omg-rt: backend {seg.backend_name}", file=sys.stderr)
    if args.vocab:
        names, num_things = args.vocab, args.num_things
        if len(names) == 1 and names[0] in VOCABULARIES:
            shipped = VOCABULARIES[names[0]]
            names = list(shipped.names)
            num_things = shipped.num_things if num_things is None else num_things
        elif len(names) == 1 and Path(names[0]).is_file():
            names = [line.strip() for line in Path(names[0]).read_text().splitlines()]
            names = [n for n in names if n]
        seg.set_vocabulary(names, num_things=num_things)
    elif args.num_things is not None:
        raise InvalidInputError("--num-things: only meaningful with --vocab")
    return seg


def _progress(items: Sequence[_T], quiet: bool, unit: str) -> Iterable[_T]:
    from tqdm import tqdm

    bar: Iterable[_T] = tqdm(items, unit=unit, disable=quiet, file=sys.stderr)
    return bar


def _read_rgb(path: str) -> np.ndarray:
    data = cv2.imread(path, cv2.IMREAD_COLOR) if Path(path).is_file() else None
    if data is None:
        raise InvalidInputError(f"image: cannot read an image from {path!r}")
    return cv2.cvtColor(data, cv2.COLOR_BGR2RGB)


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _save(result: SegmentationResult, image: np.ndarray, out: Path, stem: str) -> None:
    (out / f"{stem}.json").write_text(json.dumps(result.to_json()))
    _write_rgb(out / f"{stem}_overlay.png", result.overlay(image))
    if result.task == "panoptic":
        png, segments = result.to_panoptic_png()
        _write_rgb(out / f"{stem}_panoptic.png", png)
        (out / f"{stem}_segments.json").write_text(json.dumps({"segments_info": segments}))
    if result.task == "semantic" and result.id_map is not None:
        semantic = np.where(result.id_map < 0, 65535, result.id_map).astype(np.uint16)
        cv2.imwrite(str(out / f"{stem}_semantic.png"), semantic)


def _segment(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    images = [_read_rgb(p) for p in args.images]  # fail before any work on a bad path
    seg = _open(args)
    stems = _unique_stems(args.images)
    for path, image, stem in _progress(
        list(zip(args.images, images, stems, strict=True)), args.quiet, "img"
    ):
        del path
        _save(_confident(seg.segment(image, args.task), args.min_score), image, out, stem)
    return ExitCode.OK


def _confident(result: SegmentationResult, min_score: float) -> SegmentationResult:
    """Instance and VIS results above ``--min-score``; other tasks as they are."""
    return result.keep(min_score) if result.task in ("instance", "vis") else result


def _unique_stems(paths: Sequence[str]) -> list[str]:
    stems: list[str] = []
    seen: dict[str, int] = {}
    for p in paths:
        stem = Path(p).stem
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        stems.append(stem if count == 0 else f"{stem}_{count}")
    return stems


def _numbers(text: str, name: str, sizes: tuple[int, ...]) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in sizes:
        raise InvalidInputError(
            f"{name}: expected {' or '.join(str(s) for s in sizes)} comma-separated numbers, "
            f"got {text!r}"
        )
    return values


def _prompt(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = _read_rgb(args.image)
    points, labels = [], []
    for text in args.points:
        values = _numbers(text, "--points", (2, 3))
        points.append(values[:2])
        labels.append(int(values[2]) if len(values) == 3 else 1)
    boxes = [_numbers(text, "--boxes", (4,)) for text in args.boxes]
    if not points and not boxes:
        raise InvalidInputError("prompt: expected --points and/or --boxes, got neither")
    seg = _open(args)
    result = seg.prompt(
        image,
        points=points or None,
        labels=labels or None,
        boxes=boxes or None,
    )
    _save(result, image, out, Path(args.image).stem)
    return ExitCode.OK


def _first_mask(path: str) -> np.ndarray:
    data = cv2.imread(path, cv2.IMREAD_UNCHANGED) if Path(path).is_file() else None
    if data is None:
        raise InvalidInputError(f"--first-mask: cannot read a PNG from {path!r}")
    if data.ndim == 2:
        return data.astype(np.int32)
    colours = data[..., :3].reshape(-1, 3)
    unique, inverse = np.unique(colours, axis=0, return_inverse=True)
    ids = np.zeros(len(unique), np.int32)
    ids[unique.any(1)] = np.arange(1, int(unique.any(1).sum()) + 1)  # black = background
    return ids[inverse.reshape(-1)].reshape(data.shape[:2])


def _video(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    capture = cv2.VideoCapture(args.video) if Path(args.video).is_file() else None
    if capture is None or not capture.isOpened():
        raise InvalidInputError(f"video: cannot open {args.video!r}")
    first_mask = _first_mask(args.first_mask) if args.first_mask else None
    seg = _open(args)
    session = seg.open_video(args.task, first_mask=first_mask, clip_size=args.clip_size)
    fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    if args.max_frames:
        total = min(total or args.max_frames, args.max_frames)
    stem = Path(args.video).stem
    writer = None
    frames: dict[int, np.ndarray] = {}  # frames waiting for their clip's results
    from tqdm import tqdm

    bar = tqdm(total=total, unit="frame", disable=args.quiet, file=sys.stderr)
    with open(out / f"{stem}.jsonl", "w") as records:

        def emit(results: list[SegmentationResult]) -> None:
            nonlocal writer
            for result in results:
                result = _confident(result, args.min_score)
                assert result.frame_index is not None  # a video session's result
                frame = frames.pop(result.frame_index)
                if writer is None:
                    h, w = frame.shape[:2]
                    fourcc = cv2.VideoWriter.fourcc(*"mp4v")
                    writer = cv2.VideoWriter(str(out / f"{stem}_overlay.mp4"), fourcc, fps, (w, h))
                writer.write(cv2.cvtColor(result.overlay(frame), cv2.COLOR_RGB2BGR))
                records.write(json.dumps(result.to_json()) + "\n")
                bar.update(1)

        index = 0
        while args.max_frames is None or index < args.max_frames:
            ok, bgr = capture.read()
            if not ok:
                break
            frames[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            emit(session.step(frames[index]))
            index += 1
        emit(session.finish())
    bar.close()
    capture.release()
    if writer is not None:
        writer.release()
    if index == 0:
        raise InvalidInputError(f"video: {args.video!r} has no decodable frames")
    return ExitCode.OK


def _serve(args: argparse.Namespace) -> int:
    from omg_rt.segmenter import Segmenter
    from omg_rt.serve import ServeOptions, check_interpreter, serve

    check_interpreter()  # before minutes of loading, one line on what to do
    seg = Segmenter.from_bundle(args.bundle, backend=args.backend, precision=args.precision,
                                threads=args.threads)
    options = ServeOptions(host=args.host, port=args.port, workers=args.workers,
                           max_batch=args.max_batch, max_queue=args.max_queue,
                           idle_seconds=args.idle_seconds)

    def ready() -> None:
        print(f"omg-rt: serving {args.bundle} ({seg.backend_name}) on http://{args.host}:"
              f"{args.port} (gRPC {args.port + 1}, metrics {args.port + 2}); Ctrl-C stops",
              file=sys.stderr, flush=True)

    serve(seg, options, ready=ready)
    seg.close()
    return ExitCode.OK


def _ui(args: argparse.Namespace) -> int:
    from omg_rt.segmenter import Segmenter
    from omg_rt.ui import Page, default_bundle
    from omg_rt.ui_app import build_app, launch, require_gradio

    require_gradio()  # before loading, one line on what to do
    bundle = Path(args.bundle) if args.bundle else default_bundle()
    seg = Segmenter.from_bundle(bundle, backend=args.backend, precision=args.precision)
    page = Page(seg, bundle=bundle)
    app = build_app(seg, title=bundle.name, page=page)
    print(f"omg-rt ui: {bundle} ({seg.backend_name}) on http://{args.host}:{args.port}; Ctrl-C "
          f"stops", file=sys.stderr, flush=True)
    launch(app, host=args.host, port=args.port, quiet=True)
    seg.close()
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
