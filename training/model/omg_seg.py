"""OMG-Seg: composition only. The three methods below are the export graph boundaries:

encode(images)                    -> backbone stage features   (encoder graph)
decode_pixels(features)           -> mask features, memories    (pixel-decoder graph)
decode_queries(memories, ...)     -> masks, classes, IoU        (query-decoder graph)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from omg_rt.spec import ModelSpec
from training.model.backbone import OpenCLIPBackbone
from training.model.classifier import mask_pool, text_logits
from training.model.pixel_decoder import MSDeformAttnPixelDecoder
from training.model.prompt_encoder import BoxPromptEncoder
from training.model.query_decoder import Mask2FormerQueryDecoder, QueryPredictions
from training.model.text_encoder import CLIPTextEncoder


class OMGSeg(nn.Module):
    """One model for image, video, interactive and open-vocabulary segmentation.

    Args:
        spec: the model spec (travels in checkpoints and bundles as ``self.config``).
        backbone, pixel_decoder, query_decoder, prompt_encoder: the parts.
        text_encoder: the CLIP text tower, or None when only a precomputed bank is available
            (the official decoder-only checkpoint with a visual-only CLIP file).
    """

    def __init__(
        self,
        *,
        spec: ModelSpec,
        backbone: OpenCLIPBackbone,
        pixel_decoder: MSDeformAttnPixelDecoder,
        query_decoder: Mask2FormerQueryDecoder,
        prompt_encoder: BoxPromptEncoder | None,
        text_encoder: CLIPTextEncoder | None,
    ) -> None:
        super().__init__()
        self.config = spec
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.query_decoder = query_decoder
        self.prompt_encoder = prompt_encoder
        self.text_encoder = text_encoder

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(N, 3, H, W) normalised images (H, W multiples of 32) -> four stage maps; the last
        (stride 32) doubles as the dense CLIP feature map used for open-vocabulary pooling."""
        return self.backbone(images)

    def decode_pixels(
        self, features: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage maps -> mask features (N, C, H/4, W/4) and memories at strides 32, 16, 8."""
        return self.pixel_decoder(features)

    def encode_prompts(
        self, prompt_boxes: torch.Tensor, image_size: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt boxes -> prompt queries (content, position), each (B, P, C).

        Args:
            prompt_boxes: (B, P, 4) xyxy in resized-image pixels (clicks already turned into
                boxes [x - 3, y - 3, x + 3, y + 3] by the caller).
            image_size: (B, 2) or (2,) (height, width) of the resized, unpadded image.
        """
        if self.prompt_encoder is None:
            raise ValueError("this model was built without prompt queries (enable_prompts=False)")
        return self.prompt_encoder(prompt_boxes, image_size)

    def learned_queries(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned semantic queries (content, position), each (B, Q, C)."""
        return self.query_decoder.learned_queries(batch_size)

    def decode_queries(
        self,
        memories: list[torch.Tensor],
        mask_features: torch.Tensor,
        class_bank: torch.Tensor,
        query_content: torch.Tensor,
        query_position: torch.Tensor,
        *,
        prompt_mode: bool | torch.Tensor = False,
        all_layers: bool = False,
    ) -> list[QueryPredictions]:
        """Queries attend to the memories of B*T frames (T = frames / B) and predict.

        Args:
            memories, mask_features: from :meth:`decode_pixels`.
            class_bank: (K, S, D) unit-norm text embeddings (void is appended inside).
            query_content, query_position: (B, Q, C) from :meth:`learned_queries` or
                :meth:`encode_prompts`.
            prompt_mode: True for prompt queries (they do not see each other).
            all_layers: every head's predictions (training) instead of only the last.
        """
        return self.query_decoder(
            memories,
            mask_features,
            class_bank,
            query_content,
            query_position,
            prompt_mode=prompt_mode,
            all_layers=all_layers,
        )

    def decode_prompts(
        self,
        memories: list[torch.Tensor],
        mask_features: torch.Tensor,
        class_bank: torch.Tensor,
        query_content: torch.Tensor,
        query_position: torch.Tensor,
    ) -> QueryPredictions:
        """The last head of ``decode_queries(..., prompt_mode=True)`` for prompt queries on B
        images (one per batch row), computed for few queries (the key and value projections
        folded into them: ``Mask2FormerQueryDecoder.decode_prompts``)."""
        return self.query_decoder.decode_prompts(
            memories, mask_features, class_bank, query_content, query_position
        )

    def forward(
        self,
        images: torch.Tensor,
        class_bank: torch.Tensor,
        *,
        num_frames: int = 1,
        prompt_boxes: torch.Tensor | None = None,
        image_size: torch.Tensor | None = None,
        all_layers: bool = False,
    ) -> list[QueryPredictions]:
        """images (B*T, 3, H, W) -> predictions for the learned queries, or for ``prompt_boxes``
        (B, P, 4) in resized-image pixels of an image of ``image_size`` (h, w)."""
        mask_features, memories = self.decode_pixels(self.encode(images))
        if prompt_boxes is None:
            content, position = self.learned_queries(images.shape[0] // num_frames)
        else:
            if image_size is None:
                raise ValueError(
                    "image_size: required with prompt_boxes (boxes are normalised by it)"
                )
            content, position = self.encode_prompts(prompt_boxes, image_size)
        return self.decode_queries(
            memories,
            mask_features,
            class_bank,
            content,
            position,
            prompt_mode=prompt_boxes is not None,
            all_layers=all_layers,
        )

    def clip_class_logits(
        self,
        clip_features: torch.Tensor,
        mask_logits: torch.Tensor,
        class_bank: torch.Tensor,
        padded_size: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The open-vocabulary side: CLIP's own class logits for each predicted mask.

        As the official ``open_voc_inference``: the stride-4 mask logits are upsampled to the
        padded input, resized to the stride-32 CLIP map, used to mask-pool it (over the whole
        tube for video), projected by the CLIP head and scored against the bank.

        Args:
            clip_features: (B*T, C5, H/32, W/32) the last backbone stage.
            mask_logits: (B, Q, T, H/4, W/4).
            class_bank: (K, S, D).
            padded_size: (H, W) of the padded input.

        Returns:
            clip_logits: (B, Q, K) (void dropped); valid: (B, Q) bool, the mask covers at least
            one CLIP-resolution pixel (elsewhere the ensemble keeps the learned scores).
        """
        b, q, t = mask_logits.shape[:3]
        up = F.interpolate(
            mask_logits.flatten(1, 2), size=padded_size, mode="bilinear", align_corners=False
        )
        small = F.interpolate(
            up, size=clip_features.shape[-2:], mode="bilinear", align_corners=False
        )  # (B, Q*T, h, w)
        small = small.unflatten(1, (q, t)).flatten(2, 3)  # (B, Q, T*h, w)
        feats = clip_features.unflatten(0, (b, t)).transpose(1, 2).flatten(2, 3)  # (B, C, T*h, w)
        embeddings = self.backbone.clip_projection(mask_pool(feats, small))
        logits = text_logits(embeddings, class_bank, self.query_decoder.logit_scale)[..., :-1]
        valid = (small > 0).flatten(2).any(-1)
        return logits, valid

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """(N,) strings -> (N, D) CLIP text embeddings (needs the text tower)."""
        if self.text_encoder is None:
            raise ValueError(
                "this model has no text encoder; give a precomputed class bank instead"
            )
        tokens = self.text_encoder.tokenize(texts).to(next(self.text_encoder.parameters()).device)
        return self.text_encoder(tokens)
