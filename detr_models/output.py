"""The typed output every detector returns, in training and in evaluation alike."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class QueryGroup:
    """Extra decoder queries appended after the model's own (training-time distillation groups).

    `content` is `[B,G,D]` or `[G,D]` (broadcast over the batch). `position` depends on the
    architecture: a positional embedding `[...,G,D]` (DETR, Conditional DETR), or anchor boxes
    `[...,G,4]` as normalised cxcywh (DAB-DETR, Deformable variants). Groups never see each
    other or the main queries in self-attention.
    """

    name: str
    content: torch.Tensor
    position: torch.Tensor


@dataclass
class DecoderOutput:
    """What every decoder returns: hidden [L,B,Q,D], boxes [L,B,Q,4] normalised cxcywh,
    references [L,B,Q,R] (what entered each stage) or None."""

    hidden: torch.Tensor
    boxes: torch.Tensor
    references: torch.Tensor | None


@dataclass
class StageOutputs:
    """Per decoder stage predictions of one set of queries (the main set or one group).

    logits      [L,B,Q,C]  sigmoid class logits over K real classes (no "no-object")
    boxes       [L,B,Q,4]  normalised cxcywh
    hidden      [L,B,Q,D]  decoder output of each stage (after the final norm)
    references  [L,B,Q,R]  what entered each stage (R=2 points, R=4 anchors), None for DETR
    init_content  [B,Q,D]  content queries entering stage 1
    init_position [B,Q,P]  positional queries (P=D) or anchors (P=4) entering stage 1
    """

    logits: torch.Tensor
    boxes: torch.Tensor
    hidden: torch.Tensor
    references: torch.Tensor | None
    init_content: torch.Tensor
    init_position: torch.Tensor

    @property
    def num_stages(self) -> int:
        return self.logits.shape[0]

    def stage(self, k: int) -> dict[str, torch.Tensor]:
        """`{"logits": [B,Q,C], "boxes": [B,Q,4]}` of stage k (negative k counts from the end)."""
        return {"logits": self.logits[k], "boxes": self.boxes[k]}


@dataclass
class DetrOutput(StageOutputs):
    """Everything a distiller needs, for the main queries plus any query groups.

    features       list of encoder input maps per level, each [B,D,H_l,W_l] (after input proj)
    feature_masks  list of padding masks per level, each [B,H_l,W_l] (True on padding)
    memory         [B,S,D] encoder output, S = sum of H_l*W_l
    memory_mask    [B,S] True on padding
    spatial_shapes [n_levels,2] (H_l, W_l), long
    groups         name -> StageOutputs of that query group
    extras         architecture-specific intermediates (e.g. two-stage proposals and the
                   selected encoder token indices)
    denoising      training only: the contrastive denoising queries' outputs (RT-DETR), kept
                   apart from `groups` so no method distils them
    denoising_group  their `DenoisingGroup` (fixed assignment to the ground truth), or None
    """

    features: list[torch.Tensor] = field(default_factory=list)
    feature_masks: list[torch.Tensor] = field(default_factory=list)
    memory: torch.Tensor | None = None
    memory_mask: torch.Tensor | None = None
    spatial_shapes: torch.Tensor | None = None
    groups: dict[str, StageOutputs] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    denoising: StageOutputs | None = None
    denoising_group: Any = None
