"""INT8 vs FP32 on ONNX Runtime's CPU provider, side by side in one process.

    python benchmarks/bench_int8.py export --preset omg-convl --size 512 --out /tmp/int8
    python benchmarks/bench_int8.py measure /tmp/int8/encoder.onnx [--runs 5] [--threads 2]

``export`` builds the preset with random weights and writes only its encoder graph (ConvNeXt-L:
784 MB of weights in ``encoder.onnx.data``). The backbone's 1-D tensors follow the official
fixture's rule (``tests/official_golden.py``: layer-scale gamma 0.1 + 0.01 r, norm weights
1 + 0.1 r, biases 0.02 r): timm's init (gamma 1e-6, zero biases) would hide every MLP branch
behind the residual and let onnxslim drop the bias Adds, flattering INT8's error and speed.

``measure`` quantizes it with ``export.precision.quantize_int8`` calibrated on the
scikit-image photos (``--calib-scale``; skipped when ``<dir>/int8/encoder.onnx`` exists), then
times both graphs on one photo padded to ``--size`` (FP32 and INT8 runs interleaved, median of
``--runs`` each after a warm-up), reports the relative error ||int8 - fp32|| / ||fp32|| of every
output, and what ONNX Runtime made of the INT8 graph (``integer_op_counts``; Conv / MatMul left
in float and Quantize / Dequantize nodes left unfused in the optimised graph).

``golden`` exports the official fixture's deterministic ConvNeXt-L weights
(``tests/official_golden.py``, its 240-class bank, the fixture's 1024 scale) with FP32 and INT8
graphs (skipped when ``<dir>/bundle`` exists), then runs ``Segmenter.panoptic`` on both precisions
over images the calibration never saw (the fixture's photo and its video frames, each at its own
padded size) and reports, per image and overall: the class-logit error of INT8 (max |int8 - fp32|
per query over the largest |fp32|), the kept segments' mask IoU (each FP32 segment scored
against the INT8 segment of the same class that overlaps it most; 0 when there is none; the
area-weighted mean and the fraction >= 0.95), the same against the INT8 segment of any class
(the masks alone: a segment whose class flipped between near-tied classes keeps its pixels),
the pixel agreement of the class maps, and the
end-to-end panoptic latency of both (interleaved, median of ``--runs``).

Goal (issue #12): the encoder's INT8 well below 0.5x its FP32 latency; end to end INT8 <= 0.4x
eager PyTorch with a kept-segment mask IoU >= 0.95 against FP32 on the golden weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def export_encoder(preset: str, size: int, out: Path) -> Path:
    import torch

    from benchmarks.omg_bench.targets import lively_backbone
    from export.graphs import graph_defs
    from export.onnx_export import export_graph
    from training.model import build_model

    torch.manual_seed(0)
    model = build_model(preset).eval()
    model.text_encoder = None  # not part of the encoder graph: less memory while tracing
    lively_backbone(model)
    graph = graph_defs(model, (size, size))["encoder"]
    del model
    return export_graph(graph, out / "encoder.onnx")


def measure(source: Path, *, size: int, runs: int, threads: int, calib_scale: int) -> dict:
    import onnxruntime as ort

    from export import precision

    int8 = source.parent / "int8" / source.name
    quantize_s = None
    if not int8.exists():
        start = time.perf_counter()
        feeds = [{"image": x} for x in precision.calibration_photos((calib_scale, calib_scale))]
        precision.quantize_int8(source, int8, feeds, desc="int8 calibration", progress=False)
        quantize_s = time.perf_counter() - start
    ops = precision.optimized_op_counts(int8)
    fp32_ops = precision.optimized_op_counts(source)

    image = next(precision.calibration_photos((size, size), names=("astronaut",)))
    padded = np.zeros((1, 3, size, size), np.float32)
    padded[:, :, : image.shape[2], : image.shape[3]] = image
    sessions = {}
    for name, path in (("fp32", source), ("int8", int8)):
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sessions[name] = ort.InferenceSession(str(path), options,
                                              providers=["CPUExecutionProvider"])
    outputs = {name: s.run(None, {"image": padded}) for name, s in sessions.items()}  # warm-up
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(runs):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, {"image": padded})
            samples[name].append((time.perf_counter() - start) * 1e3)
    names = [o.name for o in sessions["fp32"].get_outputs()]
    rel = {n: float(np.linalg.norm(a - b) / np.linalg.norm(a))
           for n, a, b in zip(names, outputs["fp32"], outputs["int8"])}
    median = {name: statistics.median(v) for name, v in samples.items()}
    return {
        "graph": str(source), "input": [1, 3, size, size], "threads": threads, "runs": runs,
        "ort": ort.__version__, "quantize_s": quantize_s,
        "median_ms": median, "samples_ms": samples,
        "int8_over_fp32": median["int8"] / median["fp32"],
        "relative_error": rel,
        "integer_ops": precision.integer_op_counts(int8),
        "int8_float_ops": {op: ops.get(op, 0) for op in
                           ("Conv", "MatMul", "FusedConv", "FusedMatMul", "Gemm", "NchwcConv")},
        "int8_unfused_qdq": {op: ops.get(op, 0) for op in ("QuantizeLinear", "DequantizeLinear")},
        "int8_optimized_ops": ops,
        "fp32_optimized_ops": fp32_ops,
    }


def segment_iou(reference, other, same_class: bool = True) -> list[tuple[float, int]]:
    """(IoU, area) of each of ``reference``'s segments with ``other``'s segment of the same
    class (of any class when not ``same_class``) that overlaps it most (IoU 0 when ``other`` has
    no such segment)."""
    out = []
    for mask, label in zip(reference.masks, reference.labels, strict=True):
        best = 0.0
        candidates = other.masks[other.labels == label] if same_class else other.masks
        for candidate in candidates:
            union = np.logical_or(mask, candidate).sum()
            if union:
                best = max(best, float(np.logical_and(mask, candidate).sum() / union))
        out.append((best, int(mask.sum())))
    return out


def golden_agreement(out: Path, *, runs: int, threads: int) -> dict:
    """FP32 vs INT8 of the official fixture's weights through ``Segmenter`` (see the module
    docstring)."""
    from omg_rt import Segmenter
    from tests.official_golden import (
        DEMO_NUM_THINGS,
        GOLDEN,
        build_official_bundle,
        read_rgb,
    )

    bundle = out / "bundle"
    export_s = None
    if not (bundle / "manifest.json").exists():
        start = time.perf_counter()
        build_official_bundle(out, precisions=("fp32", "int8"), progress=True)
        export_s = time.perf_counter() - start
    bank = np.ascontiguousarray(np.load(GOLDEN / "vocab.npy"), dtype=np.float32)
    names = [f"class {i}" for i in range(bank.shape[0])]
    segs = {}
    for precision in ("fp32", "int8"):
        seg = Segmenter.from_bundle(bundle, backend="onnxruntime", precision=precision,
                                    threads=threads)
        seg.set_class_bank(names, bank, num_things=DEMO_NUM_THINGS, ensemble=False)
        segs[precision] = seg
    paths = [GOLDEN / "image.png", *sorted((GOLDEN / "video").glob("*.png"))]
    per_image, ious, mask_ious = [], [], []
    for path in paths:
        image = read_rgb(path)
        results, predictions = {}, {}
        for precision, seg in segs.items():
            session = seg.set_image(image)
            predictions[precision] = seg.predict(session).class_scores
            results[precision] = seg.panoptic(session)
        fp32, int8 = predictions["fp32"], predictions["int8"]
        per_query = np.abs(int8 - fp32).max(1) / np.abs(fp32).max()
        matched = segment_iou(results["fp32"], results["int8"])
        any_class = segment_iou(results["fp32"], results["int8"], same_class=False)
        ious += matched
        mask_ious += [i for i, _ in any_class]
        per_image.append({
            "image": path.name, "hw": list(image.shape[:2]),
            "padded_hw": list(session.padded_hw),
            "class_logit_error_max": float(per_query.max()),
            "class_logit_error_median": float(np.median(per_query)),
            "segments_fp32": len(results["fp32"].labels),
            "segments_int8": len(results["int8"].labels),
            "segment_iou_mean": float(np.mean([i for i, _ in matched])) if matched else None,
            "segment_mask_iou_any_class": [round(i, 4) for i, _ in any_class],
            "class_map_agreement": float((_class_map(results["fp32"])
                                          == _class_map(results["int8"])).mean()),
        })
        print(json.dumps(per_image[-1]), file=sys.stderr, flush=True)
    image = read_rgb(paths[0])
    samples: dict[str, list[float]] = {p: [] for p in segs}
    for seg in segs.values():  # warm-up
        seg.cache.clear()
        seg.panoptic(image)
    for _ in range(runs):
        for p, seg in segs.items():
            seg.cache.clear()
            start = time.perf_counter()
            seg.panoptic(image)
            samples[p].append((time.perf_counter() - start) * 1e3)
    median = {p: statistics.median(v) for p, v in samples.items()}
    values = np.array([i for i, _ in ious]) if ious else np.zeros(0)
    areas = np.array([a for _, a in ious], np.float64) if ious else np.zeros(0)
    for seg in segs.values():
        seg.close()
    return {
        "bundle": str(bundle), "export_s": export_s, "threads": threads, "runs": runs,
        "images": per_image,
        "segments": int(values.size),
        "segment_iou_mean": float(values.mean()) if values.size else None,
        "segment_iou_area_weighted": float((values * areas).sum() / areas.sum())
        if values.size else None,
        "segments_iou_at_least_0.95": float((values >= 0.95).mean()) if values.size else None,
        "segments_mask_iou_any_class_at_least_0.95":
            float((np.array(mask_ious) >= 0.95).mean()) if mask_ious else None,
        "class_logit_error_max": max(r["class_logit_error_max"] for r in per_image),
        "panoptic_median_ms": median, "panoptic_samples_ms": samples,
        "int8_over_fp32": median["int8"] / median["fp32"],
    }


def _class_map(result) -> np.ndarray:
    """(H, W) class index per pixel (-1 where no segment)."""
    out = np.full(result.masks.shape[1:], -1, np.int64)
    for mask, label in zip(result.masks, result.labels, strict=True):
        out[mask] = label
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="export a preset's encoder graph (random weights)")
    ex.add_argument("--preset", default="omg-convl")
    ex.add_argument("--size", type=int, default=512)
    ex.add_argument("--out", type=Path, required=True)
    me = sub.add_parser("measure", help="quantize (if needed) and time FP32 vs INT8")
    me.add_argument("encoder", type=Path)
    me.add_argument("--size", type=int, default=512)
    me.add_argument("--runs", type=int, default=5)
    me.add_argument("--threads", type=int, default=2)
    me.add_argument("--calib-scale", type=int, default=512)
    me.add_argument("--json", type=Path)
    go = sub.add_parser("golden", help="FP32 vs INT8 of the official fixture's weights, end to end")
    go.add_argument("--out", type=Path, required=True)
    go.add_argument("--runs", type=int, default=3)
    go.add_argument("--threads", type=int, default=2)
    go.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.command == "golden":
        report = golden_agreement(args.out, runs=args.runs, threads=args.threads)
        text = json.dumps(report, indent=1)
        if args.json:
            args.json.write_text(text)
        print(text)
        return 0
    if args.command == "export":
        print(export_encoder(args.preset, args.size, args.out))
        return 0
    report = measure(args.encoder, size=args.size, runs=args.runs, threads=args.threads,
                     calib_scale=args.calib_scale)
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
