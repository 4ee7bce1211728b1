"""``benchmarks.bench_flop_floor``: stage FLOPs counted over the eager model, the FP32 product
rate of both runtimes, and the floor table against an omg-bench report."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")


def test_the_encoders_work_grows_with_the_image_area_and_the_decoders_count():
    from benchmarks.bench_flop_floor import STAGES, stage_flops

    small, large = stage_flops("tiny", 64, 64), stage_flops("tiny", 128, 128)
    assert set(small) == set(STAGES) and all(v > 0 for v in small.values())
    # a convolutional encoder does the same work per pixel: 4x the area, 4x the FLOPs exactly
    assert large["encoder"] == 4 * small["encoder"]
    assert large["pixel_decoder"] > 3 * small["pixel_decoder"]
    # padded to a multiple of 32 as the runtime does: 50x50 is counted as 64x64
    assert stage_flops("tiny", 50, 50)["encoder"] == small["encoder"]


def test_the_table_compares_a_reports_fp32_stages_with_the_floor(tmp_path, capsys):
    from benchmarks.bench_flop_floor import main

    rows = [{"precision": p, "status": "ok", "case": case, "runtime": "torch[cpu]", "p50_ms": ms}
            for p, case, ms in [("fp32", "encoder", 40.0), ("fp32", "pixel decoder", 20.0),
                                ("fp32", "query decoder", 10.0), ("fp32", "post-process", 5.0),
                                ("int8", "encoder", 1.0)]]
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"latency": {"stages": rows}}))
    assert main(["--preset", "tiny", "--shape", "64x64", "--runs", "2",
                 "--report", str(report)]) == 0
    out = capsys.readouterr().out
    rate_line = next(line for line in out.splitlines() if line.startswith("FP32 (3072 x 768)"))
    rates = [float(part.split()[1]) for part in rate_line.split(": ")[1].split(", ")]
    assert len(rates) == 2 and all(r > 0 for r in rates)
    table = {line.split("|")[1].strip(): line.split("|")[2:-1]
             for line in out.splitlines() if line.startswith("| ") and "---" not in line}
    assert list(table) == ["stage", "encoder", "pixel_decoder", "query_decoder", "all three"]
    assert table["stage"][2].strip() == "torch[cpu] fp32 ms"  # the FP32 rows only, one target
    encoder = [float(v) for v in table["encoder"]]
    assert encoder[2] == 40.0 and encoder[3] == pytest.approx(40.0 / encoder[1], rel=0.01)
    assert float(table["all three"][2]) == 70.0  # the three stages, not post-processing
