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

    mask [B,H,W] (True on padding) -> [B,2*num_feats,H,W]. `order` "xy" puts the x block
    first (this product's default, the order of the box sine embeddings), "yx" the y block
    (the reference implementations). `offset` is subtracted from each pixel's 1-based index
    before normalising: 0.5 puts pixel centres in (0, 1] (this product, Deformable DETR), 0
    the far edges (DETR, Conditional DETR, DAB-DETR).
    """

    def __init__(
        self,
        num_feats: int = 128,
        temperature: float = 10000.0,
        order: str = "xy",
        offset: float = 0.5,
    ) -> None:
        super().__init__()
        if order not in ("xy", "yx"):
            raise ValueError(f"order must be 'xy' or 'yx', got {order!r}")
        self.num_feats = num_feats
        self.temperature = temperature
        self.order = order
        self.offset = offset

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        valid = (~mask).float()  # [B,H,W]
        y = valid.cumsum(1)
        x = valid.cumsum(2)
        eps = 1e-6
        y = (y - self.offset) / (y[:, -1:, :] + eps)
        x = (x - self.offset) / (x[:, :, -1:] + eps)
        pair = (x, y) if self.order == "xy" else (y, x)
        coords = torch.stack(pair, dim=-1)  # [B,H,W,2]
        return sine_encode(coords, self.num_feats, self.temperature).permute(0, 3, 1, 2)
