"""A local ``omg-rt serve`` process for benchmarks and tests, and Triton's metrics.

:class:`LocalServer` starts ``omg-rt serve BUNDLE`` in its own process group on free loopback
ports, waits until every model is ready and stops the whole group; :func:`scrape_metrics` /
:func:`metrics_delta` read Triton's per-model counters. ``benchmarks.bench_serve`` drives the load.
"""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from omg_rt.errors import BackendUnavailableError, InvalidInputError

COUNTERS = (  # Triton's cumulative per-model counters (Prometheus names)
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_request_duration_us",
)
STARTUP_SECONDS = 180.0
STOP_SECONDS = 60.0
# PyTriton's model loading hands each Python-backend stub its config over a unix socket within
# 1 s; on a busy machine that fails now and then ("Connection refused" / "Timeout occurred while
# waiting for config file", triton-inference-server/pytriton#109) and the server exits before it
# is ready. Starting it again is enough.
START_ATTEMPTS = 2
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ServerOptions:
    """How a server this benchmark starts runs: ``omg-rt serve`` options, and the Python that
    runs it ("": :func:`serve_python`)."""

    workers: int = 2
    max_batch: int = 4
    max_queue: int = 32
    backend: str = "auto"
    threads: int = 0  # onnxruntime intra-op threads (0 = all cores)
    python: str = ""
    idle_seconds: float | None = None  # None: omg-rt serve's default


# ---------------------------------------------------------------------- the server


def serve_python() -> str:
    """The Python that runs ``omg-rt serve``, as the serving tests pick it:
    ``$OMG_RT_SERVE_PYTHON``, else the repository's ``.venv-serve`` (``scripts/setup.sh`` makes
    it: nvidia-pytriton pins numpy < 2, and a server on numpy 2 answers BYTES outputs empty),
    else this one."""
    if os.environ.get("OMG_RT_SERVE_PYTHON"):
        return os.environ["OMG_RT_SERVE_PYTHON"]
    venv = REPO / ".venv-serve" / "bin" / "python"
    return str(venv) if venv.is_file() else sys.executable


