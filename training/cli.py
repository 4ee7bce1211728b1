"""``omg-train``: training runs (not implemented yet)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "omg-train: not implemented yet (the training issue is open); no checkpoint was written.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
