"""``omg-export``: checkpoint -> verified ONNX bundle (not implemented yet)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print(
        "omg-export: not implemented yet (the export issue is open); no bundle was written.",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main())
