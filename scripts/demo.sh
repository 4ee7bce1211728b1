#!/usr/bin/env bash
# Set up (idempotent) and run the main job: train (or reuse) the synthetic model, export it,
# segment held-out images, prompts and a video with the torch-free runtime, write a report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m benchmarks.demo "$@"
