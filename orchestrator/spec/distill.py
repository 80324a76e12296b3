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


class EmaSpec(_Section):
    """The EMA teacher: theta' <- lam theta' + (1 - lam) theta after every optimiser step;
    with warm-up, lam_t = min(lam, (1 + t) / (10 + t))."""

    decay: Annotated[float, Field(ge=0, le=1)] = 0.9997
    warmup: bool = True


class MatchingSpec(_Section):
    """1. Matching distillation: the EMA teacher's match of each query joins the student's.
    `weight` (w_t) weighs the box loss to the teacher's GT where it differs; the schedule phases
    the teacher's share in. `classification: focal` is the plain-focal ablation."""

    enabled: bool = True
    weight: NonNegFloat = 1.0
    classification: Literal["quality_focal", "focal"] = "quality_focal"
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)


class AuxGroupsSpec(TermSpec):
    """3. Auxiliary groups from the teacher's decoder stages (normal detection loss weights)."""

    cls: NonNegFloat = 2.0
    queries_per_gt: Annotated[int, Field(ge=1)] = 2
    grouping: Literal["per_stage", "pooled"] = "per_stage"


class OdDetrSpec(_Section):
    """OD-DETR: online distillation from an EMA teacher of the student (no pretrained teacher).
    1. matching distillation, 2. initial-query prediction distillation (soft BCE 1, L1 5,
    GIoU 2 to the teacher's outputs), 3. auxiliary query groups."""

    method: Literal["od_detr"] = "od_detr"
    ema: EmaSpec = Field(default_factory=EmaSpec)
    matching: MatchingSpec = Field(default_factory=MatchingSpec)
    initial_query: TermSpec = Field(default_factory=TermSpec)
    aux_groups: AuxGroupsSpec = Field(default_factory=AuxGroupsSpec)

    @property
    def needs_teacher(self) -> bool:
        return False


class CombinedSpec(_Section):
    """DETRDistill from an offline teacher and OD-DETR from an EMA teacher in the same run: one
    student forward carries both methods' query groups; OD-DETR's matching distillation is the
    main loss and every DETRDistill term is added."""

    method: Literal["detrdistill+od_detr"] = "detrdistill+od_detr"
    detrdistill: DetrDistillSpec = Field(default_factory=DetrDistillSpec)
    od_detr: OdDetrSpec = Field(default_factory=OdDetrSpec)

    @property
    def needs_teacher(self) -> bool:
        return True


def detrdistill_section(section: BaseModel) -> DetrDistillSpec | None:
    """The DETRDistill part of a distill section, alone or combined (None if absent)."""
    if isinstance(section, DetrDistillSpec):
        return section
    return getattr(section, "detrdistill", None)


def od_detr_section(section: BaseModel) -> OdDetrSpec | None:
    """The OD-DETR part of a distill section, alone or combined (None if absent)."""
    if isinstance(section, OdDetrSpec):
        return section
    return getattr(section, "od_detr", None)
