"""The exported graphs: one thin wrapper per model method, example inputs, dynamic axes.

Each wrapper calls exactly one ``OMGSeg`` method (the graph boundaries of ``omg_rt.spec.GRAPHS``),
so "graph N matches PyTorch" is a statement about that method. Names come from ``omg_rt.spec``.

Dynamic axes (symbolic dimension names, as they appear in the manifest):

| graph | axes |
|---|---|
| encoder | ``N`` = images (batch x frames), ``H``, ``W`` and ``H/s``, ``W/s`` at stride s |
| pixel_decoder | ``N``, ``H/s``, ``W/s`` |
| prompt_encoder | ``B`` batch, ``P`` prompts |
| query_decoder | ``N`` = B x T (memories), ``H/s``, ``W/s``, ``B``, ``Q`` queries, ``K`` classes, |
| | ``S``, ``T`` |
| prompt_decoder | ``B`` images (memories, queries), ``H/s``, ``W/s``, ``P`` prompts, ``K``, ``S`` |
| text_encoder | ``N`` texts |
| clip_head | ``B``, ``Q`` |

(``Q`` counts learned queries or prompts, ``S`` synonyms per class, ``T`` frames per clip.)
Height and width are dynamic: the runtime feeds each image at its own keep-ratio size padded to a
multiple of 32, as the official model (the manifest's ``input`` says which range was checked).

Three flavours, chosen by the export target: ``portable`` (the deformable attention as
``grid_sample`` -> ONNX GridSample, the masked attention as matrix products and a softmax: runs in
ONNX Runtime everywhere), ``tensorrt`` (the deformable attention as a
``MultiscaleDeformableAttnPlugin_TRT`` node; TensorRT >= 10.14 computes the GridSample form wrong,
NVIDIA/TensorRT#4813) and ``fused``, ONNX Runtime's CPU provider with omg-rt's operators
(``omg_rt.backends.ort_ops``): the plugin node, and the query decoder's masked cross-attention as
one ``omg_rt::MaskedAttention`` node (no (B, M, Q, K) score tensor). The choice never depends on
the device the export runs on.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import kernels
from omg_rt.spec import (
    CLIP_HEAD,
    ENCODER,
    PIXEL_DECODER,
    PROMPT_DECODER,
    PROMPT_ENCODER,
    QUERY_DECODER,
    TEXT_ENCODER,
    GraphIO,
)
from training.model import OMGSeg

FLAVOURS = ("portable", "tensorrt", "fused")


class EncoderGraph(nn.Module):
    """image (N, 3, H, W) -> features_s4 .. features_s32 (``OMGSeg.encode``)."""

    def __init__(self, model: OMGSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model.encode(image))


class PixelDecoderGraph(nn.Module):
    """Four stage maps -> mask_features, memory_s32, memory_s16, memory_s8
    (``OMGSeg.decode_pixels``)."""

    def __init__(self, model: OMGSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, s4, s8, s16, s32) -> tuple[torch.Tensor, ...]:
        mask_features, memories = self.model.decode_pixels([s4, s8, s16, s32])
        return (mask_features, *memories)


class PromptEncoderGraph(nn.Module):
    """prompt_boxes (B, P, 4), image_size (B, 2) -> query_content, query_position
    (``OMGSeg.encode_prompts``)."""

    def __init__(self, model: OMGSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, prompt_boxes, image_size) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_prompts(prompt_boxes, image_size)


class QueryDecoderGraph(nn.Module):
    """Memories, mask features, class bank, queries, prompt_mode -> class_logits, mask_logits,
    iou_logits, query_embeddings (the last head of ``OMGSeg.decode_queries``)."""

    def __init__(self, model: OMGSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, memory_s32, memory_s16, memory_s8, mask_features, class_bank,
                query_content, query_position, prompt_mode) -> tuple[torch.Tensor, ...]:
        pred = self.model.decode_queries(
            [memory_s32, memory_s16, memory_s8], mask_features, class_bank, query_content,
            query_position, prompt_mode=prompt_mode,
        )[-1]
        assert pred.class_logits is not None and pred.iou_logits is not None  # the last head
        return pred.class_logits, pred.mask_logits, pred.iou_logits, pred.query_embeddings


class PromptDecoderGraph(nn.Module):
    """Memories, mask features, class bank, prompt queries of B images -> class_logits,
    mask_logits, iou_logits, query_embeddings (``OMGSeg.decode_prompts``)."""

    def __init__(self, model: OMGSeg) -> None:
        super().__init__()
        self.model = model

    def forward(self, memory_s32, memory_s16, memory_s8, mask_features, class_bank,
                query_content, query_position) -> tuple[torch.Tensor, ...]:
        pred = self.model.decode_prompts(
            [memory_s32, memory_s16, memory_s8], mask_features, class_bank, query_content,
            query_position,
        )
        assert pred.class_logits is not None and pred.iou_logits is not None
        return pred.class_logits, pred.mask_logits, pred.iou_logits, pred.query_embeddings


class TextEncoderGraph(nn.Module):
    """token_ids (N, L) int64 -> text_embeddings (N, D) (``CLIPTextEncoder.forward``)."""

    def __init__(self, model: OMGSeg) -> None:
        super().__init__()
        if model.text_encoder is None:
            raise ValueError("model: expected a text encoder for the text_encoder graph, got none")
        self.text_encoder: nn.Module = model.text_encoder

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(token_ids)


class ClipHeadGraph(nn.Module):
    """pooled_features (B, Q, C5) -> clip_embeddings (B, Q, D)
    (``OpenCLIPBackbone.clip_projection``)."""

    def __init__(self, model: OMGSeg) -> None:
        super().__init__()
        self.backbone = model.backbone

    def forward(self, pooled_features: torch.Tensor) -> torch.Tensor:
        return self.backbone.clip_projection(pooled_features)


@dataclass(frozen=True)
class GraphDef:
    """What ``torch.onnx.export`` needs for one graph."""

    io: GraphIO
    module: nn.Module
    example: tuple[torch.Tensor, ...]
    dynamic_axes: dict[str, dict[int, str]]
    # the module's outputs on ``example``: their non-dynamic sizes are fixed in the graph
    example_outputs: tuple[torch.Tensor, ...] = ()


# Example input for tracing: small, non-square, H != W at every stride, and batch 2, so that no
# size is traced as a constant (the graphs are dynamic in batch, height and width).
EXAMPLE_HW = (96, 128)


def spatial_axes(stride: int) -> dict[int, str]:
    """The symbolic (height, width) axes of an (N, C, H/s, W/s) map: ``H/s`` and ``W/s``, or
    ``H`` and ``W`` for the image itself (the manifest's names; TensorRT profiles parse them)."""
    if stride == 1:
        return {2: "H", 3: "W"}
    return {2: f"H/{stride}", 3: f"W/{stride}"}


FEATURE_STRIDES = {"features_s4": 4, "features_s8": 8, "features_s16": 16, "features_s32": 32,
                   "mask_features": 4, "memory_s32": 32, "memory_s16": 16, "memory_s8": 8}


def graph_defs(model: OMGSeg, example_hw: tuple[int, int] = EXAMPLE_HW) -> dict[str, GraphDef]:
    """Every graph this model can export (the prompt encoder only with prompts, the text encoder
    only with a text tower), with small example inputs (batch 2 so no axis is traced as 1).

    The encoder, pixel decoder and query decoder take any height and width that are multiples of
    32 (``example_hw`` only shapes the trace)."""
    spec = model.config
    c = spec.query_decoder.embed_dim
    g = torch.Generator().manual_seed(0)
    image = torch.randn(2, 3, *example_hw, generator=g)
    with torch.no_grad():
        features = model.encode(image)
        mask_features, memories = model.decode_pixels(features)

    def frames(name: str) -> dict[int, str]:  # (N, C, H/s, W/s)
        return {0: "N", **spatial_axes(FEATURE_STRIDES.get(name, 1))}

    defs = {
        ENCODER.name: GraphDef(ENCODER, EncoderGraph(model), (image,),
                               {name: frames(name) for name in (*ENCODER.inputs,
                                                                *ENCODER.outputs)}),
        PIXEL_DECODER.name: GraphDef(
            PIXEL_DECODER, PixelDecoderGraph(model), tuple(features),
            {name: frames(name) for name in (*PIXEL_DECODER.inputs, *PIXEL_DECODER.outputs)}),
    }
    bank = F.normalize(torch.randn(5, 2, spec.backbone.embed_dim, generator=g), dim=-1)
    queries = torch.randn(1, 3, c, generator=g), torch.randn(1, 3, c, generator=g)
    # one clip of two frames: B = 1, T = 2 keeps B, T and N distinct while tracing
    qd_inputs = (*memories, mask_features, bank, *queries, torch.tensor(True))
    bq = {0: "B", 1: "Q"}
    defs[QUERY_DECODER.name] = GraphDef(
        QUERY_DECODER, QueryDecoderGraph(model), qd_inputs,
        {**{name: frames(name) for name in QUERY_DECODER.inputs[:4]},
         "class_bank": {0: "K", 1: "S"}, "query_content": bq, "query_position": bq,
         "class_logits": {0: "B", 1: "Q", 2: "K+1"},
         "mask_logits": {0: "B", 1: "Q", 2: "T", 3: "H/4", 4: "W/4"},
         "iou_logits": bq, "query_embeddings": bq})
    if model.prompt_encoder is not None:
        boxes = torch.tensor([[[4.0, 6.0, 40.0, 50.0], [10.0, 10.0, 16.0, 16.0],
                               [0.0, 0.0, 60.0, 30.0]]]).expand(2, -1, -1).contiguous()
        size = torch.tensor([[64.0, 64.0], [60.0, 50.0]])
        bp = {0: "B", 1: "P"}
        defs[PROMPT_ENCODER.name] = GraphDef(
            PROMPT_ENCODER, PromptEncoderGraph(model), (boxes, size),
            {"prompt_boxes": bp, "image_size": {0: "B"}, "query_content": bp,
             "query_position": bp})
        # two images (B = 2) of three prompts each
        images = {name: {0: "B", **spatial_axes(FEATURE_STRIDES[name])}
                  for name in PROMPT_DECODER.inputs[:4]}
        prompts = tuple(torch.randn(2, 3, c, generator=g) for _ in range(2))
        defs[PROMPT_DECODER.name] = GraphDef(
            PROMPT_DECODER, PromptDecoderGraph(model), (*memories, mask_features, bank, *prompts),
            {**images, "class_bank": {0: "K", 1: "S"}, "query_content": bp, "query_position": bp,
             "class_logits": {0: "B", 1: "P", 2: "K+1"},
             "mask_logits": {0: "B", 1: "P", 3: "H/4", 4: "W/4"},
             "iou_logits": bp, "query_embeddings": bp})
    if model.text_encoder is not None:
        tokens = model.text_encoder.tokenize(["a photo of a cat.", "There is a dog"])
        defs[TEXT_ENCODER.name] = GraphDef(TEXT_ENCODER, TextEncoderGraph(model), (tokens,),
                                           {"token_ids": {0: "N"}, "text_embeddings": {0: "N"}})
    pooled = torch.randn(2, 3, spec.backbone.widths[-1], generator=g)
    defs[CLIP_HEAD.name] = GraphDef(CLIP_HEAD, ClipHeadGraph(model), (pooled,),
                                    {"pooled_features": bq, "clip_embeddings": bq})
    known = {ENCODER.name: tuple(features),
             PIXEL_DECODER.name: (mask_features, *memories)}
    for name, graph in defs.items():
        outputs = known.get(name)
        if outputs is None:
            with torch.no_grad():
                outputs = graph.module(*graph.example)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        defs[name] = dataclasses.replace(graph, example_outputs=tuple(outputs))
    return defs


class _PluginMSDeformAttn(torch.autograd.Function):
    """The reference computation in PyTorch; a ``MultiscaleDeformableAttnPlugin_TRT`` node in
    ONNX (the symbolic from ``kernels.trt_plugin``)."""

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights):
        return kernels.ms_deform_attn_reference(value, spatial_shapes, level_start_index,
                                                sampling_locations, attention_weights)

    @staticmethod
    def symbolic(g, value, spatial_shapes, level_start_index, sampling_locations,
                 attention_weights):
        from kernels.trt_plugin import ms_deform_attn_onnx

        return ms_deform_attn_onnx(g, value, spatial_shapes, level_start_index,
                                   sampling_locations, attention_weights)


