"""The denoising group as a model part: its label embedding and settings, and the decoder's
self-attention mask when denoising queries, the main queries and distillation groups share one
decoder pass."""

from __future__ import annotations

import torch
from torch import nn

from detr_models.attention import BlockDiagonal
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
    group: DenoisingGroup | None, sizes: tuple[int, ...], device: torch.device
) -> torch.Tensor | BlockDiagonal | None:
    """The decoder's self-attention mask for [denoising, main, extra groups...] queries:
    `sizes` are the main queries' and each extra group's counts. Without denoising, extra
    groups are a `BlockDiagonal`; with it, a dense [T,T] mask (True = blocked) where the
    denoising queries see only their own group and the main queries, and the extra groups
    only themselves."""
    if group is None:
        return BlockDiagonal(sizes) if len(sizes) > 1 else None
    n, main = group.num_denoising, sizes[0]
    total = n + sum(sizes)
    mask = torch.ones((total, total), dtype=torch.bool, device=device)
    mask[: n + main, : n + main] = group.attn_mask.to(device)
    start = n + main
    for size in sizes[1:]:
        mask[start : start + size, start : start + size] = False
        start += size
    return mask
