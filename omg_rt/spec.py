"""The model spec: one frozen, JSON-serialisable description that travels from checkpoint to
bundle manifest to runtime. Standard library only (the runtime reads it without torch).

``build_model(spec)`` in ``training`` turns a spec into modules; the named presets (``omg-convl``,
``tiny``, ``synthetic-tiny``) live in ``training/presets.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

# ImageNet statistics in RGB order (the official data preprocessor; not CLIP's statistics).
IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32

# What the runtime segments: image tasks, prompts, video tasks.
PRECISIONS = ("fp32", "fp16", "int8")  # graph precisions a bundle may hold
IMAGE_TASKS = ("panoptic", "instance", "semantic")
VIDEO_TASKS = ("vis", "vps", "vss", "vos")
TASKS = (*IMAGE_TASKS, "prompt", *VIDEO_TASKS)
# the Triton models of ``omg-rt serve`` (omg_rt.serve), which omg_rt.client calls
SERVED_MODELS = (*IMAGE_TASKS, "encode", "prompt", "vocabulary", "video")


@dataclass(frozen=True)
class BackboneSpec:
    """An OpenCLIP ConvNeXt image tower (timm trunk + CLIP projection head).

    ``clip_model`` names the OpenCLIP model (its text tower and pretrained tags); ``timm_model``
    with ``widths``/``depths`` builds the trunk, so small custom widths work without a download.
    """

    clip_model: str = "convnext_large_d_320"
    timm_model: str = "convnext_large"
    widths: tuple[int, int, int, int] = (192, 384, 768, 1536)
    depths: tuple[int, int, int, int] = (3, 3, 27, 3)
    embed_dim: int = 768  # CLIP joint embedding size (text bank dimension)
    head: str = "mlp"  # OpenCLIP ``timm_proj``: the CLIP head after the trunk
    frozen: bool = True
    pretrained_tag: str | None = "laion2b_s29b_b131k_ft_soup"


@dataclass(frozen=True)
class TextEncoderSpec:
    """The CLIP text tower used to turn class names into embeddings."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 768
    heads: int = 12
    layers: int = 16


@dataclass(frozen=True)
class PixelDecoderSpec:
    """Mask2Former's multi-scale deformable-attention pixel decoder."""

    embed_dim: int = 256
    num_layers: int = 6
    num_heads: int = 8
    num_levels: int = 3
    num_points: int = 4
    ffn_dim: int = 1024
    num_groups: int = 32


@dataclass(frozen=True)
class QueryDecoderSpec:
    """The Mask2Former transformer decoder with OMG-Seg's heads and prompt queries."""

    embed_dim: int = 256
    num_layers: int = 9
    num_heads: int = 8
    ffn_dim: int = 2048
    num_queries: int = 300
    logit_scale_log: float = 4.6052  # fixed, not learned: exp(4.6052) = 100 (official head)
    enable_prompts: bool = True  # the official ``enable_box_query`` path
    point_box_radius: float = 3.0  # a click (x, y) becomes the box [x-3, y-3, x+3, y+3]

    @property
    def logit_scale(self) -> float:
        return math.exp(self.logit_scale_log)

    @property
    def folded_prompts(self) -> int:
        """Prompt groups of fewer queries than this run in the prompt decoder, larger ones in
        the query decoder in prompt mode. Per memory key the prompt decoder's folded attention
        costs 2 x heads x P x C multiply-adds, the query decoder's 2 x C^2 (key and value
        projections) + 2 x P x C: the flop count breaks even near P = C / (heads - 1); measured
        on the ConvNeXt-L decoder (C 256, 8 heads, ONNX Runtime CPU, 768 x 1024) the folded form
        stays faster up to ~48 prompts and equal at 64 (2 x C / heads)."""
        return 2 * self.embed_dim // self.num_heads


