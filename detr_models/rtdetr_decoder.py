"""RT-DETR's decoder: Deformable DETR decoder layers on 4-D anchors, the positional query an
MLP of the current box, one box and class head per stage (iterative refinement)."""

from __future__ import annotations

import torch
from torch import nn

from detr_models.box_ops import inverse_sigmoid
from detr_models.deformable import DeformableDecoderLayer
from detr_models.deformable_attention import level_sizes
from detr_models.layers import MLP, PerStage
from detr_models.output import DecoderOutput


class RtDetrDecoder(nn.Module):
    """content [B,Q,D] and anchors [B,Q,4] (normalised cxcywh) -> per-stage hidden and boxes.

    Each stage predicts a box delta in logit space from the reference it was given; the next
    stage starts from that box detached. In training the stage's box is computed from the
    un-detached previous box ("look forward twice", RT-DETR/DINO): the same values, with the
    gradient reaching the previous stage's box head.
    """

    def __init__(self, dim, heads, ffn_dim, num_layers, dropout, levels, points) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            DeformableDecoderLayer(dim, heads, ffn_dim, dropout, levels, points)
            for _ in range(num_layers)
        )
        self.query_pos_head = MLP(4, 2 * dim, dim, 2)
        self.box_head = PerStage(MLP(dim, dim, 4, 3) for _ in range(num_layers))
        for head in self.box_head:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    def forward(self, content, anchors, memory, spatial_shapes, self_attn_mask=None):
        out, ref = content, anchors
        ref_detached = anchors.detach()
        levels = len(level_sizes(spatial_shapes))
        hidden, boxes, references = [], [], []
        for i, layer in enumerate(self.layers):
            query_pos = self.query_pos_head(ref_detached)
            ref_input = ref_detached[:, :, None].expand(-1, -1, levels, -1)  # [B,Q,L,4]
            out = layer(out, query_pos, ref_input, memory, spatial_shapes, None, self_attn_mask)
            delta = self.box_head[i](out)
            new = (delta + inverse_sigmoid(ref_detached)).sigmoid()
            if self.training and i > 0:
                boxes.append((delta + inverse_sigmoid(ref)).sigmoid())
            else:
                boxes.append(new)
            hidden.append(out)
            references.append(ref_detached)
            ref, ref_detached = new, new.detach()
        return DecoderOutput(torch.stack(hidden), torch.stack(boxes), torch.stack(references))
