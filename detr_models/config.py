"""Model configs: one pydantic class per architecture, the single definition of every model
hyperparameter. The experiment spec uses these classes as its `student` / `teacher.model`
sections, and model files store their `model_dump()`; facts derived from a config (feature
strides, query kind) are properties here, so nothing else decides them again."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

from detr_models.backbone import STRIDES, TORCHVISION_PREFIX, torchvision_weights

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Level = Literal["C2", "C3", "C4", "C5"]


class StrictConfig(BaseModel):
    """Base of every config and spec section: unknown keys are errors, assignments validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(StrictConfig):
    """Hyperparameters shared by the DETR-family architectures. Defaults are the papers' R-50
    settings; each architecture's class adds or changes its own, and declares `architecture`
    (the tag of the union, last in the field order that messages list)."""

    # upper bounds far above any published detector: a config read from a file can't ask for
    # a model that would not fit in memory
    num_classes: Annotated[int, Field(gt=0, le=100_000)] | None = Field(
        None, description="number of real classes; omitted = taken from the dataset"
    )
    backbone: Literal["tiny", "resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    backbone_weights: str | None = Field(
        None,
        description="ImageNet weights: torchvision:IMAGENET1K_V1 (downloaded by torchvision, "
        "cached) or a local torchvision ResNet state dict file",
    )
    weights: str | None = Field(
        None,
        description="start from these weights (a model file, models:/..., runs:/..., "
        "hf:<org>/<name> or a Hugging Face model folder); class heads that do not fit the "
        "dataset's classes start fresh",
    )
    frozen_stages: Annotated[int, Field(ge=-1, le=4)] = 1
    tiny_width: Annotated[int, Field(gt=0, le=1024)] = 32
    levels: list[Level] = Field(default_factory=lambda: ["C5"], min_length=1)
    hidden_dim: Annotated[int, Field(gt=0, le=4096)] = 256
    num_heads: Annotated[int, Field(gt=0, le=64)] = 8
    encoder_layers: Annotated[int, Field(ge=0, le=48)] = 6
    decoder_layers: Annotated[int, Field(gt=0, le=48)] = 6
    ffn_dim: Annotated[int, Field(gt=0, le=32768)] = 2048
    num_queries: Annotated[int, Field(gt=0, le=10_000)] = 100
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1
    # reference-exact options: `detrdistill import` sets them to what the official code does;
    # the defaults are this product's choices for training from scratch (see the README)
    position_order: Literal["xy", "yx"] = Field(
        "xy", description="channel blocks of the feature-map sine encoding; references: yx"
    )
    position_offset: Annotated[float, Field(ge=0, le=1)] = Field(
        0.5, description="subtracted from pixel indices before normalising; DETR: 0"
    )
    position_temperature: Annotated[float, Field(gt=0, le=1e6)] = 10000.0
    input_norm: Literal["masked_group", "group", "none"] = Field(
        "masked_group",
        description="norm after the input projections: masked_group ignores padding; "
        "references: none (DETR, Conditional, DAB), group (Deformable)",
    )

    @model_validator(mode="after")
    def _check_backbone_weights(self) -> ModelConfig:
        source = self.backbone_weights
        if source and source.startswith(TORCHVISION_PREFIX):
            if self.backbone == "tiny":
                raise ValueError("backbone_weights: the tiny backbone has no torchvision weights")
            try:
                torchvision_weights(self.backbone, source)
            except ValueError as err:
                raise ValueError(f"backbone_weights: {err}") from None
        return self

    @model_validator(mode="after")
    def _check_widths(self) -> ModelConfig:
        if self.hidden_dim % self.num_heads or self.hidden_dim % 4:
            raise ValueError(
                f"hidden_dim {self.hidden_dim} must be divisible by num_heads {self.num_heads} and by 4"
            )
        return self

    @property
    def query_kind(self) -> str:
        """'anchor' when queries carry anchor boxes (cxcywh), else 'position' (embeddings)."""
        return "position"

    @property
    def feature_strides(self) -> list[int]:
        """Stride of every encoder input level, finest first."""
        return [STRIDES[level] for level in sorted(self.levels, key=list(STRIDES).index)]

    def with_classes(self, num_classes: int) -> ModelConfig:
        """This config with `num_classes` filled in from the dataset when the spec omitted it."""
        if self.num_classes is not None:
            return self
        return self.model_copy(update={"num_classes": num_classes})


