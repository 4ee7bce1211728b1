#!/usr/bin/env bash
# Create .venv (if missing) and install omg-rt with its training, export and dev extras; then
# .venv-serve, the venv `omg-rt serve` runs in (nvidia-pytriton: Triton Inference Server).
# .venv-serve is separate because nvidia-pytriton pins numpy < 2, and it comes from Debian's
# /usr/bin/python3.11: Triton's Python backend links libpython3.11.so, which a pyenv build
# without a shared libpython (or of another patch release) cannot provide. Without that
# interpreter the serving tests skip with the reason. PYTHON=... / SERVE_PYTHON=... override.
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

SERVE_PYTHON=${SERVE_PYTHON:-/usr/bin/python3.11}
if [ -x "$SERVE_PYTHON" ] && "$SERVE_PYTHON" -c "import venv, ensurepip" 2>/dev/null; then
  if [ ! -x .venv-serve/bin/python ]; then
    "$SERVE_PYTHON" -m venv .venv-serve
  fi
  .venv-serve/bin/python -m pip install --quiet --upgrade pip
  .venv-serve/bin/python -m pip install --quiet -e ".[serve]"
  echo "omg-rt serve installed in .venv-serve ($(.venv-serve/bin/python --version))"
else
  echo "setup: no $SERVE_PYTHON with venv: .venv-serve not made (the serving tests will skip)"
fi
