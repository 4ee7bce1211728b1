"""``benchmarks.bench_serve`` against a real ``omg-rt serve`` it starts on a tiny bundle: every
request of a small mixed load is answered and counted (here and in Triton's own metrics), a
flooded server answers busy at once and keeps serving, and no server process outlives a run."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.bench_serve import LoadOptions, benchmark, procedural_image, run_load
from benchmarks.serve_process import (
    ServerOptions,
    check_serve_python,
    group_members,
    loopback_url,
    metrics_delta,
    serve_python,
)
from omg_rt.errors import BackendUnavailableError, InvalidInputError

try:
    import tritonclient.http  # noqa: F401  (the client side, in this venv)

    check_serve_python(serve_python())
    SKIP = ""
except ImportError as exc:
    SKIP = f"tritonclient is not installed here ({exc})"
except BackendUnavailableError as exc:
    SKIP = str(exc)

needs_server = pytest.mark.skipif(bool(SKIP), reason=SKIP)
SIZES = ((96, 128), (128, 96))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """The seeded tiny model exported at 64 px (seconds, where the 128 px one takes a minute)."""
    from export import build_bundle
    from tests.conftest import seeded_tiny

    return build_bundle(seeded_tiny(0), tmp_path_factory.mktemp("serve") / "bundle",
                        image_size=64, verify=False)


def _no_server_left(report: dict) -> None:
    server = report["server"]
    assert server["started_here"] and server["exit_code"] == 0, server
    assert server["left_behind"] == 0, server
    assert group_members(server["pid"]) == [], "processes of omg-rt serve were left behind"


@pytest.mark.slow
@needs_server
def test_every_request_of_a_mixed_load_is_answered_and_counted_by_the_server(bundle):
    options = LoadOptions(clients=3, requests=4, prompt_share=0.5, max_seconds=60, timeout=30,
                          sizes=SIZES, prompt_images=2, seed=0)
    report = benchmark(str(bundle), options,
                       server=ServerOptions(workers=2, backend="onnxruntime"), in_process=True)
    kinds, totals = report["kinds"], report["totals"]
    assert report["planned"] == report["operations"] == 12
    assert report["stopped_by"] == "requests"
    assert kinds["image"]["sent"] + kinds["prompt"]["sent"] == 12
    assert kinds["image"]["sent"] > 0 and kinds["prompt"]["sent"] > 0  # seed 0: both kinds
    assert 1 <= kinds["encode"]["sent"] <= options.clients * options.prompt_images
    assert totals == {"sent": 12 + kinds["encode"]["sent"], "ok": totals["sent"], "busy": 0,
                      "error": 0}, report["errors"]
    for kind, row in kinds.items():
        assert row["sent"] == row["ok"] + row["busy"] + row["error"], kind
        latency = row["latency"]
        assert latency["runs"] == row["ok"], kind
        assert 0 < latency["min_ms"] <= latency["p50_ms"] <= latency["p90_ms"] \
            <= latency["p99_ms"], kind
    assert report["requests_per_second"] > 0 and report["wall_seconds"] > 0
    # Triton counted exactly the requests it received (warm-up excluded), by model
    models = report["metrics"]["models"]
    assert set(models) == {"panoptic", "prompt", "encode"}, models
    for kind, model in (("image", "panoptic"), ("prompt", "prompt"), ("encode", "encode")):
        assert models[model]["success"] == kinds[kind]["ok"], model
        assert models[model]["failure"] == 0, model
        assert models[model]["inferences"] == kinds[kind]["ok"], model
        assert 1 <= models[model]["avg_batch"] <= 4, model
    # the in-process baseline made the very same requests (each client's seeded traffic)
    baseline = report["in_process"]
    for kind in ("image", "prompt"):
        assert baseline["kinds"][kind]["sent"] == kinds[kind]["sent"], kind
    assert baseline["totals"]["error"] == 0 == baseline["totals"]["busy"], baseline["errors"]
    assert report["throughput_ratio"] == pytest.approx(
        report["requests_per_second"] / baseline["requests_per_second"])
    _no_server_left(report)


@pytest.mark.slow
@needs_server
def test_a_flooded_server_answers_busy_at_once_and_keeps_serving(bundle):
    report = benchmark(str(bundle), LoadOptions(timeout=30, sizes=((240, 320),)),
                       server=ServerOptions(backend="onnxruntime"), overload=True, flood=16)
    assert report["server"]["max_queue"] == 2 and report["server"]["workers"] == 1
    flood = report["kinds"]["image"]
    assert flood["sent"] == 16 and flood["error"] == 0, report["errors"]
    assert flood["busy"] >= 1 and flood["ok"] >= 1
    # a full queue answers at once; the accepted requests wait for their batch
    assert flood["busy_latency"]["p50_ms"] < flood["latency"]["p50_ms"]
    after = report["after"]
    assert after["ok"] == after["sent"] == 3, report["errors"]
    assert report["shown"]
    _no_server_left(report)


def test_the_in_process_baseline_is_for_a_bundles_load_test_only(bundle):
    with pytest.raises(InvalidInputError, match="in_process"):
        benchmark("http://127.0.0.1:8000", LoadOptions(), in_process=True)
    with pytest.raises(InvalidInputError, match="in_process"):
        benchmark(str(bundle), LoadOptions(), overload=True, in_process=True)


def test_only_loopback_servers_are_load_tested():
    assert loopback_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000"
    assert loopback_url("http://localhost:9000/") == "http://localhost:9000"
    for url in ("http://10.1.2.3:8000", "http://example.com:8000", "https://127.0.0.1:8000",
                "http://127.0.0.1", "127.0.0.1:8000"):
        with pytest.raises(InvalidInputError, match="local load test"):
            loopback_url(url)
    with pytest.raises(InvalidInputError, match="no such directory"):
        benchmark("/nonexistent/bundle", LoadOptions())


def test_the_run_stops_at_max_seconds_without_sending():
    pytest.importorskip("tritonclient.http")
    report = run_load("http://127.0.0.1:9", LoadOptions(clients=2, requests=5, max_seconds=0),
                      metrics_url="http://127.0.0.1:9/metrics", warmup=False)
    assert report["stopped_by"] == "max_seconds"
    assert report["operations"] == report["totals"]["sent"] == 0
    assert "could not read" in report["metrics"]["error"]


def test_metrics_deltas_give_the_average_dynamic_batch():
    zero = dict.fromkeys(("nv_inference_request_success", "nv_inference_request_failure",
                          "nv_inference_count", "nv_inference_exec_count",
                          "nv_inference_queue_duration_us",
                          "nv_inference_request_duration_us"), 0.0)
    before = {"panoptic": dict(zero), "prompt": dict(zero)}
    after = {"panoptic": {**zero, "nv_inference_request_success": 12.0,
                          "nv_inference_count": 12.0, "nv_inference_exec_count": 4.0,
                          "nv_inference_queue_duration_us": 6000.0},
             "prompt": dict(zero)}
    delta = metrics_delta(before, after)
    assert set(delta) == {"panoptic"}  # models without traffic are left out
    assert delta["panoptic"]["avg_batch"] == 3.0
    assert delta["panoptic"]["avg_queue_ms"] == 0.5


def test_procedural_images_are_reproducible_and_distinct():
    a, b = procedural_image(3, (96, 128)), procedural_image(4, (96, 128))
    assert a.shape == (96, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, procedural_image(3, (96, 128)))
    assert not np.array_equal(a, b)
