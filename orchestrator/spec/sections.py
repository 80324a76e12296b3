"""The experiment spec: pydantic v2 models of everything a run needs, loaded from YAML.

Every section forbids unknown keys. Model configs and distillation methods are discriminated
unions (by `architecture` and `method`), so a misspelt name or a field that does not belong to
the chosen variant is caught. Loading, error formatting and overrides live in `spec_loader.py`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from detr_models.build import ModelConfig
from orchestrator.spec.distill import (
    CombinedSpec,
    DetrDistillSpec,
    OdDetrSpec,
    detrdistill_section,
    od_detr_section,
)
from orchestrator.spec.tune import TuneSpec

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ----------------------------------------------------------------------------- data
class SyntheticData(Section):
    """The generated shapes dataset, created on first use under `cache_dir`."""

    kind: Literal["synthetic"] = "synthetic"
    train_images: NonNegInt = 64
    val_images: PositiveInt = 16
    image_size: Annotated[int, Field(ge=32)] = 128
    classes: Annotated[int, Field(ge=1, le=8)] = 3
    max_objects: PositiveInt = 4
    seed: int = 0
    cache_dir: str = "data/cache"


class CocoData(Section):
    """Any COCO-format dataset: image folders and annotation files per split."""

    kind: Literal["coco"] = "coco"
    train_images: str
    train_annotations: str
    val_images: str
    val_annotations: str


class DataSpec(Section):
    """Where images come from, how they are augmented and batched."""

    source: Annotated[SyntheticData | CocoData, Field(discriminator="kind")] = Field(
        default_factory=SyntheticData
    )
    train_scales: list[PositiveInt] = Field(default_factory=lambda: list(range(480, 801, 32)))
    max_size: PositiveInt = 1333
    crop: bool = True
    crop_resize: list[PositiveInt] = Field(default_factory=lambda: [400, 500, 600])
    crop_size: tuple[PositiveInt, PositiveInt] = (384, 600)
    eval_size: PositiveInt = 800
    batch_size: PositiveInt = 2
    eval_batch_size: PositiveInt | None = None
    num_workers: NonNegInt = 2

    @model_validator(mode="after")
    def _check_crop(self) -> DataSpec:
        if self.crop_size[0] > self.crop_size[1]:
            raise ValueError(f"crop_size must be (min, max), got {self.crop_size}")
        return self


# ----------------------------------------------------------------------------- models
class ModelSpecBase(Section):
    """Hyperparameters shared by the DETR-family architectures (see detr_models.build)."""

    num_classes: PositiveInt | None = Field(
        None, description="number of real classes; omitted = taken from the dataset"
    )
    backbone: Literal["tiny", "resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    backbone_weights: str | None = Field(None, description="local torchvision ResNet state dict")
    frozen_stages: Annotated[int, Field(ge=-1, le=4)] = 1
    tiny_width: PositiveInt = 32
    levels: list[Literal["C2", "C3", "C4", "C5"]] = Field(
        default_factory=lambda: ["C5"], min_length=1
    )
    hidden_dim: PositiveInt = 256
    num_heads: PositiveInt = 8
    encoder_layers: NonNegInt = 6
    decoder_layers: PositiveInt = 6
    ffn_dim: PositiveInt = 2048
    num_queries: PositiveInt = 100
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1

    @model_validator(mode="after")
    def _check_widths(self) -> ModelSpecBase:
        if self.hidden_dim % self.num_heads or self.hidden_dim % 4:
            raise ValueError(
                f"hidden_dim {self.hidden_dim} must be divisible by num_heads {self.num_heads} and by 4"
            )
        return self

    def to_model_config(self, num_classes: int | None = None) -> ModelConfig:
        """The plain detr_models config (num_classes filled from the dataset when omitted)."""
        fields = self.model_dump()
        fields["num_classes"] = fields["num_classes"] or num_classes
        if fields["num_classes"] is None:
            raise ValueError(
                "num_classes is unknown: set it in the spec or resolve it from the dataset"
            )
        return ModelConfig.from_dict(fields)


class DetrSpec(ModelSpecBase):
    architecture: Literal["detr"] = "detr"


class ConditionalDetrSpec(ModelSpecBase):
    architecture: Literal["conditional_detr"] = "conditional_detr"
    num_queries: PositiveInt = 300


class DabDetrSpec(ModelSpecBase):
    architecture: Literal["dab_detr"] = "dab_detr"
    num_queries: PositiveInt = 300


class DeformableDetrSpec(ModelSpecBase):
    """Deformable DETR; `box_refine`, `two_stage` and `anchor_queries` (DAB-Deformable) are its
    variants. `num_feature_levels` counts the backbone levels plus extra stride-2 levels."""

    architecture: Literal["deformable_detr"] = "deformable_detr"
    levels: list[Literal["C2", "C3", "C4", "C5"]] = Field(
        default_factory=lambda: ["C3", "C4", "C5"], min_length=1
    )
    num_queries: PositiveInt = 300
    ffn_dim: PositiveInt = 1024
    num_feature_levels: PositiveInt = 4
    num_points: PositiveInt = 4
    box_refine: bool = False
    two_stage: bool = False
    anchor_queries: bool = False

    @model_validator(mode="after")
    def _check_levels(self) -> DeformableDetrSpec:
        if self.num_feature_levels < len(self.levels):
            raise ValueError(
                f"num_feature_levels {self.num_feature_levels} is less than the "
                f"{len(self.levels)} backbone levels {self.levels}"
            )
        return self


ModelSpec = Annotated[
    DetrSpec | ConditionalDetrSpec | DabDetrSpec | DeformableDetrSpec,
    Field(discriminator="architecture"),
]


class TeacherSpec(Section):
    """A trained detector: its config and where its weights come from."""

    model: ModelSpec
    weights: str = Field(
        description="models:/<name>/<version>, models:/<name>@<alias>, runs:/<id>/<path>, or a local file"
    )


# ----------------------------------------------------------------------------- distillation
class NoDistill(Section):
    """Plain training of the student (baselines, and how teachers are trained)."""

    method: Literal["none"] = "none"

    @property
    def needs_teacher(self) -> bool:
        return False


DistillSpec = Annotated[
    NoDistill | DetrDistillSpec | OdDetrSpec | CombinedSpec, Field(discriminator="method")
]


# ----------------------------------------------------------------------------- training
class OptimSpec(Section):
    """AdamW with a backbone learning-rate multiplier, warm-up and a step or cosine schedule."""

    lr: PositiveFloat = 1e-4
    backbone_lr_mult: NonNegFloat = 0.1
    offset_lr_mult: NonNegFloat = Field(
        1.0, description="Deformable DETR: sampling offsets and reference heads (paper: 0.1)"
    )
    weight_decay: NonNegFloat = 1e-4
    clip_grad_norm: NonNegFloat = Field(0.1, description="0 disables clipping")
    warmup_iters: NonNegInt = 0
    schedule: Literal["step", "cosine", "constant"] = "step"
    step_epochs: list[PositiveInt] = Field(default_factory=lambda: [40])
    gamma: PositiveFloat = 0.1


class MatcherSpec(Section):
    cost_class: NonNegFloat = 2.0
    cost_bbox: NonNegFloat = 5.0
    cost_giou: NonNegFloat = 2.0


class LossSpec(Section):
    cls: NonNegFloat = 2.0
    bbox: NonNegFloat = 5.0
    giou: NonNegFloat = 2.0
    stage_weights: list[NonNegFloat] | None = Field(
        None, description="one weight per decoder stage"
    )


class TrainSpec(Section):
    epochs: PositiveInt = 50
    eval_interval: PositiveInt = 1
    amp: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU)")
    log_every: PositiveInt = 20
    max_iters_per_epoch: PositiveInt | None = Field(None, description="cap for smoke runs")
    stability_probe_images: NonNegInt = Field(
        32, description="training images probed for matching instability at each eval (0: off)"
    )
    matcher: MatcherSpec = Field(default_factory=MatcherSpec)
    loss: LossSpec = Field(default_factory=LossSpec)


class ScalingSpec(Section):
    num_workers: NonNegInt = Field(1, description="0 runs in-process (Ray Train local mode)")
    use_gpu: bool = False
    cpus_per_worker: PositiveFloat = 2
    gpus_per_worker: PositiveFloat = 1
    max_failures: NonNegInt = 0


class CheckpointSpec(Section):
    num_to_keep: PositiveInt = 2
    score_metric: str = "val/AP"
    score_mode: Literal["max", "min"] = "max"
    export: Literal["student", "ema", "best"] = Field(
        "best",
        description="which model of the chosen checkpoint is exported and registered: the "
        "student, the EMA teacher (OD-DETR), or the one with the higher val AP",
    )


class MlflowSpec(Section):
    tracking_uri: str | None = Field(None, description="default sqlite:///<cwd>/mlflow.db")
    experiment: str | None = Field(None, description="default: the spec name")
    register_as: str | None = None
    log_images: NonNegInt = 4


class ExperimentSpec(Section):
    """One experiment: data, a student, optionally a teacher, a method, and how to run it."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    student: ModelSpec
    teacher: TeacherSpec | None = None
    distill: DistillSpec = Field(default_factory=NoDistill)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    tune: TuneSpec | None = Field(None, description="Ray Tune sweep (`detrdistill sweep`)")

    def cross_field_problems(self) -> list[tuple[str, str]]:
        """(dotted path, message) for every rule that spans sections; empty when consistent."""
        problems = []
        if self.distill.needs_teacher and self.teacher is None:
            problems.append(
                (
                    "teacher",
                    f"distill.method {self.distill.method!r} needs a teacher; add a 'teacher' section",
                )
            )
        problems += _distill_stage_problems(self)
        if od_detr_section(self.distill) is None:
            if self.checkpoint.export == "ema":
                problems.append(
                    (
                        "checkpoint.export",
                        "is 'ema' but this run has no EMA model; use distill.method od_detr (or "
                        "detrdistill+od_detr), or export 'student'",
                    )
                )
            if self.checkpoint.score_metric.startswith("val_ema/"):
                problems.append(
                    (
                        "checkpoint.score_metric",
                        f"{self.checkpoint.score_metric!r} needs an EMA model (distill.method "
                        "od_detr); score by 'val/AP' instead",
                    )
                )
        stages = self.train.loss.stage_weights
        if stages is not None and len(stages) != self.student.decoder_layers:
            problems.append(
                (
                    "train.loss.stage_weights",
                    f"has {len(stages)} entries but the student has {self.student.decoder_layers} "
                    "decoder layers; give one weight per stage",
                )
            )
        return problems


