"""``omg-eval``: what an exported bundle scores on a dataset folder, with the dataset's official
metrics, through the torch-free runtime (any backend and precision).

    omg-eval BUNDLE --dataset coco-panoptic --root DATA/coco --out eval/
    omg-eval BUNDLE --dataset ytvis21 --images DIR --annotations FILE --precision int8 --out eval/

Datasets and what they report (``DIR/metrics.json``; percentages on the 0-100 scale):

| dataset | task | metrics | per-item results |
|---|---|---|---|
| coco-panoptic | panoptic | ``pq sq rq pq_things pq_stuff`` | ``panoptic/`` PNGs + JSON |
| coco-instances | instance | ``ap ap50 ap75 ap_small ap_medium ap_large`` | ``results.json`` |
| ade20k | semantic | ``miou pixel_accuracy`` | - |
| ytvis19, ytvis21 | vis | ``ap ap50 ap75 ar1 ar10`` | ``results.json`` (YouTube-VIS) |
| vipseg | vps | ``vpq`` (+ ``vpq_k`` per window) | - |
| davis17 | vos | ``j_and_f j_mean f_mean`` | - |

The vocabulary is the dataset's own class list (its annotation file's categories, things
first); a bundle whose vocabulary already has those names keeps its exported class bank, any
other gets them through its text encoder. ``--root`` alone finds the usual layouts (see
``training.data.layouts.LAYOUTS``), including the ``omg-train`` synthetic world's
(``panoptic_val.json`` ...).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from omg_rt.errors import (
    EXIT_CODES_HELP,
    ExitCode,
    InvalidInputError,
    OmgRtError,
    report_failure,
)
from omg_rt.metrics import (
    ConfusionMatrix,
    JFAccumulator,
    MaskAPAccumulator,
    VideoInstanceAPAccumulator,
    VPQAccumulator,
)
from omg_rt.segmenter import Segmenter
from training.data.layouts import DATASETS, DatasetFiles, locate, open_reader

# ------------------------------------------------------------------------------- evaluations


def _vocabulary(seg: Segmenter, names: Sequence[str], num_things: int) -> None:
    """Use the dataset's classes (keeping the exported bank when the names already match)."""
    current = seg.vocabulary
    if tuple(current.names) == tuple(names) and current.num_things == num_things:
        return
    seg.set_vocabulary(list(names), num_things=num_things)


def _to_dataset(seg: Segmenter, names: Sequence[str], num_things: int) -> np.ndarray:
    """Vocabulary index -> the dataset's contiguous class index (-1: not a dataset class).

    A dataset whose classes are all in the current vocabulary (COCO instances = the thing
    classes of a COCO panoptic vocabulary) keeps that vocabulary, as the official evaluation
    does; any other gets its own classes as the vocabulary."""
    current = list(seg.vocabulary.names)
    if not set(names) <= set(current):
        _vocabulary(seg, names, num_things)
        current = list(seg.vocabulary.names)
    index = {name: k for k, name in enumerate(names)}
    return np.array([index.get(name, -1) for name in current], np.int64)


def _limit(n: int, limit: int | None) -> int:
    return n if limit is None else min(n, limit)


def eval_coco_panoptic(seg: Segmenter, paths: DatasetFiles, out: Path, limit: int | None,
                       progress: bool) -> dict[str, Any]:
    from training.evaluate import evaluate_panoptic

    reader = open_reader("coco-panoptic", paths)
    _vocabulary(seg, reader.categories.names, reader.categories.num_things)
    count = _limit(len(reader), limit)
    (out / "panoptic").mkdir(exist_ok=True)
    records: list[dict[str, Any]] = []

    def save(record: Any, result: Any) -> None:
        png, segments = result.to_panoptic_png()
        name = Path(record.file_name).with_suffix(".png").name
        cv2.imwrite(str(out / "panoptic" / name), cv2.cvtColor(png, cv2.COLOR_RGB2BGR))
        cats = reader.categories.category_ids
        records.append({"image_id": record.image_id, "file_name": name, "segments_info": [
            {**s, "category_id": int(cats[s["category_id"]])} for s in segments]})

    metrics = evaluate_panoptic(seg, reader, count=count, progress=progress, on_result=save)
    (out / "panoptic.json").write_text(json.dumps({"annotations": records}))
    return metrics


