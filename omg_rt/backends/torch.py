"""PyTorch backend: the training model itself, every graph one of its methods under the graph's
I/O names — the reference every other backend is compared against.

torch and ``training`` are imported lazily (only when this backend is opened); on CUDA the model's
GPU kernels run (``kernels`` under ``auto``) and float32 stays IEEE float32. The big maps
(:data:`~omg_rt.backends.base.RESIDENT_OUTPUTS`) stay on the device as float32 tensors: the next
graph, the encoder cache and device post-processing take them from there (on a GPU, ~0.4 GB of
copies per ConvNeXt-L panoptic call at 1024x768 that never happen).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from omg_rt.arrays import Array, is_tensor
from omg_rt.backends.base import RESIDENT_OUTPUTS, TensorSpec
from omg_rt.errors import BackendUnavailableError
from omg_rt.spec import (
    CLIP_HEAD,
    ENCODER,
    PIXEL_DECODER,
    PROMPT_DECODER,
    PROMPT_ENCODER,
    QUERY_DECODER,
    TEXT_ENCODER,
    GraphIO,
    ModelSpec,
)

log = logging.getLogger(__name__)

# The graphs a GPU replays from CUDA graphs, with their inputs that carry the prompt axis (axis 1
# of those inputs and of every output). A click's few queries are hundreds of small kernels: on an
# H200 the host launching them took 4/5 of a cached prompt's 15 ms (benchmarks/RESULTS.md).
REPLAYED_GRAPHS = {
    PROMPT_ENCODER.name: ("prompt_boxes",),
    PROMPT_DECODER.name: ("query_content", "query_position"),
}
PROMPT_AXIS = 1


def import_torch() -> Any:
    """``import torch`` or BackendUnavailableError with the reason."""
    try:
        import torch
    except ImportError as exc:
        raise BackendUnavailableError(
            f"torch backend: PyTorch is not installed ({exc}); pip install 'omg-rt[train]'"
        ) from exc
    return torch


def load_torch_model(checkpoint: str | os.PathLike[str]) -> tuple[Any, ModelSpec]:
    """``training.model.checkpoint.load_checkpoint`` (an official .pth or our directory)."""
    import_torch()
    try:
        from training.model.checkpoint import load_checkpoint
    except ImportError as exc:
        raise BackendUnavailableError(
            f"torch backend: the 'training' package is not importable ({exc})"
        ) from exc
    loaded: tuple[Any, ModelSpec] = load_checkpoint(checkpoint)
    return loaded


def graph_specs(spec: ModelSpec) -> dict[str, dict[str, TensorSpec]]:
    """Input specs of every graph as the model methods take them (dynamic axes named)."""
    c = spec.pixel_decoder.embed_dim
    widths = spec.backbone.widths
    d = spec.backbone.embed_dim

    def t(name: str, shape: tuple[int | str, ...], dtype: str = "float32") -> TensorSpec:
        return TensorSpec(name=name, shape=shape, dtype=dtype)

    features = {
        name: t(name, ("frames", width, f"h{stride}", f"w{stride}"))
        for name, width, stride in zip(ENCODER.outputs, widths, (4, 8, 16, 32), strict=True)
    }
    return {
        ENCODER.name: {"image": t("image", ("frames", 3, "height", "width"))},
        PIXEL_DECODER.name: features,
        PROMPT_ENCODER.name: {
            "prompt_boxes": t("prompt_boxes", ("batch", "prompts", 4)),
            "image_size": t("image_size", ("batch", 2)),
        },
        QUERY_DECODER.name: {
            "memory_s32": t("memory_s32", ("frames", c, "h32", "w32")),
            "memory_s16": t("memory_s16", ("frames", c, "h16", "w16")),
            "memory_s8": t("memory_s8", ("frames", c, "h8", "w8")),
            "mask_features": t("mask_features", ("frames", c, "h4", "w4")),
            "class_bank": t("class_bank", ("classes", "synonyms", d)),
            "query_content": t("query_content", ("batch", "queries", c)),
            "query_position": t("query_position", ("batch", "queries", c)),
            "prompt_mode": t("prompt_mode", (), "bool"),
        },
        PROMPT_DECODER.name: {
            **{
                name: t(name, ("batch", c, f"h{stride}", f"w{stride}"))
                for name, stride in zip(PROMPT_DECODER.inputs[:4], (32, 16, 8, 4), strict=True)
            },
            "class_bank": t("class_bank", ("classes", "synonyms", d)),
            "query_content": t("query_content", ("batch", "prompts", c)),
            "query_position": t("query_position", ("batch", "prompts", c)),
        },
        TEXT_ENCODER.name: {
            "token_ids": t("token_ids", ("texts", spec.text.context_length), "int64")
        },
        CLIP_HEAD.name: {"pooled_features": t("pooled_features", ("batch", "queries", widths[-1]))},
    }


class TorchGraph:
    """One model method behind the backend Protocol.

    Args:
        graph: the graph it stands for.
        fn: torch tensors by input name -> tuple of tensors in ``graph.outputs`` order.
        specs: its input specs.
        device: torch device string.
    """

    # GraphRunner hands this backend tensors as they are (on another device they are moved)
    takes_tensors = True

    def __init__(
        self,
        graph: GraphIO,
        fn: Callable[..., tuple[Any, ...]],
        specs: dict[str, TensorSpec],
        device: str,
    ) -> None:
        self.graph = graph
        self.name = f"torch[{device}]"
        self._fn = fn
        self._specs = specs
        self._device = device
        self._torch = import_torch()
        # the CUDA-graph replay behind this graph, if any (tests read its graph count)
        self.replay = fn if isinstance(fn, GraphReplay) else None
        # device copies of read-only host inputs (a vocabulary's class bank), by input name
        self._constants: dict[str, tuple[np.ndarray, Any]] = {}

    def inputs(self) -> dict[str, TensorSpec]:
        return dict(self._specs)

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """Numpy arrays or tensors in; the resident outputs as float32 tensors on the device, the
        others as numpy."""
        torch = self._torch
        with torch.inference_mode():
            tensors = {name: self.device_feed(name, value) for name, value in feeds.items()}
            outputs = self._fn(**tensors)
            result: dict[str, Array] = {}
            for name, out in zip(self.graph.outputs, outputs, strict=True):
                out = out.detach()
                if out.dtype.is_floating_point:
                    out = out.float()
                result[name] = out if name in RESIDENT_OUTPUTS else out.cpu().numpy()
        return result

    def device_feed(self, name: str, value: Array) -> Any:
        """A feed on the device; scalars (the prompt-mode flag) stay on the host: the model reads
        them as Python values, and reading one from a GPU waits for all the work queued there.
        A read-only host array is copied once and its device copy reused while the same array
        comes (a vocabulary's class bank, every call)."""
        if is_tensor(value):
            return value if value.ndim == 0 else value.to(self._device)
        kept = self._constants.get(name)
        if kept is not None and kept[0] is value and not value.flags.writeable:
            return kept[1]
        t = self._torch.from_numpy(np.array(value))
        if t.ndim == 0:
            return t
        t = t.to(self._device)
        if not value.flags.writeable:
            self._constants[name] = (value, t)
        return t

    def close(self) -> None:
        self._fn = None  # type: ignore[assignment]
        self._constants.clear()


def prompt_bucket(count: int) -> int:
    """The prompt-axis length a replayed graph is captured for: the next power of two, so 1..P
    prompts share about log2(P) graphs."""
    if count < 1:
        raise ValueError(f"prompt_bucket: expected at least one prompt, got {count}")
    return 1 << (count - 1).bit_length()


@dataclass
class _Captured:
    """One captured graph: its static inputs (refilled every call) and outputs (overwritten by
    every replay); ``graph`` is None where ``fn`` runs eagerly on the static inputs."""

    graph: Any
    inputs: dict[str, Any]
    outputs: tuple[Any, ...]


class GraphReplay:
    """A graph function replayed from CUDA graphs: one captured per input signature (shapes,
    dtypes, autocast state), with the prompt axis padded to :func:`prompt_bucket`; past
    ``max_graphs`` the least recently used one is dropped.

    Prompt queries attend only to themselves (the model's prompt mode), so the padding rows,
    copies of the first prompt, change no real prompt's outputs. A call copies its feeds into the
    graph's static inputs (graphs of the same memory shapes share them), replays, and returns
    copies of the outputs' first P rows: the next replay overwrites the static outputs. Calls
    are serialised (one set of static buffers). A graph that fails to capture is reported once
    and the function runs eagerly from then on.

    Args:
        fn: tensors by input name -> tuple of tensors, each with the prompt axis at
            :data:`PROMPT_AXIS`.
        prompt_inputs: the inputs with the prompt axis.
        capture: False runs ``fn`` eagerly on the static inputs, without a CUDA graph (the
            padding and buffer handling, on any device).
        max_graphs: graphs kept.
    """

    def __init__(
        self,
        fn: Callable[..., tuple[Any, ...]],
        prompt_inputs: tuple[str, ...],
        *,
        capture: bool = True,
        max_graphs: int = 8,
    ) -> None:
        self._fn = fn
        self._prompt_inputs = prompt_inputs
        self._capture = capture
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple[Any, ...], _Captured] = OrderedDict()
        self._lock = threading.Lock()
        self._torch = import_torch()
        self.failed: str | None = None  # why capturing failed, once it has

    @property
    def graphs(self) -> int:
        """Graphs held now."""
        return len(self._graphs)

    def __call__(self, **feeds: Any) -> tuple[Any, ...]:
        if self.failed is not None:
            return self._fn(**feeds)
        count = feeds[self._prompt_inputs[0]].shape[PROMPT_AXIS]
        shapes = {name: self._padded_shape(name, value.shape, count)
                  for name, value in feeds.items()}
        key = (*((name, shapes[name], value.dtype) for name, value in sorted(feeds.items())),
               self._autocast())
        with self._lock:
            captured = self._graphs.pop(key, None)
            if captured is None:
                captured = self._new(feeds, shapes, count)
                if captured is None:  # capturing failed: eager from now on
                    return self._fn(**feeds)
            else:
                self._fill(captured.inputs, feeds, count)
                if captured.graph is None:
                    captured.outputs = self._fn(**captured.inputs)
                else:
                    captured.graph.replay()
            self._graphs[key] = captured
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
            return tuple(out.narrow(PROMPT_AXIS, 0, count).clone() for out in captured.outputs)

    def _padded_shape(self, name: str, shape: Any, count: int) -> tuple[int, ...]:
        dims = list(shape)
        if name in self._prompt_inputs:
            if dims[PROMPT_AXIS] != count:
                raise ValueError(
                    f"{name}: {dims[PROMPT_AXIS]} prompts, but {self._prompt_inputs[0]} has "
                    f"{count}"
                )
            dims[PROMPT_AXIS] = prompt_bucket(count)
        return tuple(dims)

    def _autocast(self) -> tuple[bool, Any] | None:
        """The CUDA autocast state a capture bakes in (None on a CPU)."""
        if not self._capture:
            return None
        torch = self._torch
        return torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")

    def _fill(self, inputs: dict[str, Any], feeds: dict[str, Any], count: int) -> None:
        for name, value in feeds.items():
            static = inputs[name]
            if name in self._prompt_inputs and static.shape[PROMPT_AXIS] > count:
                static.narrow(PROMPT_AXIS, 0, count).copy_(value)
                rest = static.narrow(PROMPT_AXIS, count, static.shape[PROMPT_AXIS] - count)
                rest.copy_(value.narrow(PROMPT_AXIS, 0, 1).expand_as(rest))
            else:
                static.copy_(value)

    def _static(self, name: str, shape: tuple[int, ...], like: Any) -> Any:
        """A static input: another graph's of the same name, shape and dtype (every call refills
        them all), or a new one."""
        for other in self._graphs.values():
            static = other.inputs[name]
            if tuple(static.shape) == shape and static.dtype == like.dtype:
                return static
        return self._torch.empty(shape, dtype=like.dtype, device=like.device)

    def _new(self, feeds: dict[str, Any], shapes: dict[str, tuple[int, ...]],
             count: int) -> _Captured | None:
        inputs = {name: self._static(name, shapes[name], value) for name, value in feeds.items()}
        self._fill(inputs, feeds, count)
        if not self._capture:
            return _Captured(None, inputs, self._fn(**inputs))
        torch = self._torch
        enabled, dtype = self._autocast() or (False, None)
        # autocast's cache of cast weights is freed when its context exits: a graph must cast
        # inside itself (the PyTorch CUDA-graph notes)
        casting = (torch.autocast("cuda", dtype=dtype, cache_enabled=False) if enabled
                   else contextlib.nullcontext())
        device = next(iter(inputs.values())).device
        try:
            with torch.cuda.device(device), casting:
                side = torch.cuda.Stream()
                side.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(side):  # warm-up: library handles, kernel choices
                    for _ in range(2):
                        self._fn(**inputs)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    outputs = self._fn(**inputs)
                graph.replay()  # capturing runs nothing
        except RuntimeError as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            self._graphs.clear()
            log.warning("CUDA graph capture failed, running eagerly from now on: %s", self.failed)
            return None
        return _Captured(graph, inputs, tuple(outputs))


