"""PyTorch backend: the training model itself, every graph one of its methods under the graph's
I/O names — the reference every other backend is compared against.

torch and ``training`` are imported lazily (only when this backend is opened); on CUDA the model's
GPU kernels run (``kernels`` under ``auto``) and float32 stays IEEE float32. The big maps
(:data:`~omg_rt.backends.base.RESIDENT_OUTPUTS`) stay on the device as float32 tensors: the next
graph, the encoder cache and device post-processing take them from there (on a GPU, ~0.4 GB of
copies per ConvNeXt-L panoptic call at 1024x768 that never happen).
"""

from __future__ import annotations

import os
from collections.abc import Callable
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

    def inputs(self) -> dict[str, TensorSpec]:
        return dict(self._specs)

    def run(self, feeds: dict[str, Array]) -> dict[str, Array]:
        """Numpy arrays or tensors in; the resident outputs as float32 tensors on the device, the
        others as numpy."""
        torch = self._torch
        with torch.inference_mode():
            tensors = {}
            for name, value in feeds.items():
                t = value if is_tensor(value) else torch.from_numpy(np.array(value))
                # scalars (the prompt-mode flag) stay on the host: the model reads them as
                # Python values, and reading one from a GPU waits for all the work queued there
                tensors[name] = t if t.ndim == 0 else t.to(self._device)
            outputs = self._fn(**tensors)
            result: dict[str, Array] = {}
            for name, out in zip(self.graph.outputs, outputs, strict=True):
                out = out.detach()
                if out.dtype.is_floating_point:
                    out = out.float()
                result[name] = out if name in RESIDENT_OUTPUTS else out.cpu().numpy()
        return result

    def close(self) -> None:
        self._fn = None  # type: ignore[assignment]


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


def open_torch_graphs(model: Any, *, device: str = "auto") -> dict[str, TorchGraph]:
    """The model's methods as backends, one per graph (the text encoder only if it has one).
    On CUDA, float32 stays float32 (:func:`exact_fp32_on_cuda`)."""
    device = pick_device(device)
    if device.startswith("cuda"):
        exact_fp32_on_cuda()
    model = model.to(device).eval()
    specs = graph_specs(model.config)

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
    return {g.name: TorchGraph(g, fn, specs[g.name], device) for g, fn in fns.items()}


def learned_queries(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """(Q, C) float32 content and position of the model's learned queries."""
    torch = import_torch()
    with torch.inference_mode():
        content, position = model.learned_queries(1)
    return (
        content[0].detach().float().cpu().numpy().copy(),
        position[0].detach().float().cpu().numpy().copy(),
    )