def eval_coco_instances(seg: Segmenter, paths: DatasetFiles, out: Path, limit: int | None,
                        progress: bool) -> dict[str, Any]:
    reader = open_reader("coco-instances", paths)
    cats = reader.categories
    to_dataset = _to_dataset(seg, cats.names, cats.num_things)
    ids = np.array(cats.category_ids, np.int64)
    accumulator = MaskAPAccumulator(list(cats.category_ids))
    detections: list[dict[str, Any]] = []
    for i in tqdm(range(_limit(len(reader), limit)), desc="coco-instances", unit="img",
                  disable=not progress):
        record = reader[i]
        result = seg.instances(record.image)  # the official top-100, every score
        result = result.subset(to_dataset[result.labels] >= 0)
        labels = ids[to_dataset[result.labels]]
        accumulator.update(result.masks, result.scores, labels, record.masks,
                           ids[record.labels], record.iscrowd)
        for rle, score, label in zip(result.to_rle(), result.scores, labels, strict=True):
            detections.append({"image_id": record.image_id, "category_id": int(label),
                               "segmentation": rle, "score": float(score)})
    (out / "results.json").write_text(json.dumps(detections))
    return _percent(accumulator.compute(), ("ap", "ap50", "ap75", "ap_small", "ap_medium",
                                            "ap_large"))


def eval_ytvis(seg: Segmenter, paths: DatasetFiles, out: Path, limit: int | None,
               progress: bool) -> dict[str, Any]:
    reader = open_reader("ytvis19", paths)  # the 2021 files read the same
    cats = reader.categories
    to_dataset = _to_dataset(seg, cats.names, cats.num_things)
    ids = np.array(cats.category_ids, np.int64)
    # VIS scores thing tracks (YouTube-VIS has only things; a world with stuff tracks, like
    # omg-train's, has them left out)
    accumulator = VideoInstanceAPAccumulator(list(cats.category_ids[: cats.num_things]))
    detections: list[dict[str, Any]] = []
    for i in tqdm(range(_limit(len(reader), limit)), desc="youtube-vis", unit="video",
                  disable=not progress):
        video = reader[i]
        frames = list(video.frames)
        # the official evaluation: its tube split, logits averaged over the whole video
        results = seg.open_video("vis", num_frames=len(frames), whole_video=True).run(frames)
        tracks: dict[int, dict[str, Any]] = {}
        for t, result in enumerate(results):
            for k, identity in enumerate(result.ids):
                track = tracks.setdefault(int(identity), {
                    "masks": np.zeros((len(frames), *result.masks.shape[1:]), bool),
                    "score": float(result.scores[k]), "label": int(result.labels[k])})
                track["masks"][t] = result.masks[k]
        kept = [k for k in sorted(tracks)
                if 0 <= to_dataset[tracks[k]["label"]] < cats.num_things]
        tubes = np.stack([tracks[k]["masks"] for k in kept]) if kept else np.zeros(
            (0, *video.masks.shape[1:]), bool)
        scores = np.array([tracks[k]["score"] for k in kept], np.float32)
        labels = ids[to_dataset[np.array([tracks[k]["label"] for k in kept], np.int64)]]
        things = video.labels < cats.num_things
        accumulator.update(tubes, scores, labels, video.masks[things],
                           ids[video.labels[things]], video.iscrowd[things])
        from pycocotools import mask as mask_utils

        for tube, score, label in zip(tubes, scores, labels, strict=True):
            rles = []
            for frame in tube:
                rle = mask_utils.encode(np.asfortranarray(frame.astype(np.uint8)))
                rles.append({"size": rle["size"], "counts": rle["counts"].decode("ascii")})
            detections.append({"video_id": video.video_id, "category_id": int(label),
                               "segmentations": rles, "score": float(score)})
    (out / "results.json").write_text(json.dumps(detections))
    return _percent(accumulator.compute(), ("ap", "ap50", "ap75", "ar1", "ar10"))


