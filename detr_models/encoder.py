"""DETR's transformer encoder over the flattened tokens of every feature level."""

from __future__ import annotations

import torch
from torch import nn

from detr_models.attention import SelfAttention
from detr_models.layers import MLP, FeedForward, ResidualNorm


class EncoderLayer(nn.Module):
    """Post-norm self-attention (position added to queries and keys) and feed-forward."""

    def __init__(
        self, dim: int, num_heads: int, ffn_dim: int, dropout: float, activation: str = "relu"
    ) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, num_heads, dropout)
        self.attn_out = ResidualNorm(dim, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout, activation)

    def forward(
        self, src: torch.Tensor, pos: torch.Tensor, padding_mask: torch.Tensor
    ) -> torch.Tensor:
        q = src + pos
        src = self.attn_out(src, self.self_attn(q, q, src, key_padding_mask=padding_mask))
        return self.ffn(src)


class TransformerEncoder(nn.Module):
    """A stack of encoder layers; src/pos [B,S,D], padding_mask [B,S] -> memory [B,S,D].

    With `query_scale` (DAB-DETR) each layer sees the positions scaled by an MLP of its input."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        num_layers: int,
        dropout: float,
        activation: str = "relu",
        query_scale: bool = False,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            EncoderLayer(dim, num_heads, ffn_dim, dropout, activation) for _ in range(num_layers)
        )
        self.query_scale = MLP(dim, dim, dim, 2) if query_scale else None

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor,
        padding_mask: torch.Tensor,
        spatial_shapes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        for layer in self.layers:
            scaled = pos if self.query_scale is None else pos * self.query_scale(src)
            src = layer(src, scaled, padding_mask)
        return src
