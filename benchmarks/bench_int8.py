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

Goal (issue #12): the encoder's INT8 well below 0.5x its FP32 latency.
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

    from export.graphs import graph_defs
    from export.onnx_export import export_graph
    from training.model import build_model

    torch.manual_seed(0)
    model = build_model(preset).eval()
    model.text_encoder = None  # not part of the encoder graph: less memory while tracing
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.backbone.named_parameters():
            if tensor.ndim != 1:
                continue
            r = torch.randn(tensor.shape, generator=generator)
            leaf = name.rsplit(".", 1)[-1]
            tensor.copy_(0.1 + 0.01 * r if leaf == "gamma"
                         else 1.0 + 0.1 * r if leaf == "weight" else 0.02 * r)
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
    args = parser.parse_args(argv)
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
