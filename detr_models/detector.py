"""The detector shared by every architecture: backbone -> input projections -> encoder ->
decoder -> heads. Architectures differ only in the decoder they bring and in what their
learned queries are (positional embeddings or anchor boxes)."""

from __future__ import annotations

import math

import torch
from torch import nn

from detr_models.backbone import downsample_mask
from detr_models.box_ops import inverse_sigmoid
from detr_models.deformable_attention import shapes_tensor
from detr_models.denoising_queries import DenoisingQueries
from detr_models.layers import MaskedGroupNorm
from detr_models.output import DetrOutput, QueryGroup
from detr_models.position import PositionEmbeddingSine
from detr_models.query_sets import gather_queries, group_tensors


class Detector(nn.Module):
    """A DETR-family detector returning a `DetrOutput` in every mode.

    `query_kind` is "position" (a learned positional embedding per query, content starts at
    zero: DETR, Conditional DETR) or "anchor" (a learned box per query: DAB-DETR).
    """

    def __init__(
        self,
        backbone: nn.Module,
        encoder: nn.Module,
        decoder: nn.Module,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        query_kind: str,
        extra_levels: int = 0,
        learned_content: bool = False,
        class_head: nn.Module | None = None,
        proposals: nn.Module | None = None,
        position: PositionEmbeddingSine | None = None,
        input_norm: str = "masked_group",
        mask_extra_levels: bool = True,
        denoising: DenoisingQueries | None = None,
    ) -> None:
        super().__init__()
        if denoising is not None and query_kind != "anchor":
            raise ValueError("contrastive denoising needs anchor-box queries")
        self.denoising = denoising
        self.backbone = backbone
        self.encoder = encoder
        self.decoder = decoder
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.query_kind = query_kind
        channels = list(backbone.channels)
        # extra levels (Deformable DETR's stride 64): 3x3 stride-2 convs on the last map
        extra_in = [channels[-1]] + [hidden_dim] * (extra_levels - 1) if extra_levels else []
        self.input_convs = nn.ModuleList(
            [nn.Conv2d(c, hidden_dim, 1) for c in channels]
            + [nn.Conv2d(c, hidden_dim, 3, stride=2, padding=1) for c in extra_in]
        )
        num_levels = len(self.input_convs)
        self.input_norms = nn.ModuleList(_input_norm(input_norm, hidden_dim) for _ in channels)
        self.input_norms.extend(_input_norm(input_norm, hidden_dim) for _ in extra_in)
        self.mask_extra_levels = mask_extra_levels
        self.level_embed = (
            nn.Parameter(torch.zeros(num_levels, hidden_dim)) if num_levels > 1 else None
        )
        self.position = position or PositionEmbeddingSine(hidden_dim // 2)
        self.class_head = (
            class_head if class_head is not None else nn.Linear(hidden_dim, num_classes)
        )
        self.proposals = proposals
        position_dim = 4 if query_kind == "anchor" else hidden_dim
        self.query_position = nn.Embedding(num_queries, position_dim) if proposals is None else None
        self.query_content = (
            nn.Embedding(num_queries, hidden_dim) if learned_content and proposals is None else None
        )
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # focal-loss prior: every class starts at probability 0.01
        prior = -math.log((1 - 0.01) / 0.01)
        heads = [*self.class_head.modules()]
        if self.proposals is not None:
            heads += [*self.proposals.modules()]
        for module in heads:
            if isinstance(module, nn.Linear) and module.out_features == self.num_classes:
                nn.init.constant_(module.bias, prior)
        if self.level_embed is not None:
            nn.init.normal_(self.level_embed)
        if self.query_kind == "anchor" and self.query_position is not None:
            with torch.no_grad():
                xy = torch.rand(self.num_queries, 2)
                wh = torch.full((self.num_queries, 2), 0.2)
                self.query_position.weight.copy_(inverse_sigmoid(torch.cat((xy, wh), dim=-1)))

    def main_queries(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(content [B,Q,D], position [B,Q,P]) of the model's own queries."""
        position = self.query_position.weight
        if self.query_kind == "anchor":
            position = position.sigmoid()
        position = position.unsqueeze(0).expand(batch_size, -1, -1)
        if self.query_content is not None:
            content = self.query_content.weight.unsqueeze(0).expand(batch_size, -1, -1)
        else:
            content = position.new_zeros(batch_size, self.num_queries, self.hidden_dim)
        return content, position

    def encode(self, images: torch.Tensor, pixel_mask: torch.Tensor) -> dict:
        """Backbone, projections and encoder: features per level and the flattened memory."""
        return self.encode_features(self.backbone(images), pixel_mask)

    def encode_features(self, backbone_maps: list[torch.Tensor], pixel_mask: torch.Tensor) -> dict:
        """Projections and encoder from backbone maps (split out so padding can be tested)."""
        features, masks = [], []
        for level, (conv, norm) in enumerate(zip(self.input_convs, self.input_norms, strict=True)):
            if level < len(backbone_maps):
                source = backbone_maps[level]
            else:
                source = backbone_maps[-1] if level == len(backbone_maps) else features[-1]
                if self.mask_extra_levels:  # padding looks like the conv's own zero padding
                    source = source * ~downsample_mask(pixel_mask, source.shape[-2:])[:, None]
            feature = conv(source)  # [B,D,H,W]
            mask = downsample_mask(pixel_mask, feature.shape[-2:])  # [B,H,W]
            features.append(
                norm(feature, mask) if isinstance(norm, MaskedGroupNorm) else norm(feature)
            )
            masks.append(mask)
        srcs, poss = [], []
        for level, (feature, mask) in enumerate(zip(features, masks, strict=True)):
            pos = self.position(mask).to(feature.dtype).flatten(2).transpose(1, 2)  # [B,HW,D]
            if self.level_embed is not None:
                pos = pos + self.level_embed[level]
            srcs.append(feature.flatten(2).transpose(1, 2))  # [B,HW,D]
            poss.append(pos)
        shapes = [tuple(f.shape[-2:]) for f in features]  # (H_l, W_l); see level_sizes
        src, pos = torch.cat(srcs, 1), torch.cat(poss, 1)  # [B,S,D]
        memory_mask = torch.cat([m.flatten(1) for m in masks], 1)  # [B,S]
        memory = self.encoder(src, pos, memory_mask, shapes)
        return {
            "features": features,
            "feature_masks": masks,
            "memory": memory,
            "memory_pos": pos,
            "memory_mask": memory_mask,
            "spatial_shapes": shapes,
        }

    def decode(self, content, position, enc: dict, attn_mask=None):
        """The decoder on queries (content [B,Q,D], position [B,Q,P]) and `encode`'s output."""
        static = {}
        if getattr(self.proposals, "static_position", False):  # reference two-stage
            static["query_pos"] = self.proposals.query_position(position)
        return self.decoder(
            content,
            position,
            enc["memory"],
            enc["memory_pos"],
            enc["memory_mask"],
            attn_mask,
            enc["spatial_shapes"],
            **static,
        )

    def forward(
        self,
        images: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        query_groups: list[QueryGroup] | None = None,
        targets: list[dict] | None = None,
    ) -> DetrOutput:
        """images [B,3,H,W], pixel_mask [B,H,W] True on padding -> DetrOutput (same in train/eval).
        In training, `targets` add the contrastive denoising queries when the model has them
        (anchor-query models): their outputs are `out.denoising`, never in `groups`."""
        batch_size = images.shape[0]
        if pixel_mask is None:
            pixel_mask = torch.zeros(
                images.shape[0], *images.shape[-2:], dtype=torch.bool, device=images.device
            )
        enc = self.encode(images, pixel_mask)
        extras: dict[str, torch.Tensor] = {}
        if self.proposals is not None:
            content, position, extras = self.proposals(
                enc["memory"], enc["memory_mask"], enc["spatial_shapes"], self.num_queries
            )
        else:
            content, position = self.main_queries(batch_size)
        training_dn = self.training and targets is not None
        sets = gather_queries(
            (content, position),
            [
                (g.name, *group_tensors(g, batch_size, self.hidden_dim, self.query_kind))
                for g in query_groups or []
            ],
            self.denoising if training_dn else None,
            targets,
        )
        dec = self.decode(sets.content, sets.position, enc, sets.attn_mask)
        logits = self.class_head(dec.hidden)  # [L,B,T,C]
        main, groups, denoising = sets.split(logits, dec.boxes, dec.hidden, dec.references)
        return DetrOutput(
            **vars(main),
            features=enc["features"],
            feature_masks=enc["feature_masks"],
            memory=enc["memory"],
            memory_mask=enc["memory_mask"],
            spatial_shapes=shapes_tensor(enc["spatial_shapes"], images.device),
            groups=groups,
            extras=extras,
            denoising=denoising,
            denoising_group=sets.denoising,
        )


def _input_norm(kind: str, dim: int) -> nn.Module:
    """The norm after an input projection: "masked_group" (statistics over the unpadded
    pixels), "group" (plain GroupNorm, as Deformable DETR) or "none" (as DETR)."""
    if kind == "masked_group":
        return MaskedGroupNorm(min(32, dim), dim)
    if kind == "group":
        return nn.GroupNorm(min(32, dim), dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"input_norm must be masked_group, group or none, got {kind!r}")
