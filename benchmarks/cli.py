"""``omg-bench``: speed and accuracy reports (not implemented yet)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "omg-bench: not implemented yet (the benchmarks issue is open); "
        "see benchmarks/bench_model.py for the per-stage CPU latency table.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
