"""The fastest a model's FP32 stages can run on this CPU: their floating-point work against the
rate this machine's FP32 matrix products reach, in PyTorch and ONNX Runtime alike.

    python -m benchmarks.bench_flop_floor [--preset omg-convl] [--shape 1024x768] [--threads 2]
        [--runs 7] [--report REPORT.json]

The work of each stage (encoder, pixel decoder, query decoder of a panoptic call) is counted by
``torch.utils.flop_counter.FlopCounterMode`` over the model's own eager code on one image of
``--shape`` (W x H, padded to a multiple of 32 as the runtime does); it counts the matrix products
and convolutions, which are nearly all of it (masked attention as dense: an upper bound). The rate
is measured here, both runtimes interleaved: one (3072 x 768) @ (768 x 3072) product, ConvNeXt-L's
largest MLP layer at a 1024x768 image, the fastest of ``--runs`` (noise only slows a run). A
stage's floor is its work at the faster runtime's rate: no FP32 runtime computes it faster on
these cores (that would take fewer operations, another precision, or other hardware).

With ``--report`` (an ``omg-bench`` report.json) the table adds each measured target's stage
medians and their ratio to the floor.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

GEMM = (3072, 768, 3072)  # (M, K, N): ConvNeXt-L stage 3 MLP, 768x1024 image
STAGES = ("encoder", "pixel_decoder", "query_decoder")


def _shape(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def stage_flops(preset: str, width: int, height: int) -> dict[str, float]:
    """FLOPs (2 per multiply-add) of each stage of one panoptic call, counted over the eager
    model (random weights: the work does not depend on them)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from omg_rt.backends.torch import learned_queries
    from training.model import build_model

    torch.manual_seed(0)
    model = build_model(preset).eval()
    image = torch.randn(1, 3, -(-height // 32) * 32, -(-width // 32) * 32)  # size_divisor 32
    content, position = (torch.from_numpy(a)[None] for a in learned_queries(model))
    bank = torch.nn.functional.normalize(
        torch.randn(133, 17, model.config.backbone.embed_dim), dim=-1)
    flops: dict[str, float] = {}
    with torch.inference_mode():
        def counted(name: str, fn: Any) -> Any:
            with FlopCounterMode(display=False) as counter:
                out = fn()
            flops[name] = float(counter.get_total_flops())
            return out

        features = counted("encoder", lambda: model.encode(image))
        mask_features, memories = counted("pixel_decoder", lambda: model.decode_pixels(features))
        counted("query_decoder", lambda: model.decode_queries(
            memories, mask_features, bank, content, position, prompt_mode=False))
    return flops


def gemm_rates(threads: int, runs: int) -> dict[str, float]:
    """GFLOP/s of one FP32 (M, K) @ (K, N) product in PyTorch and ONNX Runtime, interleaved:
    the fastest of ``runs`` each."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    m, k, n = GEMM
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), np.float32)
    w = rng.standard_normal((k, n), np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    torch.set_num_threads(threads)
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    calls: dict[str, Callable[[], Any]] = {
        "torch": lambda: torch.mm(tx, tw), "onnxruntime": lambda: session.run(None, {"x": x})}
    times: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()  # warm-up: packing, thread pool
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: 2 * m * k * n / min(t) / 1e9 for name, t in times.items()}


def _measured(report: Path) -> dict[str, dict[str, float]]:
    """{target: {stage: p50 ms}} of an omg-bench report's FP32 stage rows."""
    data = json.loads(report.read_text())
    out: dict[str, dict[str, float]] = {}
    for row in data["latency"]["stages"]:
        stage = row["case"].replace(" ", "_")  # "pixel decoder" -> STAGES' name
        if row["precision"] == "fp32" and row["status"] == "ok" and stage in STAGES:
            out.setdefault(f"{row['runtime']} fp32", {})[stage] = float(row["p50_ms"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="omg-convl")
    p.add_argument("--shape", type=_shape, default=(1024, 768), help="WxH of the image")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--report", type=Path, help="an omg-bench report.json to compare")
    args = p.parse_args(argv)

    rates = gemm_rates(args.threads, args.runs)
    best = max(rates.values())
    flops = stage_flops(args.preset, *args.shape)
    m, k, n = GEMM
    print(f"FP32 ({m} x {k}) @ ({k} x {n}), {args.threads} threads, fastest of {args.runs}: "
          + ", ".join(f"{name} {rate:.0f} GFLOP/s" for name, rate in rates.items()))
    measured = _measured(args.report) if args.report else {}
    head = "| stage | GFLOP | floor ms |" + "".join(f" {t} ms | x floor |" for t in measured)
    print(f"\n`{args.preset}`, one {args.shape[0]}x{args.shape[1]} image:\n")
    print(head)
    print("|---|---:|---:|" + "---:|---:|" * len(measured))
    rows = [(stage, flops[stage], {t: s.get(stage, float("nan")) for t, s in measured.items()})
            for stage in STAGES]
    rows.append(("all three", sum(flops.values()),
                 {t: sum(ms[t] for _, _, ms in rows) for t in measured}))
    for name, work, ms in rows:
        floor = work / best / 1e6
        cells = "".join(f" {ms[t]:.0f} | {ms[t] / floor:.2f} |" for t in measured)
        print(f"| {name} | {work / 1e9:.4g} | {floor:.4g} |{cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
