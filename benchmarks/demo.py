"""The main job, end to end on the embedded default: train (or reuse) the synthetic model,
export it to a bundle, and run the torch-free runtime on held-out generated data — panoptic
images, clicks and boxes, and a video — writing overlays, masks and a report.

    python -m benchmarks.demo [--out runs/demo] [--checkpoint RUN_DIR] [--images 8]

Without ``--checkpoint`` the ``synthetic-tiny`` preset is trained once (at most ~15 minutes on a
2-core CPU) into ``runs/synthetic-tiny`` and reused afterwards.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
from tqdm import tqdm

from omg_rt import Segmenter
from omg_rt.manifest import EXAMPLES
from omg_rt.metrics import PQAccumulator, id_consistency, mask_ious


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/demo", help="output directory")
    parser.add_argument("--checkpoint", help="a trained run directory (default: train or reuse "
                                             "the synthetic-tiny preset in --cache)")
    parser.add_argument("--cache", default="runs/synthetic-tiny",
                        help="where the synthetic-tiny run is trained and cached")
    parser.add_argument("--images", type=int, default=8, help="held-out images to segment")
    parser.add_argument("--frames", type=int, default=12, help="frames of the held-out video")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    if args.checkpoint:
        run = Path(args.checkpoint)
    else:
        from training.default_run import ensure_checkpoint

        run = ensure_checkpoint(args.cache)
    timings["train_or_load_s"] = time.perf_counter() - start
    vocab = json.loads((run / "vocabulary.json").read_text())
    names, num_things = tuple(vocab["names"]), int(vocab["num_things"])
    train_config = json.loads((run / "train_config.json").read_text())
    image_size = int(train_config.get("input_size", 64))

    start = time.perf_counter()
    data = _held_out_data(out / "data", args, train_config)
    timings["generate_data_s"] = time.perf_counter() - start

    from export import build_bundle

    start = time.perf_counter()
    bundle = build_bundle(run, out / "bundle", image_size=image_size,
                          vocab=SimpleNamespace(names=names, num_things=num_things),
                          precisions=("fp32", "int8"), verify=True)
    write_examples(bundle / EXAMPLES, image_size)  # what `omg-rt ui` offers beside its photos
    timings["export_s"] = time.perf_counter() - start

    seg = Segmenter.from_bundle(bundle, backend="auto")
    report: dict = {
        "checkpoint": str(run),
        "backend": seg.backend_name,
        "vocabulary": {"names": list(names), "num_things": num_things},
        "training_metrics": _read_json(run / "metrics.json"),
        "timings": timings,
    }
    report["panoptic"] = _panoptic(seg, data, names, num_things, out / "panoptic", timings)
    report["prompts"] = _prompts(seg, data, out / "prompts", timings)
    report["video"] = _video(seg, data, num_things, out / "video", timings)
    report["omg_eval"] = _omg_eval(seg, run, train_config, out / "omg-eval", timings)
    report["cache"] = seg.cache.stats() if hasattr(seg.cache, "stats") else {}
    (out / "report.json").write_text(json.dumps(report, indent=1, default=_jsonable))
    (out / "report.md").write_text(_markdown(report))
    print(_markdown(report))
    print(f"wrote {out}/report.md, overlays under {out}/panoptic, {out}/prompts, {out}/video")
    return 0


def _held_out_data(root: Path, args, train_config: dict) -> SimpleNamespace:
    from training.data import read_coco_panoptic, read_ytvis
    from training.data.synthetic import generate_dataset
    from training.data.world import SceneConfig

    config = SceneConfig(image_size=int(train_config.get("image_size", 64)))
    paths = generate_dataset(root, "demo", num_images=args.images, num_videos=1,
                             frames_per_video=args.frames, seed=args.seed, config=config,
                             progress=False)
    images = read_coco_panoptic(paths.panoptic_json, paths.panoptic_dir, paths.image_dir)
    videos = read_ytvis(paths.ytvis_json, paths.video_dir)
    return SimpleNamespace(images=images, video=videos[0])


def _panoptic(seg, data, names, num_things, out: Path, timings) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    categories = [{"id": k + 1, "isthing": int(k < num_things)} for k in range(len(names))]
    pq = PQAccumulator(categories)
    latencies = []
    for i in tqdm(range(len(data.images)), desc="panoptic", unit="img"):
        record = data.images[i]
        start = time.perf_counter()
        result = seg.panoptic(record.image)
        latencies.append(time.perf_counter() - start)
        _save_rgb(out / f"{i:03d}_overlay.png", result.overlay(record.image))
        png, info = result.to_panoptic_png()
        _save_rgb(out / f"{i:03d}_panoptic.png", png)
        (out / f"{i:03d}_segments.json").write_text(json.dumps(info, indent=1))
        pred_map = np.zeros(record.image.shape[:2], np.int64)
        for k, mask in enumerate(result.masks):
            pred_map[mask] = k + 1
        pred_segments = [{"id": k + 1, "category_id": int(label) + 1}
                         for k, label in enumerate(result.labels)]
        gt_map = np.zeros(record.image.shape[:2], np.int64)
        for k, mask in enumerate(record.masks):
            gt_map[mask] = k + 1
        gt_segments = [{"id": k + 1, "category_id": int(label) + 1, "iscrowd": int(crowd)}
                       for k, (label, crowd) in enumerate(zip(record.labels, record.iscrowd))]
        pq.update(pred_map, pred_segments, gt_map, gt_segments)
    summary = pq.compute()
    timings["panoptic_median_ms"] = 1e3 * float(np.median(latencies))
    return {"pq": 100 * summary["all"]["pq"], "sq": 100 * summary["all"]["sq"],
            "rq": 100 * summary["all"]["rq"], "images": len(data.images)}


def _omg_eval(seg, run: Path, train_config: dict, out: Path, timings) -> dict:
    """``omg-eval`` of the bundle on the training run's own held-out split (COCO panoptic), to
    set beside the PQ training reported for it; {} when the run has no such split."""
    from benchmarks.omg_eval import evaluate_bundle
    from training.data import DataError
    from training.data.layouts import locate

    try:
        files = locate("coco-panoptic", train_config.get("data_root") or run / "data")
    except DataError:
        return {}
    start = time.perf_counter()
    report = evaluate_bundle(seg, "coco-panoptic", files, out)
    timings["omg_eval_s"] = time.perf_counter() - start
    return {"pq": report["metrics"]["pq"], "images": report["metrics"].get("num_images"),
            "root": str(files.images.parent.parent)}


def _prompts(seg, data, out: Path, timings) -> dict:
    from training.data.prompts import mask_box, sample_point

    out.mkdir(parents=True, exist_ok=True)
    click_ious, box_ious, latencies = [], [], []
    for i in tqdm(range(len(data.images)), desc="prompts", unit="img"):
        record = data.images[i]
        if not len(record.masks):
            continue
        handle = seg.set_image(record.image)
        points = np.stack([sample_point(m, "center") for m in record.masks]).astype(np.float32)
        start = time.perf_counter()
        clicks = seg.prompt(handle, points=points)
        latencies.append((time.perf_counter() - start) / len(points))
        boxes = np.stack([mask_box(m) for m in record.masks]).astype(np.float32)
        framed = seg.prompt(handle, boxes=boxes)
        click_ious.append(mask_ious(clicks.masks, record.masks))
        box_ious.append(mask_ious(framed.masks, record.masks))
        overlay = clicks.overlay(record.image)
        for x, y in points:
            cv2.circle(overlay, (int(x), int(y)), 2, (255, 255, 255), -1)
        _save_rgb(out / f"{i:03d}_clicks.png", overlay)
        _save_rgb(out / f"{i:03d}_boxes.png", framed.overlay(record.image))
    timings["prompt_median_ms_per_prompt_cached"] = 1e3 * float(np.median(latencies))
    clicks, boxes = np.concatenate(click_ious), np.concatenate(box_ious)
    return {"click_miou": float(clicks.mean()), "box_miou": float(boxes.mean()),
            "prompts": int(clicks.size)}


def _video(seg, data, num_things, out: Path, timings) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    video = data.video
    start = time.perf_counter()
    results = seg.open_video(task="vis").run(tqdm(video.frames, desc="video", unit="frame"))
    # the confident tracks (the CLI's --min-score default), not the official top-100 pairs
    results = [result.keep() for result in results]
    timings["video_ms_per_frame"] = 1e3 * (time.perf_counter() - start) / len(video.frames)
    h, w = video.frames[0].shape[:2]
    writer = cv2.VideoWriter(str(out / "vis_overlay.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 4,
                             (w, h))
    pred = np.zeros((len(results), h, w), np.int64)
    for t, result in enumerate(results):
        frame = result.overlay(video.frames[t])
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        _save_rgb(out / f"{t:03d}_overlay.png", frame)
        for i in np.argsort(result.scores, kind="stable"):  # the most confident on top
            pred[t][result.masks[i]] = int(result.ids[i])
    writer.release()
    things = np.flatnonzero(video.labels < num_things)
    gt = np.zeros(pred.shape, np.int64)
    for k in things:
        gt[video.masks[k]] = k + 1
    consistency = id_consistency(pred, gt)["id_consistency"] if things.size else float("nan")
    return {"id_consistency": float(consistency), "frames": len(results),
            "tracks": int(things.size)}


def _markdown(report: dict) -> str:
    t = report["timings"]
    train = report.get("training_metrics") or {}
    lines = [
        "# omg-rt demo", "",
        f"Checkpoint `{report['checkpoint']}` exported to a bundle and run on the "
        f"**{report['backend']}** backend (torch-free).", "",
        "| held-out generated data | value |", "|---|---:|",
        f"| panoptic PQ ({report['panoptic']['images']} images) | {report['panoptic']['pq']:.1f} |",
        f"| one-click mIoU ({report['prompts']['prompts']} objects) | "
        f"{report['prompts']['click_miou']:.3f} |",
        f"| box mIoU | {report['prompts']['box_miou']:.3f} |",
        f"| video ID consistency ({report['video']['tracks']} tracks, "
        f"{report['video']['frames']} frames) | {report['video']['id_consistency']:.3f} |",
    ]
    scored = report.get("omg_eval") or {}
    if scored:
        trained = train.get("pq")
        lines.append(f"| omg-eval PQ, training's held-out split ({scored['images']} images in "
                     f"`{scored['root']}`) | "
                     f"{scored['pq']:.1f}"
                     + (f" (training reported {trained:.1f})" if trained is not None else "")
                     + " |")
    lines += ["", "| timing | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in t.items()]
    if train:
        keys = ("pq", "prompt_miou", "id_consistency")
        lines += ["", "Training run's own held-out evaluation: "
                  + ", ".join(f"{k} {train[k]:.3f}" for k in keys if k in train)]
    return "\n".join(lines) + "\n"


def write_examples(folder: Path, image_size: int, *, count: int = 4, frames: int = 24,
                   shown: int = 512) -> list[Path]:
    """Write generated scenes of the synthetic world (split ``ui``: never trained on) and one
    generated clip into a bundle's ``examples/`` folder, where ``omg-rt ui`` offers them: the only
    things the synthetic model knows. Drawn at the training size and zoomed (nearest neighbour) to
    ``shown`` pixels, so the bundle's resize gives back what the model saw in training."""
    from training.data.world import SceneConfig, SceneGenerator

    folder.mkdir(parents=True, exist_ok=True)
    world = SceneGenerator(0, config=SceneConfig(image_size=image_size), split="ui")
    zoom = max(1, shown // image_size)

    def zoomed(image: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(image.repeat(zoom, 0).repeat(zoom, 1))

    written = []
    for index in range(count):
        written.append(folder / f"generated scene {index + 1}.png")
        _save_rgb(written[-1], zoomed(world.image(index).image))
    written.append(folder / "generated clip.avi")
    size = image_size * zoom
    writer = cv2.VideoWriter(str(written[-1]), cv2.VideoWriter.fourcc(*"MJPG"), 8.0, (size, size))
    for frame in world.video(0, frames).frames:
        writer.write(cv2.cvtColor(zoomed(frame), cv2.COLOR_RGB2BGR))
    writer.release()
    return written


def _save_rgb(path: Path, image: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
