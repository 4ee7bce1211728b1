#!/usr/bin/env bash
# Build libomg_kernels.so (AOT Triton cubins for sm_90 + sm_87, C API) without a GPU.
#   kernels/aot/build.sh [build-dir]        (default: build/cmake; PYTHON overrides the interpreter)
# Prints the path of the library on its last line.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${1:-$repo/build/cmake}"
python="${PYTHON:-}"
if [[ -z "$python" ]]; then
  if [[ -x "$repo/.venv/bin/python" ]]; then python="$repo/.venv/bin/python"; else python="$(command -v python3)"; fi
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$repo" -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DPython3_EXECUTABLE="$python" >/dev/null
cmake --build "$build" --parallel 2
echo "$build/libomg_kernels.so"
