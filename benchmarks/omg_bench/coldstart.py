"""Cold start and peak memory: ``Segmenter.from_bundle`` + the first call in a fresh process.

The parent starts ``python -m benchmarks.omg_bench.coldstart '<json>'`` per target; the child
times the import of the runtime, the load (sessions / engines / model), the first ``panoptic``
call, then a few warm calls, and prints one JSON line: the times, its peak RSS (imports
included, which is what a deployment pays) and the GPU memory
(``torch.cuda.max_memory_allocated`` for the torch backend, the process's ``nvidia-smi``
``used_memory`` for the others).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def measure(open_kwargs: dict[str, Any], bundle: str | None, image_path: str, autocast: bool,
            warm_calls: int, timeout: float = 600.0) -> dict[str, Any]:
    """Run the child and return its measurements (``error`` set when it failed)."""
    request = {"bundle": bundle, "open": open_kwargs, "image": image_path,
               "autocast": autocast, "warm_calls": warm_calls}
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.omg_bench.coldstart", json.dumps(request)],
            capture_output=True, text=True, timeout=timeout, env=env, cwd=str(REPO))
    except subprocess.TimeoutExpired:
        return {"error": f"cold start: no answer within {timeout:.0f} s"}
    wall = time.perf_counter() - start
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": f"cold start exited {done.returncode}: {' | '.join(tail)}"}
    result = json.loads(lines[-1])
    result["process_wall_s"] = wall
    return result


def peak_rss_mib() -> float:
    """This process's peak RSS (``VmHWM``). Not ``getrusage().ru_maxrss``: Linux carries that
    high-water mark over ``fork`` + ``exec``, so a child started by a 1 GiB parent reports the
    parent's 1 GiB."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gpu_used_mib() -> float | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(os.getpid()):
            try:
                return float(parts[1])
            except ValueError:
                return None
    return None


def _child(request: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    import cv2

    from omg_rt.segmenter import Segmenter

    t1 = time.perf_counter()
    rss_import = peak_rss_mib()
    if request["open"].get("backend") == "torch" and request["open"].get("threads"):
        import torch

        torch.set_num_threads(int(request["open"]["threads"]))
    if request["bundle"] is None:  # PyTorch straight from the checkpoint
        seg = Segmenter.from_checkpoint(**request["open"])
    else:
        seg = Segmenter.from_bundle(request["bundle"], **request["open"])
    t2 = time.perf_counter()
    image = cv2.cvtColor(cv2.imread(request["image"], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    torch = None
    if request["open"].get("backend") == "torch":
        import torch  # already imported by the backend
    context = (torch.autocast("cuda", dtype=torch.float16)
               if request["autocast"] and torch is not None else None)
    if context is not None:
        context.__enter__()
    seg.panoptic(image)
    t3 = time.perf_counter()
    for i in range(int(request["warm_calls"])):
        seg.cache.clear()
        seg.panoptic(image if i % 2 else image[:, ::-1].copy())
    if context is not None:
        context.__exit__(None, None, None)
    result: dict[str, Any] = {
        "import_s": t1 - t0, "load_s": t2 - t1, "first_call_s": t3 - t2,
        "cold_start_s": t3 - t1, "rss_after_import_mib": rss_import,
        "peak_rss_mib": peak_rss_mib(),
        "gpu_peak_mib": None, "runtime": seg.backend_name,
    }
    if torch is not None and torch.cuda.is_available():
        result["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    elif request["open"].get("providers") == "cuda" or request["open"].get("backend") == "tensorrt":
        result["gpu_peak_mib"] = _gpu_used_mib()
    return result


if __name__ == "__main__":
    print(json.dumps(_child(json.loads(sys.argv[1]))))
