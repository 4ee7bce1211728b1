"""``omg-train``: train OMG-Seg on the generated shapes world (or resume a run).

    omg-train --preset synthetic-tiny --out runs/synthetic-tiny
    omg-train --config run.json --out RUN [--set steps=200 --set lr=5e-4] [--resume]
    torchrun --nproc_per_node 2 -m training.cli --config run.json --out RUN

Exit codes: :class:`omg_rt.errors.ExitCode` (2 bad arguments or config, 3 the run directory
cannot be used).
"""

from __future__ import annotations

import argparse
import json
import sys

from omg_rt.errors import EXIT_CODES_HELP, ExitCode
from training.config import TRAIN_PRESETS, TrainConfig, TrainConfigError, get_train_preset


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="omg-train",
        description="Train OMG-Seg jointly on image, video and prompt data (CPU or GPU; "
        "multi-process under torchrun).",
        epilog=EXIT_CODES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", help="JSON file of TrainConfig fields")
    source.add_argument("--preset", choices=sorted(TRAIN_PRESETS),
                        help="a named training recipe (default: synthetic-tiny)")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="FIELD=VALUE", help="override one config field (JSON value)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")
    parser.add_argument("--max-seconds", type=float, default=None,
                        help="stop (checkpoint + evaluate) after this much training time")
    parser.add_argument("--quiet", "--no-progress", dest="quiet", action="store_true",
                        help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = (TrainConfig.from_file(args.config) if args.config
                  else get_train_preset(args.preset or "synthetic-tiny"))
        config = config.with_overrides(args.overrides)
    except TrainConfigError as exc:
        print(f"omg-train: {exc}", file=sys.stderr)
        return ExitCode.USAGE

    from training.distributed import cleanup, setup
    from training.train import TrainingError, train

    dist_info = setup()
    try:
        result = train(config, args.out, resume=args.resume, dist_info=dist_info,
                        progress=not args.quiet, max_seconds=args.max_seconds)
    except TrainingError as exc:
        print(f"omg-train: {exc}", file=sys.stderr)
        return ExitCode.INPUT
    except TrainConfigError as exc:
        print(f"omg-train: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    finally:
        cleanup()
    if dist_info.is_main:
        print(json.dumps(result.metrics, indent=1))
    return ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
