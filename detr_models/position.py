"""Sine position encodings: of feature-map pixels (from the padding mask) and of boxes/points.

Both use the same frequencies and the same (x, y[, w, h]) order, so a query's sine embedding of
its reference point lines up with the keys' encoding of the pixel at that point.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sine_encode(
    coords: torch.Tensor, dim_per_coord: int, temperature: float = 10000.0
) -> torch.Tensor:
    """Encode each coordinate in [0, 1] with `dim_per_coord` sines and cosines.

    coords [..., k] -> [..., k * dim_per_coord], coordinate blocks in input order.
    """
    if dim_per_coord % 2:
        raise ValueError(f"dim_per_coord must be even, got {dim_per_coord}")
    freq = torch.arange(dim_per_coord, dtype=torch.float32, device=coords.device)
    freq = temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / dim_per_coord)  # [d]
    angles = coords.float()[..., None] * (2 * math.pi) / freq  # [..., k, d]
    encoded = torch.stack(
        (angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1
    )  # [..., k, d/2, 2]
    return encoded.flatten(-3).to(coords.dtype)  # [..., k*d]


class PositionEmbeddingSine(nn.Module):
    """DETR's 2-D sine encoding of a feature map, normalised to the unpadded region.

    mask [B,H,W] (True on padding) -> [B,2*num_feats,H,W], channels (x block, y block).
    """

    def __init__(self, num_feats: int = 128, temperature: float = 10000.0) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.temperature = temperature

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        valid = (~mask).float()  # [B,H,W]
        y = valid.cumsum(1)
        x = valid.cumsum(2)
        eps = 1e-6
        # centre of each pixel, in (0, 1] of the valid region
        y = (y - 0.5) / (y[:, -1:, :] + eps)
        x = (x - 0.5) / (x[:, :, -1:] + eps)
        coords = torch.stack((x, y), dim=-1)  # [B,H,W,2]
        return sine_encode(coords, self.num_feats, self.temperature).permute(0, 3, 1, 2)
