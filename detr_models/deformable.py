"""Deformable DETR's encoder and decoder (two-stage proposals: `proposals.py`).

Variants are switches: iterative box refinement (a box head per stage, references detached
between stages), DAB-Deformable anchor queries (4-D anchors, positional query from the anchor's
sine embedding), and two-stage (queries from the top-scoring encoder tokens).
"""

from __future__ import annotations

import torch
from torch import nn

from detr_models.attention import SelfAttention
from detr_models.box_ops import inverse_sigmoid
from detr_models.deformable_attention import (
    MultiScaleDeformableAttention,
    Shapes,
    level_sizes,
    valid_ratios,
)
from detr_models.layers import MLP, FeedForward, PerStage, ResidualNorm
from detr_models.output import DecoderOutput
from detr_models.position import sine_encode


def level_valid_ratios(memory_mask: torch.Tensor, spatial_shapes: Shapes) -> torch.Tensor:
    """Flattened padding mask [B,S] -> valid (w, h) share of every level [B,L,2]."""
    sizes = level_sizes(spatial_shapes)
    masks = memory_mask.split([h * w for h, w in sizes], dim=1)
    return torch.stack(
        [
            valid_ratios(
                m.view(-1, h, w),
                memory_mask.dtype if memory_mask.is_floating_point() else torch.float32,
            )
            for m, (h, w) in zip(masks, sizes, strict=True)
        ],
        dim=1,
    )


def encoder_reference_points(spatial_shapes: Shapes, ratios: torch.Tensor) -> torch.Tensor:
    """Pixel centres of every level, normalised to the valid region, seen from every level.

    ratios [B,L,2] -> [B,S,L,2] (x, y).
    """
    points = torch.cat(valid_centres(spatial_shapes, ratios), dim=1)  # [B,S,2]
    return points[:, :, None] * ratios[:, None]  # [B,S,L,2]


def valid_centres(spatial_shapes: Shapes, ratios: torch.Tensor) -> list[torch.Tensor]:
    """Per level, pixel centres (x, y) as a share of the level's valid region: [B,H_l*W_l,2]."""
    centres = []
    for level, (h, w) in enumerate(level_sizes(spatial_shapes)):
        ys, xs = torch.meshgrid(
            torch.arange(h, device=ratios.device, dtype=ratios.dtype) + 0.5,
            torch.arange(w, device=ratios.device, dtype=ratios.dtype) + 0.5,
            indexing="ij",
        )
        x = xs.reshape(1, -1) / (ratios[:, None, level, 0] * w)  # [B,HW]
        y = ys.reshape(1, -1) / (ratios[:, None, level, 1] * h)
        centres.append(torch.stack((x, y), dim=-1))
    return centres


class DeformableEncoderLayer(nn.Module):
    """Multi-scale deformable self-attention over all levels' tokens, then feed-forward."""

    def __init__(
        self, dim: int, heads: int, ffn_dim: int, dropout: float, levels: int, points: int
    ) -> None:
        super().__init__()
        self.attn = MultiScaleDeformableAttention(dim, heads, levels, points)
        self.attn_out = ResidualNorm(dim, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, padding_mask):
        attended = self.attn(src + pos, reference_points, src, spatial_shapes, padding_mask)
        return self.ffn(self.attn_out(src, attended))


class DeformableEncoder(nn.Module):
    """src/pos [B,S,D], padding_mask [B,S], spatial_shapes [L,2] -> memory [B,S,D]."""

    def __init__(self, dim, heads, ffn_dim, num_layers, dropout, levels, points) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableEncoderLayer(dim, heads, ffn_dim, dropout, levels, points)
            for _ in range(num_layers)
        )

    def forward(self, src, pos, padding_mask, spatial_shapes):
        ratios = level_valid_ratios(padding_mask, spatial_shapes).to(src.dtype)
        refs = encoder_reference_points(spatial_shapes, ratios)
        for layer in self.layers:
            src = layer(src, pos, refs, spatial_shapes, padding_mask)
        return src


class DeformableDecoderLayer(nn.Module):
    """Self-attention among queries, deformable cross-attention into the memory, feed-forward."""

    def __init__(self, dim, heads, ffn_dim, dropout, levels, points) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, heads, dropout)
        self.self_out = ResidualNorm(dim, dropout)
        self.cross_attn = MultiScaleDeformableAttention(dim, heads, levels, points)
        self.cross_out = ResidualNorm(dim, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout)

    def forward(
        self, tgt, query_pos, reference_points, memory, spatial_shapes, memory_mask, self_attn_mask
    ):
        q = tgt + query_pos
        tgt = self.self_out(tgt, self.self_attn(q, q, tgt, attn_mask=self_attn_mask))
        attended = self.cross_attn(
            tgt + query_pos, reference_points, memory, spatial_shapes, memory_mask
        )
        return self.ffn(self.cross_out(tgt, attended))