def eval_ade20k(seg: Segmenter, paths: DatasetFiles, out: Path, limit: int | None,
                progress: bool) -> dict[str, Any]:
    reader = open_reader("ade20k", paths)
    cats = reader.categories
    _vocabulary(seg, cats.names, cats.num_things)
    confusion = ConfusionMatrix(cats.num_classes, ignore_index=255)
    for i in tqdm(range(_limit(len(reader), limit)), desc="ade20k", unit="img",
                  disable=not progress):
        record = reader[i]
        result = seg.semantic(record.image)
        assert result.id_map is not None  # semantic results carry their label map
        pred = np.where(result.id_map < 0, 0, result.id_map).astype(np.int64)
        confusion.update(pred, reader.label_map(i))
    metrics = confusion.compute()
    return {"miou": 100 * metrics["miou"], "pixel_accuracy": 100 * metrics["pixel_accuracy"]}


def eval_davis(seg: Segmenter, paths: DatasetFiles, out: Path, limit: int | None,
               progress: bool) -> dict[str, Any]:
    reader = open_reader("davis17", paths)
    accumulator = JFAccumulator()
    for i in tqdm(range(_limit(len(reader), limit)), desc="davis17", unit="video",
                  disable=not progress):
        video = reader[i]
        session = seg.open_video("vos", first_mask=reader.first_frame_ids(i))
        results = session.run(list(video.frames))
        pred = np.stack([r.id_map for r in results if r.id_map is not None])
        gt = np.zeros(pred.shape, np.int32)
        for k, track in enumerate(video.track_ids):
            gt[video.masks[k]] = int(track)
        accumulator.update(pred, gt)
    metrics = accumulator.compute()
    return {"j_and_f": 100 * metrics["jf"], "j_mean": 100 * metrics["j_mean"],
            "f_mean": 100 * metrics["f_mean"]}


def eval_vipseg(seg: Segmenter, paths: DatasetFiles, out: Path, limit: int | None,
                progress: bool) -> dict[str, Any]:
    reader = open_reader("vipseg", paths)
    cats = reader.categories
    _vocabulary(seg, cats.names, cats.num_things)
    categories = [{"id": k, "isthing": int(k < cats.num_things)} for k in range(cats.num_classes)]
    accumulator = VPQAccumulator(categories)
    for i in tqdm(range(_limit(len(reader), limit)), desc="vipseg", unit="video",
                  disable=not progress):
        video = reader[i]
        results = seg.open_video("vps").run(list(video.frames))
        pred = np.stack([r.id_map for r in results if r.id_map is not None]).astype(np.int64)
        pred_segments: dict[int, int] = {}
        for r in results:
            for identity, label in zip(r.ids, r.labels, strict=True):
                pred_segments[int(identity) + 1] = int(label)
        gt = np.zeros(pred.shape, np.int64)
        for k in range(len(video.track_ids)):
            gt[video.masks[k]] = k + 1
        accumulator.update(
            np.where(pred < 0, 0, pred + 1),
            [{"id": i, "category_id": c} for i, c in pred_segments.items()],
            gt, [{"id": k + 1, "category_id": int(label), "iscrowd": int(crowd)}
                 for k, (label, crowd) in enumerate(zip(video.labels, video.iscrowd))])
    metrics = accumulator.compute()
    return {"vpq": 100 * metrics["vpq"], "vpq_things": 100 * metrics["vpq_things"],
            "vpq_stuff": 100 * metrics["vpq_stuff"],
            **{f"vpq_{k}": 100 * metrics["per_window"][k]["all"]["pq"]
               for k in metrics["window_sizes"]}}


EVALUATORS: dict[str, Callable[..., dict[str, Any]]] = {
    "coco-panoptic": eval_coco_panoptic,
    "coco-instances": eval_coco_instances,
    "ade20k": eval_ade20k,
    "ytvis19": eval_ytvis,
    "ytvis21": eval_ytvis,
    "vipseg": eval_vipseg,
    "davis17": eval_davis,
}


