"""Spec sections of the distillation methods (each a member of the `distill` union)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

NonNegFloat = Annotated[float, Field(ge=0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ScheduleSpec(_Section):
    """Multiplier over training: constant; warmup (linear 0 -> 1 over warmup_epochs); step (off
    before start_epoch, on from it); cosine (1 -> 0 over the run)."""

    kind: Literal["constant", "warmup", "step", "cosine"] = "constant"
    warmup_epochs: NonNegFloat = 0.0
    start_epoch: NonNegFloat = 0.0


StageWeights = Literal["uniform", "last_only", "increasing"] | list[NonNegFloat]


class TermSpec(_Section):
    """A distillation term: on/off, weight, class/L1/GIoU sub-weights, stage weights, schedule."""

    enabled: bool = True
    weight: NonNegFloat = 1.0
    cls: NonNegFloat = 1.0
    bbox: NonNegFloat = 5.0
    giou: NonNegFloat = 2.0
    stage_weights: StageWeights = "uniform"
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)


class FeatureTermSpec(TermSpec):
    """B. Target-aware feature distillation (stage weights are per teacher stage)."""

    top_k: Annotated[int, Field(gt=0)] = 100
    floor: Annotated[float, Field(gt=0, le=1)] = 0.01


class ContrastiveSpec(_Section):
    """The official code's contrastive query term (InfoNCE over the query-prior group's last
    stage against the teacher's hidden states); off by default."""

    enabled: bool = False
    weight: NonNegFloat = 0.2
    temperature: Annotated[float, Field(gt=0)] = 0.07
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)


class DetrDistillSpec(_Section):
    """DETRDistill: A. Hungarian-matching logits (student stage k <- teacher stage map(k)),
    B. target-aware features, C. query-prior assignment. Defaults: A 1/5/2, B 1, C 2/5/2."""

    method: Literal["detrdistill"] = "detrdistill"
    logits: TermSpec = Field(default_factory=TermSpec)
    feature: FeatureTermSpec = Field(default_factory=FeatureTermSpec)
    query_prior: TermSpec = Field(default_factory=lambda: TermSpec(cls=2.0))
    contrastive: ContrastiveSpec = Field(default_factory=ContrastiveSpec)
    last_teacher_stage: bool = Field(
        False, description="the last teacher stage supervises every student stage (ablation)"
    )

    @property
    def needs_teacher(self) -> bool:
        return True
