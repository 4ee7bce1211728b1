"""Visual prompts -> decoder queries (the official head's ``enable_box_query`` path).

Every prompt is a box: a click (x, y) becomes [x - r, y - r, x + r, y + r] (r = 3 px in
resized-image pixels, as the official point evaluation). Boxes are normalised by the resized
image size, turned into (cx, cy, w, h), passed through mmdet's ``inverse_sigmoid`` and back through
``sigmoid`` (a clamp to [1e-5, 1 - 1e-5], kept for bit parity), sine-encoded and projected: that is
the query's position. Its content is a box/point type embedding plus a learned mask token. The
official inference feeds clicks with the *box* type (0) too, and so do we.
"""

from __future__ import annotations

import torch
from torch import nn

from training.model.position_encoding import coordinate_to_encoding

BOX_TYPE = 0  # pb_embedding row 0; row 1 (point) is unused at inference, as officially


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class BoxPromptEncoder(nn.Module):
    """Boxes (xyxy, resized-image pixels) -> prompt queries (content, position)."""

    def __init__(self, *, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.mask_tokens = nn.Embedding(1, embed_dim)
        self.pb_embedding = nn.Embedding(2, embed_dim)  # 0 = box, 1 = point
        self.pos_linear = nn.Linear(2 * embed_dim, embed_dim)

    @torch.no_grad()
    def init_position_identity(self) -> None:
        """Make the position a box's centre code: ``pos_linear`` copies the [cy | cx] half of
        the box code and drops [w | h]. The centre code has the layout and frequencies of the
        query decoder's key code at that point, so with
        ``Mask2FormerQueryDecoder.init_position_attention`` a prompt's first cross-attention
        already looks at its box (a from-scratch training init)."""
        c = self.embed_dim
        self.pos_linear.weight.zero_()
        self.pos_linear.weight[:, :c] = torch.eye(c)
        self.pos_linear.bias.zero_()

    def forward(
        self,
        boxes: torch.Tensor,
        image_size: torch.Tensor,
        prompt_types: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            boxes: (B, P, 4) xyxy in resized-image pixels.
            image_size: (B, 2) or (2,) float (height, width) of the resized (unpadded) image.
            prompt_types: (B, P) int64, 0 = box, 1 = point; default all boxes.

        Returns:
            content: (B, P, C) query features.
            position: (B, P, C) query position embeddings.
        """
        size = image_size.to(boxes.dtype).reshape(-1, 1, 2)
        h, w = size[..., 0], size[..., 1]
        normalised = boxes / torch.stack([w, h, w, h], dim=-1)
        x0, y0, x1, y1 = normalised.unbind(-1)
        cxcywh = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)
        box_code = coordinate_to_encoding(inverse_sigmoid(cxcywh).sigmoid(), self.embed_dim // 2)
        position = self.pos_linear(box_code)
        if prompt_types is None:
            prompt_types = torch.full(
                boxes.shape[:2], BOX_TYPE, dtype=torch.int64, device=boxes.device
            )
        content = self.pb_embedding(prompt_types) + self.mask_tokens.weight[0]
        return content, position
