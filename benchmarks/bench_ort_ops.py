"""omg-rt's masked-attention operator against the portable graph it replaces, ONNX Runtime, CPU.

    python -m benchmarks.bench_ort_ops [--keys 12288,57040] [--runs 5] [--threads 2]

One masked cross-attention of the ConvNeXt-L query decoder (300 queries, 8 heads of 32) over K
keys -- 12288 for a stride-8 layer of a 768x1024 image, 57040 for a 5-frame clip at 736x992 --
exported twice from the same PyTorch code (the decoder's head split, ``kernels.masked_attention``,
the merge back): the ``portable`` flavour (transposes to heads, scores, bias, softmax, two matrix
products) and the ``fused`` one (one ``omg_rt::MaskedAttention`` node; its transposes cancel the
head split's in ONNX Runtime, as in the query decoder). Each mask row allows one disc-shaped
region of the key grid (as a mask at a stride does) covering the given fraction of the keys,
every seventh row none (Mask2Former's empty-row rule). The two sessions run interleaved on the
same inputs, after a warm-up run each; prints the medians, their ratio, and the largest
difference of the outputs relative to the largest portable output.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _masks(rng: np.random.Generator, queries: int, keys: int, fraction: float) -> np.ndarray:
    """(1, 1, Q, K) bool: per query a disc covering ``fraction`` of a near-square key grid."""
    width = int(np.ceil(np.sqrt(keys)))
    rows = np.arange(keys) // width
    cols = np.arange(keys) % width
    cy, cx = rng.integers(0, keys // width, queries), rng.integers(0, width, queries)
    radius = np.sqrt(fraction * keys / np.pi)
    allowed = np.hypot(rows[None] - cy[:, None], cols[None] - cx[:, None]) <= radius
    allowed[::7] = False
    return allowed[None, None]


def _export(flavour: str, path: Path, example: tuple) -> Path:
    import torch

    import kernels
    from export.graphs import deform_attn_flavour

    class Attention(torch.nn.Module):
        """(B, L, heads, d) in and out, split to heads as the decoder's projections are."""

        def forward(self, q, k, v, mask):
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            return kernels.masked_attention(q, k, v, mask).transpose(1, 2)

    with torch.no_grad(), deform_attn_flavour(flavour), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's notice
        torch.onnx.export(Attention(), example, str(path), dynamo=False, opset_version=17,
                          input_names=["q", "k", "v", "mask"], output_names=["out"],
                          dynamic_axes={"k": {1: "K"}, "v": {1: "K"}, "mask": {3: "K"}})
    return path


def main(argv: list[str] | None = None) -> int:
    import onnxruntime as ort
    import torch

    from omg_rt.backends import ort_ops

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--keys", default="12288,57040", help="comma-separated key counts")
    p.add_argument("--fraction", type=float, default=0.1, help="keys a mask row allows")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    rng = np.random.default_rng(0)
    heads, queries, d = 8, 300, 32
    small = tuple(torch.randn(s) for s in ((1, queries, heads, d), (1, 64, heads, d),
                                           (1, 64, heads, d)))
    example = (*small, torch.rand(1, 1, queries, 64) < 0.5)
    print("| keys | portable ms | fused ms | fused ÷ portable | max diff ÷ max |")
    print("|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as work:
        sessions = {}
        for flavour in ("portable", "fused"):
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.add_session_config_entry("session.set_denormal_as_zero", "1")
            ort_ops.register(options)
            path = _export(flavour, Path(work) / f"{flavour}.onnx", example)
            sessions[flavour], _ = ort_ops.inference_session(  # the caller's FP state kept
                path, options, ["CPUExecutionProvider"])
        for keys in (int(k) for k in args.keys.split(",")):
            feeds = {"q": rng.standard_normal((1, queries, heads, d), np.float32),
                     "k": rng.standard_normal((1, keys, heads, d), np.float32),
                     "v": rng.standard_normal((1, keys, heads, d), np.float32),
                     "mask": _masks(rng, queries, keys, args.fraction)}
            times: dict[str, list[float]] = {name: [] for name in sessions}
            outputs = {name: s.run(None, feeds)[0] for name, s in sessions.items()}  # warm-up
            for _ in range(args.runs):
                for name, session in sessions.items():
                    start = time.perf_counter()
                    session.run(None, feeds)
                    times[name].append(1e3 * (time.perf_counter() - start))
            portable, fused = (float(np.median(times[n])) for n in ("portable", "fused"))
            diff = np.abs(outputs["fused"] - outputs["portable"]).max()
            print(f"| {keys} | {portable:.1f} | {fused:.1f} | {fused / portable:.3f} | "
                  f"{diff / np.abs(outputs['portable']).max():.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
