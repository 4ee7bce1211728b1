#!/usr/bin/env bash
# Create .venv (if missing) and install omg-rt with its training, export, serve and dev extras.
# The venv comes from Debian's /usr/bin/python3.11 where it exists: Triton's Python backend
# (omg-rt serve) links libpython3.11.so, which a pyenv build without a shared libpython, or of
# another patch release, cannot provide. PYTHON=... overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x /usr/bin/python3.11 ] && /usr/bin/python3.11 -c "import venv, ensurepip" 2>/dev/null; then
    PYTHON=/usr/bin/python3.11
  else
    PYTHON=python3
  fi
fi
WANT_HOME=$(dirname "$(command -v "$PYTHON")")
if [ -f .venv/pyvenv.cfg ] && ! grep -qx "home = $WANT_HOME" .venv/pyvenv.cfg; then
  echo "setup: .venv was made by another Python ($(grep '^home' .venv/pyvenv.cfg)); rebuilding it from $PYTHON"
  rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements-dev.txt
# Reference implementations the metric tests compare against; panopticapi-lite pins numpy<2 but
# runs on numpy 2, so it goes in without its dependencies.
.venv/bin/python -m pip install --quiet --no-deps panopticapi-lite vos-benchmark
echo "omg-rt installed in .venv ($(.venv/bin/python --version), from $PYTHON)"
