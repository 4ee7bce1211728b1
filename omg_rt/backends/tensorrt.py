"""TensorRT backend, written to the TensorRT 10 Python API.

- Engines come from the bundle's ``engines/<key>/<graph>.<precision>.plan`` (the key names the
  GPU, its compute capability and the TensorRT version: plans are not portable), or are built on
  first use from the bundle's ONNX graphs by the exporter's own builder
  (:mod:`omg_rt.backends.trt_build`: the same precision flags and FP32 islands), with a progress
  message, and saved there (or under ``~/.cache/omg-rt/engines`` when the bundle is read-only).
  Engines are built on the device they run on — on Jetson too.
- Device buffers through cuda-python (``cuda.bindings.runtime``, or the older ``cuda.cudart``),
  pinned host staging buffers, one CUDA stream and one execution context per worker thread.
- Optional CUDA-graph capture for fixed shapes (``cuda_graphs=True``): the first call of a shape
  runs normally, the second captures, later ones replay.
- Workspace size, DLA core and GPU fallback are options (Jetson).

TensorRT and cuda-python are imported lazily; where either is missing, or no GPU is visible,
opening this backend raises BackendUnavailableError with the reason.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from omg_rt.backends import trt_build
from omg_rt.backends.base import TensorSpec
from omg_rt.backends.trt_build import BuildSettings, engine_key, plan_path
from omg_rt.backends.trt_profiles import profile_shapes, runtime_ranges, spatial_ranges
from omg_rt.errors import BackendUnavailableError, InvalidInputError
from omg_rt.files import atomic_path
from omg_rt.spec import PIXEL_DECODER

log = logging.getLogger("omg_rt")

# TensorRT >= 10.14 computes GridSample-decomposed deformable attention wrongly
# (NVIDIA/TensorRT#4813): a pixel decoder exported for the CPU must not run there.
_GRIDSAMPLE_BROKEN_FROM = (10, 14)


@dataclass(frozen=True)
class TensorRTOptions:
    """Engine build and run options.

    Attributes:
        workspace_bytes: builder workspace pool limit (Jetson: keep it small, e.g. 512 MiB).
        dla_core: run on this DLA core (Jetson AGX/NX), None = GPU only.
        gpu_fallback: let layers DLA cannot run fall back to the GPU.
        cuda_graphs: capture and replay CUDA graphs per fixed input-shape signature.
        build: build missing engines (False: missing engines are an error).
        engine_dir: where plans are read and written (default: inside the bundle).
        max_batch: largest encoder batch; max_frames: largest video clip; max_prompts: largest
            prompt count per call; max_classes / max_synonyms: largest vocabulary bank;
            max_texts: largest text-encoder batch. They set the optimisation profiles.
        plugins: ``"builtin"`` loads TensorRT's own plugins
            (``MultiscaleDeformableAttnPlugin_TRT``); ``"omg"`` registers the Triton
            AOT plugin of ``kernels.trt_plugin``.
    """

    workspace_bytes: int = 1 << 30
    dla_core: int | None = None
    gpu_fallback: bool = True
    cuda_graphs: bool = False
    build: bool = True
    engine_dir: str | None = None
    max_batch: int = 4
    max_frames: int = 5
    max_prompts: int = 64
    max_classes: int = 256
    max_synonyms: int = 20
    max_texts: int = 256
    plugins: tuple[str, ...] = ("builtin",)

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> TensorRTOptions:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in options.items() if k in names})


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"tensorrt: `import tensorrt` fails ({exc})") from exc
    major = int(trt.__version__.split(".")[0])
    if major < 10:
        raise BackendUnavailableError(
            f"tensorrt: version {trt.__version__} found; this backend needs TensorRT >= 10"
        )
    return trt


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as exc:
            raise BackendUnavailableError(
                f"tensorrt: cuda-python is not installed ({exc}); pip install cuda-python"
            ) from exc
    return cudart


def _check(result: Any, what: str) -> Any:
    """cuda-python calls return (error, values...): raise on error, return the values."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendUnavailableError(f"tensorrt: {what} failed with CUDA error {err}")
    return values[0] if len(values) == 1 else tuple(values)


