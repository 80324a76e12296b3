"""The experiment spec: pydantic v2 models of everything a run needs, loaded from YAML.

Every section forbids unknown keys. The model sections are detr_models' own configs and the
`distill` section is distill's method config, discriminated unions (by `architecture` and
`method`), so a misspelt name or a field that does not belong to the chosen variant is caught,
and the code reads the very objects the YAML became. Rules across sections live in `rules.py`,
loading and messages in `loader.py`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from detr_models.config import (
    AnyModelConfig,
    LossConfig,
    MatcherConfig,
    NonNegFloat,
    NonNegInt,
    PositiveInt,
    StrictConfig,
)
from distill.config import DistillConfig, NoDistillConfig
from orchestrator.spec.tune import TuneSpec

PositiveFloat = Annotated[float, Field(gt=0)]


# ----------------------------------------------------------------------------- data
class SyntheticData(StrictConfig):
    """The generated shapes dataset, created on first use under `cache_dir`."""

    kind: Literal["synthetic"] = "synthetic"
    train_images: PositiveInt = 64
    val_images: PositiveInt = 16
    image_size: Annotated[int, Field(ge=32)] = 128
    classes: Annotated[int, Field(ge=1, le=8)] = 3
    max_objects: PositiveInt = 4
    seed: int = 0
    cache_dir: str = "data/cache"
    # harder data (all off by default)
    distractors: NonNegInt = Field(0, description="unannotated clutter items per image, at most")
    occlusion: Annotated[float, Field(ge=0, le=1)] = Field(
        0.0, description="chance an object may lie over earlier ones (visible boxes annotated)"
    )
    textured: bool = Field(False, description="stripes, checkers or blotches over the background")
    small_objects: bool = Field(False, description="add objects of 2.5-7% of the image side")


class CocoData(StrictConfig):
    """Any COCO-format dataset: image folders and annotation files per split."""

    kind: Literal["coco"] = "coco"
    train_images: str
    train_annotations: str
    val_images: str
    val_annotations: str


Probability = Annotated[float, Field(ge=0, le=1)]
RTDETR_SCALES = [480, 512, 544, 576, 608, 640, 640, 640, 672, 704, 736, 768, 800]


class RtdetrAugment(StrictConfig):
    """RT-DETR's training augmentation (rtdetrv2 `dataloader.yml`), used with `augment: rtdetr`.

    Per image: photometric distortion, zoom-out, IoU crop, horizontal flip, a square resize to
    `size`; per batch: a square resize to a side drawn from `scales`. Evaluation resizes to a
    `size` square."""

    size: PositiveInt = Field(
        640, description="square side of every image after the per-image transform, train and eval"
    )
    scales: list[PositiveInt] = Field(
        default_factory=lambda: list(RTDETR_SCALES),
        description="square sides a training batch is resized to, one drawn per batch (a "
        "repeated side is drawn more often); [] keeps every batch at `size`",
    )
    stop_epoch: Annotated[int, Field(ge=1)] | None = Field(
        None,
        description="from this epoch on (counted from 0) the photometric distortion, zoom-out, "
        "IoU crop and batch multi-scale are off, leaving flip and resize (reference: 71 of 72 "
        "epochs); null: never",
    )
    photometric_p: Probability = Field(
        0.5, description="probability of each RandomPhotometricDistort adjustment"
    )
    zoom_out_p: Probability = Field(
        0.5, description="probability of RandomZoomOut (onto a canvas up to 4x, black fill)"
    )
    iou_crop_p: Probability = Field(0.8, description="probability of RandomIoUCrop")
    flip_p: Probability = Field(0.5, description="probability of the horizontal flip")


class DataSpec(StrictConfig):
    """Where images come from, how they are augmented and batched."""

    source: Annotated[SyntheticData | CocoData, Field(discriminator="kind")] = Field(
        default_factory=SyntheticData
    )
    augment: Literal["detr", "rtdetr"] = Field(
        "detr",
        description="detr: flip, multi-scale shorter side (train_scales, max_size), random crop "
        "(crop*), eval at eval_size; rtdetr: RT-DETR's recipe, configured by `rtdetr`",
    )
    train_scales: list[PositiveInt] = Field(default_factory=lambda: list(range(480, 801, 32)))
    max_size: PositiveInt = 1333
    crop: bool = True
    crop_resize: list[PositiveInt] = Field(default_factory=lambda: [400, 500, 600])
    crop_size: tuple[PositiveInt, PositiveInt] = (384, 600)
    eval_size: PositiveInt = 800
    rtdetr: RtdetrAugment = Field(
        default_factory=RtdetrAugment, description="used only with augment: rtdetr"
    )
    batch_size: PositiveInt = 2
    eval_batch_size: PositiveInt | None = None
    num_workers: NonNegInt = 2

    @model_validator(mode="after")
    def _check_crop(self) -> DataSpec:
        if self.crop_size[0] > self.crop_size[1]:
            raise ValueError(f"crop_size must be (min, max), got {self.crop_size}")
        return self


# ----------------------------------------------------------------------------- models
class TeacherSpec(StrictConfig):
    """A trained detector: its config and where its weights come from."""

    model: AnyModelConfig
    weights: str = Field(
        description="models:/<name>/<version>, models:/<name>@<alias>, runs:/<id>/<path>, or a local file"
    )
    class_map: dict[str, str] | None = Field(
        None,
        description="dataset class name -> teacher class name, where names differ; a teacher "
        "whose classes are a superset (e.g. COCO-80) is matched by name without it",
    )

    @property
    def source(self) -> str:
        return self.weights


class HfTeacherSpec(StrictConfig):
    """Any Hugging Face DETR-family detector as a frozen teacher (`pip install 'detrdistill[hf]'`):
    D-FINE, DEIMv2, RT-DETR(v2), LW-DETR, RF-DETR, Deformable / Conditional / DAB-DETR, DETR."""

    hf: str = Field(
        min_length=1,
        description="a local model folder (config.json + *.safetensors) or <org>/<name>[@revision] "
        "on the Hub",
    )
    classes: dict[str, str] | None = Field(
        None,
        description="dataset class name -> teacher class name, where names differ; other classes "
        "match by name, and those without a teacher counterpart get no logits distillation",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="autocast for the teacher's forward only, on GPUs (ignored on CPU)"
    )

    @property
    def source(self) -> str:
        return self.hf


def _teacher_kind(value: object) -> str:
    if isinstance(value, dict):
        return "hf_teacher" if "hf" in value else "native_teacher"
    return "hf_teacher" if isinstance(value, HfTeacherSpec) else "native_teacher"


AnyTeacherSpec = Annotated[
    Annotated[TeacherSpec, Tag("native_teacher")] | Annotated[HfTeacherSpec, Tag("hf_teacher")],
    Discriminator(_teacher_kind),
]


# ----------------------------------------------------------------------------- training
class OptimSpec(StrictConfig):
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


class TrainSpec(StrictConfig):
    epochs: PositiveInt = 50
    eval_interval: PositiveInt = 1
    amp: bool = Field(True, description="bf16 autocast on GPU (ignored on CPU)")
    log_every: PositiveInt = 20
    max_iters_per_epoch: PositiveInt | None = Field(None, description="cap for smoke runs")
    stability_probe_images: NonNegInt = Field(
        32, description="training images probed for matching instability at each eval (0: off)"
    )
    matcher: MatcherConfig = Field(default_factory=MatcherConfig)
    loss: LossConfig = Field(default_factory=LossConfig)


class ScalingSpec(StrictConfig):
    num_workers: NonNegInt = Field(1, description="0 runs in-process (Ray Train local mode)")
    use_gpu: bool = False
    cpus_per_worker: PositiveFloat = 2
    gpus_per_worker: PositiveFloat = 1
    max_failures: NonNegInt = Field(
        2,
        description="how many times Ray Train restarts the workers from the last checkpoint "
        "when one dies, inside the same run (0: the first failure ends the run)",
    )


class CheckpointSpec(StrictConfig):
    num_to_keep: PositiveInt = Field(
        1,
        description="the best checkpoints (by score_metric) kept on disk; the latest is always "
        "kept too (a resume starts from it)",
    )
    score_metric: str = "val/AP"
    score_mode: Literal["max", "min"] = "max"
    export: Literal["student", "ema", "best"] = Field(
        "best",
        description="which model of the chosen checkpoint is exported and registered: the "
        "student, the EMA teacher (OD-DETR), or the one with the higher val AP",
    )


class MlflowSpec(StrictConfig):
    tracking_uri: str | None = Field(None, description="default sqlite:///<cwd>/mlflow.db")
    experiment: str | None = Field(None, description="default: the spec name")
    register_as: str | None = None
    log_images: NonNegInt = 4
    model_format: Literal["pt2", "pickle"] = Field(
        "pt2",
        description="the logged MLflow PyTorch model: pt2 (torch.export, no pickled code) or "
        "pickle (any input size, but loading it unpickles code)",
    )
    onnx: bool = Field(
        True,
        description="also export the student to ONNX (checked against PyTorch), log it with the "
        "model, and put its size and CPU latency on the registered version",
    )


class ExperimentSpec(StrictConfig):
    """One experiment: data, a student, optionally a teacher, a method, and how to run it."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    student: AnyModelConfig
    teacher: AnyTeacherSpec | None = Field(
        None, description="{model, weights}: a native detector; {hf: ...}: a Hugging Face one"
    )
    distill: DistillConfig = Field(default_factory=NoDistillConfig)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    mlflow: MlflowSpec = Field(default_factory=MlflowSpec)
    tune: TuneSpec | None = Field(None, description="Ray Tune sweep (`detrdistill sweep`)")