def pick_device(device: str) -> str:
    torch = import_torch()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"torch backend: device {device!r} requested but torch.cuda.is_available() is False"
        )
    return device


def exact_fp32_on_cuda() -> None:
    """Make CUDA's float32 convolutions and matrix products IEEE float32, for the whole process.

    PyTorch runs float32 convolutions on TF32 tensor cores by default: a 10-bit mantissa, ~1e-3
    relative per product, ten times the official goldens' tolerance. FP32 here means float32;
    the fast path on a GPU is FP16 (``torch.autocast``), which this does not touch."""
    torch = import_torch()
    # the legacy flags: mixing them with torch >= 2.9's fp32_precision makes reading either raise
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def open_torch_graphs(
    model: Any, *, device: str = "auto", cuda_graphs: bool = True
) -> dict[str, TorchGraph]:
    """The model's methods as backends, one per graph (the text encoder only if it has one).
    On CUDA, float32 stays float32 (:func:`exact_fp32_on_cuda`), and the prompt graphs
    (:data:`REPLAYED_GRAPHS`) are replayed from CUDA graphs (:class:`GraphReplay`) unless
    ``cuda_graphs`` is False."""
    device = pick_device(device)
    cuda = device.startswith("cuda")
    if cuda:
        exact_fp32_on_cuda()
    model = model.to(device).eval()
    specs = graph_specs(model.config)
    fns: dict[GraphIO, Callable[..., tuple[Any, ...]]] = dict(graph_functions(model))
    if cuda and cuda_graphs:
        fns = {g: GraphReplay(fn, REPLAYED_GRAPHS[g.name]) if g.name in REPLAYED_GRAPHS else fn
               for g, fn in fns.items()}
    return {g.name: TorchGraph(g, fn, specs[g.name], device) for g, fn in fns.items()}


