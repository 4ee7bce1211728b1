#!/usr/bin/env bash
# Everything that needs a GPU, in one go (under 10 minutes): the GPU/TensorRT tests (the official
# goldens on CUDA among them), omg-bench of ConvNeXt-L on the GPU (PyTorch FP32/FP16 with the
# Triton kernels, ONNX Runtime CUDA and TensorRT where this machine has them), the kernel
# benchmark, post-processing on the host against the GPU, a profile of the runtime's calls,
# omg-bench of the tiny model (every backend x precision, accuracy), then the RESULTS tables,
# printed last.
#
#   benchmarks/gpu_check.sh            (PYTHON overrides the interpreter; OMG_BENCH_MODEL the
#                                       model of the accuracy run, default preset:tiny;
#                                       GPU_CHECK_BUDGET_S the whole run's seconds, default 540)
#
# The GPU machine is not CI's (Python 3.12, torch 2.11, triton 3.6, no internet): wheels it
# lacks travel in .whl/ (scripts/fetch_gpu_wheels.sh; .whl/ is git-excluded, so carry it) and
# are installed into /tmp/site, nothing else is installed. ../shared does not travel: a copy of
# its fixtures in .gpu-shared/fixtures (git-excluded, carried) stands in (OMG_SHARED). Reports
# land in benchmarks/reports/gpu/; RESULTS.md gets the sections gpu-check (tests, kernels, post),
# omg-bench-gpu and omg-bench-gpu-convl (omg-bench's summaries), between their markers.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
start=$SECONDS
budget=${GPU_CHECK_BUDGET_S:-540}
python="${PYTHON:-python3}"
[[ -z "${PYTHON:-}" && -x .venv/bin/python ]] && python=.venv/bin/python
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
  echo "== installing $(ls .whl/*.whl | wc -l) carried wheels into /tmp/site"
  "$python" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site \
    .whl/*.whl && export PYTHONPATH=/tmp/site:$PYTHONPATH
fi
reports=benchmarks/reports/gpu
mkdir -p "$reports"
unset TRITON_INTERPRET
if [[ ! -d "$repo/../shared/fixtures" && -d "$repo/.gpu-shared/fixtures" ]]; then
  export OMG_SHARED="$repo/.gpu-shared"
fi
# Fail in seconds, not minutes, when the machine cannot run the project at all.
"$python" - <<'PY' || exit 2
import sys

import torch

if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA GPU")
import open_clip, triton  # noqa: E401,F401 - what the model and kernels need

import benchmarks.cli, export, kernels, omg_rt, training.model  # noqa: E401,F401
from kernels.ms_deform_attn_triton import ms_deform_attn_triton  # noqa: F401
print(f"gpu_check: {torch.cuda.get_device_name()} · torch {torch.__version__} · "
      f"triton {triton.__version__} · Python {sys.version.split()[0]}")
PY

# seconds left for a step: at most $1, never past the budget (minus 20 s for the summary)
left() { local rest=$((budget - (SECONDS - start) - 20)); (( rest < $1 )) && echo $rest || echo "$1"; }
status=0
step() {  # step NAME MAX_SECONDS LOG command...: output shown and kept in LOG
  local name=$1 max=$2 log=$3; shift 3
  local t; t=$(left "$max")
  if (( t < 15 )); then echo "== $name: skipped (time budget spent)" | tee "$log"; status=1; return; fi
  echo "== $name (up to ${t} s)"
  timeout "$t" "$@" > "$log" 2>&1
  local rc=$?
  cat "$log"
  if (( rc != 0 )); then echo "== $name: exit $rc (124 = timed out)"; status=1; fi
}

# test files in parallel when pytest-xdist is there (the Triton compiles are CPU-bound)
parallel=()
"$python" -c "import xdist" 2>/dev/null && parallel=(-n 4 --dist loadfile)
step "pytest -m 'gpu or tensorrt'" 200 "$reports/pytest.txt" \
  "$python" -m pytest -m "gpu or tensorrt" -q -rs -p no:cacheprovider -p no:benchmark "${parallel[@]}" tests/
# The product's speed: ConvNeXt-L OMG-Seg at the official shapes (a 1024x768 photo -> 768x1024,
# a 960x720 video frame -> 736x992), random weights (latency only), as the CPU run in RESULTS.md.
step "omg-bench preset:omg-convl @1024 (latency)" 170 "$reports/omg-bench-convl.txt" \
  "$python" -m benchmarks.cli preset:omg-convl --image-size 1024 --precisions fp32,fp16,int8 \
  --backends torch,onnxruntime-cuda,tensorrt --tasks panoptic,prompt,video --no-accuracy \
  --image-shape 1024x768 --frame-shape 960x720 --prompts 1,16 --batch 1 --dataset photos \
  --num-images 1 --num-videos 1 --frames 6 --video-passes 1 \
  --no-cold-start --runs 20 --out "$reports/convl" --results-section omg-bench-gpu-convl --quiet
# Panoptic / instance post-processing at the ConvNeXt-L shapes: the host's numpy path and the
# same results on the GPU (omg_rt.postprocess.device, what Segmenter does there), side by side.
step "post-processing host vs GPU" 60 "$reports/post.md" \
  "$python" -m benchmarks.bench_postprocess --kinds trained,random-model --only panoptic,instance \
  --device cuda --runs 5
# Where the time of a panoptic call, a cached click and a VIS clip goes (torch.profiler): what
# to optimise next; the clicks replayed from CUDA graphs and kernel by kernel, side by side.
step "profile of the runtime's calls (ConvNeXt-L)" 90 "$reports/profile.md" \
  "$python" -m benchmarks.profile_calls --device cuda --runs 3 --rows 10
step "kernel benchmark" 90 "$reports/kernels.md" \
  "$python" benchmarks/bench_kernels.py --json "$reports/kernels.json"
# Accuracy deltas of every backend x precision on the tiny model (same weights everywhere).
step "omg-bench ${OMG_BENCH_MODEL:-preset:tiny} (all backends x precisions, accuracy)" 120 \
  "$reports/omg-bench-tiny.txt" "$python" -m benchmarks.cli "${OMG_BENCH_MODEL:-preset:tiny}" --out "$reports/tiny" \
  --results-section omg-bench-gpu --runs 30 --quiet

"$python" - "$reports" <<'PY'
import sys
from pathlib import Path

from benchmarks.omg_bench.output import update_results

reports = Path(sys.argv[1])
tests = (reports / "pytest.txt").read_text().strip().splitlines() if (
    reports / "pytest.txt").exists() else ["(not run)"]
kernels = (reports / "kernels.md").read_text().strip() if (reports / "kernels.md").exists() \
    else "(not run)"
# the table and its provenance line, without whatever else went to the log
kept = [ln for ln in kernels.splitlines() if ln.startswith(("|", "_", "Kernel benchmark"))]
kernels = "\n".join(ln + ("\n" if ln.startswith(("_", "Kernel")) else "") for ln in kept) or kernels
post = (reports / "post.md").read_text() if (reports / "post.md").exists() else "(not run)"
post = "\n".join(ln for ln in post.splitlines() if ln.startswith(("|", "_"))) or post
profile = (reports / "profile.md").read_text() if (reports / "profile.md").exists() \
    else "(not run)"
profile = "\n".join(ln for ln in profile.splitlines()
                    if ln.startswith(("Profile", "###", "wall", "|", "device busy", "host in ops"))
                    or not ln.strip())
body = "\n".join(["GPU/TensorRT tests: `" + (tests[-1] if tests else "?") + "`", "", kernels,
                  "", "Post-processing, host (numpy) and `[cuda]` (omg_rt.postprocess.device):",
                  "", post, "", profile])
update_results(Path("benchmarks/RESULTS.md"), "gpu-check", body)
PY
echo
echo "== RESULTS (benchmarks/RESULTS.md, GPU sections)"
"$python" - <<'PY'
import re
from pathlib import Path

text = Path("benchmarks/RESULTS.md").read_text()
for name in ("gpu-check", "omg-bench-gpu", "omg-bench-gpu-convl"):
    found = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, re.DOTALL)
    print(f"### {name}\n{found.group(1) if found else '(no section)'}")
PY
echo "gpu_check: $((SECONDS - start)) s, status $status"
exit $status
