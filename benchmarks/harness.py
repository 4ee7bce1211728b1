"""One timing harness for every benchmark: warm-up, synchronisation, median and spread, and result
rows that carry their provenance (device, versions, git SHA, date)."""

from __future__ import annotations

import datetime as _dt
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass
class Timing:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int


def time_cpu(fn: Callable[[], object], *, warmup: int = 1, runs: int = 5) -> Timing:
    """Median wall time of ``fn`` on the CPU (``time.perf_counter``), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    samples.sort()
    deciles = statistics.quantiles(samples, n=10) if len(samples) > 1 else samples * 9
    return Timing(statistics.median(samples), deciles[0], deciles[-1], len(samples))


def git_sha() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment() -> dict[str, str]:
    env = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": platform.processor() or platform.machine(),
        "git": git_sha(),
        "date": _dt.date.today().isoformat(),
    }
    try:
        import torch

        env["torch"] = torch.__version__
        env["threads"] = str(torch.get_num_threads())
        if torch.cuda.is_available():
            env["gpu"] = torch.cuda.get_device_name()
    except ImportError:
        pass
    return env


@dataclass
class Row:
    subject: str
    case: str
    timing: Timing
    extra: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def markdown_table(rows: list[Row], env: dict[str, str]) -> str:
    lines = [
        f"_{env.get('date')} · {env.get('cpu')} · {env.get('threads', '?')} threads · "
        f"torch {env.get('torch', '-')} · git {env.get('git')}_",
        "",
        "| subject | case | median ms | p10 | p90 | runs |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        t = r.timing
        lines.append(
            f"| {r.subject} | {r.case} | {t.median_ms:.1f} | {t.p10_ms:.1f} | "
            f"{t.p90_ms:.1f} | {t.runs} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- added for omg-bench


def percentiles_ms(samples_ms: list[float]) -> dict[str, float | int]:
    """p50 / p90 / p99 / mean / min of wall-time samples in ms (numpy's linear interpolation;
    with fewer than 100 samples p99 lies between the two slowest)."""
    import numpy as np

    if not samples_ms:
        raise ValueError("percentiles_ms: no samples")
    values = np.asarray(samples_ms, np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(values.mean()),
        "min_ms": float(values.min()),
        "runs": int(values.size),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvidia_smi(query: str) -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out else None


def detailed_environment() -> dict[str, str]:
    """:func:`environment` plus the CPU model, core count, GPU (name, memory, driver) and the
    versions of every runtime a report compares (missing ones are left out)."""
    import importlib
    import os

    env = environment()
    env["cpu"] = _cpu_model()
    env["cores"] = str(os.cpu_count() or "?")
    env["os"] = platform.platform()
    for module in ("numpy", "onnxruntime", "onnx", "triton", "tensorrt"):
        try:
            env[module] = str(importlib.import_module(module).__version__)
        except Exception:  # noqa: BLE001 - absent or broken: not part of this environment
            continue
    try:
        import onnxruntime

        env["onnxruntime_providers"] = ",".join(onnxruntime.get_available_providers())
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            env["cuda"] = str(torch.version.cuda)
            props = torch.cuda.get_device_properties(0)
            env["gpu_memory_mib"] = str(props.total_memory // 2**20)
    except ImportError:
        pass
    driver = _nvidia_smi("driver_version")
    if driver:
        env["gpu_driver"] = driver
    if "gpu" not in env:
        name = _nvidia_smi("name")
        if name:
            env["gpu"] = name
    return env