class DeformableDecoder(nn.Module):
    """Deformable decoder. position is a positional embedding [B,Q,D] (reference points from a
    linear head) or, with `anchor_queries`, anchor boxes [B,Q,4] (positional query from their
    sine embedding, DAB-style; with `static_position` the positional query is given to
    `forward` as `query_pos` and is the same at every layer, as in the reference two-stage).
    `box_refine` updates the references stage by stage; `look_forward_twice` (DINO) computes
    each refined stage's box in training from the previous stage's box before it is detached.

    references [L,B,Q,4]: what entered each stage; a 2-D reference point has w = h = 0.
    """

    def __init__(
        self,
        dim,
        heads,
        ffn_dim,
        num_layers,
        dropout,
        box_head,
        levels=4,
        points=4,
        anchor_queries=False,
        box_refine=False,
        static_position=False,
        look_forward_twice=False,
    ) -> None:
        super().__init__()
        self.look_forward_twice = look_forward_twice
        self.layers = nn.ModuleList(
            DeformableDecoderLayer(dim, heads, ffn_dim, dropout, levels, points)
            for _ in range(num_layers)
        )
        self.box_head = box_head
        self.anchor_queries = anchor_queries
        self.box_refine = box_refine
        self.dim = dim
        self.position_dim = 4 if anchor_queries else dim
        self.static_position = static_position
        if static_position:
            if not anchor_queries:
                raise ValueError("static_position needs anchor_queries (4-D references)")
        elif anchor_queries:
            self.reference_head = MLP(2 * dim, dim, dim, 2)
            self.query_scale = MLP(dim, dim, dim, 2)
        else:
            self.reference_head = nn.Linear(dim, 2)
            nn.init.xavier_uniform_(self.reference_head.weight)
            nn.init.zeros_(self.reference_head.bias)

    def _box_head(self, i: int) -> nn.Module:
        return self.box_head[i] if isinstance(self.box_head, PerStage) else self.box_head

    def forward(
        self,
        content,
        position,
        memory,
        memory_pos,
        memory_mask,
        self_attn_mask=None,
        spatial_shapes=None,
        query_pos=None,
    ):
        if self.static_position and query_pos is None:
            raise ValueError("this decoder takes its positional queries as query_pos")
        ratios = level_valid_ratios(memory_mask, spatial_shapes).to(memory.dtype)  # [B,L,2]
        ref = position if self.anchor_queries else self.reference_head(position).sigmoid()
        out = content
        live = ref  # the previous stage's box before detaching (look forward twice)
        hidden, boxes, references = [], [], []
        for i, layer in enumerate(self.layers):
            scale = torch.cat((ratios, ratios), -1) if ref.shape[-1] == 4 else ratios
            ref_input = ref[:, :, None] * scale[:, None]  # [B,Q,L,2|4]
            if self.static_position:
                pass
            elif self.anchor_queries:
                query_pos = self.reference_head(sine_encode(ref, self.dim // 2))
                if i > 0:
                    query_pos = query_pos * self.query_scale(out)
            else:
                query_pos = position
            out = layer(
                out, query_pos, ref_input, memory, spatial_shapes, memory_mask, self_attn_mask
            )
            delta = self._box_head(i)(out)  # [B,Q,4]
            if ref.shape[-1] == 4:
                new = (delta + inverse_sigmoid(ref)).sigmoid()
            else:
                new = torch.cat(
                    (delta[..., :2] + inverse_sigmoid(ref), delta[..., 2:]), -1
                ).sigmoid()
            hidden.append(out)
            if self.look_forward_twice and self.training and i > 0:
                # DINO: the same box, its gradient also reaching the previous stage's box head
                boxes.append((delta + inverse_sigmoid(live)).sigmoid())
            else:
                boxes.append(new)
            live = new
            references.append(
                ref if ref.shape[-1] == 4 else torch.cat((ref, torch.zeros_like(ref)), -1)
            )
            if self.box_refine:
                ref = new.detach()
        return DecoderOutput(torch.stack(hidden), torch.stack(boxes), torch.stack(references))


def deformable_box_heads(dim: int, num_layers: int, refine: bool, start_small: bool) -> nn.Module:
    """Box heads: one per stage with refinement, else one shared. The last layer starts at
    zero (boxes start at the reference); `start_small` gives point references w = h = 0.12."""

    def head(first: bool) -> MLP:
        mlp = MLP(dim, dim, 4, 3)
        nn.init.zeros_(mlp.layers[-1].weight)
        nn.init.zeros_(mlp.layers[-1].bias)
        if start_small and first:
            nn.init.constant_(mlp.layers[-1].bias[2:], -2.0)
        return mlp

    if refine:
        return PerStage(head(i == 0) for i in range(num_layers))
    return head(True)
