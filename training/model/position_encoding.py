"""Sine positional encodings as the official (mmdet) code computes them.

Three codes are used by OMG-Seg:
- the 2-D code of the pixel decoder (``SinePositionalEncoding``: [y | x], normalised, 2π),
- the 3-D code of the query decoder's keys (``SinePositionalEncoding3D``): the 2-D code *plus* a
  z/time code over all channels. Even a single image gets the (constant, non-zero) z term — the
  official weights were trained with it, so it must be reproduced,
- the box code of prompt queries (``coordinate_to_encoding``: [cy | cx | w | h]).
All three interleave sin/cos pairs: channel 2i = sin(p / T^(2i/F)), channel 2i+1 = cos(same).
"""

from __future__ import annotations

import math

import torch

TEMPERATURE = 10000.0
SCALE = 2 * math.pi
EPS = 1e-6


def _frequencies(num_feats: int, device: torch.device) -> torch.Tensor:
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    return TEMPERATURE ** (2 * (dim_t // 2) / num_feats)


def _interleave(pos: torch.Tensor) -> torch.Tensor:
    """(..., F) angles -> (..., F) codes: sin of the even channels, cos of the odd, interleaved."""
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


def _normalised_positions(n: int, device: torch.device) -> torch.Tensor:
    """Cumulative count 1..n of an all-valid mask, normalised to (0, 2π] as mmdet does."""
    embed = torch.arange(1, n + 1, dtype=torch.float32, device=device)
    return embed / (embed[-1:] + EPS) * SCALE


def sine_axis_codes(
    height: int, width: int, num_feats: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves of the 2-D code: y (height, num_feats) and x (width, num_feats); the
    position (i, j) of a (height, width) map has the code [y[i] | x[j]]."""
    device = device or torch.device("cpu")
    dim_t = _frequencies(num_feats, device)
    y = _interleave(_normalised_positions(height, device)[:, None] / dim_t)
    x = _interleave(_normalised_positions(width, device)[:, None] / dim_t)
    return y, x


def sine_encoding_2d(
    height: int, width: int, num_feats: int, device: torch.device | None = None
) -> torch.Tensor:
    """The pixel decoder's positional code for an unpadded (height, width) map.

    Returns:
        (2 * num_feats, height, width) float32, channels [y codes | x codes].
    """
    return _yx_code(height, width, num_feats, device).permute(2, 0, 1)


def _yx_code(height: int, width: int, num_feats: int, device: torch.device | None) -> torch.Tensor:
    """(height, width, 2 * num_feats): [y | x] codes per position."""
    y, x = sine_axis_codes(height, width, num_feats, device)
    return torch.cat(
        (
            y[:, None, :].expand(height, width, num_feats),
            x[None, :, :].expand(height, width, num_feats),
        ),
        dim=-1,
    )


def sine_encoding_3d(
    frames: int, height: int, width: int, num_feats: int, device: torch.device | None = None
) -> torch.Tensor:
    """The query decoder's key positional code for a clip of ``frames`` maps of (height, width).

    The z code has 2 * num_feats channels and is added to the [y | x] code.

    Returns:
        (frames * height * width, 2 * num_feats) float32, flattened frame-major (t, h, w).
    """
    device = device or torch.device("cpu")
    dim_t_z = _frequencies(2 * num_feats, device)
    z = _interleave(_normalised_positions(frames, device)[:, None] / dim_t_z)  # (T, 2F)
    pos = _yx_code(height, width, num_feats, device)[None] + z[:, None, None, :]  # (T, H, W, 2F)
    return pos.reshape(frames * height * width, 2 * num_feats)


def coordinate_to_encoding(boxes: torch.Tensor, num_feats: int) -> torch.Tensor:
    """Box code of prompt queries.

    Args:
        boxes: (..., 4) normalised (cx, cy, w, h).
        num_feats: features per coordinate.

    Returns:
        (..., 4 * num_feats) float32 in the order [cy | cx | w | h] (as mmdet).
    """
    dim_t = _frequencies(num_feats, boxes.device)
    codes = [_interleave((boxes[..., i] * SCALE)[..., None] / dim_t) for i in range(4)]
    cx, cy, w, h = codes
    return torch.cat((cy, cx, w, h), dim=-1)
