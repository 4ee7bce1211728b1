"""The post-processing benchmark runs its cases on the host and, with ``--device``, beside them on
a torch device (here torch's CPU device: the same code as CUDA)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_postprocess

pytest.importorskip("torch")


def test_device_cases_run_beside_the_host_cases(tmp_path, capsys):
    out = tmp_path / "rows.json"
    assert bench_postprocess.main(["--kinds", "trained", "--only", "panoptic,instance",
                                   "--runs", "1", "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    cases = {(r["subject"], r["case"]) for r in rows}
    for subject in ("panoptic", "instance"):
        for frame in ("image 480x640, trained", "video 720x960, trained"):
            assert (subject, frame) in cases and (subject, f"{frame} [cpu]") in cases
    assert all(r["timing"]["median_ms"] > 0 for r in rows)
    assert "[cpu]" in capsys.readouterr().out


def test_device_and_baseline_are_refused_together():
    with pytest.raises(SystemExit):
        bench_postprocess.main(["--device", "cpu", "--baseline", "HEAD"])
