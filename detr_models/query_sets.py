"""The query sets one decoder pass serves: the model's own queries, the distillation groups
appended after them, and in training the contrastive denoising queries in front; and the
split of the decoder's per-stage outputs back into those sets."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detr_models.attention import BlockDiagonal, DenoisingLayout
from detr_models.denoising import DenoisingGroup
from detr_models.denoising_queries import DenoisingQueries, self_attention_mask
from detr_models.output import QueryGroup, StageOutputs


@dataclass
class QuerySets:
    """Concatenated queries (content [B,T,D], position [B,T,P]), the self-attention mask, and
    how to split them: `sizes` of [main, groups...], `names` of the groups, `denoising`."""

    content: torch.Tensor
    position: torch.Tensor
    attn_mask: BlockDiagonal | DenoisingLayout | None
    sizes: list[int]
    names: list[str]
    denoising: DenoisingGroup | None

    def split(
        self, logits: torch.Tensor, boxes: torch.Tensor, hidden: torch.Tensor, references
    ) -> tuple[StageOutputs, dict[str, StageOutputs], StageOutputs | None]:
        """Per-stage outputs [L,B,T,...] -> (main, groups by name, denoising or None)."""
        sizes = list(self.sizes)
        if self.denoising is not None:
            sizes.insert(0, self.denoising.num_denoising)
        outputs, start = [], 0
        for size in sizes:
            part = slice(start, start + size)
            outputs.append(
                StageOutputs(
                    logits[:, :, part],
                    boxes[:, :, part],
                    hidden[:, :, part],
                    references[:, :, part] if references is not None else None,
                    self.content[:, part],
                    self.position[:, part],
                )
            )
            start += size
        denoising = outputs.pop(0) if self.denoising is not None else None
        groups = dict(zip(self.names, outputs[1:], strict=True))
        return outputs[0], groups, denoising


def gather_queries(
    main: tuple[torch.Tensor, torch.Tensor],
    groups: list[tuple[str, torch.Tensor, torch.Tensor]],
    denoising: DenoisingQueries | None = None,
    targets: list[dict] | None = None,
) -> QuerySets:
    """Queries of one pass. `denoising` (the model's, in training, with `targets`) adds the
    denoising group in front; a batch without boxes still touches its embedding (DDP)."""
    names = [name for name, _, _ in groups]
    if len(set(names)) != len(names) or "" in names:
        raise ValueError(f"query group names must be unique and non-empty, got {names}")
    content, position = main
    group = None
    if denoising is not None and targets is not None:
        group = denoising(targets, content.shape[1])
        if group is None:
            content = content + denoising.unused()
    parts = [(content, position)] + [(c, p) for _, c, p in groups]
    sizes = [c.shape[1] for c, _ in parts]
    if group is not None:
        parts.insert(0, (group.content.to(content.dtype), group.anchors.to(position.dtype)))
    return QuerySets(
        torch.cat([c for c, _ in parts], 1),
        torch.cat([p for _, p in parts], 1),
        self_attention_mask(group, tuple(sizes)),
        sizes,
        names,
        group,
    )


def group_tensors(
    group: QueryGroup, batch_size: int, hidden_dim: int, query_kind: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """A distillation group's (content [B,G,D], position [B,G,P]), checked against what the
    model takes: anchor boxes [...,4] or positional embeddings [...,D]; `[G,...]` broadcast."""
    content, position = group.content, group.position
    expected = 4 if query_kind == "anchor" else hidden_dim
    if position.shape[-1] != expected or content.shape[-1] != hidden_dim:
        kind = "anchor boxes (cxcywh)" if query_kind == "anchor" else "positional embeddings"
        raise ValueError(
            f"query group {group.name!r}: this model takes content [...,{hidden_dim}] and "
            f"{kind} [...,{expected}], got {list(content.shape)} and {list(position.shape)}"
        )
    if content.dim() == 2:
        content = content.unsqueeze(0).expand(batch_size, -1, -1)
    if position.dim() == 2:
        position = position.unsqueeze(0).expand(batch_size, -1, -1)
    return content, position
