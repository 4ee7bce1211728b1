#!/usr/bin/env bash
# Everything that needs a GPU, in one go (< 10 minutes): GPU/TensorRT tests, then the kernel
# benchmark. Reports land in benchmarks/reports/ (markdown table + JSON rows for RESULTS.md).
#   benchmarks/gpu_check.sh            (PYTHON overrides the interpreter)
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
python="${PYTHON:-python3}"
[[ -z "${PYTHON:-}" && -x .venv/bin/python ]] && python=.venv/bin/python
reports=benchmarks/reports
mkdir -p "$reports"
unset TRITON_INTERPRET
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA GPU')" || exit 2

status=0
echo "== pytest -m 'gpu or tensorrt'"
timeout 420 "$python" -m pytest -m "gpu or tensorrt" -q -rs tests/ || status=1

echo "== kernel benchmark"
timeout 150 "$python" benchmarks/bench_kernels.py --json "$reports/kernels.json" \
  | tee "$reports/kernels.md" || status=1

exit $status
