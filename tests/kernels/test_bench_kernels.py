"""The kernel benchmark refuses to run without a GPU, saying so (it must never print fake numbers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_benchmark_exits_with_a_clear_message_without_gpu():
    run = subprocess.run([sys.executable, str(REPO / "benchmarks/bench_kernels.py")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, (run.returncode, run.stdout, run.stderr)
    assert "no CUDA GPU" in run.stderr
    assert "|" not in run.stdout, "no table may be printed without measurements"


@pytest.mark.gpu
def test_benchmark_quick_run_prints_a_table_gpu(tmp_path):
    rows = tmp_path / "rows.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks/bench_kernels.py"), "--quick",
                          "--json", str(rows)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| ms_deform_attn |" in run.stdout and "| masked_attention |" in run.stdout
    assert rows.exists()
