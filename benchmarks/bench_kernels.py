"""Kernel benchmark: Triton vs the references at OMG-Seg's shapes, on a CUDA GPU.

    python benchmarks/bench_kernels.py [--json rows.json] [--quick]

Multi-scale deformable attention (pixel decoder: 8 heads x 32, 3 levels, 4 points, queries = all
pixels of strides 8/16/32 of a 1024x1024 image) against ``ms_deform_attn_reference`` at batch 1,
batch 4 and an 8-frame clip; masked attention (decoder: 300 queries, 8 heads x 32, keys at
strides 32/16/8) against ``scaled_dot_product_attention`` with the same boolean mask. fp32, fp16,
bf16. Times are medians of ``triton.testing.do_bench``; GB/s counts each input and output byte
once (the minimum traffic), compared with this device's measured copy bandwidth. Prints a
markdown table with provenance; exits with status 2 and a message where there is no GPU.

Goals (issue): deformable attention >= 3x the reference and >= 60% of copy bandwidth; masked
attention >= 1.6x SDPA with a mask.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

OMG_SEG_LEVELS = [(128, 128), (64, 64), (32, 32)]  # strides 8/16/32 of 1024x1024
MSDA_CASES = [("image", 1), ("batch 4", 4), ("8-frame clip", 8)]
ATTN_KEYS = [("stride 32", 32 * 32), ("stride 16", 64 * 64), ("stride 8", 128 * 128)]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
GOALS = {"ms_deform_attn": {"speedup": 3.0, "bandwidth": 0.60},
         "masked_attention": {"speedup": 1.6}}


def provenance() -> dict:
    import triton

    from benchmarks.harness import environment

    env = environment()  # python, machine, git SHA, date, torch, gpu
    return {"device": env.get("gpu", "?"), "torch": env.get("torch", "?"),
            "triton": triton.__version__, "python": env["python"], "git": env["git"],
            "date": env["date"]}


def bench(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def copy_bandwidth() -> float:
    """Device-to-device copy GB/s (read + write) on a 1 GiB buffer."""
    src = torch.empty(1 << 28, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / ms / 1e6


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30))


@torch.no_grad()
def compare(fast, baseline, args, baseline_args=None) -> tuple[float, float, float]:
    """(max relative error of fast vs baseline, fast ms, baseline ms)."""
    baseline_args = args if baseline_args is None else baseline_args
    err = rel_err(fast(*args), baseline(*baseline_args))
    return err, bench(lambda: fast(*args)), bench(lambda: baseline(*baseline_args))


def msda_rows(bandwidth: float, quick: bool) -> list[dict]:
    from kernels.ms_deform_attn_triton import ms_deform_attn_triton
    from kernels.reference import ms_deform_attn_reference

    rows = []
    shapes = torch.tensor(OMG_SEG_LEVELS, device="cuda")
    areas = shapes.prod(1)
    starts = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    s = int(areas.sum())
    m, d, levels, points = 8, 32, len(OMG_SEG_LEVELS), 4
    for case, n in MSDA_CASES[:1] if quick else MSDA_CASES:
        for dname, dtype in DTYPES.items():
            value = torch.randn(n, s, m, d, device="cuda", dtype=dtype)
            locs = torch.rand(n, s, m, levels, points, 2, device="cuda", dtype=dtype)
            weights = torch.rand(n, s, m, levels, points, device="cuda").softmax(-1).to(dtype)
            err, t_tri, t_ref = compare(ms_deform_attn_triton, ms_deform_attn_reference,
                                        (value, shapes, starts, locs, weights))
            nbytes = sum(t.numel() * t.element_size() for t in (value, locs, weights))
            nbytes += n * s * m * d * value.element_size()  # output
            rows.append(dict(op="ms_deform_attn", case=f"{case} (N={n}, Lq=S={s})", dtype=dname,
                             triton_ms=t_tri, baseline="reference", baseline_ms=t_ref,
                             speedup=t_ref / t_tri, gbps=nbytes / t_tri / 1e6,
                             bandwidth_frac=nbytes / t_tri / 1e6 / bandwidth, max_rel_err=err))
            del value, locs, weights
            torch.cuda.empty_cache()
    return rows


def attention_rows(bandwidth: float, quick: bool) -> list[dict]:
    from kernels.masked_attention_triton import masked_attention_triton
    from kernels.reference import attendable

    def sdpa_with_mask(q, k, v, allowed):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed)

    rows = []
    b, m, nq, d = 1, 8, 300, 32
    for case, nk in ATTN_KEYS[-1:] if quick else ATTN_KEYS:
        for dname, dtype in DTYPES.items():
            q = torch.randn(b, m, nq, d, device="cuda", dtype=dtype)
            k = torch.randn(b, m, nk, d, device="cuda", dtype=dtype)
            v = torch.randn(b, m, nk, d, device="cuda", dtype=dtype)
            mask = torch.rand(b, 1, nq, nk, device="cuda") < 0.4
            mask[:, :, :5] = False  # a few empty rows, as Mask2Former produces
            # SDPA gets the mask with the empty-row rule already applied (its cost not counted).
            allowed = attendable(mask)
            err, t_tri, t_sdpa = compare(masked_attention_triton, sdpa_with_mask,
                                         (q, k, v, mask), (q, k, v, allowed))
            nbytes = sum(t.numel() * t.element_size() for t in (q, k, v, q)) + mask.numel()
            rows.append(dict(op="masked_attention", case=f"{case} (Q={nq}, K={nk})", dtype=dname,
                             triton_ms=t_tri, baseline="SDPA+mask", baseline_ms=t_sdpa,
                             speedup=t_sdpa / t_tri, gbps=nbytes / t_tri / 1e6,
                             bandwidth_frac=nbytes / t_tri / 1e6 / bandwidth, max_rel_err=err))
    return rows


def verdict(row: dict) -> str:
    goal = GOALS[row["op"]]
    ok = row["speedup"] >= goal["speedup"]
    if "bandwidth" in goal:
        ok = ok and row["bandwidth_frac"] >= goal["bandwidth"]
    return "yes" if ok else "no"


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [f"Kernel benchmark — {meta['device']}, torch {meta['torch']}, "
             f"triton {meta['triton']}, git {meta['git']}, {meta['date']}; "
             f"copy bandwidth {meta['copy_gbps']:.0f} GB/s",
             "",
             "| op | case | dtype | triton ms | baseline | baseline ms | speedup | GB/s "
             "| % copy BW | max rel err | goal met |",
             "|---|---|---|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['case']} | {r['dtype']} | {r['triton_ms']:.3f} | "
                     f"{r['baseline']} | {r['baseline_ms']:.3f} | {r['speedup']:.2f}x | "
                     f"{r['gbps']:.0f} | {100 * r['bandwidth_frac']:.0f}% | "
                     f"{r['max_rel_err']:.1e} | {verdict(r)} |")
    lines.append("")
    lines.append("Goals: ms_deform_attn >= 3x reference and >= 60% of copy bandwidth; "
                 "masked_attention >= 1.6x SDPA with a mask.")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows (with provenance) here")
    parser.add_argument("--quick", action="store_true", help="one case per op (smoke run)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA GPU here (torch.cuda.is_available() is False); this "
              "benchmark times GPU kernels and measured nothing. Run it via "
              "benchmarks/gpu_check.sh on a GPU.", file=sys.stderr)
        return 2
    meta = provenance()
    meta["copy_gbps"] = copy_bandwidth()
    rows = msda_rows(meta["copy_gbps"], args.quick) + attention_rows(meta["copy_gbps"], args.quick)
    for r in rows:
        r.update(meta, goal_met=verdict(r))
    print(markdown(rows, meta))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
