"""The denoising group as a model part: its label embedding and settings, and the decoder's
self-attention mask when denoising queries, the main queries and distillation groups share one
decoder pass."""

from __future__ import annotations

import torch
from torch import nn

from detr_models.attention import BlockDiagonal, DenoisingLayout
from detr_models.denoising import DenoisingGroup, make_denoising_group


class DenoisingQueries(nn.Module):
    """Builds the contrastive denoising group of a training batch (see `denoising.py`).

    `label_embedding` has num_classes + 1 rows, the last for padded slots."""

    def __init__(
        self,
        num_classes: int,
        dim: int,
        num_denoising: int = 100,
        label_noise_ratio: float = 0.5,
        box_noise_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.label_embedding = nn.Embedding(num_classes + 1, dim, padding_idx=num_classes)
        self.num_denoising = num_denoising
        self.label_noise_ratio = label_noise_ratio
        self.box_noise_scale = box_noise_scale

    def forward(self, targets: list[dict], num_queries: int) -> DenoisingGroup | None:
        return make_denoising_group(
            targets,
            self.label_embedding,
            self.num_classes,
            num_queries,
            self.num_denoising,
            self.label_noise_ratio,
            self.box_noise_scale,
        )

    def unused(self) -> torch.Tensor:
        """A zero that depends on the embedding: added where a batch has no box to noise, so
        DistributedDataParallel still sees every parameter used."""
        return self.label_embedding.weight.sum() * 0.0


def self_attention_mask(
    group: DenoisingGroup | None, sizes: tuple[int, ...]
) -> BlockDiagonal | DenoisingLayout | None:
    """The decoder's self-attention layout for [denoising, main, extra groups...] queries:
    `sizes` are the main queries' and each extra group's counts. Without denoising, extra
    groups are a `BlockDiagonal`; with it a `DenoisingLayout`: each denoising group sees
    itself and the main queries, the main queries and each extra group only themselves (the
    same as `group.attn_mask` on the denoising and main part)."""
    if group is None:
        return BlockDiagonal(sizes) if len(sizes) > 1 else None
    return DenoisingLayout(group.num_groups, group.group_size, sizes)
