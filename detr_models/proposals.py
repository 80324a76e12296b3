"""Two-stage Deformable DETR: the decoder's queries come from the encoder's best tokens.

Every encoder token predicts a class and a box that refines its own anchor (its pixel centre,
size 0.05 * 2^level); the top-k tokens become the queries, their boxes (detached) the decoder's
4-D references. Two ways to turn a selected box into a query:

- `TwoStageProposals` (this product's default): top-k by the best class score, content from
  the box's sine embedding, positional query rebuilt per layer DAB-style by the decoder.
- `ReferenceProposals` (the official implementation and transformers): top-k by the first
  class logit (the encoder is trained class-agnostic), `pos_trans` Linear(2D, 2D) + LayerNorm
  on the box's sine embedding split into (positional query, content); the positional query is
  the same at every layer. Tokens of padding or with an anchor at the border get an infinite
  box logit, as in the reference.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from detr_models.box_ops import inverse_sigmoid
from detr_models.deformable import level_valid_ratios, valid_centres
from detr_models.layers import MLP
from detr_models.position import sine_encode


def proposal_anchors(
    memory_mask: torch.Tensor, spatial_shapes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One anchor box per encoder token: its pixel centre in the valid region and a size of
    0.05 * 2^level. Returns (anchors in logit space [B,S,4], usable [B,S])."""
    ratios = level_valid_ratios(memory_mask, spatial_shapes)  # [B,L,2]
    anchors = []
    for level, centre in enumerate(valid_centres(spatial_shapes, ratios)):
        size = torch.full_like(centre, 0.05 * 2.0**level)  # [B,HW,2]
        anchors.append(torch.cat((centre, size), dim=-1))
    boxes = torch.cat(anchors, dim=1)  # [B,S,4]
    usable = ((boxes > 0.01) & (boxes < 0.99)).all(-1) & ~memory_mask
    return inverse_sigmoid(boxes.clamp(0, 1)), usable


def _zero_last(mlp: MLP) -> MLP:
    nn.init.zeros_(mlp.layers[-1].weight)
    nn.init.zeros_(mlp.layers[-1].bias)
    return mlp


class TwoStageProposals(nn.Module):
    """Queries from the encoder: every token predicts a class and a box refining its anchor;
    the top-k tokens by class score become the decoder's anchors (detached), with content from
    their boxes' sine embedding, or with `mixed_queries` learned content queries (DINO's mixed
    query selection). The selected token indices identify the queries."""

    static_position = False

    def __init__(self, dim: int, num_classes: int, mixed_queries: int = 0) -> None:
        super().__init__()
        self.memory_proj = nn.Linear(dim, dim)
        self.memory_norm = nn.LayerNorm(dim)
        self.class_head = nn.Linear(dim, num_classes)
        self.box_head = _zero_last(MLP(dim, dim, 4, 3))
        if mixed_queries:  # DINO's mixed query selection: learned content, selected anchors
            self.content = nn.Embedding(mixed_queries, dim)
        else:
            self.content_proj = nn.Linear(2 * dim, dim)
            self.content_norm = nn.LayerNorm(dim)
        self.mixed = bool(mixed_queries)
        self.dim = dim

    def forward(self, memory, memory_mask, spatial_shapes, num_queries):
        anchors, usable = proposal_anchors(memory_mask, spatial_shapes)
        tokens = self.memory_norm(self.memory_proj(memory * usable[..., None]))  # [B,S,D]
        logits = self.class_head(tokens)  # [B,S,C]
        unact = self.box_head(tokens) + anchors.to(tokens.dtype)
        boxes = unact.masked_fill(~usable[..., None], 0).sigmoid()  # [B,S,4]
        scores = logits.max(-1).values.masked_fill(~usable, -math.inf)
        k = min(num_queries, scores.shape[1])
        selected = scores.topk(k, dim=1).indices  # [B,k]
        anchor = torch.gather(boxes, 1, selected[..., None].expand(-1, -1, 4)).detach()  # [B,k,4]
        if self.mixed:
            content = self.content.weight[:k].unsqueeze(0).expand(anchor.shape[0], -1, -1)
        else:
            content = self.content_norm(self.content_proj(sine_encode(anchor, self.dim // 2)))
        extras = {
            # unusable tokens (padding, border anchors) must never be matched to a box in the
            # encoder loss: a very low score keeps the matcher away and their focal loss at zero
            "enc_logits": logits.masked_fill(~usable[..., None], -1e4),
            "enc_boxes": boxes,
            "enc_usable": usable,
            "selected_tokens": selected,
        }
        return content, anchor, extras


class ReferenceProposals(nn.Module):
    """The official two-stage queries (see the module docstring). `query_position(anchors)`
    gives the static positional query of any 4-D anchors (also of query groups).

    The encoder loss sees one logit per token (the first class column, the one that ranks
    tokens) against class-agnostic targets, as the reference trains it."""

    static_position = True

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.memory_proj = nn.Linear(dim, dim)
        self.memory_norm = nn.LayerNorm(dim)
        self.class_head = nn.Linear(dim, num_classes)
        self.box_head = _zero_last(MLP(dim, dim, 4, 3))
        self.pos_proj = nn.Linear(2 * dim, 2 * dim)
        self.pos_norm = nn.LayerNorm(2 * dim)
        self.dim = dim

    def _embed(self, anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """anchors [B,Q,4] in [0, 1] -> (positional query, content), each [B,Q,D]."""
        both = self.pos_norm(self.pos_proj(sine_encode(anchors, self.dim // 2)))
        return both[..., : self.dim], both[..., self.dim :]

    def query_position(self, anchors: torch.Tensor) -> torch.Tensor:
        return self._embed(anchors)[0]

    def forward(self, memory, memory_mask, spatial_shapes, num_queries):
        anchors, usable = proposal_anchors(memory_mask, spatial_shapes)
        anchors = anchors.to(memory.dtype).masked_fill(~usable[..., None], math.inf)
        tokens = self.memory_norm(self.memory_proj(memory.masked_fill(~usable[..., None], 0)))
        logits = self.class_head(tokens)  # [B,S,C]
        unact = self.box_head(tokens) + anchors  # +inf where unusable
        k = min(num_queries, logits.shape[1])
        selected = logits[..., 0].topk(k, dim=1).indices  # [B,k]
        chosen = torch.gather(unact, 1, selected[..., None].expand(-1, -1, 4)).detach()
        anchor = chosen.sigmoid()  # [B,k,4]
        content = self._embed(anchor)[1]
        extras = {
            "enc_logits": logits[..., :1].masked_fill(~usable[..., None], -1e4),
            "enc_boxes": unact.masked_fill(~usable[..., None], 0).sigmoid(),
            "enc_usable": usable,
            "selected_tokens": selected,
        }
        return content, anchor, extras
