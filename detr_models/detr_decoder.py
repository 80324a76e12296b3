"""DETR's decoder: learned positional queries added to content, absolute box head."""

from __future__ import annotations

import torch
from torch import nn

from detr_models.attention import BlockDiagonal, SelfAttention
from detr_models.layers import FeedForward, ResidualNorm
from detr_models.output import DecoderOutput


class DetrDecoderLayer(nn.Module):
    """Self-attention, cross-attention to the encoder memory, feed-forward (post-norm)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, num_heads, dropout)
        self.self_out = ResidualNorm(dim, dropout)
        self.cross_attn = SelfAttention(dim, num_heads, dropout)
        self.cross_out = ResidualNorm(dim, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_mask: torch.Tensor,
        self_attn_mask: torch.Tensor | BlockDiagonal | None,
    ) -> torch.Tensor:
        q = tgt + query_pos
        tgt = self.self_out(tgt, self.self_attn(q, q, tgt, attn_mask=self_attn_mask))
        attended = self.cross_attn(tgt + query_pos, memory + memory_pos, memory, memory_mask)
        return self.ffn(self.cross_out(tgt, attended))


class DetrDecoder(nn.Module):
    """Stack of DETR decoder layers; every stage is normed and predicts absolute boxes.

    position [B,Q,D] is the learned positional query; there are no references.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        num_layers: int,
        dropout: float,
        box_head: nn.Module,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DetrDecoderLayer(dim, num_heads, ffn_dim, dropout) for _ in range(num_layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.box_head = box_head
        self.position_dim = dim

    def forward(
        self,
        content: torch.Tensor,
        position: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_mask: torch.Tensor,
        self_attn_mask: torch.Tensor | BlockDiagonal | None = None,
        spatial_shapes: torch.Tensor | None = None,
    ) -> DecoderOutput:
        out = content
        hidden = []
        for layer in self.layers:
            out = layer(out, position, memory, memory_pos, memory_mask, self_attn_mask)
            hidden.append(self.norm(out))
        stacked = torch.stack(hidden)  # [L,B,Q,D]
        return DecoderOutput(stacked, self.box_head(stacked).sigmoid(), None)
