"""`build_model(config)`: a plain dict of builders by architecture name, no registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from torch import nn

from detr_models.backbone import build_backbone
from detr_models.conditional_decoder import ConditionalDecoder, DabDecoder
from detr_models.config import (
    DabDetrConfig,
    DeformableDetrConfig,
    DetrConfig,
    ModelConfig,
    RtDetrConfig,
    model_config_from_dict,
)
from detr_models.deformable import (
    DeformableDecoder,
    DeformableEncoder,
    deformable_box_heads,
)
from detr_models.denoising_queries import DenoisingQueries
from detr_models.detector import Detector
from detr_models.detr_decoder import DetrDecoder
from detr_models.encoder import TransformerEncoder
from detr_models.hybrid_encoder import HybridEncoder
from detr_models.layers import MLP, PerStage, SoftmaxClassHead
from detr_models.position import PositionEmbeddingSine
from detr_models.proposals import ReferenceProposals, TwoStageProposals
from detr_models.resnet_vd import ResNetVd
from detr_models.rtdetr import RtDetr
from detr_models.rtdetr_decoder import RtDetrDecoder


def _box_head(c: ModelConfig, zero_last: bool) -> MLP:
    head = MLP(c.hidden_dim, c.hidden_dim, 4, 3)
    if zero_last:  # start exactly at the reference / anchor
        nn.init.zeros_(head.layers[-1].weight)
        nn.init.zeros_(head.layers[-1].bias)
    return head


def _assemble(
    c: ModelConfig,
    decoder_cls: Callable[..., nn.Module],
    zero_box_head: bool,
    class_head: nn.Module | None = None,
    encoder_options: dict[str, Any] | None = None,
) -> Detector:
    backbone = build_backbone(
        c.backbone, c.levels, c.frozen_stages, c.backbone_weights, c.tiny_width
    )
    encoder = TransformerEncoder(
        c.hidden_dim, c.num_heads, c.ffn_dim, c.encoder_layers, c.dropout, **(encoder_options or {})
    )
    decoder = decoder_cls(
        c.hidden_dim,
        c.num_heads,
        c.ffn_dim,
        c.decoder_layers,
        c.dropout,
        _box_head(c, zero_box_head),
    )
    return _detector(c, backbone, encoder, decoder, class_head=class_head)


def _detector(
    c: ModelConfig, backbone: nn.Module, encoder: nn.Module, decoder: nn.Module, **options: Any
) -> Detector:
    """The Detector of `c`, with the options every config carries (position encoding, norms)."""
    position = PositionEmbeddingSine(
        c.hidden_dim // 2, c.position_temperature, c.position_order, c.position_offset
    )
    return Detector(
        backbone,
        encoder,
        decoder,
        c.num_classes,
        c.hidden_dim,
        c.num_queries,
        c.query_kind,
        position=position,
        input_norm=c.input_norm,
        **options,
    )


def build_detr(c: DetrConfig) -> Detector:
    """DETR: learned positional queries, absolute boxes."""
    head = SoftmaxClassHead(c.hidden_dim, c.num_classes) if c.class_head == "softmax" else None
    return _assemble(c, DetrDecoder, zero_box_head=False, class_head=head)


def build_conditional_detr(c: ModelConfig) -> Detector:
    """Conditional DETR: reference points and conditional spatial queries."""
    decoder = partial(ConditionalDecoder, order=c.position_order)
    return _assemble(c, decoder, zero_box_head=False)


def build_dab_detr(c: DabDetrConfig) -> Detector:
    """DAB-DETR: anchor-box queries refined stage by stage."""
    decoder = partial(
        DabDecoder,
        order=c.position_order,
        activation=c.ffn_activation,
        reference_update=c.reference_anchor_update,
    )
    encoder = {"activation": c.ffn_activation, "query_scale": c.encoder_query_scale}
    return _assemble(c, decoder, zero_box_head=True, encoder_options=encoder)


def build_deformable_detr(c: DeformableDetrConfig) -> Detector:
    """Deformable DETR with its variants: box refinement, two-stage, DAB-Deformable anchors."""
    extra = c.num_feature_levels - len(c.levels)  # validated >= 0 by the config
    backbone = build_backbone(
        c.backbone, c.levels, c.frozen_stages, c.backbone_weights, c.tiny_width
    )
    levels, points = c.num_feature_levels, c.num_points
    encoder = DeformableEncoder(
        c.hidden_dim, c.num_heads, c.ffn_dim, c.encoder_layers, c.dropout, levels, points
    )
    anchors = c.query_kind == "anchor"
    reference_two_stage = c.two_stage and c.two_stage_queries == "reference"
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
        static_position=reference_two_stage,
        look_forward_twice=c.look_forward_twice,
    )
    if c.box_refine:
        class_head = PerStage(
            nn.Linear(c.hidden_dim, c.num_classes) for _ in range(c.decoder_layers)
        )
    else:
        class_head = nn.Linear(c.hidden_dim, c.num_classes)
    proposals = None
    if c.two_stage:
        if reference_two_stage:
            proposals = ReferenceProposals(c.hidden_dim, c.num_classes)
        else:
            mixed = c.num_queries if c.two_stage_queries == "mixed" else 0
            proposals = TwoStageProposals(c.hidden_dim, c.num_classes, mixed)
    return _detector(
        c,
        backbone,
        encoder,
        decoder,
        extra_levels=extra,
        learned_content=True,
        class_head=class_head,
        proposals=proposals,
        mask_extra_levels=c.mask_extra_levels,
        denoising=_denoising(c),
    )


def build_rtdetr(c: RtDetrConfig) -> RtDetr:
    """RT-DETRv2: ResNet-vd, hybrid encoder, query selection, refining deformable decoder."""
    if c.backbone.endswith("vd"):
        backbone = ResNetVd(int(c.backbone[6:-2]), c.levels, c.frozen_stages)
    else:
        backbone = build_backbone(
            c.backbone, c.levels, c.frozen_stages, c.backbone_weights, c.tiny_width
        )
    encoder = HybridEncoder(
        list(backbone.channels),
        c.hidden_dim,
        c.num_heads,
        c.encoder_ffn_dim,
        c.encoder_layers,
        c.dropout,
        c.expansion,
        c.position_temperature,
    )
    levels = len(c.levels)
    decoder = RtDetrDecoder(
        c.hidden_dim, c.num_heads, c.ffn_dim, c.decoder_layers, c.dropout, levels, c.num_points
    )
    denoising = _denoising(c)
    return RtDetr(
        backbone,
        encoder,
        decoder,
        c.num_classes,
        c.hidden_dim,
        c.num_queries,
        denoising,
        unit_pixels=c.pixels == "unit",
    )


def _denoising(c: DeformableDetrConfig | RtDetrConfig) -> DenoisingQueries | None:
    """The contrastive denoising group of a config that asks for one."""
    if not c.num_denoising:
        return None
    return DenoisingQueries(
        c.num_classes, c.hidden_dim, c.num_denoising, c.label_noise_ratio, c.box_noise_scale
    )


BUILDERS: dict[str, Callable[[Any], nn.Module]] = {
    "detr": build_detr,
    "conditional_detr": build_conditional_detr,
    "dab_detr": build_dab_detr,
    "deformable_detr": build_deformable_detr,
    "rtdetr_v2": build_rtdetr,
}


def build_model(config: ModelConfig | Mapping[str, Any]) -> nn.Module:
    """Build the detector named by `config.architecture` (a config, or its dict)."""
    if not isinstance(config, ModelConfig):
        config = model_config_from_dict(config)
    if config.num_classes is None:
        raise ValueError(
            "num_classes is unknown: set it in the config or fill it from the dataset "
            "(config.with_classes(k))"
        )
    return BUILDERS[config.architecture](config)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare detector inside a (Distributed)DataParallel wrapper (itself when unwrapped)."""
    return model.module if hasattr(model, "module") else model
