"""Conditional DETR's decoder (2-D reference points) and DAB-DETR's (4-D anchors refined stage
to stage). Both share one layer: cross-attention on [content ; spatial] per head."""

from __future__ import annotations

import torch
from torch import nn

from detr_models.attention import BlockDiagonal, MultiHeadAttention
from detr_models.box_ops import inverse_sigmoid
from detr_models.layers import MLP, FeedForward, ResidualNorm
from detr_models.output import DecoderOutput
from detr_models.position import sine_encode


def _concat_heads(a: torch.Tensor, b: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B,L,D] and [B,L,D] -> [B,L,2D] with each head's slice of a followed by that of b."""
    bsz, length, _ = a.shape
    return torch.cat(
        (a.view(bsz, length, num_heads, -1), b.view(bsz, length, num_heads, -1)), dim=-1
    ).view(bsz, length, -1)


class ConditionalDecoderLayer(nn.Module):
    """Decoder layer with separate content and spatial projections.

    Cross-attention query = [content ; spatial(sine of reference)] and key = [content ; pos]
    per head, so the spatial part matches positions and the content part matches appearance.
    Only the first layer also adds the positional query to the content query.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
        is_first: bool,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.is_first = is_first
        self.sa_q_content, self.sa_q_pos = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.sa_k_content, self.sa_k_pos = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.sa_v = nn.Linear(dim, dim)
        self.self_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.self_out = ResidualNorm(dim, dropout)
        self.ca_q_content, self.ca_k_content = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.ca_k_pos, self.ca_v = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.ca_q_sine = nn.Linear(dim, dim)
        # unused parameters break DDP, so only the first layer owns this projection
        self.ca_q_pos = nn.Linear(dim, dim) if is_first else None
        self.cross_attn = MultiHeadAttention(dim, num_heads, dropout)
        self.cross_out = ResidualNorm(dim, dropout)
        self.ffn = FeedForward(dim, ffn_dim, dropout, activation)

    def forward(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        query_sine: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_mask: torch.Tensor,
        self_attn_mask: torch.Tensor | BlockDiagonal | None,
    ) -> torch.Tensor:
        q = self.sa_q_content(tgt) + self.sa_q_pos(query_pos)
        k = self.sa_k_content(tgt) + self.sa_k_pos(query_pos)
        tgt = self.self_out(tgt, self.self_attn(q, k, self.sa_v(tgt), attn_mask=self_attn_mask))

        q = self.ca_q_content(tgt)
        k = self.ca_k_content(memory)
        k_pos = self.ca_k_pos(memory_pos)
        if self.ca_q_pos is not None:
            q = q + self.ca_q_pos(query_pos)
            k = k + k_pos
        q = _concat_heads(q, self.ca_q_sine(query_sine), self.num_heads)  # [B,Q,2D]
        k = _concat_heads(k, k_pos, self.num_heads)  # [B,S,2D]
        attended = self.cross_attn(q, k, self.ca_v(memory), memory_mask)
        return self.ffn(self.cross_out(tgt, attended))


def _layers(
    dim: int, num_heads: int, ffn_dim: int, num_layers: int, dropout: float, activation: str
) -> nn.ModuleList:
    return nn.ModuleList(
        ConditionalDecoderLayer(dim, num_heads, ffn_dim, dropout, i == 0, activation)
        for i in range(num_layers)
    )


class ConditionalDecoder(nn.Module):
    """Conditional DETR: a 2-D reference point per query from its positional embedding; the
    box head predicts offsets relative to that point. position [B,Q,D]."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        num_layers: int,
        dropout: float,
        box_head: nn.Module,
        order: str = "xy",
    ) -> None:
        super().__init__()
        self.layers = _layers(dim, num_heads, ffn_dim, num_layers, dropout, "relu")
        self.norm = nn.LayerNorm(dim)
        self.order = order  # of the reference point's sine blocks: the feature map's order
        self.reference_head = MLP(dim, dim, 2, 2)
        self.query_scale = MLP(dim, dim, dim, 2)
        self.box_head = box_head
        self.dim = dim
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
        reference = self.reference_head(position).sigmoid()  # [B,Q,2]
        point = reference if self.order == "xy" else reference.flip(-1)
        sine = sine_encode(point, self.dim // 2)  # [B,Q,D]
        out = content
        hidden = []
        for i, layer in enumerate(self.layers):
            scale = 1.0 if i == 0 else self.query_scale(out)
            out = layer(
                out, position, sine * scale, memory, memory_pos, memory_mask, self_attn_mask
            )
            hidden.append(self.norm(out))
        stacked = torch.stack(hidden)  # [L,B,Q,D]
        offsets = self.box_head(stacked)  # [L,B,Q,4]
        centre = offsets[..., :2] + inverse_sigmoid(reference)
        boxes = torch.cat((centre, offsets[..., 2:]), dim=-1).sigmoid()
        references = reference.unsqueeze(0).expand(len(self.layers), -1, -1, -1)
        return DecoderOutput(stacked, boxes, references)


class DabDecoder(nn.Module):
    """DAB-DETR: 4-D anchor boxes as queries, refined stage to stage (detached between stages);
    the positional query comes from the anchor's sine embedding and the spatial attention is
    modulated by the anchor's width and height. position [B,Q,4] normalised cxcywh.

    `order` "yx" encodes anchors as (y, x, w, h) blocks, as the reference does (with its
    feature maps in the same order). `reference_update`: the next anchor comes from the box
    head on the un-normed layer output and the width/height ratio is not clamped (the
    reference); else both use the normed output and the anchor size is clamped at 1e-3."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        num_layers: int,
        dropout: float,
        box_head: nn.Module,
        order: str = "xy",
        activation: str = "relu",
        reference_update: bool = False,
    ) -> None:
        super().__init__()
        self.layers = _layers(dim, num_heads, ffn_dim, num_layers, dropout, activation)
        self.order = order
        self.reference_update = reference_update
        self.norm = nn.LayerNorm(dim)
        self.reference_head = MLP(2 * dim, dim, dim, 2)
        self.query_scale = MLP(dim, dim, dim, 2)
        self.anchor_size_head = MLP(dim, dim, 2, 2)
        self.box_head = box_head
        self.dim = dim
        self.position_dim = 4

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
        half = self.dim // 2
        anchor = position
        out = content
        hidden, boxes, references = [], [], []
        first, second = (0, 1) if self.order == "xy" else (1, 0)  # coordinate of each block
        for i, layer in enumerate(self.layers):
            point = anchor if self.order == "xy" else anchor[..., [1, 0, 2, 3]]
            sine = sine_encode(point, half)  # [B,Q,2D]: x, y (or y, x), w, h blocks
            query_pos = self.reference_head(sine)  # [B,Q,D]
            scale = 1.0 if i == 0 else self.query_scale(out)
            spatial = sine[..., : self.dim] * scale  # [B,Q,D]: the two centre blocks
            size = self.anchor_size_head(out).sigmoid()  # [B,Q,2] expected (w, h)
            wh = anchor[..., 2:] if self.reference_update else anchor[..., 2:].clamp(min=1e-3)
            ratio = size / wh
            spatial = torch.cat(
                (
                    spatial[..., :half] * ratio[..., first : first + 1],
                    spatial[..., half:] * ratio[..., second : second + 1],
                ),
                dim=-1,
            )
            out = layer(out, query_pos, spatial, memory, memory_pos, memory_mask, self_attn_mask)
            normed = self.norm(out)
            refined = (self.box_head(normed) + inverse_sigmoid(anchor)).sigmoid()  # [B,Q,4]
            hidden.append(normed)
            boxes.append(refined)
            references.append(anchor)
            if self.reference_update:  # the reference refines the anchor from the raw output
                anchor = (self.box_head(out) + inverse_sigmoid(anchor)).sigmoid().detach()
            else:
                anchor = refined.detach()
        return DecoderOutput(torch.stack(hidden), torch.stack(boxes), torch.stack(references))
