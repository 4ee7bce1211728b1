"""The OMG-Seg model in plain PyTorch (inference-only imports: torch, open_clip, timm, kernels)."""

from __future__ import annotations

from omg_rt.spec import ModelSpec
from training.model.backbone import OpenCLIPBackbone
from training.model.omg_seg import OMGSeg
from training.model.pixel_decoder import MSDeformAttnPixelDecoder
from training.model.prompt_encoder import BoxPromptEncoder
from training.model.query_decoder import Mask2FormerQueryDecoder, QueryPredictions
from training.model.text_encoder import CLIPTextEncoder
from training.presets import get_preset


def build_model(spec: ModelSpec | str, *, with_text_encoder: bool = True) -> OMGSeg:
    """Build OMG-Seg (random weights) from a spec or a preset name (``omg-convl``, ``tiny``)."""
    if isinstance(spec, str):
        spec = get_preset(spec)
    bb, tx, pd, qd = spec.backbone, spec.text, spec.pixel_decoder, spec.query_decoder
    backbone = OpenCLIPBackbone(
        timm_model=bb.timm_model,
        widths=bb.widths,
        depths=bb.depths,
        embed_dim=bb.embed_dim,
        head=bb.head,
        frozen=bb.frozen,
    )
    pixel_decoder = MSDeformAttnPixelDecoder(
        in_channels=bb.widths,
        embed_dim=pd.embed_dim,
        num_layers=pd.num_layers,
        num_heads=pd.num_heads,
        num_points=pd.num_points,
        ffn_dim=pd.ffn_dim,
        num_groups=pd.num_groups,
        num_levels=pd.num_levels,
    )
    query_decoder = Mask2FormerQueryDecoder(
        embed_dim=qd.embed_dim,
        num_layers=qd.num_layers,
        num_heads=qd.num_heads,
        ffn_dim=qd.ffn_dim,
        num_queries=qd.num_queries,
        clip_dim=bb.embed_dim,
        logit_scale_log=qd.logit_scale_log,
        num_levels=pd.num_levels,
    )
    prompt_encoder = BoxPromptEncoder(embed_dim=qd.embed_dim) if qd.enable_prompts else None
    text_encoder = None
    if with_text_encoder:
        text_encoder = CLIPTextEncoder(
            embed_dim=bb.embed_dim,
            context_length=tx.context_length,
            vocab_size=tx.vocab_size,
            width=tx.width,
            heads=tx.heads,
            layers=tx.layers,
        )
    return OMGSeg(
        spec=spec,
        backbone=backbone,
        pixel_decoder=pixel_decoder,
        query_decoder=query_decoder,
        prompt_encoder=prompt_encoder,
        text_encoder=text_encoder,
    )


__all__ = [
    "build_model",
    "OMGSeg",
    "QueryPredictions",
    "OpenCLIPBackbone",
    "MSDeformAttnPixelDecoder",
    "Mask2FormerQueryDecoder",
    "BoxPromptEncoder",
    "CLIPTextEncoder",
]
