"""Checkpoints: the official OMG-Seg layout and ours.

- Official: ``omg_seg_convl.pth`` is a bare fp32 state dict of the decoder side only (310 tensors
  under ``panoptic_head.``); the frozen CLIP backbone comes from OpenCLIP (its pretrained tag, or
  a local OpenCLIP checkpoint with ``visual.*`` keys for offline users). ``remap_official_keys``
  renames mmdet/mmcv keys to ours by explicit, ordered rules.
- Ours: a directory (or ``.safetensors`` file) holding ``checkpoint.safetensors`` (all weights,
  backbone and text tower included) next to ``config.json`` (the ``ModelSpec``).

Loading is strict: any key left unmapped on either side raises ``CheckpointError`` listing them.
Pickles are read with ``weights_only=True`` only.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import torch

from omg_rt.errors import CheckpointError
from omg_rt.files import atomic_path
from omg_rt.spec import ModelSpec
from training.presets import get_preset

OFFICIAL_PREFIX = "panoptic_head."

# Ordered (pattern, replacement) rules for a key after ``panoptic_head.``; the first match wins.
_DECODER_RULES: list[tuple[str, str]] = [
    (r"^pixel_decoder\.input_convs\.(\d+)\.conv\.", r"pixel_decoder.input_projections.\1.conv."),
    (r"^pixel_decoder\.input_convs\.(\d+)\.gn\.", r"pixel_decoder.input_projections.\1.norm."),
    (r"^pixel_decoder\.level_encoding\.", r"pixel_decoder.level_embed."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.self_attn\.", r"pixel_decoder.encoder.\1.attn."),
    (
        r"^pixel_decoder\.encoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.",
        r"pixel_decoder.encoder.\1.ffn.fc1.",
    ),
    (
        r"^pixel_decoder\.encoder\.layers\.(\d+)\.ffn\.layers\.1\.",
        r"pixel_decoder.encoder.\1.ffn.fc2.",
    ),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.norms\.0\.", r"pixel_decoder.encoder.\1.norm1."),
    (r"^pixel_decoder\.encoder\.layers\.(\d+)\.norms\.1\.", r"pixel_decoder.encoder.\1.norm2."),
    (r"^pixel_decoder\.lateral_convs\.0\.conv\.", r"pixel_decoder.lateral_conv.conv."),
    (r"^pixel_decoder\.lateral_convs\.0\.gn\.", r"pixel_decoder.lateral_conv.norm."),
    (r"^pixel_decoder\.output_convs\.0\.conv\.", r"pixel_decoder.output_conv.conv."),
    (r"^pixel_decoder\.output_convs\.0\.gn\.", r"pixel_decoder.output_conv.norm."),
    (r"^pixel_decoder\.mask_feature\.", r"pixel_decoder.mask_projection."),
    (
        r"^transformer_decoder\.layers\.(\d+)\.cross_attn\.attn\.",
        r"query_decoder.layers.\1.cross_attn.",
    ),
    (
        r"^transformer_decoder\.layers\.(\d+)\.self_attn\.attn\.",
        r"query_decoder.layers.\1.self_attn.",
    ),
    (r"^transformer_decoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.", r"query_decoder.layers.\1.fc1."),
    (r"^transformer_decoder\.layers\.(\d+)\.ffn\.layers\.1\.", r"query_decoder.layers.\1.fc2."),
    (r"^transformer_decoder\.layers\.(\d+)\.norms\.0\.", r"query_decoder.layers.\1.norm_cross."),
    (r"^transformer_decoder\.layers\.(\d+)\.norms\.1\.", r"query_decoder.layers.\1.norm_self."),
    (r"^transformer_decoder\.layers\.(\d+)\.norms\.2\.", r"query_decoder.layers.\1.norm_ffn."),
    (r"^transformer_decoder\.post_norm\.", r"query_decoder.post_norm."),
    (r"^(query_feat|query_embed|level_embed|mask_embed|iou_embed)\.", r"query_decoder.\1."),
    (r"^(cls_proj|mask_pooling_proj)\.", r"query_decoder.classifier.\1."),
    (r"^(mask_tokens|pb_embedding|pos_linear)\.", r"prompt_encoder.\1."),
]

# OpenCLIP checkpoint keys (``visual.*`` and the top-level text tower) and the official wrapper's
# names for the same backbone tensors (``backbone.stem``, ``backbone.layer{i}``,
# ``backbone.head.{0,1}``).
_CLIP_RULES: list[tuple[str, str]] = [
    (r"^visual\.trunk\.", "backbone.trunk."),
    (r"^visual\.head\.", "backbone.head."),
    (r"^backbone\.stem\.", "backbone.trunk.stem."),
    (r"^backbone\.layer(\d)\.", lambda m: f"backbone.trunk.stages.{int(m.group(1)) - 1}."),  # type: ignore[list-item]
    (r"^backbone\.head\.0\.", "backbone.trunk.head."),
    (r"^backbone\.head\.1\.", "backbone.head."),
    (
        r"^(token_embedding|positional_embedding|transformer\.|ln_final|text_projection)",
        r"text_encoder.tower.\1",
    ),
]


def _apply_rules(key: str, rules) -> str | None:
    for pattern, replacement in rules:
        new, n = re.subn(pattern, replacement, key, count=1)
        if n:
            return new
    return None


def remap_official_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``panoptic_head.*`` (and OpenCLIP / wrapped backbone) keys -> our module names.

    Raises:
        CheckpointError: listing every key no rule maps.
    """
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state_dict.items():
        if key.startswith(OFFICIAL_PREFIX):
            new = _apply_rules(key[len(OFFICIAL_PREFIX) :], _DECODER_RULES)
        else:
            new = _apply_rules(key, _CLIP_RULES)
        if new is None:
            unmapped.append(key)
        else:
            out[new] = value
    if unmapped:
        raise CheckpointError(
            f"{len(unmapped)} checkpoint keys have no mapping: {_preview(unmapped)}"
        )
    return out