def check_serve_python(python: str) -> None:
    """BackendUnavailableError (with the reason) unless ``python`` can run ``omg-rt serve``."""
    if not Path(python).is_file():
        raise BackendUnavailableError(f"omg-rt serve: no Python at {python} (bash "
                                      "scripts/setup.sh makes .venv-serve)")
    if python == sys.executable:
        from omg_rt.serve import check_interpreter

        check_interpreter()
        return
    check = subprocess.run(
        [python, "-c", "from omg_rt.serve import check_interpreter; check_interpreter()"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=_serve_env())
    if check.returncode:
        reason = (check.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise BackendUnavailableError(f"omg-rt serve: {python} cannot serve: {reason}")


def _serve_env() -> dict[str, str]:
    """The server's environment: this checkout's omg_rt first, whichever venv runs it."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def loopback_url(url: str) -> str:
    """``url`` as ``http://HOST:PORT`` if HOST is a loopback address, else InvalidInputError."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parsed.scheme != "http" or not loopback or parsed.port is None:
        raise InvalidInputError(
            f"target: this is a local load test; expected a bundle directory or "
            f"http://127.0.0.1:PORT (a loopback address), got {url!r}")
    return f"http://{host}:{parsed.port}"


def default_metrics_url(url: str) -> str:
    """Where ``omg-rt serve`` at ``url`` publishes Triton's metrics."""
    port = urlparse(url).port
    assert port is not None  # loopback_url requires one
    return f"http://127.0.0.1:{port + 2}/metrics"  # omg-rt serve: metrics on port + 2


def free_base_port() -> int:
    """A port p with p, p + 1 and p + 2 free on loopback (HTTP, gRPC, metrics)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + 2 > 65535:
            continue
        try:
            for port in (base + 1, base + 2):
                with socket.socket() as t:
                    t.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise BackendUnavailableError("server: found no three consecutive free loopback ports")


class LocalServer:
    """``omg-rt serve BUNDLE`` in a subprocess (its own process group) on free loopback ports,
    as a context manager: entering waits until every model is ready, leaving stops it.

    Attributes (after leaving): starts (1, or 2 when the first start failed), exit_code,
    left_behind (processes of its group still alive after the stop, then killed), log (its
    output, removed after a clean run).
    """

    def __init__(self, bundle: Path, options: ServerOptions, *,
                 startup_seconds: float = STARTUP_SECONDS) -> None:
        self.bundle = Path(bundle)
        self.options = options
        self.startup_seconds = startup_seconds
        self.port = 0
        self.python = ""
        self.process: subprocess.Popen[bytes] | None = None
        handle, log = tempfile.mkstemp(prefix="bench-serve-", suffix=".log")
        os.close(handle)
        self.log = Path(log)
        self.exit_code: int | None = None
        self.left_behind = 0
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return default_metrics_url(self.url)

    def __enter__(self) -> LocalServer:
        python = self.python = self.options.python or serve_python()
        check_serve_python(python)  # one line on what to do, before a server that cannot start
        try:
            for attempt in range(1, START_ATTEMPTS + 1):
                self.starts = attempt
                self._launch(python)
                if self._wait_until_ready(last_attempt=attempt == START_ATTEMPTS):
                    return self
                self.stop()  # it exited while loading its models: once more, on new ports
                self.process, self.exit_code = None, None
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _launch(self, python: str) -> None:
        self.port = free_base_port()
        o = self.options
        command = [python, "-m", "omg_rt.cli", "serve", str(self.bundle.resolve()),
                   "--port", str(self.port), "--workers", str(o.workers),
                   "--max-batch", str(o.max_batch), "--max-queue", str(o.max_queue),
                   "--backend", o.backend, "--threads", str(o.threads)]
        if o.idle_seconds is not None:
            command += ["--idle-seconds", str(o.idle_seconds)]
        with open(self.log, "ab") as out:
            # its own session: a Ctrl-C here reaches this process, which stops the server in
            # order; SIGINT back to default in the child, or a parent started in the background
            # (SIGINT ignored) would leave it a server that cannot be stopped cleanly
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_default_sigint, cwd=REPO, env=_serve_env())

    def _wait_until_ready(self, *, last_attempt: bool) -> bool:
        """True once every model is ready; False if the server exited first (and another
        attempt is left); BackendUnavailableError otherwise."""
        from omg_rt.client import Client

        assert self.process is not None
        deadline = time.monotonic() + self.startup_seconds
        with Client(self.url, timeout=10) as client:
            while not client.ready():
                if self.process.poll() is not None:
                    if not last_attempt:
                        return False
                    raise BackendUnavailableError(
                        f"omg-rt serve exited with {self.process.returncode} before it was "
                        f"ready ({self.starts} attempts):\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise BackendUnavailableError(
                        f"omg-rt serve was not ready after {self.startup_seconds:.0f} s:\n"
                        f"{self.log_tail()}")
                time.sleep(0.5)
        return True

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """SIGINT (a clean PyTriton shutdown), then SIGKILL to the whole group if it hangs."""
        process = self.process
        if process is None or self.exit_code is not None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                _kill_group(process.pid)
                process.wait(timeout=10)
        self.exit_code = process.returncode
        # tritonserver and its Python-backend stubs follow their parent within seconds
        deadline = time.monotonic() + 30
        while group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        self.left_behind = len(group_members(process.pid))
        if self.left_behind:
            _kill_group(process.pid)
        elif self.exit_code == 0 and self.starts == 1:
            self.log.unlink(missing_ok=True)  # kept only when something went wrong

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def record(self) -> dict[str, Any]:
        return {"url": self.url, "started_here": True, "bundle": str(self.bundle),
                **asdict(self.options), "python": self.python,
                "pid": None if self.process is None else self.process.pid,
                "starts": self.starts, "exit_code": self.exit_code, "left_behind": self.left_behind,
                "log": str(self.log) if self.log.exists() else None}


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------- Triton's metrics

_SAMPLE = re.compile(r'^(\w+)\{([^}]*)\}\s+(\S+)$')


def scrape_metrics(url: str, timeout: float = 5.0) -> dict[str, dict[str, float]]:
    """Triton's per-model counters at ``url`` (``/metrics``): {model: {counter: value}}, the
    failure counter summed over its reasons."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        text = response.read().decode()
    models: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) not in COUNTERS:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        counters = models.setdefault(labels.get("model", "?"), dict.fromkeys(COUNTERS, 0.0))
        counters[match.group(1)] += float(match.group(3))
    return models


def metrics_delta(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
                  ) -> dict[str, dict[str, float | None]]:
    """Per model with traffic: successes, failures, inferences, executions, the average dynamic
    batch (inferences / executions) and queue time per successful request."""
    out: dict[str, dict[str, float | None]] = {}
    for model, now in sorted(after.items()):
        then = before.get(model, dict.fromkeys(COUNTERS, 0.0))
        d = {name: now[name] - then.get(name, 0.0) for name in COUNTERS}
        if not (d["nv_inference_request_success"] or d["nv_inference_request_failure"]):
            continue
        success, executions = d["nv_inference_request_success"], d["nv_inference_exec_count"]
        out[model] = {
            "success": success,
            "failure": d["nv_inference_request_failure"],
            "inferences": d["nv_inference_count"],
            "executions": executions,
            "avg_batch": d["nv_inference_count"] / executions if executions else None,
            "avg_queue_ms": d["nv_inference_queue_duration_us"] / success / 1e3
            if success else None,
            "avg_request_ms": d["nv_inference_request_duration_us"] / success / 1e3
            if success else None,
        }
    return out


def settled_metrics(url: str, expected_success: int,
                     before: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """The counters once they include every answered request (Triton records a request's
    statistics as it releases it, which can be just after the client has its answer)."""
    deadline = time.monotonic() + 5
    while True:
        after = scrape_metrics(url)
        delta = metrics_delta(before, after)
        seen = sum(m["success"] or 0 for m in delta.values())
        if seen >= expected_success or time.monotonic() > deadline:
            return after
        time.sleep(0.2)
