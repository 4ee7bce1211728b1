#!/usr/bin/env bash
# Set up (idempotent) and run the whole CPU test suite. GPU/TensorRT tests skip with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m ruff check omg_rt export kernels training benchmarks tests
.venv/bin/python -m mypy  # strict types of omg_rt/ ([tool.mypy] in pyproject.toml)
.venv/bin/python -m pytest -q "$@"
