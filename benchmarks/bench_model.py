"""CPU latency per stage of the PyTorch model (backbone, pixel decoder, query decoder,
post-processing), for the ``tiny`` preset and the official ``omg-convl`` at 512², median of
several runs, as a markdown table.

    python -m benchmarks.bench_model [--presets tiny,omg-convl] [--size 512] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from benchmarks.harness import Row, environment, markdown_table, time_cpu
from omg_rt.postprocess import masks as mask_ops
from training.model import build_model


def bench_preset(name: str, size: int, runs: int) -> list[Row]:
    torch.manual_seed(0)
    model = build_model(name, with_text_encoder=False).eval()
    spec = model.config
    image = torch.randn(1, 3, size, size)
    bank = torch.nn.functional.normalize(torch.randn(133, 1, spec.backbone.embed_dim), dim=-1)
    case = f"{name} {size}x{size}"
    rows = []
    with torch.no_grad():
        features = model.encode(image)
        rows.append(Row("backbone", case, time_cpu(lambda: model.encode(image), runs=runs)))
        mask_features, memories = model.decode_pixels(features)
        rows.append(
            Row("pixel decoder", case, time_cpu(lambda: model.decode_pixels(features), runs=runs))
        )
        queries = model.learned_queries(1)
        out = model.decode_queries(memories, mask_features, bank, *queries)[-1]
        rows.append(
            Row(
                "query decoder",
                case,
                time_cpu(
                    lambda: model.decode_queries(memories, mask_features, bank, *queries), runs=runs
                ),
            )
        )
    logits = out.mask_logits[0, :, 0].numpy().astype(np.float32)
    rows.append(
        Row(
            "post-process (mask upsample)",
            case,
            time_cpu(
                lambda: mask_ops.upsample_masks(logits, (size, size), (size, size), (size, size)),
                runs=runs,
            ),
        )
    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,omg-convl")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args(argv)
    env = environment()
    rows = [r for p in args.presets.split(",") for r in bench_preset(p, args.size, args.runs)]
    print(markdown_table(rows, env))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": [r.as_dict() for r in rows]}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