def _plugin_ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                           attention_weights, *, impl=None):
    del impl
    return _PluginMSDeformAttn.apply(value, spatial_shapes, level_start_index,
                                     sampling_locations, attention_weights)


class _FusedMaskedAttention(torch.autograd.Function):
    """The reference computation in PyTorch; an ``omg_rt::MaskedAttention`` node in ONNX, fed
    the (B, L, M, d) layout the projections produce (the transposes around it cancel those of
    the head split: ONNX Runtime's transpose optimizer removes both)."""

    @staticmethod
    def forward(ctx, q, k, v, mask):
        return kernels.masked_attention_reference(q, k, v, mask)

    @staticmethod
    def symbolic(g, q, k, v, mask):
        from omg_rt.backends.ort_ops import MASKED_ATTENTION_OP, OPS_DOMAIN

        heads_last = [0, 2, 1, 3]  # (B, M, L, d) <-> (B, L, M, d)
        out = g.op(f"{OPS_DOMAIN}::{MASKED_ATTENTION_OP}",
                   *(g.op("Transpose", t, perm_i=heads_last) for t in (q, k, v)), mask)
        return g.op("Transpose", out, perm_i=heads_last)


def _fused_masked_attention(q, k, v, mask, *, impl=None):
    del impl
    if mask is None:  # self-attention: plain products, no custom node
        return kernels.masked_attention_reference(q, k, v, None)
    return _FusedMaskedAttention.apply(q, k, v, mask)


@contextlib.contextmanager
def deform_attn_flavour(flavour: str) -> Iterator[None]:
    """Trace the model's attention as ``flavour`` (``portable``, ``tensorrt`` or ``fused``):
    the masked attention as the PyTorch reference (``fused``: the custom node) whatever device
    or kernel setting is active."""
    if flavour not in FLAVOURS:
        raise ValueError(f"flavour: expected one of {FLAVOURS}, got {flavour!r}")
    previous_impl = kernels.get_impl()
    previous_ops = kernels.ms_deform_attn, kernels.masked_attention
    kernels.set_impl("reference")
    if flavour in ("tensorrt", "fused"):
        kernels.ms_deform_attn = _plugin_ms_deform_attn
    if flavour == "fused":
        kernels.masked_attention = _fused_masked_attention
    try:
        yield
    finally:
        kernels.ms_deform_attn, kernels.masked_attention = previous_ops
        kernels.set_impl(previous_impl)