def _preview(keys: list[str], n: int = 12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise CheckpointError(f"{path}: not a weights-only torch checkpoint ({exc})") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
    return obj


def _load_strict(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_preview(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_preview(unexpected)}")
        if wrong:
            parts.append(f"wrong shape {len(wrong)}: {_preview(wrong)}")
        raise CheckpointError(f"{source} does not match the model: " + "; ".join(parts))
    model.load_state_dict(state_dict, strict=True)


def _official_spec(state_dict: dict[str, torch.Tensor]) -> ModelSpec:
    spec = get_preset("omg-convl")
    key = OFFICIAL_PREFIX + "pixel_decoder.input_convs.0.conv.weight"
    if key not in state_dict:
        raise CheckpointError(f"official checkpoint without {key}: not an OMG-Seg decoder file")
    width = state_dict[key].shape[1]
    if width != spec.backbone.widths[-1]:
        raise CheckpointError(
            f"official checkpoint for a backbone of width {width}; only the "
            f"ConvNeXt-L layout ({spec.backbone.widths[-1]}) is supported"
        )
    queries = state_dict[OFFICIAL_PREFIX + "query_feat.weight"].shape[0]
    prompts = OFFICIAL_PREFIX + "pos_linear.weight" in state_dict
    qd = dataclasses.replace(spec.query_decoder, num_queries=queries, enable_prompts=prompts)
    return spec.replace(query_decoder=qd)


def _openclip_weights(
    spec: ModelSpec,
    backbone_weights: str | os.PathLike | None,
) -> dict[str, torch.Tensor]:
    if backbone_weights is not None:
        path = Path(backbone_weights)
        if not path.exists():
            raise CheckpointError(f"backbone_weights: {path} does not exist")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        return _torch_load(path)
    import open_clip

    try:
        clip = open_clip.create_model(
            spec.backbone.clip_model, pretrained=spec.backbone.pretrained_tag
        )
    except Exception as exc:  # noqa: BLE001 - download/cache failures all mean "not available here"
        raise CheckpointError(
            f"could not get OpenCLIP weights {spec.backbone.clip_model}/"
            f"{spec.backbone.pretrained_tag} ({exc}); offline, pass backbone_weights=<local "
            f"open_clip checkpoint>"
        ) from exc
    return clip.state_dict()


def load_checkpoint(
    path: str | os.PathLike,
    backbone_weights: str | os.PathLike | None = None,
) -> tuple[torch.nn.Module, ModelSpec]:
    """Load an official ``.pth`` or one of our checkpoints.

    Args:
        path: official decoder file (``.pth``), our checkpoint directory, or its
            ``checkpoint.safetensors`` (``config.json`` beside it).
        backbone_weights: for official files, a local OpenCLIP checkpoint (``visual.*`` keys,
            optionally the text tower); None = OpenCLIP's pretrained tag (downloads).

    Returns:
        (model in eval mode, its spec).
    """
    from training.model import build_model

    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.is_dir() or path.suffix == ".safetensors":
        from safetensors.torch import load_file

        weights = path / "checkpoint.safetensors" if path.is_dir() else path
        config = weights.parent / "config.json"
        if not weights.exists() or not config.exists():
            raise CheckpointError(f"{path}: expected checkpoint.safetensors and config.json")
        try:
            spec = ModelSpec.from_json(config.read_text())
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{config}: invalid model config ({exc})") from exc
        state = load_file(str(weights))
        has_text = any(k.startswith("text_encoder.") for k in state)
        model = build_model(spec, with_text_encoder=has_text)
        _load_strict(model, state, str(weights))
        return model.eval(), spec

    raw = _torch_load(path)
    if not any(k.startswith(OFFICIAL_PREFIX) for k in raw):
        raise CheckpointError(
            f"{path}: no '{OFFICIAL_PREFIX}' keys; neither an official OMG-Seg "
            f"checkpoint nor one of ours (a directory with config.json)"
        )
    spec = _official_spec(raw)
    state = remap_official_keys(raw)
    # the backbone (and the text tower when the file has it)
    clip_state = remap_official_keys(_openclip_weights(spec, backbone_weights))
    # text tower buffers OpenCLIP does not persist are rebuilt, not loaded
    clip_state = {k: v for k, v in clip_state.items() if not k.endswith("attn_mask")}
    state.update(clip_state)
    has_text = any(k.startswith("text_encoder.") for k in state)
    model = build_model(spec, with_text_encoder=has_text)
    _load_strict(model, state, f"{path} + backbone weights")
    return model.eval(), spec


def save_checkpoint(model: torch.nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``checkpoint.safetensors`` + ``config.json`` atomically into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    for name, payload in (
        ("checkpoint.safetensors", None),
        ("config.json", model.config.to_json()),
    ):
        with atomic_path(directory / name) as tmp:
            if payload is None:
                save_file(state, str(tmp))
            else:
                tmp.write_text(payload)
    return directory
