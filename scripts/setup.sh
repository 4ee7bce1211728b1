#!/usr/bin/env bash
# Create .venv (if missing) and install omg-rt with its training, export, dev and ui extras
# (+ Debian's chromium for the page's browser test); then
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

# The omg-rt ui browser test drives Debian's chromium through its chromedriver (selenium, from the
# dev extra); nothing downloads a browser. Without them that test skips with this install line.
# A C compiler builds omg-rt's ONNX Runtime operator (omg_rt.backends.ort_ops); without one the
# portable graphs run and its tests skip.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ] || ! command -v cc >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq chromium chromium-driver gcc >/dev/null; then
      echo "setup: installed $(/usr/bin/chromium --version 2>/dev/null), $(cc --version | head -1)"
    else
      echo "setup: apt-get could not install chromium / gcc: the omg-rt ui browser test or the" \
           "custom-operator tests will skip"
    fi
  else
    echo "setup: no chromium/chromedriver and no root apt-get: the omg-rt ui browser test will" \
         "skip (apt-get install -y chromium chromium-driver)"
  fi
fi

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
