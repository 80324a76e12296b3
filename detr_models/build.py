"""`build_model(config)`: a plain dict of builders by architecture name, no registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from torch import nn

from detr_models.backbone import build_backbone
from detr_models.conditional_decoder import ConditionalDecoder, DabDecoder
from detr_models.deformable import (
    DeformableDecoder,
    DeformableEncoder,
    TwoStageProposals,
    deformable_box_heads,
)
from detr_models.detector import Detector
from detr_models.detr_decoder import DetrDecoder
from detr_models.encoder import TransformerEncoder
from detr_models.layers import MLP, PerStage


@dataclass
class ModelConfig:
    """Every hyperparameter the papers vary. Defaults are the papers' R-50 settings."""

    architecture: str = "detr"
    num_classes: int = 80
    backbone: str = "resnet50"
    backbone_weights: str | None = None
    frozen_stages: int = 1
    tiny_width: int = 32
    levels: list[str] = field(default_factory=lambda: ["C5"])
    hidden_dim: int = 256
    num_heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    ffn_dim: int = 2048
    num_queries: int = 100
    dropout: float = 0.1
    # Deformable DETR only
    num_feature_levels: int = 4
    num_points: int = 4
    box_refine: bool = False
    two_stage: bool = False
    anchor_queries: bool = False

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(f"unknown model config field(s) {unknown}; known: {sorted(known)}")
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tiny_config(architecture: str = "detr", num_classes: int = 3, **overrides: Any) -> ModelConfig:
    """A few-hundred-thousand-parameter model for tests and CPU demos."""
    config = ModelConfig(
        architecture=architecture,
        num_classes=num_classes,
        backbone="tiny",
        tiny_width=16,
        hidden_dim=64,
        num_heads=4,
        encoder_layers=1,
        decoder_layers=2,
        ffn_dim=128,
        num_queries=16,
        dropout=0.0,
    )
    return ModelConfig.from_dict({**config.to_dict(), **overrides})


def _box_head(c: ModelConfig, zero_last: bool) -> MLP:
    head = MLP(c.hidden_dim, c.hidden_dim, 4, 3)
    if zero_last:  # start exactly at the reference / anchor
        nn.init.zeros_(head.layers[-1].weight)
        nn.init.zeros_(head.layers[-1].bias)
    return head


def _assemble(c: ModelConfig, decoder_cls: type, query_kind: str, zero_box_head: bool) -> Detector:
    backbone = build_backbone(
        c.backbone, c.levels, c.frozen_stages, c.backbone_weights, c.tiny_width
    )
    encoder = TransformerEncoder(c.hidden_dim, c.num_heads, c.ffn_dim, c.encoder_layers, c.dropout)
    decoder = decoder_cls(
        c.hidden_dim,
        c.num_heads,
        c.ffn_dim,
        c.decoder_layers,
        c.dropout,
        _box_head(c, zero_box_head),
    )
    return Detector(
        backbone, encoder, decoder, c.num_classes, c.hidden_dim, c.num_queries, query_kind
    )


def build_detr(c: ModelConfig) -> Detector:
    """DETR: learned positional queries, absolute boxes."""
    return _assemble(c, DetrDecoder, "position", zero_box_head=False)


def build_conditional_detr(c: ModelConfig) -> Detector:
    """Conditional DETR: reference points and conditional spatial queries."""
    return _assemble(c, ConditionalDecoder, "position", zero_box_head=False)


def build_dab_detr(c: ModelConfig) -> Detector:
    """DAB-DETR: anchor-box queries refined stage by stage."""
    return _assemble(c, DabDecoder, "anchor", zero_box_head=True)


def build_deformable_detr(c: ModelConfig) -> Detector:
    """Deformable DETR with its variants: box refinement, two-stage, DAB-Deformable anchors."""
    extra = c.num_feature_levels - len(c.levels)
    if extra < 0:
        raise ValueError(
            f"num_feature_levels {c.num_feature_levels} is less than the {len(c.levels)} backbone levels"
        )
    backbone = build_backbone(
        c.backbone, c.levels, c.frozen_stages, c.backbone_weights, c.tiny_width
    )
    levels, points = c.num_feature_levels, c.num_points
    encoder = DeformableEncoder(
        c.hidden_dim, c.num_heads, c.ffn_dim, c.encoder_layers, c.dropout, levels, points
    )
    anchors = c.anchor_queries or c.two_stage
    box_head = deformable_box_heads(
        c.hidden_dim, c.decoder_layers, c.box_refine, start_small=not anchors
    )
    decoder = DeformableDecoder(
        c.hidden_dim,
        c.num_heads,
        c.ffn_dim,
        c.decoder_layers,
        c.dropout,
        box_head,
        levels,
        points,
        anchor_queries=anchors,
        box_refine=c.box_refine,
    )
    if c.box_refine:
        class_head = PerStage(
            nn.Linear(c.hidden_dim, c.num_classes) for _ in range(c.decoder_layers)
        )
    else:
        class_head = nn.Linear(c.hidden_dim, c.num_classes)
    proposals = TwoStageProposals(c.hidden_dim, c.num_classes) if c.two_stage else None
    return Detector(
        backbone,
        encoder,
        decoder,
        c.num_classes,
        c.hidden_dim,
        c.num_queries,
        "anchor" if anchors else "position",
        extra_levels=extra,
        learned_content=True,
        class_head=class_head,
        proposals=proposals,
    )


BUILDERS: dict[str, Callable[[ModelConfig], nn.Module]] = {
    "detr": build_detr,
    "conditional_detr": build_conditional_detr,
    "dab_detr": build_dab_detr,
    "deformable_detr": build_deformable_detr,
}


def build_model(config: ModelConfig | Mapping[str, Any]) -> nn.Module:
    """Build the detector named by `config.architecture`."""
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(config)
    if config.architecture not in BUILDERS:
        raise ValueError(
            f"unknown architecture {config.architecture!r}; choose one of {sorted(BUILDERS)}"
        )
    if config.hidden_dim % config.num_heads or config.hidden_dim % 4:
        raise ValueError(
            f"hidden_dim {config.hidden_dim} must be divisible by num_heads {config.num_heads} and by 4"
        )
    return BUILDERS[config.architecture](config)