def _device(cudart: Any) -> tuple[str, tuple[int, int]]:
    """Name and compute capability of the current CUDA device."""
    device = _check(cudart.cudaGetDevice(), "cudaGetDevice")
    props = _check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00 "), (int(props.major), int(props.minor))


def open_tensorrt_graphs(bundle: Any, precision: str, options: dict[str, Any]) -> dict[str, Any]:
    """Every graph of ``bundle`` as a TensorRT engine (loaded, or built on first use)."""
    opts = TensorRTOptions.from_dict(options)
    trt = _import_tensorrt()
    cudart = _import_cudart()
    count = _check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if count < 1:
        raise BackendUnavailableError("tensorrt: no CUDA device is visible")
    version = tuple(int(v) for v in trt.__version__.split(".")[:2])
    pixel_entry = bundle.graphs.get(PIXEL_DECODER.name)
    if version >= _GRIDSAMPLE_BROKEN_FROM and (
        pixel_entry is None or pixel_entry.tensorrt_files is None
    ):
        target = bundle.manifest.target
        raise BackendUnavailableError(
            f"tensorrt: this bundle was exported for target {target!r} (deformable attention "
            f"as GridSample only), which TensorRT {trt.__version__} computes wrongly "
            f"(NVIDIA/TensorRT#4813); re-export with a TensorRT target (plugin node)"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    _load_plugins(trt, logger, opts.plugins)
    gpu, capability = _device(cudart)
    key = engine_key(gpu, capability, trt.__version__)
    shipped = _shipped_plans(bundle, trt, gpu, capability)
    engines: dict[str, Any] = {}
    for name in bundle.graphs:
        if precision not in bundle.graphs[name].files:
            continue
        shipped_plan = shipped.get(name, {}).get(precision)
        plan: Path = (
            bundle.root / shipped_plan
            if shipped_plan
            else _engine_path(bundle, opts, key, precision, name)
        )
        if not plan.is_file():
            if not opts.build:
                raise BackendUnavailableError(
                    f"tensorrt: no engine {plan} for this device and build=False"
                )
            _build_engine(trt, logger, bundle, name, precision, plan, opts)
        engines[name] = TensorRTGraph(trt, cudart, logger, plan, opts)
    return engines


def _load_plugins(trt: Any, logger: Any, plugins: tuple[str, ...]) -> None:
    if "builtin" in plugins:
        trt.init_libnvinfer_plugins(logger, "")
    if "omg" in plugins:
        try:
            from kernels.trt_plugin import register_plugin
        except ImportError as exc:
            raise BackendUnavailableError(
                f"tensorrt: plugin 'omg' needs the kernels package ({exc})"
            ) from exc
        register_plugin()


def _shipped_plans(bundle: Any, trt: Any, gpu: str, capability: tuple[int, int]
                   ) -> dict[str, dict[str, str]]:
    """Plans ``omg-export --engine`` built into the bundle for this GPU and TensorRT version
    (manifest ``engines``: records with gpu, compute_capability, tensorrt, files)."""
    for record in bundle.manifest.engines:
        if record.matches(gpu, capability, trt.__version__):
            files: dict[str, dict[str, str]] = record.files
            return files
    return {}


def _engine_path(bundle: Any, opts: TensorRTOptions, key: str, precision: str, name: str) -> Path:
    rel = plan_path(key, name, precision)  # the exporter's layout
    if opts.engine_dir:
        return Path(opts.engine_dir) / rel
    inside: Path = bundle.root / "engines" / rel
    if inside.is_file() or os.access(bundle.root, os.W_OK):
        return inside
    outside: Path = Path.home() / ".cache" / "omg-rt" / "engines" / bundle.identity / rel
    return outside


def _profile_shapes(
    graph: str, network_inputs: dict[str, tuple[int, ...]], bundle: Any, opts: TensorRTOptions
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
    """(min, opt, max) of the network's inputs with dynamic (-1) axes, each axis named as the
    manifest names it, from the runtime's ranges (:mod:`omg_rt.backends.trt_profiles`)."""
    declared = bundle.graphs[graph].inputs if graph in bundle.graphs else {}
    dims: dict[str, list[int | str | None]] = {}
    for name, shape in network_inputs.items():
        named = declared[name].shape if name in declared else ()
        axis_names = [a if isinstance(a, str) else None for a in named]
        axis_names += [None] * (len(shape) - len(axis_names))
        dims[name] = [d if d >= 0 else axis_names[axis] for axis, d in enumerate(shape)]
    k, s = bundle.vocabulary.class_bank.shape[:2]
    counts = {"Q": bundle.query_content.shape[0], "K": k, "S": s}
    ranges = runtime_ranges(
        max_batch=opts.max_batch,
        max_frames=opts.max_frames,
        max_prompts=opts.max_prompts,
        max_classes=opts.max_classes,
        max_synonyms=opts.max_synonyms,
        max_texts=opts.max_texts,
        counts=counts,
    )
    ranges.update(spatial_ranges(bundle.input.to_dict()))
    return profile_shapes(dims, ranges, counts, graph=graph)


def _build_engine(
    trt: Any,
    logger: Any,
    bundle: Any,
    graph: str,
    precision: str,
    plan: Path,
    opts: TensorRTOptions,
) -> None:
    """Build and save one plan with the exporter's builder (:func:`trt_build.build_plan`)."""
    entry = bundle.graphs[graph]
    onnx_path = bundle.root / entry.tensorrt_source(precision)  # the plugin-node flavour
    print(
        f"omg-rt: building the TensorRT {precision} engine for {graph} (first use on this "
        f"device; minutes for large graphs) -> {plan}",
        file=sys.stderr,
        flush=True,
    )
    builder = trt.Builder(logger)
    network, _parser = trt_build.parse(trt, builder, logger, onnx_path)
    shapes = _profile_shapes(graph, trt_build.network_inputs(network), bundle, opts)
    settings = BuildSettings(precision, int(opts.workspace_bytes), opts.dla_core,
                             opts.gpu_fallback)
    serialized, _cache = trt_build.build_plan(trt, builder, network, settings, shapes)
    with atomic_path(plan) as tmp:
        tmp.write_bytes(serialized)


_TRT_TO_NUMPY = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT32": "int32",
    "INT64": "int64",
    "INT8": "int8",
    "UINT8": "uint8",
    "BOOL": "bool",
}


@dataclass
class _Worker:
    """Per-thread execution state: context, stream, buffers, captured graphs."""

    context: Any
    stream: Any
    device: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (ptr, bytes)
    host: dict[str, tuple[int, int]] = field(default_factory=dict)
    graphs: dict[tuple[Any, ...], Any] = field(default_factory=dict)  # signature -> graph exec
    seen: set[tuple[Any, ...]] = field(default_factory=set)


class TensorRTGraph:
    """One deserialised engine; thread-safe through one execution context per thread."""

    def __init__(self, trt: Any, cudart: Any, logger: Any, plan: Path, opts: TensorRTOptions):
        self._trt, self._cudart, self._opts = trt, cudart, opts
        self._runtime = trt.Runtime(logger)
        if opts.dla_core is not None:
            self._runtime.DLA_core = int(opts.dla_core)
        self.engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            raise BackendUnavailableError(
                f"tensorrt: cannot deserialise {plan} (built by another TensorRT or GPU?)"
            )
        self.name = "tensorrt"
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs: dict[str, TensorSpec] = {}
        self._outputs: list[str] = []
        for n in names:
            dtype = _TRT_TO_NUMPY.get(self.engine.get_tensor_dtype(n).name, "float32")
            shape = tuple(
                d if d >= 0 else f"{n}:{i}" for i, d in enumerate(self.engine.get_tensor_shape(n))
            )
            if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
                self._inputs[n] = TensorSpec(name=n, shape=shape, dtype=dtype)
            else:
                self._outputs.append(n)
        self._local = threading.local()
        self._workers: list[_Worker] = []
        self._lock = threading.Lock()

    def inputs(self) -> dict[str, TensorSpec]:
        return dict(self._inputs)

    def _worker(self) -> _Worker:
        worker = getattr(self._local, "worker", None)
        if worker is None:
            stream = _check(self._cudart.cudaStreamCreate(), "cudaStreamCreate")
            worker = _Worker(context=self.engine.create_execution_context(), stream=stream)
            self._local.worker = worker
            with self._lock:
                self._workers.append(worker)
        return worker

    def _buffer(
        self,
        pool: dict[str, tuple[int, int]],
        name: str,
        nbytes: int,
        pinned: bool,
        worker: _Worker,
    ) -> int:
        ptr, size = pool.get(name, (0, 0))
        if size >= nbytes and ptr:
            return ptr
        cudart = self._cudart
        if ptr:
            _check(cudart.cudaFreeHost(ptr) if pinned else cudart.cudaFree(ptr), "free")
            worker.graphs.clear()  # captured graphs hold the old addresses
        size = max(nbytes, 1)
        ptr = _check(
            cudart.cudaMallocHost(size) if pinned else cudart.cudaMalloc(size), "allocation"
        )
        pool[name] = (int(ptr), size)
        return int(ptr)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cudart = self._cudart
        worker = self._worker()
        context, stream = worker.context, worker.stream
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, array in feeds.items():
            if not context.set_input_shape(name, array.shape):
                raise InvalidInputError(
                    f"tensorrt: {name} shape {array.shape} is outside the engine's profile"
                )
            nbytes = array.nbytes
            dev = self._buffer(worker.device, name, nbytes, False, worker)
            host = self._buffer(worker.host, name, nbytes, True, worker)
            ctypes.memmove(host, array.ctypes.data, nbytes)
            _check(cudart.cudaMemcpyAsync(dev, host, nbytes, h2d, stream), "copy to device")
            context.set_tensor_address(name, dev)
        shapes = {}
        for name in self._outputs:
            shape = tuple(context.get_tensor_shape(name))
            dtype = np.dtype(_TRT_TO_NUMPY[self.engine.get_tensor_dtype(name).name])
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            context.set_tensor_address(
                name, self._buffer(worker.device, name, nbytes, False, worker)
            )
            self._buffer(worker.host, name, nbytes, True, worker)
            shapes[name] = (shape, dtype, nbytes)
        signature = tuple((n, a.shape) for n, a in feeds.items())
        self._enqueue(worker, signature)
        outputs: dict[str, np.ndarray] = {}
        for name, (_, _, nbytes) in shapes.items():
            host = worker.host[name][0]
            _check(
                cudart.cudaMemcpyAsync(host, worker.device[name][0], nbytes, d2h, stream),
                "copy to host",
            )
        _check(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        for name, (shape, dtype, nbytes) in shapes.items():
            buffer = (ctypes.c_byte * max(nbytes, 1)).from_address(worker.host[name][0])
            # a ctypes array has the buffer protocol; numpy's stubs do not list it
            outputs[name] = np.frombuffer(
                buffer, dtype=dtype, count=nbytes // dtype.itemsize  # type: ignore[call-overload]
            )
            outputs[name] = outputs[name].reshape(shape).copy()
        return outputs

    def _enqueue(self, worker: _Worker, signature: tuple[Any, ...]) -> None:
        cudart, context, stream = self._cudart, worker.context, worker.stream
        if not self._opts.cuda_graphs:
            if not context.execute_async_v3(stream):
                raise BackendUnavailableError("tensorrt: execute_async_v3 failed")
            return
        graph_exec = worker.graphs.get(signature)
        if graph_exec is not None:
            _check(cudart.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")
            return
        if signature not in worker.seen:
            # TensorRT needs one plain enqueue per shape before capture (deferred updates)
            worker.seen.add(signature)
            if not context.execute_async_v3(stream):
                raise BackendUnavailableError("tensorrt: execute_async_v3 failed")
            return
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        _check(cudart.cudaStreamBeginCapture(stream, mode), "cudaStreamBeginCapture")
        context.execute_async_v3(stream)
        graph = _check(cudart.cudaStreamEndCapture(stream), "cudaStreamEndCapture")
        graph_exec = _check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        worker.graphs[signature] = graph_exec
        _check(cudart.cudaGraphLaunch(graph_exec, stream), "cudaGraphLaunch")

    def close(self) -> None:
        cudart = self._cudart
        with self._lock:
            for worker in self._workers:
                for ptr, _ in worker.device.values():
                    cudart.cudaFree(ptr)
                for ptr, _ in worker.host.values():
                    cudart.cudaFreeHost(ptr)
                cudart.cudaStreamDestroy(worker.stream)
            self._workers.clear()