def _percent(metrics: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {k: 100 * float(metrics[k]) for k in keys if k in metrics}


def evaluate_bundle(seg: Segmenter, dataset: str, paths: DatasetFiles, out: Path, *,
                    limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Run one dataset's evaluation; writes ``metrics.json`` and ``metrics.md`` into ``out``."""
    if dataset not in EVALUATORS:
        raise InvalidInputError(f"--dataset: expected one of {DATASETS}, got {dataset!r}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    metrics = EVALUATORS[dataset](seg, paths, out, limit, progress)
    report = {"dataset": dataset, "backend": seg.backend_name, "precision": seg.precision,
              "metrics": metrics, "seconds": time.perf_counter() - start}
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    rows = "\n".join(f"| {k} | {v:.2f} |" for k, v in metrics.items()
                     if isinstance(v, float | int))
    (out / "metrics.md").write_text(
        f"# {dataset}: {seg.backend_name}, {seg.precision}\n\n| metric | value |\n|---|---|\n"
        f"{rows}\n")
    return report


def compare_precisions(bundle: str | Path, dataset: str, paths: DatasetFiles, out: Path, *,
                       precisions: Sequence[str] = ("fp32", "fp16", "int8"),
                       backend: str = "onnxruntime", limit: int | None = None,
                       progress: bool = True) -> list[dict[str, Any]]:
    """``omg-bench --dataset NAME:ROOT``: one dataset's metrics for each of the bundle's
    ``precisions`` (same loader, same items), with each metric's change against FP32."""
    from omg_rt.bundle import load_bundle

    have = load_bundle(bundle, verify=False).precisions
    rows: list[dict[str, Any]] = []
    for precision in [p for p in precisions if p in have]:
        seg = Segmenter.from_bundle(bundle, backend=backend, precision=precision)
        report = evaluate_bundle(seg, dataset, paths, out / precision, limit=limit,
                                 progress=progress)
        seg.close()
        rows.append({"precision": precision, "backend": report["backend"],
                     "seconds": report["seconds"], **report["metrics"]})
    base = next((r for r in rows if r["precision"] == "fp32"), None)
    for row in rows:
        for key, value in list(row.items()):
            if base is not None and isinstance(value, float) and key != "seconds":
                row[f"delta_{key}"] = value - base[key]
    keys = [k for k in (rows[0] if rows else {}) if k not in ("precision", "backend")]
    lines = [f"# {dataset}: precisions of {bundle}", "",
             "| precision | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {r['precision']} | " + " | ".join(f"{r[k]:.2f}" for k in keys) + " |"
              for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    (out / "precisions.json").write_text(json.dumps(rows, indent=1))
    (out / "precisions.md").write_text("\n".join(lines) + "\n")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omg-eval", description=__doc__.split("\n\n")[0],
                                     epilog=EXIT_CODES_HELP,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle")
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", help="dataset folder in its usual layout")
    parser.add_argument("--images", help="image (or video frame) folder; DAVIS: its root")
    parser.add_argument("--annotations", help="annotation file (ADE20K: folder; DAVIS: "
                        "ImageSets/<year>/<split>.txt)")
    parser.add_argument("--masks", help="panoptic PNG folder (coco-panoptic, vipseg)")
    parser.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    parser.add_argument("--limit", type=int, help="evaluate only the first N items")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        paths = locate(args.dataset, args.root, images=args.images,
                       annotations=args.annotations, masks=args.masks)
        seg = Segmenter.from_bundle(args.bundle, backend=args.backend, precision=args.precision)
        report = evaluate_bundle(seg, args.dataset, paths, Path(args.out), limit=args.limit,
                                 progress=not args.quiet)
    except OmgRtError as exc:
        return report_failure("omg-eval", exc)
    except ValueError as exc:  # training.data's DataError: a malformed dataset
        return report_failure("omg-eval", InvalidInputError(str(exc)))
    print((Path(args.out) / "metrics.md").read_text().strip())
    print(f"({report['seconds']:.0f} s; {Path(args.out) / 'metrics.json'})")
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
