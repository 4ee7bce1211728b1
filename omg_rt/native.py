"""omg-rt's C code, compiled on first use with the machine's C compiler for this CPU, and the
process's C allocator setting.

Two libraries: ONNX Runtime's custom operators (:mod:`omg_rt.backends.ort_ops`) and the CPU
post-processing kernels (:mod:`omg_rt.postprocess.native`). Each is built with ``cc`` (``CC``
overrides) into ``$OMG_RT_CACHE`` (default ``~/.cache/omg-rt``), keyed by its sources, the
compiler, the flags and the CPU, so a changed source, compiler or machine builds a new one; the
build is atomic (several processes may build the same library at once).

:func:`retain_freed_memory` keeps glibc from unmapping the runtime's large freed arrays (every
:class:`~omg_rt.segmenter.Segmenter` applies it once per process).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from omg_rt.errors import BackendUnavailableError

# -fno-math-errno / -fno-trapping-math: branch-free float loops (rintf, fmaf) vectorise; no
# result changes (the code reads neither errno nor floating-point exception flags).
# -ffp-contract=off: only the fmaf the source spells is fused (results bit for bit as written).
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
         "-fPIC", "-shared", "-std=c11")
_lock = threading.Lock()
# glibc's mallopt parameters (malloc.h) and the size below which freed memory stays in the process
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
RETAINED_BYTES = 1 << 30
RETAIN_ENV = "OMG_RT_RETAIN_FREED_MEMORY"


@functools.lru_cache(maxsize=1)
def retain_freed_memory() -> bool:
    """Have glibc's malloc serve blocks of up to :data:`RETAINED_BYTES` from its heap and keep
    up to as much freed memory at the heap's top, once per process; ``OMG_RT_RETAIN_FREED_MEMORY=0``
    leaves the allocator as it is.

    The runtime's large arrays (a 5-frame clip's 274 MB mask logits from ONNX Runtime, a VIS
    frame's 100 instance masks of 69 MB, the decoders' intermediate tensors) are each above
    glibc's largest mmap threshold (32 MiB): by default every one is a fresh mapping whose pages
    fault in on first write and is unmapped when freed, so each frame paid to zero its memory
    again. On ConvNeXt-L, INT8, 2 threads (benchmarks/RESULTS.md): a VIS clip's five instance
    results 1.0 -> 0.48 s, its query decoder 2.2 -> 1.6 s. The price: the process keeps up to
    1 GiB of freed memory for reuse.

    Returns:
        Whether the setting was applied (glibc only; a no-op elsewhere).
    """
    if os.environ.get(RETAIN_ENV, "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)  # the process's own C library
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, RETAINED_BYTES)
                    and libc.mallopt(_M_TRIM_THRESHOLD, RETAINED_BYTES))
    except (OSError, AttributeError):
        return False


@functools.lru_cache(maxsize=1)
def _cpu_key() -> str:
    """What the compiled code depends on besides the source: the machine and its CPU flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return f"{platform.machine()}|{flags}"


def cache_dir(kind: str) -> Path:
    """Where libraries of ``kind`` are kept: ``$OMG_RT_CACHE/kind``."""
    root = os.environ.get("OMG_RT_CACHE") or os.path.join(Path.home(), ".cache", "omg-rt")
    return Path(root) / kind


def build(what: str, kind: str, source_dir: Path, sources: Sequence[str], main: str) -> Path:
    """The shared library ``lib<kind>.so`` (dashes as underscores) of ``main``, which includes
    the other ``sources`` of ``source_dir``: compiled once per source, compiler and CPU.

    Args:
        what: the library's name in error messages.
        kind: its cache folder and file name.

    Raises:
        BackendUnavailableError: no C compiler, or it failed (its message included).
    """
    compiler = os.environ.get("CC", "cc")
    found = shutil.which(compiler)
    if found is None:
        raise BackendUnavailableError(
            f"{what}: no C compiler ({compiler!r} is not on PATH); install one "
            "(Debian: apt-get install gcc)")
    digest = hashlib.sha256()
    for name in sources:
        digest.update((source_dir / name).read_bytes())
    digest.update(f"{found}|{' '.join(FLAGS)}|{_cpu_key()}".encode())
    target = cache_dir(kind) / digest.hexdigest()[:16] / f"lib{kind.replace('-', '_')}.so"
    with _lock:
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as work:
                partial = Path(work) / target.name
                command = [found, *FLAGS, "-o", str(partial), str(source_dir / main), "-lm"]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise BackendUnavailableError(
                        f"{what}: {' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
                os.replace(partial, target)  # atomic: another process may build the same
    return target
