"""A bounded load test of ``omg-rt serve``: K concurrent clients x M requests of mixed traffic
against a real Triton Inference Server on loopback, with the server's own metrics alongside.

    python -m benchmarks.bench_serve BUNDLE_OR_URL [--clients 4] [--requests 25]
        [--prompt-share 0.5] [--max-seconds 60] [--timeout 60] [--workers 1] [--out report.json]
    python -m benchmarks.bench_serve BUNDLE --overload [--flood 32]
    python -m benchmarks.bench_serve BUNDLE --in-process    # + the in-process baseline

Given a bundle directory it starts ``omg-rt serve`` on free loopback ports (a subprocess, in the
serving venv the tests use: ``$OMG_RT_SERVE_PYTHON``, else ``.venv-serve``, else this Python),
waits until every model is ready and stops it at the end (SIGINT, as Ctrl-C would; also on
errors, on Ctrl-C and on SIGTERM here), checking that none of its processes is left. Given
``http://127.0.0.1:PORT`` it uses that server (metrics on PORT + 2 unless ``--metrics-port``);
other hosts are refused: this is a local load test.

Traffic: each client (a thread with its own :class:`omg_rt.client.Client`) makes M requests, a
``prompt`` with probability ``--prompt-share`` and an ``image`` (panoptic on a fresh procedural
image of one of a few sizes) otherwise. A client encodes each of its prompt images once, on its
first prompt (an ``encode`` request, outside the M), then sends clicks / boxes by image id. The
run stops after K x M requests or ``--max-seconds``, whichever comes first; every request has a
timeout. A prompt whose encode failed is not sent (the failure is counted under ``encode``).

Report (a table on stdout, JSON with ``--out``): requests per second, p50/p90/p99 latency of the
ok answers per kind, ok / busy (QueueFullError, a full queue) / other errors, and the deltas of
Triton's counters (``/metrics``) over the run: successes, failures, inferences / executions
(= average dynamic batch size) and queue time per model. Triton does not count the requests its
full queue turned away (their failure counter stays 0): busy answers are counted by the clients.
One run; a warm-up request per image size, an encode and a prompt are sent before and left out of
every number.

``--in-process`` (a bundle's load test) then runs the same traffic, with the server stopped, on
one Segmenter in this process whose calls take turns: the report adds its numbers and the
throughput ratio server / in-process (the serving overhead; dynamic batching can make it > 1).

``--overload`` starts the server with ``--max-queue 2 --workers 1`` and sends ``--flood``
simultaneous image requests: the busy answers should come back at once (their latency is
reported) and the server should answer normally afterwards (exit status 1 otherwise).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import environment, percentiles_ms
from benchmarks.serve_process import (
    LocalServer,
    ServerOptions,
    default_metrics_url,
    loopback_url,
    metrics_delta,
    scrape_metrics,
    settled_metrics,
)
from omg_rt.errors import (
    EXIT_CODES_HELP,
    ExitCode,
    InvalidInputError,
    OmgRtError,
    QueueFullError,
    report_failure,
)

KINDS = ("image", "prompt", "encode")
MODEL_OF_KIND = {"image": "panoptic", "prompt": "prompt", "encode": "encode"}
DEFAULT_SIZES = ((240, 320), (320, 240), (360, 480))  # (H, W): landscape, portrait, larger


@dataclass(frozen=True)
class LoadOptions:
    """The traffic of one run.

    Attributes:
        clients: concurrent clients (threads, one Client each); requests: requests per client.
        prompt_share: probability that a request is a prompt (else a panoptic image).
        max_seconds: the run stops starting requests after this long; timeout: seconds per
            request (connection and answer).
        sizes: (H, W) of the procedural images, cycled; prompt_images: images a client
            encodes and prompts on; seed: the images and prompts.
    """

    clients: int = 4
    requests: int = 25
    prompt_share: float = 0.5
    max_seconds: float = 60.0
    timeout: float = 60.0
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES
    prompt_images: int = 2
    seed: int = 0


# ---------------------------------------------------------------------- images and prompts


def procedural_image(seed: int, hw: tuple[int, int]) -> np.ndarray:
    """A (H, W, 3) uint8 RGB scene: a two-way gradient, a few flat rectangles and discs, light
    noise (so no two images share an encoder-cache entry)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    yy, xx = np.mgrid[:h, :w]
    image = np.empty((h, w, 3), np.float32)
    image[..., 0] = 40 + 160 * xx / max(w - 1, 1)
    image[..., 1] = 60 + 120 * yy / max(h - 1, 1)
    image[..., 2] = 110
    for _ in range(int(rng.integers(3, 7))):
        colour = rng.integers(0, 256, 3)
        if rng.random() < 0.5:
            y, x = int(rng.integers(0, h - h // 8)), int(rng.integers(0, w - w // 8))
            image[y : y + int(rng.integers(h // 10, h // 3)),
                  x : x + int(rng.integers(w // 10, w // 3))] = colour
        else:
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            radius = rng.integers(min(h, w) // 12, min(h, w) // 5)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = colour
    image += rng.normal(0.0, 4.0, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def random_prompt(rng: np.random.Generator, hw: tuple[int, int]
                  ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Clicks (N, 2) float32 (x, y), a box (1, 4) float32 (x0, y0, x1, y1), or both, inside an
    image of size ``hw``."""
    h, w = hw
    what = rng.choice(["clicks", "box", "both"])
    points = boxes = None
    if what in ("clicks", "both"):
        n = int(rng.integers(1, 4))
        points = np.stack([rng.uniform(0, w - 1, n), rng.uniform(0, h - 1, n)], 1)
        points = points.astype(np.float32)
    if what in ("box", "both"):
        x0, y0 = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
        x1, y1 = rng.uniform(x0 + 8, w), rng.uniform(y0 + 8, h)
        boxes = np.array([[x0, y0, x1, y1]], np.float32)
    return points, boxes


# ---------------------------------------------------------------------- the load


@dataclass
class _Tally:
    """Every answer of a run, by kind (thread-safe)."""

    latencies: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: {k: {"ok": [], "busy": [], "error": []} for k in KINDS})
    errors: dict[str, int] = field(default_factory=dict)
    operations: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, kind: str, request: Callable[..., Any], *args: Any, **kwargs: Any
             ) -> tuple[Any, str]:
        """``request(*args, **kwargs)``, its outcome and latency recorded under ``kind``;
        returns its answer (None unless ok) and outcome: ok, busy or error."""
        answer, outcome, message = None, "ok", ""
        start = time.perf_counter()
        try:
            answer = request(*args, **kwargs)
        except QueueFullError:
            outcome = "busy"
        except Exception as exc:  # noqa: BLE001 - a load test counts every failed request
            outcome, message = "error", f"{kind}: {type(exc).__name__}: {exc}"[:200]
        elapsed_ms = (time.perf_counter() - start) * 1e3
        with self.lock:
            self.latencies[kind][outcome].append(elapsed_ms)
            if message:
                self.errors[message] = self.errors.get(message, 0) + 1
        return answer, outcome

    def operation_done(self) -> None:
        with self.lock:
            self.operations += 1

    def summary(self) -> dict[str, Any]:
        kinds: dict[str, Any] = {}
        for kind, by in self.latencies.items():
            row: dict[str, Any] = {name: len(samples) for name, samples in by.items()}
            row["sent"] = sum(row.values())
            row["latency"] = percentiles_ms(by["ok"]) if by["ok"] else None
            row["busy_latency"] = percentiles_ms(by["busy"]) if by["busy"] else None
            kinds[kind] = row
        totals = {name: sum(k[name] for k in kinds.values())
                  for name in ("sent", "ok", "busy", "error")}
        return {"kinds": kinds, "totals": totals, "errors": dict(self.errors)}


class InProcessClient:
    """The client calls the load test makes, on a Segmenter in this process, one call at a time
    (the baseline that the server's throughput is compared with)."""

    def __init__(self, segmenter: Any, lock: threading.Lock) -> None:
        self.segmenter, self.lock = segmenter, lock

    def __enter__(self) -> InProcessClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def panoptic(self, image: np.ndarray) -> Any:
        with self.lock:
            return self.segmenter.panoptic(image)

    def encode(self, image: np.ndarray) -> Any:
        with self.lock:
            return self.segmenter.set_image(image)

    def prompt(self, handle: Any, points: Any = None, boxes: Any = None) -> Any:
        with self.lock:
            return self.segmenter.prompt(handle, points=points, boxes=boxes)


Connect = Callable[[], Any]  # -> a context manager with panoptic / encode / prompt


def _remote(url: str, timeout: float) -> Connect:
    from omg_rt.client import Client

    return lambda: Client(url, timeout=timeout)


def _client_loop(index: int, connect: Connect, options: LoadOptions, deadline: float,
                 stop: threading.Event, tally: _Tally, timed_out: threading.Event) -> None:
    """One client's requests: ``options.requests`` of them, or until ``deadline`` / ``stop``."""
    rng = np.random.default_rng([options.seed, index])
    sizes = options.sizes
    pool = [procedural_image(options.seed * 100_003 + index * 1_009 + i, sizes[i % len(sizes)])
            for i in range(options.prompt_images)]
    handles: dict[int, Any] = {}
    with connect() as client:
        for number in range(options.requests):
            if stop.is_set():
                return
            if time.monotonic() >= deadline:
                timed_out.set()
                return
            if rng.random() < options.prompt_share:
                which = int(rng.integers(len(pool)))
                if which not in handles:
                    handle, outcome = tally.call("encode", client.encode, pool[which])
                    if outcome != "ok":
                        tally.operation_done()
                        continue
                    handles[which] = handle
                points, boxes = random_prompt(rng, pool[which].shape[:2])
                _, outcome = tally.call("prompt", client.prompt, handles[which],
                                        points=points, boxes=boxes)
                if outcome == "error":  # evicted from the server's cache, maybe: encode again
                    handles.pop(which)
            else:
                seed = (options.seed * 7_919 + index) * 1_000_003 + number
                image = procedural_image(seed, sizes[number % len(sizes)])
                tally.call("image", client.panoptic, image)
            tally.operation_done()


def _warm_up(connect: Connect, options: LoadOptions) -> None:
    """One panoptic per image size, an encode and a prompt: first-call costs (allocations,
    session set-up per padded size) stay out of the numbers."""
    with connect() as client:
        for i, hw in enumerate(options.sizes):
            client.panoptic(procedural_image(900_000 + i, hw))
        handle = client.encode(procedural_image(900_100, options.sizes[0]))
        client.prompt(handle, points=[[5.0, 5.0]])


def run_load(url: str, options: LoadOptions, *, metrics_url: str | None = None,
             progress: bool = False, warmup: bool = True) -> dict[str, Any]:
    """K x M requests against the server at ``url`` (see the module docstring).

    Returns:
        the report: config, wall_seconds, stopped_by, kinds (per kind: sent / ok / busy / error
        and ``latency`` percentiles of the ok answers in ms), totals, requests_per_second
        (answers) and ok_per_second, errors (message -> count), metrics (the deltas per model,
        or the reason they could not be read).
    """
    url = loopback_url(url)
    _check_load(options)
    metrics_url = metrics_url or default_metrics_url(url)
    if warmup:
        _warm_up(_remote(url, max(options.timeout, 120.0)), options)
    before, metrics_error = _try_scrape(metrics_url)
    report = _drive(_remote(url, options.timeout), options, progress)
    report["url"] = url
    report["metrics"] = _metrics_report(metrics_url, before, metrics_error,
                                        report["totals"]["ok"])
    return report


def run_in_process(bundle: Path, options: LoadOptions, *, backend: str = "auto",
                   threads: int = 0, progress: bool = False) -> dict[str, Any]:
    """The same traffic as :func:`run_load` (same clients, images, prompts) on a Segmenter of
    ``bundle`` in this process, its calls one at a time: the baseline of the server's
    throughput. Returns the same report, without server metrics."""
    from omg_rt.segmenter import Segmenter

    _check_load(options)
    segmenter = Segmenter.from_bundle(bundle, backend=backend, threads=threads)
    try:
        lock = threading.Lock()

        def connect() -> InProcessClient:
            return InProcessClient(segmenter, lock)

        _warm_up(connect, options)
        report = _drive(connect, options, progress)
    finally:
        segmenter.close()
    report["url"] = "in-process"
    return report


def _check_load(options: LoadOptions) -> None:
    if not 0.0 <= options.prompt_share <= 1.0:
        raise InvalidInputError(f"prompt_share: expected a value in [0, 1], got "
                                f"{options.prompt_share}")
    if options.clients < 1 or options.requests < 1 or options.prompt_images < 1:
        raise InvalidInputError("clients, requests, prompt_images: expected >= 1, got "
                                f"{options.clients}, {options.requests}, {options.prompt_images}")


def _drive(connect: Connect, options: LoadOptions, progress: bool) -> dict[str, Any]:
    """K client threads making their requests through ``connect()``; the tally as a report."""
    tally, stop, timed_out = _Tally(), threading.Event(), threading.Event()
    start = time.monotonic()
    deadline = start + options.max_seconds
    threads = [threading.Thread(target=_client_loop, name=f"bench-serve-client-{i}",
                                args=(i, connect, options, deadline, stop, tally, timed_out),
                                daemon=True)
               for i in range(options.clients)]
    _run_threads(threads, stop, tally, options.clients * options.requests, progress)
    wall = time.monotonic() - start
    report = tally.summary()
    totals = report["totals"]
    report.update({
        "mode": "load",
        "config": asdict(options),
        "wall_seconds": wall,
        "planned": options.clients * options.requests,
        "operations": tally.operations,
        "stopped_by": "max_seconds" if timed_out.is_set() else "requests",
        "requests_per_second": totals["sent"] / wall,
        "ok_per_second": totals["ok"] / wall,
    })
    return report


def _run_threads(threads: list[threading.Thread], stop: threading.Event, tally: _Tally,
                 total: int, progress: bool) -> None:
    """Start ``threads`` and wait for them (a progress bar of operations meanwhile); Ctrl-C
    stops them after their current request."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="req", disable=not progress, file=sys.stderr)
    try:
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            time.sleep(0.1)
            bar.update(tally.operations - bar.n)
        bar.update(tally.operations - bar.n)
    except KeyboardInterrupt:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
        raise
    finally:
        bar.close()


def _try_scrape(url: str) -> tuple[dict[str, dict[str, float]], str]:
    try:
        return scrape_metrics(url), ""
    except (OSError, urllib.error.URLError) as exc:
        return {}, f"could not read {url}: {exc}"


def _metrics_report(url: str, before: dict[str, dict[str, float]], error: str,
                    expected_success: int) -> dict[str, Any]:
    if error:
        return {"url": url, "error": error}
    try:
        after = settled_metrics(url, expected_success, before)
    except (OSError, urllib.error.URLError) as exc:
        return {"url": url, "error": f"could not read {url}: {exc}"}
    return {"url": url, "models": metrics_delta(before, after)}


# ---------------------------------------------------------------------- overload


def run_overload(url: str, *, flood: int = 32, timeout: float = 60.0,
                 size: tuple[int, int] = (360, 480), after: int = 3,
                 metrics_url: str | None = None) -> dict[str, Any]:
    """``flood`` clients send one panoptic request each at the same moment; then ``after``
    requests, one at a time, once the flood has been answered.

    Returns:
        the report: kinds["image"] (the flood: ok / busy / error, ``latency`` of the ok answers,
        ``busy_latency`` of the busy ones), after (the later requests: all ok?, latencies),
        shown (some busy answers and every later request ok), metrics deltas.
    """
    from omg_rt.client import Client

    url = loopback_url(url)
    metrics_url = metrics_url or default_metrics_url(url)
    _warm_up(_remote(url, max(timeout, 120.0)), LoadOptions(sizes=(size,), timeout=timeout))
    before, metrics_error = _try_scrape(metrics_url)
    tally = _Tally()
    images = [procedural_image(10_000 + i, size) for i in range(flood)]
    barrier = threading.Barrier(flood)

    def one(i: int) -> None:
        with Client(url, timeout=timeout) as client:  # tritonclient's pool: one per thread
            barrier.wait(timeout=60)  # everyone at once
            tally.call("image", client.panoptic, images[i])
        tally.operation_done()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(flood)]
    start = time.monotonic()
    _run_threads(threads, threading.Event(), tally, flood, progress=False)
    wall = time.monotonic() - start

    later = _Tally()
    with Client(url, timeout=timeout) as client:
        for i in range(after):
            later.call("image", client.panoptic, procedural_image(20_000 + i, size))
    report = tally.summary()
    flood_row, later_row = report["kinds"]["image"], later.summary()["kinds"]["image"]
    report.update({
        "mode": "overload",
        "url": url,
        "flood": flood,
        "image_size": list(size),
        "wall_seconds": wall,
        "after": later_row,
        "shown": flood_row["busy"] > 0 and later_row["ok"] == after,
    })
    report["errors"].update(later.errors)
    report["metrics"] = _metrics_report(metrics_url, before, metrics_error,
                                        report["totals"]["ok"] + later_row["ok"])
    return report


# ---------------------------------------------------------------------- one entry point


def benchmark(target: str, options: LoadOptions, *, server: ServerOptions | None = None,
              overload: bool = False, flood: int = 32, metrics_port: int | None = None,
              in_process: bool = False, progress: bool = False) -> dict[str, Any]:
    """Run the load test (or ``overload``) against ``target``: a bundle directory (a server is
    started here with ``server`` options, and stopped) or a loopback URL.

    Args:
        in_process: a bundle's load test only: then, with the server stopped, the same traffic
            on an in-process Segmenter (:func:`run_in_process`), for the throughput ratio.

    Returns:
        the report of :func:`run_load` / :func:`run_overload`, plus ``server`` (for a server
        started here: its options, exit code and ``left_behind`` processes), ``environment``,
        and with ``in_process`` the baseline's report under ``in_process`` and
        ``throughput_ratio`` (server requests/s over in-process requests/s).
    """
    if in_process and (overload or "://" in target):
        raise InvalidInputError("in_process: a load test of a bundle only (not --overload, "
                                "not a URL)")
    if overload:
        server = replace(server or ServerOptions(), workers=1, max_queue=2)

    def run(url: str, metrics_url: str | None) -> dict[str, Any]:
        if overload:
            return run_overload(url, flood=flood, timeout=options.timeout,
                                size=max(options.sizes, key=lambda hw: hw[0] * hw[1]),
                                metrics_url=metrics_url)
        return run_load(url, options, metrics_url=metrics_url, progress=progress)

    if "://" in target:
        url = loopback_url(target)
        metrics_url = None if metrics_port is None else \
            f"http://127.0.0.1:{metrics_port}/metrics"
        report = run(url, metrics_url)
        report["server"] = {"url": url, "started_here": False}
    else:
        bundle = Path(target)
        if not bundle.is_dir():
            raise InvalidInputError(f"target: expected a bundle directory or "
                                    f"http://127.0.0.1:PORT, got {target!r} (no such directory)")
        local = LocalServer(bundle, server or ServerOptions())
        with local:
            report = run(local.url, local.metrics_url)
        report["server"] = local.record()
        if in_process:
            started = server or ServerOptions()
            baseline = run_in_process(bundle, options, progress=progress,
                                      backend=started.backend, threads=started.threads)
            report["in_process"] = baseline
            report["throughput_ratio"] = (report["requests_per_second"]
                                          / baseline["requests_per_second"])
    report["environment"] = environment()
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    lines = []
    if report["mode"] == "load":
        c = report["config"]
        lines.append(
            f"omg-rt serve load test at {report['url']}: {c['clients']} clients x "
            f"{c['requests']} requests, prompt share {c['prompt_share']:.2f}; "
            f"{report['operations']} of {report['planned']} in {report['wall_seconds']:.1f} s "
            f"(stopped by {report['stopped_by']})")
    else:
        lines.append(
            f"omg-rt serve overload at {report['url']}: {report['flood']} simultaneous image "
            f"requests ({report['image_size'][0]}x{report['image_size'][1]}) in "
            f"{report['wall_seconds']:.1f} s")
    lines.append(f"{'kind':<8}{'sent':>6}{'ok':>6}{'busy':>6}{'error':>6}"
                 f"{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}")
    rows = [(k, report["kinds"][k]) for k in KINDS if report["kinds"][k]["sent"]]
    if report["mode"] == "overload":
        rows.append(("after", report["after"]))
    for name, row in rows:
        lines.append(f"{name:<8}{row['sent']:>6}{row['ok']:>6}{row['busy']:>6}{row['error']:>6}"
                     + _latency_cells(row["latency"]))
        if row["busy_latency"]:
            lines.append(f"{'  busy':<32}" + _latency_cells(row["busy_latency"]))
    t = report["totals"]
    lines.append(f"{'all':<8}{t['sent']:>6}{t['ok']:>6}{t['busy']:>6}{t['error']:>6}")
    if report["mode"] == "load":
        lines.append(f"throughput: {report['requests_per_second']:.2f} requests/s "
                     f"({report['ok_per_second']:.2f} ok/s)")
    else:
        lines.append("shown: busy answers, then the server answers normally: "
                     f"{'yes' if report['shown'] else 'NO'}")
    for message, count in sorted(report["errors"].items(), key=lambda kv: -kv[1])[:5]:
        lines.append(f"  {count} x {message}")
    metrics = report["metrics"]
    if "error" in metrics:
        lines.append(f"server metrics: {metrics['error']}")
    else:
        lines.append(f"server metrics over the run ({metrics['url']}):")
        lines.append(f"{'model':<10}{'success':>9}{'failure':>9}{'infer':>7}{'execs':>7}"
                     f"{'avg batch':>11}{'queue ms':>10}{'request ms':>12}")
        for model, m in metrics["models"].items():
            lines.append(
                f"{model:<10}{m['success']:>9.0f}{m['failure']:>9.0f}{m['inferences']:>7.0f}"
                f"{m['executions']:>7.0f}{_number(m['avg_batch'], 2):>11}"
                f"{_number(m['avg_queue_ms'], 2):>10}{_number(m['avg_request_ms'], 1):>12}")
    baseline = report.get("in_process")
    if baseline:
        lines.append(f"in-process baseline (the same traffic on one Segmenter here): "
                     f"{baseline['requests_per_second']:.2f} requests/s; server / in-process "
                     f"= {report['throughput_ratio']:.2f}")
        for name in KINDS:
            row = baseline["kinds"][name]
            if row["sent"]:
                lines.append(f"{'  ' + name:<8}{row['sent']:>6}{row['ok']:>6}{row['busy']:>6}"
                             f"{row['error']:>6}" + _latency_cells(row["latency"]))
    server = report.get("server", {})
    if server.get("started_here"):
        log = f" (log {server['log']})" if server["log"] else ""
        lines.append(f"server: exit code {server['exit_code']}, processes left behind: "
                     f"{server['left_behind']}{log}")
    return "\n".join(lines)


def _latency_cells(stats: dict[str, Any] | None) -> str:
    if not stats:
        return f"{'-':>10}{'-':>10}{'-':>10}"
    return f"{stats['p50_ms']:>10.1f}{stats['p90_ms']:>10.1f}{stats['p99_ms']:>10.1f}"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    try:
        sizes = tuple((int(h), int(w)) for h, w in (s.lower().split("x") for s in
                                                      text.split(",")))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HxW[,HxW...], got {text!r}") from exc
    if not sizes or min(min(s) for s in sizes) < 16:
        raise argparse.ArgumentTypeError(f"expected sides of at least 16 px, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_serve", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EXIT_CODES_HELP)
    parser.add_argument("target", help="a bundle directory, or http://127.0.0.1:PORT")
    defaults, server_defaults = LoadOptions(), ServerOptions()
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--requests", type=int, default=defaults.requests,
                        help="per client")
    parser.add_argument("--prompt-share", type=float, default=defaults.prompt_share)
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds)
    parser.add_argument("--timeout", type=float, default=defaults.timeout,
                        help="seconds per request")
    parser.add_argument("--sizes", type=_sizes, default=defaults.sizes,
                        help="HxW[,HxW...] of the images (default 240x320,320x240,360x480)")
    parser.add_argument("--prompt-images", type=int, default=defaults.prompt_images,
                        help="images each client encodes and prompts on")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--overload", action="store_true",
                        help="a server with --max-queue 2 --workers 1, flooded")
    parser.add_argument("--flood", type=int, default=32,
                        help="--overload: simultaneous image requests")
    group = parser.add_argument_group("a server started here (BUNDLE only)")
    group.add_argument("--workers", type=int, help=f"default {server_defaults.workers}")
    group.add_argument("--max-batch", type=int, help=f"default {server_defaults.max_batch}")
    group.add_argument("--max-queue", type=int, help=f"default {server_defaults.max_queue}")
    group.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"])
    group.add_argument("--threads", type=int, help="onnxruntime intra-op threads, here and in "
                       f"--in-process (default {server_defaults.threads}: all cores)")
    parser.add_argument("--in-process", action="store_true",
                        help="BUNDLE only: then the same traffic on an in-process Segmenter "
                        "(the throughput baseline)")
    parser.add_argument("--metrics-port", type=int,
                        help="URL only: the server's metrics port (default PORT + 2)")
    parser.add_argument("--out", help="write the report as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    given = {name: getattr(args, name) for name in ("workers", "max_batch", "max_queue",
                                                    "backend", "threads")}
    if "://" in args.target and any(v is not None for v in given.values()):
        parser.error("--workers / --max-batch / --max-queue / --backend / --threads: only for a "
                     "server started here (a bundle), not for a URL")
    if args.overload and (args.workers is not None or args.max_queue is not None):
        parser.error("--overload runs the server with --workers 1 --max-queue 2")
    server = ServerOptions(**{k: v for k, v in given.items() if v is not None})
    options = LoadOptions(clients=args.clients, requests=args.requests,
                          prompt_share=args.prompt_share, max_seconds=args.max_seconds,
                          timeout=args.timeout, sizes=args.sizes,
                          prompt_images=args.prompt_images, seed=args.seed)

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # the same clean stop as Ctrl-C

    signal.signal(signal.SIGTERM, terminate)
    try:
        report = benchmark(args.target, options, server=server, overload=args.overload,
                           flood=args.flood, metrics_port=args.metrics_port,
                           in_process=args.in_process, progress=not args.quiet)
    except OmgRtError as exc:
        return report_failure("bench_serve", exc)
    except KeyboardInterrupt:
        print("bench_serve: interrupted; the server was stopped", file=sys.stderr)
        return 130
    print(format_report(report))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    failed = (report["mode"] == "overload" and not report["shown"]) or \
        report["server"].get("left_behind")
    return ExitCode.FAILED if failed else ExitCode.OK


if __name__ == "__main__":
    sys.exit(main())
