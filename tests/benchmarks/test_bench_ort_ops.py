"""``benchmarks.bench_ort_ops``: the masked-attention operator against the portable graph, one
small case: a row per key count whose two graphs agree."""

from __future__ import annotations

import pytest

from omg_rt.backends import ort_ops
from omg_rt.errors import BackendUnavailableError

pytest.importorskip("onnxruntime")


def test_a_row_per_key_count_with_the_two_graphs_in_agreement(capsys):
    try:
        ort_ops.library()
    except BackendUnavailableError as exc:
        pytest.skip(f"omg-rt's custom operators cannot be built here: {exc}")
    from benchmarks.bench_ort_ops import main

    assert main(["--keys", "97,300", "--runs", "1", "--fraction", "0.2"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 97 ")
            or line.startswith("| 300 ")]
    assert len(rows) == 2
    for row in rows:
        portable, fused, ratio, diff = (float(v) for v in row.strip("| ").split("|")[1:])
        assert portable > 0 and fused > 0 and ratio > 0
        assert diff <= 1e-5, row  # the operator computes what the portable graph does
