"""The backend interface: one small Protocol over named numpy arrays, and the runner that checks
every feed against the backend's declared inputs before the backend sees it.

A backend is one loaded graph (an ONNX Runtime session, a TensorRT engine, or the PyTorch
model's method of the same name). Backends hold no validation code: :class:`GraphRunner` does
it once for all of them, and counts calls (the cache tests read the counters).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from omg_rt.errors import InvalidInputError, describe
from omg_rt.spec import GraphIO

# Padded image height and width are multiples of the backbone's coarsest stride.
INPUT_DIVISOR = 32


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output.

    Attributes:
        name: the graph I/O name (``omg_rt.spec``).
        shape: per axis an int (fixed) or a str (a named dynamic axis; equal names must agree
            within one call).
        dtype: numpy dtype name (``float32``, ``float16``, ``int64``, ``bool``).
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.dtype} ({dims})"


@runtime_checkable
class Backend(Protocol):
    """One graph behind one backend."""

    name: str

    def inputs(self) -> dict[str, TensorSpec]:
        """Input name -> spec."""
        ...

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Named inputs -> named outputs (numpy, host memory)."""
        ...

    def close(self) -> None:
        """Release sessions, engines and device buffers."""
        ...


class GraphRunner:
    """Validates feeds against ``backend.inputs()``, runs the backend, checks the outputs exist.

    Args:
        graph: the graph's I/O contract (names from ``omg_rt.spec``).
        backend: the loaded graph.

    Attributes:
        calls: how many times the backend ran (thread-safe counter).
    """

    def __init__(self, graph: GraphIO, backend: Backend) -> None:
        self.graph = graph
        self.backend = backend
        self.calls = 0
        self._lock = threading.Lock()
        self._specs = backend.inputs()
        missing = set(graph.inputs) - set(self._specs)
        if missing:
            raise InvalidInputError(
                f"{graph.name} on {backend.name}: the loaded graph lacks inputs {sorted(missing)} "
                f"(has {sorted(self._specs)})"
            )

    def inputs(self) -> dict[str, TensorSpec]:
        return dict(self._specs)

    def __call__(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = self.validate(feeds)
        with self._lock:
            self.calls += 1
        outputs = self.backend.run(checked)
        missing = set(self.graph.outputs) - set(outputs)
        if missing:
            raise InvalidInputError(
                f"{self.graph.name} on {self.backend.name}: outputs {sorted(missing)} missing"
            )
        return outputs

    def validate(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return C-contiguous feeds after checking names, ranks, dtypes and fixed/named axes."""
        expected = set(self.graph.inputs)
        given = set(feeds)
        if given != expected:
            raise InvalidInputError(
                f"{self.graph.name}: expected inputs {sorted(expected)}, got {sorted(given)}"
            )
        named: dict[str, tuple[int, str]] = {}
        out: dict[str, np.ndarray] = {}
        for name in self.graph.inputs:
            value, spec = feeds[name], self._specs[name]
            if not isinstance(value, np.ndarray) or value.dtype != np.dtype(spec.dtype):
                raise InvalidInputError(
                    f"{self.graph.name}.{name}: expected {spec.describe()}, got {describe(value)}"
                )
            if value.ndim != len(spec.shape):
                raise InvalidInputError(
                    f"{self.graph.name}.{name}: expected {spec.describe()}, got {describe(value)}"
                )
            for axis, (dim, size) in enumerate(zip(spec.shape, value.shape, strict=True)):
                if isinstance(dim, int):
                    if dim != size:
                        raise InvalidInputError(
                            f"{self.graph.name}.{name}: axis {axis} must be {dim}: expected "
                            f"{spec.describe()}, got {describe(value)}"
                        )
                elif dim:
                    if dim in ("H", "W") and size % INPUT_DIVISOR:
                        raise InvalidInputError(
                            f"{self.graph.name}.{name}: axis {axis} ({dim}) must be a multiple "
                            f"of {INPUT_DIVISOR} (the stride of the coarsest map): expected "
                            f"{spec.describe()}, got {describe(value)}"
                        )
                    seen = named.setdefault(dim, (size, name))
                    if seen[0] != size:
                        raise InvalidInputError(
                            f"{self.graph.name}.{name}: axis {axis} ({dim}) is {size} but "
                            f"{seen[1]} has {dim} = {seen[0]}"
                        )
            out[name] = np.ascontiguousarray(value)
        return out

    def close(self) -> None:
        self.backend.close()
