#!/usr/bin/env bash
# Download the wheels the GPU machine lacks into .whl/ (run here, where there is internet), and
# copy ../shared/fixtures into .gpu-shared/ (gpu_check.sh's official goldens on CUDA).
#
# The GPU machine (benchmarks/gpu_check.sh) has Python 3.12, torch 2.11, triton 3.6, onnx,
# onnxruntime (CPU build), timm, huggingface-hub, regex, safetensors, scipy, opencv, matplotlib,
# scikit-image and hypothesis (/work/.library/device/KINDS.md), but no internet and none of the
# packages below. gpu_check.sh installs whatever is in .whl/ with
#   python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
# and puts /tmp/site first on PYTHONPATH.
#
# .whl/ is listed in .git/info/exclude (this script adds it): the wheels are never committed,
# so a device run must carry them explicitly (the device tool's carry: [".whl"]).
#
#   scripts/fetch_gpu_wheels.sh          (PYTHON overrides the interpreter that runs pip)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  python=python3
  [[ -x .venv/bin/python ]] && python=.venv/bin/python
fi

# The versions CI's venv runs (open_clip_torch needs ftfy, ftfy needs wcwidth; panopticapi-lite
# and vos-benchmark are the metric tests' references, installed without dependencies as in
# scripts/setup.sh; platformdirs is panopticapi-lite's one dependency the GPU machine lacks).
packages=(
  "open_clip_torch==3.3.0"
  "ftfy==6.3.1"
  "wcwidth==0.2.14"
  "pycocotools==2.0.11"
  "onnxslim==0.1.98"
  "panopticapi-lite==0.2.0"
  "vos-benchmark==0.1.0"
  "platformdirs"
  "scikit-video==1.1.11"
)
# Let the pins follow CI's venv when it has the package (a newer pin there wins).
if [[ -x .venv/bin/python ]]; then
  for i in "${!packages[@]}"; do
    name="${packages[$i]%%==*}"
    have="$(.venv/bin/python -m pip show "$name" 2>/dev/null | sed -n 's/^Version: //p' || true)"
    if [[ -n "$have" ]]; then packages[$i]="$name==$have"; fi
  done
fi

mkdir -p .whl .git/info
grep -qxF ".whl/" .git/info/exclude 2>/dev/null || echo ".whl/" >> .git/info/exclude

# Binary wheels for CPython 3.12 on manylinux x86_64; pure-Python ones (py3-none-any) match too.
"$python" -m pip download --quiet --dest .whl --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any \
  "${packages[@]}"
echo "fetch_gpu_wheels: $(ls .whl/*.whl | wc -l) wheels in .whl/:"
# ../shared does not travel to the GPU machine: its fixtures do, as .gpu-shared (carry it too)
if [[ -d ../shared/fixtures ]]; then
  grep -qxF "/.gpu-shared/" .git/info/exclude || echo "/.gpu-shared/" >> .git/info/exclude
  rm -rf .gpu-shared && mkdir -p .gpu-shared && cp -r ../shared/fixtures .gpu-shared/
  echo "fetch_gpu_wheels: ../shared/fixtures copied to .gpu-shared/ ($(du -sh .gpu-shared | cut -f1))"
fi
ls -1 .whl/
