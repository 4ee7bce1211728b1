"""Typed errors of omg-rt, raised at the boundary; messages name the argument, what was expected
and what came."""

from __future__ import annotations


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