def _distill_stage_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    """Explicit per-stage weight lists must have one entry per stage they weigh."""
    return _od_detr_stage_problems(spec) + _detrdistill_stage_problems(spec)


def _od_detr_stage_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    section = od_detr_section(spec.distill)
    if section is None:
        return []
    where = "distill" if section is spec.distill else "distill.od_detr"
    problems = []
    stages = spec.student.decoder_layers
    for term in ("initial_query", "aux_groups"):
        weights = getattr(section, term).stage_weights
        if isinstance(weights, list) and len(weights) != stages:
            problems.append(
                (
                    f"{where}.{term}.stage_weights",
                    f"has {len(weights)} entries but the student has {stages} decoder stages",
                )
            )
    return problems


def _detrdistill_stage_problems(spec: ExperimentSpec) -> list[tuple[str, str]]:
    section = detrdistill_section(spec.distill)
    if section is None or spec.teacher is None:
        return []
    # field paths of a combined section sit under distill.detrdistill
    where = "distill" if section is spec.distill else "distill.detrdistill"
    problems = []
    counts = {
        "logits": spec.student.decoder_layers,
        "feature": spec.teacher.model.decoder_layers,
        "query_prior": spec.student.decoder_layers,
    }
    if section.feature.enabled:
        from distill.detrdistill import feature_strides

        student = feature_strides(spec.student.to_model_config(1))
        teacher = feature_strides(spec.teacher.model.to_model_config(1))
        if not set(student) & set(teacher):
            problems.append(
                (
                    f"{where}.feature",
                    f"the student's feature levels (strides {student}) share no stride with the "
                    f"teacher's ({teacher}), so feature distillation cannot run; give them a common "
                    "level or set distill.feature.enabled: false (logits and query_prior still run)",
                )
            )
    for term, count in counts.items():
        weights = getattr(section, term).stage_weights
        if isinstance(weights, list) and len(weights) != count:
            owner = "teacher" if term == "feature" else "student"
            problems.append(
                (
                    f"{where}.{term}.stage_weights",
                    f"has {len(weights)} entries but the {owner} has {count} decoder stages",
                )
            )
    return problems
