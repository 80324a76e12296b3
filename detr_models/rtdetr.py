"""RT-DETR / RT-DETRv2: backbone -> hybrid encoder -> IoU-aware query selection of the top-k
encoder tokens -> deformable decoder with box refinement, under the `DetrOutput` contract."""

from __future__ import annotations

import functools

import torch
from torch import nn

from detr_models.backbone import IMAGENET_MEAN, IMAGENET_STD, downsample_mask
from detr_models.deformable_attention import shapes_tensor
from detr_models.denoising_queries import DenoisingQueries
from detr_models.hybrid_encoder import ConvNorm, HybridEncoder
from detr_models.layers import MLP, PerStage, cached
from detr_models.output import DetrOutput, QueryGroup
from detr_models.query_sets import gather_queries, group_tensors
from detr_models.rtdetr_decoder import RtDetrDecoder


@functools.lru_cache(maxsize=32)
def grid_anchors(
    spatial_shapes: tuple[tuple[int, int], ...], device, dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """One anchor per token: its pixel centre and a size of 0.05 * 2^level, in logit space
    [1,S,4]; anchors near the border (a coordinate outside (0.01, 0.99)) are unusable [1,S,1]
    and hold the dtype's largest value, as the reference does. Cached per shapes, device and
    dtype (constants: callers must not modify them)."""
    boxes = []
    for level, (h, w) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid(
            torch.arange(h, device=device, dtype=dtype),
            torch.arange(w, device=device, dtype=dtype),
            indexing="ij",
        )
        centre = torch.stack(((xs + 0.5) / w, (ys + 0.5) / h), -1).reshape(-1, 2)
        boxes.append(torch.cat((centre, torch.full_like(centre, 0.05 * 2.0**level)), -1))
    anchors = torch.cat(boxes)[None]  # [1,S,4]
    usable = ((anchors > 0.01) & (anchors < 0.99)).all(-1, keepdim=True)
    logit = torch.log(anchors / (1 - anchors))
    return logit.where(usable, torch.finfo(dtype).max), usable


class QuerySelection(nn.Module):
    """Every token predicts classes and a box refining its anchor; the top-k tokens by best
    class score give the decoder's content (their features, detached) and anchors (detached)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.memory_proj = nn.Linear(dim, dim)
        self.memory_norm = nn.LayerNorm(dim)
        self.class_head = nn.Linear(dim, num_classes)
        self.box_head = MLP(dim, dim, 4, 3)

    def forward(self, memory: torch.Tensor, shapes: list[tuple[int, int]], k: int):
        anchors, usable = cached(grid_anchors)(tuple(shapes), memory.device, memory.dtype)
        tokens = self.memory_norm(self.memory_proj(memory * usable.to(memory.dtype)))
        logits = self.class_head(tokens)  # [B,S,C]
        unact = self.box_head(tokens) + anchors  # [B,S,4]
        selected = logits.max(-1).values.topk(min(k, logits.shape[1]), dim=1).indices  # [B,k]

        def pick(x: torch.Tensor) -> torch.Tensor:
            return x.gather(1, selected[..., None].expand(-1, -1, x.shape[-1]))

        boxes = pick(unact).sigmoid()
        extras = {"enc_logits": pick(logits), "enc_boxes": boxes, "selected_tokens": selected}
        return pick(tokens).detach(), boxes.detach(), extras


class RtDetr(nn.Module):
    """RT-DETRv2 returning a `DetrOutput` in every mode; queries are anchor boxes (cxcywh)."""

    query_kind = "anchor"

    def __init__(
        self,
        backbone: nn.Module,
        encoder: HybridEncoder,
        decoder: RtDetrDecoder,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        denoising: DenoisingQueries | None = None,
        unit_pixels: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # the data pipeline normalises with ImageNet statistics; RT-DETR reads [0, 1] pixels
        self.unit_pixels = unit_pixels
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN)[:, None, None], False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD)[:, None, None], False)
        self.denoising = denoising
        self.encoder = encoder
        self.decoder = decoder
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.decoder_proj = nn.ModuleList(
            ConvNorm(hidden_dim, hidden_dim, 1, act=False) for _ in encoder.input_proj
        )
        self.proposals = QuerySelection(hidden_dim, num_classes)
        self.class_head = PerStage(
            nn.Linear(hidden_dim, num_classes) for _ in range(len(decoder.layers))
        )
        prior = -torch.log(torch.tensor((1 - 0.01) / 0.01)).item()
        for head in [*self.class_head, self.proposals.class_head]:
            nn.init.constant_(head.bias, prior)

    def forward(
        self,
        images: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        query_groups: list[QueryGroup] | None = None,
        targets: list[dict] | None = None,
    ) -> DetrOutput:
        """images [B,3,H,W] ImageNet-normalised (as every model here takes them; with
        `unit_pixels` turned back to [0, 1] first), pixel_mask [B,H,W] True on padding
        (reported, not used: padding is image content to RT-DETR, as in the reference). In
        training, `targets` (labels, normalised cxcywh boxes) add the contrastive denoising
        queries when the model has them: their outputs are `out.denoising` (never in
        `groups`, never distilled)."""
        b = images.shape[0]
        if pixel_mask is None:
            pixel_mask = images.new_zeros(b, *images.shape[-2:], dtype=torch.bool)
        if self.unit_pixels:
            images = images * self.pixel_std + self.pixel_mean
        maps = self.encoder(self.backbone(images))
        features = [proj(m) for proj, m in zip(self.decoder_proj, maps, strict=True)]
        masks = [downsample_mask(pixel_mask, f.shape[-2:]) for f in features]
        shapes = [tuple(f.shape[-2:]) for f in features]
        memory = torch.cat([f.flatten(2).transpose(1, 2) for f in features], 1)  # [B,S,D]
        content, anchors, extras = self.proposals(memory, shapes, self.num_queries)
        training_dn = self.training and targets is not None
        sets = gather_queries(
            (content, anchors),
            [(g.name, *group_tensors(g, b, self.hidden_dim, "anchor")) for g in query_groups or []],
            self.denoising if training_dn else None,
            targets,
        )
        dec = self.decoder(sets.content, sets.position, memory, shapes, sets.attn_mask)
        logits = self.class_head(dec.hidden)  # [L,B,T,C]
        main, groups, denoising = sets.split(logits, dec.boxes, dec.hidden, dec.references)
        return DetrOutput(
            **vars(main),
            features=features,
            feature_masks=masks,
            memory=memory,
            memory_mask=torch.cat([m.flatten(1) for m in masks], 1),
            spatial_shapes=shapes_tensor(shapes, images.device),
            groups=groups,
            extras=extras,
            denoising=denoising,
            denoising_group=sets.denoising,
        )
