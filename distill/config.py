"""The configs of the distillation methods: each is both the `distill:` section of an
experiment spec (discriminated by `method`) and what the method's objective reads, by name.
Defaults are the papers' settings."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from detr_models.config import StrictConfig
from distill.objective import Progress
from distill.schedules import NonNegFloat, Schedule, TermConfig, schedule_factor


class EmaConfig(StrictConfig):
    """The EMA teacher: theta' <- lam theta' + (1 - lam) theta after every optimiser step;
    with warm-up, lam_t = min(lam, (1 + t) / (10 + t))."""

    decay: Annotated[float, Field(ge=0, le=1)] = 0.9997
    warmup: bool = True


class NoDistillConfig(StrictConfig):
    """Plain training of the student (baselines, and how teachers are trained); `ema` keeps
    an EMA of its weights, evaluated beside it and exportable (RT-DETR trains this way)."""

    method: Literal["none"] = "none"
    ema: EmaConfig | None = Field(
        None, description="an EMA of the weights, evaluated as val_ema/* (e.g. decay: 0.9999)"
    )

    @property
    def needs_teacher(self) -> bool:
        return False


class FeatureTermConfig(TermConfig):
    """B. Target-aware feature distillation (stage weights are per teacher stage); `top_k`
    teacher queries form the mask, `floor` keeps every location a small weight."""

    top_k: Annotated[int, Field(gt=0)] = 100
    floor: Annotated[float, Field(gt=0, le=1)] = 0.01


class ContrastiveConfig(StrictConfig):
    """The official code's contrastive query term (InfoNCE over the query-prior group's last
    stage against the teacher's hidden states); off by default."""

    enabled: bool = False
    weight: NonNegFloat = 0.2
    temperature: Annotated[float, Field(gt=0)] = 0.07
    schedule: Schedule = Field(default_factory=Schedule)

    def scale(self, progress: Progress) -> float:
        """weight x schedule at `progress`, 0 when disabled."""
        return self.weight * schedule_factor(self.enabled, self.schedule, progress)


class DETRDistillConfig(StrictConfig):
    """DETRDistill: A. Hungarian-matching logits (student stage k <- teacher stage map(k)),
    B. target-aware features, C. query-prior assignment. Defaults: A 1/5/2, B 1, C 2/5/2."""

    method: Literal["detrdistill"] = "detrdistill"
    logits: TermConfig = Field(default_factory=TermConfig)
    feature: FeatureTermConfig = Field(default_factory=FeatureTermConfig)
    query_prior: TermConfig = Field(default_factory=lambda: TermConfig(cls=2.0))
    contrastive: ContrastiveConfig = Field(default_factory=ContrastiveConfig)
    last_teacher_stage: bool = Field(
        False, description="the last teacher stage supervises every student stage (ablation)"
    )

    @property
    def needs_teacher(self) -> bool:
        return True


class MatchingConfig(StrictConfig):
    """1. Matching distillation: the EMA teacher's match of each query joins the student's.
    `weight` (w_t) weighs the box loss to the teacher's GT where it differs; the schedule phases
    the teacher's share in. `classification: focal` is the plain-focal ablation."""

    enabled: bool = True
    weight: NonNegFloat = 1.0
    classification: Literal["quality_focal", "focal"] = "quality_focal"
    schedule: Schedule = Field(default_factory=Schedule)

    def scale(self, progress: Progress) -> float:
        """The teacher's share now: the schedule alone (`weight` is w_t, applied separately)."""
        return schedule_factor(self.enabled, self.schedule, progress)


class AuxGroupsConfig(TermConfig):
    """3. Auxiliary groups from the teacher's decoder stages (normal detection loss weights):
    `queries_per_gt` cheapest teacher queries per GT, one group per stage or one pooled."""

    cls: NonNegFloat = 2.0
    queries_per_gt: Annotated[int, Field(ge=1)] = 2
    grouping: Literal["per_stage", "pooled"] = "per_stage"


class ODDETRConfig(StrictConfig):
    """OD-DETR: online distillation from an EMA teacher of the student (no pretrained teacher).
    1. matching distillation, 2. initial-query prediction distillation (soft BCE 1, L1 5,
    GIoU 2 to the teacher's outputs), 3. auxiliary query groups."""

    method: Literal["od_detr"] = "od_detr"
    ema: EmaConfig = Field(default_factory=EmaConfig)
    matching: MatchingConfig = Field(default_factory=MatchingConfig)
    initial_query: TermConfig = Field(default_factory=TermConfig)
    aux_groups: AuxGroupsConfig = Field(default_factory=AuxGroupsConfig)

    @property
    def needs_teacher(self) -> bool:
        return False


class CombinedConfig(StrictConfig):
    """DETRDistill from an offline teacher and OD-DETR from an EMA teacher in the same run: one
    student forward carries both methods' query groups; OD-DETR's matching distillation is the
    main loss and every DETRDistill term is added."""

    method: Literal["detrdistill+od_detr"] = "detrdistill+od_detr"
    detrdistill: DETRDistillConfig = Field(default_factory=DETRDistillConfig)
    od_detr: ODDETRConfig = Field(default_factory=ODDETRConfig)

    @property
    def needs_teacher(self) -> bool:
        return True


DistillConfig = Annotated[
    NoDistillConfig | DETRDistillConfig | ODDETRConfig | CombinedConfig,
    Field(discriminator="method"),
]


def detrdistill_part(config: StrictConfig) -> DETRDistillConfig | None:
    """The DETRDistill part of a distill config, alone or combined (None if absent)."""
    if isinstance(config, DETRDistillConfig):
        return config
    return config.detrdistill if isinstance(config, CombinedConfig) else None


def od_detr_part(config: StrictConfig) -> ODDETRConfig | None:
    """The OD-DETR part of a distill config, alone or combined (None if absent)."""
    if isinstance(config, ODDETRConfig):
        return config
    return config.od_detr if isinstance(config, CombinedConfig) else None
