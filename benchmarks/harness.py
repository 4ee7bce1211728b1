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
