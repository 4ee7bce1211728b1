#!/usr/bin/env bash
# Create .venv (if missing) and install omg-rt with its training, export and dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements-dev.txt
# Reference implementations the metric tests compare against; panopticapi-lite pins numpy<2 but
# runs on numpy 2, so it goes in without its dependencies.
.venv/bin/python -m pip install --quiet --no-deps panopticapi-lite vos-benchmark
echo "omg-rt installed in .venv ($(.venv/bin/python --version))"
