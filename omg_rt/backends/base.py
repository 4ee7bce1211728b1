"""The backend interface: one small Protocol over named arrays, and the runner that checks every
feed against the backend's declared inputs before the backend sees it.

Arrays are host numpy arrays, except the outputs a backend keeps on its device
(:data:`RESIDENT_OUTPUTS`, PyTorch's backend: torch tensors, :mod:`omg_rt.arrays`), which any
backend of the same device takes back as feeds.

A backend is one loaded graph (an ONNX Runtime session, a TensorRT engine, or the PyTorch
model's method of the same name). Backends hold no validation code: :class:`GraphRunner` does
it once for all of them, and counts calls (the cache tests read the counters).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from omg_rt.arrays import Array, contiguous, dtype_name, is_host, is_tensor
from omg_rt.errors import InvalidInputError, describe
from omg_rt.spec import ENCODER, PIXEL_DECODER, PROMPT_ENCODER, GraphIO

# The outputs a backend may leave on its device: the big maps that only the next graph, the
# encoder cache and device post-processing read, and the prompt queries only the prompt decoder
# reads (everything else comes back as numpy).
RESIDENT_OUTPUTS = frozenset(
    {*ENCODER.outputs, *PIXEL_DECODER.outputs, *PROMPT_ENCODER.outputs, "mask_logits"}
)

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

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """Named inputs -> named outputs (numpy in host memory; those of
        :data:`RESIDENT_OUTPUTS` may be tensors on the backend's device)."""
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

    def __call__(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
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

    def validate(self, feeds: Mapping[str, Array]) -> dict[str, Array]:
        """Return C-contiguous feeds after checking names, ranks, dtypes and fixed/named axes.
        Numpy arrays go to every backend; tensors (:mod:`omg_rt.arrays`) to a backend that takes
        them back (PyTorch's), and are brought to the host for any other."""
        expected = set(self.graph.inputs)
        given = set(feeds)
        if given != expected:
            raise InvalidInputError(
                f"{self.graph.name}: expected inputs {sorted(expected)}, got {sorted(given)}"
            )
        named: dict[str, tuple[int, str]] = {}
        out: dict[str, Array] = {}
        for name in self.graph.inputs:
            value, spec = feeds[name], self._specs[name]
            if is_tensor(value) and not getattr(self.backend, "takes_tensors", False):
                value = value.detach().cpu().numpy()
            if not (is_host(value) or is_tensor(value)) or dtype_name(value) != spec.dtype:
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
            out[name] = contiguous(value)
        return out

    def close(self) -> None:
        self.backend.close()