@dataclass(frozen=True)
class PreprocessSpec:
    """Official preprocessing: ImageNet mean/std on RGB, keep-ratio resize, pad to 32."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    size_divisor: int = SIZE_DIVISOR
    image_scale: tuple[int, int] = (1024, 1024)  # (long, short) box for images
    video_scale: tuple[int, int] = (1280, 736)


@dataclass(frozen=True)
class PostprocessSpec:
    """Official test-time constants (``m2_convl_300q.py`` test_cfg and the detectors)."""

    object_mask_threshold: float = 0.0
    overlap_threshold: float = 0.8
    max_per_image: int = 100
    ov_alpha: float = 0.4  # CLIP weight for classes seen in training
    ov_beta: float = 0.8  # CLIP weight for unseen classes
    num_proposals: int = 25  # VOS proposals
    clip_size: int = 5  # video tubes: frames per tube when the video is long
    clip_size_small: int = 3  # ... and when it has at most ``small_clip_threshold`` frames
    small_clip_threshold: int = 15


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild OMG-Seg and to run it."""

    name: str = "omg-convl"
    backbone: BackboneSpec = field(default_factory=BackboneSpec)
    text: TextEncoderSpec = field(default_factory=TextEncoderSpec)
    pixel_decoder: PixelDecoderSpec = field(default_factory=PixelDecoderSpec)
    query_decoder: QueryDecoderSpec = field(default_factory=QueryDecoderSpec)
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    postprocess: PostprocessSpec = field(default_factory=PostprocessSpec)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        problems = []
        pd, qd = self.pixel_decoder, self.query_decoder
        if pd.embed_dim != qd.embed_dim:
            problems.append(
                f"pixel_decoder.embed_dim {pd.embed_dim} != query_decoder.embed_dim "
                f"{qd.embed_dim} (the official model has no decoder input projections)"
            )
        if pd.embed_dim % pd.num_groups:
            problems.append(
                f"pixel_decoder.embed_dim {pd.embed_dim} is not divisible by "
                f"num_groups {pd.num_groups}"
            )
        for part, dim, heads in (
            ("pixel_decoder", pd.embed_dim, pd.num_heads),
            ("query_decoder", qd.embed_dim, qd.num_heads),
        ):
            if dim % heads:
                problems.append(f"{part}.embed_dim {dim} is not divisible by num_heads {heads}")
        if pd.num_levels != 3:
            problems.append(
                f"pixel_decoder.num_levels must be 3 (strides 8/16/32), got {pd.num_levels}"
            )
        if qd.num_layers < 1 or qd.num_queries < 1:
            problems.append("query_decoder needs at least one layer and one query")
        if len(self.backbone.widths) != 4 or len(self.backbone.depths) != 4:
            problems.append("backbone needs 4 widths and 4 depths (strides 4/8/16/32)")
        if self.schema_version != SCHEMA_VERSION:
            problems.append(f"schema_version {self.schema_version} is not {SCHEMA_VERSION}")
        if problems:
            raise ValueError("invalid ModelSpec: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        parts = {f.name: f.type for f in dataclasses.fields(cls)}
        known = set(parts)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"ModelSpec: unknown fields {sorted(unknown)}")
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            sub = _PART_TYPES.get(name)
            kwargs[name] = _from_part(sub, value) if sub else value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)


_PART_TYPES: dict[str, type] = {
    "backbone": BackboneSpec,
    "text": TextEncoderSpec,
    "pixel_decoder": PixelDecoderSpec,
    "query_decoder": QueryDecoderSpec,
    "preprocess": PreprocessSpec,
    "postprocess": PostprocessSpec,
}


def _from_part(part_type: type, value: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(part_type)}
    unknown = set(value) - names
    if unknown:
        raise ValueError(f"{part_type.__name__}: unknown fields {sorted(unknown)}")
    converted = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
    return part_type(**converted)


@dataclass(frozen=True)
class GraphIO:
    """Input and output names of one exported graph (export and runtime never retype them)."""

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def filename(self) -> str:
        return f"{self.name}.onnx"


# image (N, 3, H, W) float32, normalised and padded -> the four backbone stage maps; the stride-32
# map doubles as the dense CLIP feature map for open-vocabulary mask pooling.
ENCODER = GraphIO("encoder", ("image",),
                  ("features_s4", "features_s8", "features_s16", "features_s32"))
# stage maps -> mask features (N, C, H/4, W/4) and memories at strides 32, 16, 8.
PIXEL_DECODER = GraphIO("pixel_decoder", ENCODER.outputs,
                        ("mask_features", "memory_s32", "memory_s16", "memory_s8"))
# prompt_boxes (B, P, 4) xyxy in resized-image pixels, image_size (B, 2) float32 (h, w) of the
# resized image -> query_content, query_position (B, P, C).
PROMPT_ENCODER = GraphIO("prompt_encoder", ("prompt_boxes", "image_size"),
                         ("query_content", "query_position"))
# memories and mask features of B*T frames, class_bank (K, S, D), queries (B, Q, C) — the learned
# ones (``queries.npz`` in the bundle) or the prompt encoder's — and prompt_mode (bool scalar:
# prompt queries do not see each other) -> class_logits (B, Q, K+1), mask_logits (B, Q, T, H/4,
# W/4), iou_logits (B, Q), query_embeddings (B, Q, C). T = frames / B.
QUERY_DECODER = GraphIO("query_decoder",
                        ("memory_s32", "memory_s16", "memory_s8", "mask_features", "class_bank",
                         "query_content", "query_position", "prompt_mode"),
                        ("class_logits", "mask_logits", "iou_logits", "query_embeddings"))
# The query decoder for prompt queries on B images (one per batch row, T = 1): the same inputs
# without prompt_mode (always on) and the same outputs; the cross-attention's key and value
# projections are folded into the few queries, so a prompt does not pay for projecting the image's
# whole memory (``OMGSeg.decode_prompts``). Exported with the prompt encoder.
PROMPT_DECODER = GraphIO("prompt_decoder", QUERY_DECODER.inputs[:-1], QUERY_DECODER.outputs)
# token_ids (N, context_length) int64 -> text_embeddings (N, D), not normalised.
TEXT_ENCODER = GraphIO("text_encoder", ("token_ids",), ("text_embeddings",))
# mask-pooled stride-32 features (B, Q, C5) -> CLIP image embeddings (B, Q, D), for the
# open-vocabulary ensemble.
CLIP_HEAD = GraphIO("clip_head", ("pooled_features",), ("clip_embeddings",))

GRAPHS: tuple[GraphIO, ...] = (ENCODER, PIXEL_DECODER, PROMPT_ENCODER, QUERY_DECODER,
                               PROMPT_DECODER, TEXT_ENCODER, CLIP_HEAD)