class DetrConfig(ModelConfig):
    """DETR: learned positional queries, absolute boxes."""

    architecture: Literal["detr"] = "detr"
    class_head: Literal["sigmoid", "softmax"] = Field(
        "sigmoid",
        description="sigmoid over K classes, or the reference softmax over K + no-object "
        "(imported DETR checkpoints; used as teachers and for eval/predict)",
    )


class ConditionalDetrConfig(ModelConfig):
    """Conditional DETR: reference points and conditional spatial queries."""

    architecture: Literal["conditional_detr"] = "conditional_detr"
    num_queries: Annotated[int, Field(gt=0, le=10_000)] = 300


class DabDetrConfig(ModelConfig):
    """DAB-DETR: anchor-box queries refined stage by stage."""

    architecture: Literal["dab_detr"] = "dab_detr"
    num_queries: Annotated[int, Field(gt=0, le=10_000)] = 300
    ffn_activation: Literal["relu", "prelu"] = Field(
        "relu", description="feed-forward activation; reference: prelu"
    )
    encoder_query_scale: bool = Field(
        False, description="encoder positions scaled per layer by an MLP; reference: true"
    )
    reference_anchor_update: bool = Field(
        False,
        description="next anchor from the un-normed layer output, anchor size unclamped; "
        "reference: true",
    )

    @property
    def query_kind(self) -> str:
        return "anchor"


class DeformableDetrConfig(ModelConfig):
    """Deformable DETR; `box_refine`, `two_stage` and `anchor_queries` (DAB-Deformable) are its
    variants. `num_feature_levels` counts the backbone levels plus extra stride-2 levels."""

    architecture: Literal["deformable_detr"] = "deformable_detr"
    levels: list[Level] = Field(default_factory=lambda: ["C3", "C4", "C5"], min_length=1)
    num_queries: Annotated[int, Field(gt=0, le=10_000)] = 300
    ffn_dim: Annotated[int, Field(gt=0, le=32768)] = 1024
    num_feature_levels: Annotated[int, Field(gt=0, le=8)] = 4
    num_points: Annotated[int, Field(gt=0, le=32)] = 4
    box_refine: bool = False
    two_stage: bool = False
    two_stage_queries: Literal["anchor", "reference", "mixed"] = Field(
        "anchor",
        description="two-stage queries: 'anchor' (top-k by best class, DAB-style positional "
        "query per layer), 'reference' (the official pos_trans split, class-agnostic "
        "ranking, static positional query) or 'mixed' (DINO: learned content queries on the "
        "selected anchors)",
    )
    anchor_queries: bool = False
    mask_extra_levels: bool = Field(
        True, description="zero padded pixels before the extra levels' convs; references: no"
    )
    look_forward_twice: bool = Field(
        False, description="DINO's box refinement gradient (needs box_refine)"
    )
    num_denoising: Annotated[int, Field(ge=0, le=10_000)] = Field(
        0, description="contrastive denoising queries in training (DINO: 100; anchor queries)"
    )
    label_noise_ratio: Annotated[float, Field(ge=0, le=1)] = 0.5
    box_noise_scale: Annotated[float, Field(ge=0, le=10)] = 1.0

    @model_validator(mode="after")
    def _check_dino(self) -> DeformableDetrConfig:
        if self.num_denoising and self.query_kind != "anchor":
            raise ValueError(
                "num_denoising: contrastive denoising needs anchor-box queries; set "
                "two_stage: true or anchor_queries: true"
            )
        if self.look_forward_twice and not self.box_refine:
            raise ValueError("look_forward_twice refines boxes stage by stage: set box_refine")
        if self.two_stage_queries == "mixed" and self.two_stage and self.anchor_queries:
            raise ValueError(
                "two_stage_queries 'mixed' brings its own content queries: set anchor_queries false"
            )
        return self

    @model_validator(mode="after")
    def _check_levels(self) -> DeformableDetrConfig:
        if self.two_stage and self.anchor_queries and self.two_stage_queries == "reference":
            raise ValueError(
                "two_stage_queries 'reference' builds its own positional queries: set "
                "anchor_queries false, or two_stage_queries 'anchor'"
            )
        if self.num_feature_levels < len(self.levels):
            raise ValueError(
                f"num_feature_levels {self.num_feature_levels} is less than the "
                f"{len(self.levels)} backbone levels {self.levels}"
            )
        return self

    @property
    def query_kind(self) -> str:
        return "anchor" if self.two_stage or self.anchor_queries else "position"

    @property
    def feature_strides(self) -> list[int]:
        """Backbone strides, then each extra level doubles the last."""
        strides = super().feature_strides
        extra = self.num_feature_levels - len(strides)
        return strides + [strides[-1] * 2 ** (i + 1) for i in range(extra)]


