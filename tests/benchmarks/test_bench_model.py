"""The per-stage latency script runs and prints one row per stage."""

from __future__ import annotations

import json

from benchmarks import bench_model


def test_bench_model_prints_a_row_per_stage(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench_model.main(["--presets", "tiny", "--size", "64", "--runs", "1",
                             "--json", str(out)]) == 0
    table = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    stages = [r["subject"] for r in rows]
    assert stages == ["backbone", "pixel decoder", "query decoder", "post-process (mask upsample)"]
    assert all(r["timing"]["median_ms"] > 0 for r in rows)
    assert all(stage in table for stage in stages)