def graph_functions(model: Any) -> dict[GraphIO, Callable[..., tuple[Any, ...]]]:
    """Each graph as a function of the model: tensors by input name -> the outputs' tuple."""

    def encoder(image: Any) -> tuple[Any, ...]:
        return tuple(model.encode(image))

    def pixel_decoder(
        features_s4: Any, features_s8: Any, features_s16: Any, features_s32: Any
    ) -> tuple[Any, ...]:
        mask_features, memories = model.decode_pixels(
            [features_s4, features_s8, features_s16, features_s32]
        )
        return (mask_features, *memories)

    def prompt_encoder(prompt_boxes: Any, image_size: Any) -> tuple[Any, ...]:
        prompts: tuple[Any, ...] = model.encode_prompts(prompt_boxes, image_size)
        return prompts

    def query_decoder(
        memory_s32: Any,
        memory_s16: Any,
        memory_s8: Any,
        mask_features: Any,
        class_bank: Any,
        query_content: Any,
        query_position: Any,
        prompt_mode: Any,
    ) -> tuple[Any, ...]:
        # a Python bool selects the model's exact self-only attention path for prompts
        pred = model.decode_queries(
            [memory_s32, memory_s16, memory_s8],
            mask_features,
            class_bank,
            query_content,
            query_position,
            prompt_mode=bool(prompt_mode.item()),
        )[-1]
        return pred.class_logits, pred.mask_logits, pred.iou_logits, pred.query_embeddings

    def prompt_decoder(
        memory_s32: Any,
        memory_s16: Any,
        memory_s8: Any,
        mask_features: Any,
        class_bank: Any,
        query_content: Any,
        query_position: Any,
    ) -> tuple[Any, ...]:
        pred = model.decode_prompts(
            [memory_s32, memory_s16, memory_s8],
            mask_features,
            class_bank,
            query_content,
            query_position,
        )
        return pred.class_logits, pred.mask_logits, pred.iou_logits, pred.query_embeddings

    def text_encoder(token_ids: Any) -> tuple[Any, ...]:
        return (model.text_encoder(token_ids),)

    def clip_head(pooled_features: Any) -> tuple[Any, ...]:
        return (model.backbone.clip_projection(pooled_features),)

    fns: dict[GraphIO, Callable[..., tuple[Any, ...]]] = {
        ENCODER: encoder,
        PIXEL_DECODER: pixel_decoder,
        QUERY_DECODER: query_decoder,
        CLIP_HEAD: clip_head,
    }
    if model.prompt_encoder is not None:
        fns[PROMPT_ENCODER] = prompt_encoder
        fns[PROMPT_DECODER] = prompt_decoder
    if model.text_encoder is not None:
        fns[TEXT_ENCODER] = text_encoder
    return fns


def learned_queries(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """(Q, C) float32 content and position of the model's learned queries."""
    torch = import_torch()
    with torch.inference_mode():
        content, position = model.learned_queries(1)
    return (
        content[0].detach().float().cpu().numpy().copy(),
        position[0].detach().float().cpu().numpy().copy(),
    )