class RtDetrConfig(ModelConfig):
    """RT-DETRv2: a ResNet-vd backbone (`resnet18vd`..`resnet101vd`; the torchvision ResNets
    and `tiny` also work), the hybrid encoder (`encoder_layers` transformer layers on the
    coarsest level, CSP fusion with `expansion`), top-k query selection, a deformable decoder
    with box refinement. Defaults: the R-50 reference; R-18 uses expansion 0.5, 3 decoder
    layers."""

    architecture: Literal["rtdetr_v2"] = "rtdetr_v2"
    backbone: Literal[
        "tiny",
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet18vd",
        "resnet34vd",
        "resnet50vd",
        "resnet101vd",
    ] = "resnet50vd"
    frozen_stages: Annotated[int, Field(ge=-1, le=4)] = 0
    levels: list[Level] = Field(default_factory=lambda: ["C3", "C4", "C5"], min_length=2)
    num_queries: Annotated[int, Field(gt=0, le=10_000)] = 300
    encoder_layers: Annotated[int, Field(ge=0, le=48)] = 1
    encoder_ffn_dim: Annotated[int, Field(gt=0, le=32768)] = 1024
    ffn_dim: Annotated[int, Field(gt=0, le=32768)] = 1024
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0
    expansion: Annotated[float, Field(gt=0, le=8)] = 1.0
    num_points: Annotated[int, Field(gt=0, le=32)] | list[Annotated[int, Field(gt=0, le=32)]] = (
        Field(4, description="decoder sampling points per level: one count, or one per level")
    )
    num_denoising: Annotated[int, Field(ge=0, le=10_000)] = Field(
        100, description="contrastive denoising queries in training (0: none)"
    )
    pixels: Literal["unit", "imagenet"] = Field(
        "unit",
        description="what the network sees: 'unit' turns the pipeline's ImageNet-normalised "
        "images back to [0, 1] first (the reference RT-DETR's input), 'imagenet' keeps them",
    )
    label_noise_ratio: Annotated[float, Field(ge=0, le=1)] = 0.5
    box_noise_scale: Annotated[float, Field(ge=0, le=10)] = 1.0

    @model_validator(mode="after")
    def _check_points(self) -> RtDetrConfig:
        if isinstance(self.num_points, list) and len(self.num_points) != len(self.levels):
            raise ValueError(
                f"num_points {self.num_points}: one count per level ({len(self.levels)} levels)"
            )
        return self

    @property
    def query_kind(self) -> str:
        return "anchor"


