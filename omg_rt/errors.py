"""Typed errors of omg-rt, raised at the boundary; messages name the argument, what was expected
and what came."""

from __future__ import annotations

import enum


class OmgRtError(Exception):
    """Base class of every error omg-rt raises on purpose."""


class InvalidInputError(OmgRtError, ValueError):
    """An argument has the wrong shape, dtype, range or content."""


class BundleError(OmgRtError):
    """An exported bundle is missing a file, fails its checksum, or has an unreadable manifest."""


class CheckpointError(OmgRtError):
    """A checkpoint does not load: missing or unexpected keys, or wrong shapes."""


class BackendUnavailableError(OmgRtError):
    """A named inference backend cannot run here (library missing, no device)."""


class QueueFullError(OmgRtError):
    """The request scheduler's queue is at capacity."""


def describe(value: object) -> str:
    """The 'got ...' part of a message: ``float32 (3, 4)`` for an array, the type name
    otherwise."""
    dtype, shape = getattr(value, "dtype", None), getattr(value, "shape", None)
    if dtype is not None and isinstance(shape, tuple):
        return f"{dtype} {shape}"
    return type(value).__name__


class ExitCode(enum.IntEnum):
    """The exit status of every command (``omg-rt``, ``omg-export``, ``omg-train``,
    ``omg-bench``): one table, printed in each ``--help`` (:data:`EXIT_CODES_HELP`)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    INPUT = 3
    BUNDLE = 4
    BACKEND = 5
    PARITY = 6


_EXIT_MEANINGS = {
    ExitCode.OK: "done",
    ExitCode.FAILED: "it ran, but something failed (omg-bench: some target)",
    ExitCode.USAGE: "bad command line or config; nothing was done",
    ExitCode.INPUT: "bad input: image, video, prompts, checkpoint, vocabulary, run directory",
    ExitCode.BUNDLE: "bad bundle: missing file, checksum mismatch, unreadable manifest",
    ExitCode.BACKEND: "backend unavailable (TensorRT, GPU); omg-export --engine: the ONNX "
                      "bundle was written, no engines",
    ExitCode.PARITY: "omg-export: exported graphs outside tolerance (kept at BUNDLE.failed)",
}
EXIT_CODES_HELP = "exit codes (every omg-* command):\n" + "\n".join(
    f"  {code.value}  {text}" for code, text in _EXIT_MEANINGS.items())


def report_failure(program: str, error: OmgRtError, where: str = "") -> ExitCode:
    """Print ``program: [where: ]kind: message`` to stderr and return the error's exit code
    (the table above): bad input 3, bad bundle 4, backend unavailable 5, anything else 1."""
    import sys

    code, kind = ExitCode.FAILED, ""
    if isinstance(error, InvalidInputError):
        code, kind = ExitCode.INPUT, "bad input: "
    elif isinstance(error, BundleError):
        code, kind = ExitCode.BUNDLE, "bad bundle: "
    elif isinstance(error, BackendUnavailableError):
        code, kind = ExitCode.BACKEND, "backend unavailable: "
    prefix = f"{program}: {where + ': ' if where else ''}{kind}"
    print(f"{prefix}{error}", file=sys.stderr)
    return code