ARCHITECTURES: dict[str, type[ModelConfig]] = {
    "detr": DetrConfig,
    "conditional_detr": ConditionalDetrConfig,
    "dab_detr": DabDetrConfig,
    "deformable_detr": DeformableDetrConfig,
    "rtdetr_v2": RtDetrConfig,
}

# what the official implementations (and Hugging Face transformers) do, per architecture:
# `detrdistill import` builds imported models with these, so they are exact by construction
REFERENCE_OPTIONS: dict[str, dict[str, Any]] = {
    "detr": {
        "position_order": "yx",
        "position_offset": 0.0,
        "input_norm": "none",
        "class_head": "softmax",
    },
    "conditional_detr": {"position_order": "yx", "position_offset": 0.0, "input_norm": "none"},
    "dab_detr": {
        "position_order": "yx",
        "position_offset": 0.0,
        "position_temperature": 20.0,
        "input_norm": "none",
        "ffn_activation": "prelu",
        "encoder_query_scale": True,
        "reference_anchor_update": True,
    },
    "deformable_detr": {
        "position_order": "yx",
        "position_offset": 0.5,
        "input_norm": "group",
        "mask_extra_levels": False,
        "two_stage_queries": "reference",
    },
    "rtdetr_v2": {},  # exact as built
}

AnyModelConfig = Annotated[
    DetrConfig | ConditionalDetrConfig | DabDetrConfig | DeformableDetrConfig | RtDetrConfig,
    Field(discriminator="architecture"),
]
_ANY = TypeAdapter(AnyModelConfig)

# fields every architecture's file carried before configs were split by architecture
_LEGACY_DEFORMABLE = {
    "num_feature_levels",
    "num_points",
    "box_refine",
    "two_stage",
    "anchor_queries",
}


def model_config_from_dict(data: Mapping[str, Any]) -> ModelConfig:
    """The config of `data["architecture"]`, validated. Raises ValueError naming an unknown
    architecture or unknown fields."""
    data = dict(data)
    name = data.get("architecture", "detr")
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[name]
    if name not in ("deformable_detr", "rtdetr_v2"):  # files before the split carry these
        for key in _LEGACY_DEFORMABLE & set(data):
            data.pop(key)
    unknown = sorted(set(data) - set(cls.model_fields))
    if unknown:
        raise ValueError(
            f"unknown model config field(s) {unknown}; known: {sorted(cls.model_fields)}"
        )
    return _ANY.validate_python({**data, "architecture": name})


def tiny_config(architecture: str = "detr", num_classes: int = 3, **overrides: Any) -> ModelConfig:
    """A few-hundred-thousand-parameter model for tests and CPU demos."""
    tiny = {
        "architecture": architecture,
        "num_classes": num_classes,
        "backbone": "tiny",
        "tiny_width": 16,
        "levels": ["C5"],
        "hidden_dim": 64,
        "num_heads": 4,
        "encoder_layers": 1,
        "decoder_layers": 2,
        "ffn_dim": 128,
        "num_queries": 16,
        "dropout": 0.0,
    }
    return model_config_from_dict({**tiny, **overrides})


class MatcherConfig(StrictConfig):
    """Hungarian matching costs (the keyword arguments of `HungarianMatcher`)."""

    cost_class: NonNegFloat = 2.0
    cost_bbox: NonNegFloat = 5.0
    cost_giou: NonNegFloat = 2.0


class LossConfig(StrictConfig):
    """Detection loss weights of `SetCriterion`: focal class, L1 and GIoU box terms, and an
    optional weight per decoder stage."""

    cls: NonNegFloat = 2.0
    bbox: NonNegFloat = 5.0
    giou: NonNegFloat = 2.0
    stage_weights: list[NonNegFloat] | None = Field(
        None, description="one weight per decoder stage"
    )
    classification: Literal["focal", "varifocal"] = Field(
        "focal",
        description="focal (sigmoid focal loss, alpha 0.25) or varifocal (IoU-aware, alpha "
        "0.75: RT-DETR's, with cls 1.0)",
    )
