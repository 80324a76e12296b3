"""How each Hugging Face DETR-family class is read: its per-stage predictions, the feature maps
that enter its decoder, and its initial queries, in this product's conventions (DetrOutput).

A reader uses what the model returns (`intermediate_*` outputs, its own heads applied to its own
intermediate hidden states); forward hooks capture only what no output carries: the decoder's
input queries, the projected feature maps, and the per-layer outputs of DETR and Conditional DETR
(whose `auxiliary_loss` switch would change the forward: it feeds normed states to the next
layer). No class is re-implemented: every tensor comes from the model's own modules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from detr_models.box_ops import inverse_sigmoid

# what a teacher can hand the distillation terms
STAGES = "per-stage logits and boxes"
FEATURES = "multi-scale feature maps"
QUERIES = "initial queries"


@dataclass
class Captured:
    """What the hooks saw during one forward."""

    maps: list[torch.Tensor] = field(default_factory=list)
    layers: list[torch.Tensor] = field(default_factory=list)
    decoder_inputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Stages:
    """One forward in product conventions (before class mapping): logits [L,B,Q,C] over the
    teacher's real classes (sigmoid space), boxes [L,B,Q,4] normalised cxcywh, hidden [L,B,Q,D],
    initial content [B,Q,D] and position ([B,Q,D] embeddings or [B,Q,4] anchors)."""

    logits: torch.Tensor
    boxes: torch.Tensor
    hidden: torch.Tensor
    init_content: torch.Tensor
    init_position: torch.Tensor


@dataclass(frozen=True)
class Family:
    """One group of HF classes read the same way."""

    name: str
    classes: tuple[str, ...]
    run: Callable[[nn.Module, torch.Tensor, torch.Tensor], Any]  # (model, pixels, mask) -> output
    read: Callable[[nn.Module, Any, Captured], Stages]
    projections: Callable[[nn.Module], list[nn.Module]]  # modules whose outputs are the maps
    layers: Callable[[nn.Module], list[nn.Module]] | None  # decoder layers hooked, if needed
    query_kind: Callable[[Any], str]  # from the HF config: "position" or "anchor"
    normalise: bool  # whether its image processor normalises by default (else [0, 1] pixels)
    unit: Callable[[Any], int] | None = None  # it reads sides that are multiples of unit(config)
    square: bool = False  # it reads only square images correctly
    provides: frozenset[str] = frozenset({STAGES, FEATURES, QUERIES})


def _softmax_as_logits(scores: torch.Tensor) -> torch.Tensor:
    """A softmax head's K real-class probabilities (the no-object column dropped) as logits, so
    that sigmoid(result) gives those probabilities back."""
    probs = scores.float().softmax(-1)[..., :-1].clamp(1e-6, 1 - 1e-6)
    return torch.logit(probs)


def _base_forward(model: nn.Module, pixels: torch.Tensor, mask: torch.Tensor) -> Any:
    return model.model(pixel_values=pixels, pixel_mask=mask)


def _full_forward(model: nn.Module, pixels: torch.Tensor, mask: torch.Tensor) -> Any:
    return model(pixel_values=pixels, pixel_mask=mask)


def _layer_states(model: nn.Module, out: Any, captured: Captured) -> torch.Tensor:
    """DETR / Conditional DETR: the decoder's final norm of each layer's output, [L,B,Q,D]; the
    last stage is the model's own last hidden state."""
    norm = model.model.decoder.layernorm
    states = [norm(h) for h in captured.layers[:-1]] + [out.last_hidden_state]
    return torch.stack(states)


def _read_detr(model: nn.Module, out: Any, captured: Captured) -> Stages:
    hidden = _layer_states(model, out, captured)
    logits = _softmax_as_logits(model.class_labels_classifier(hidden))
    boxes = model.bbox_predictor(hidden).sigmoid()
    position = model.model.query_position_embeddings.weight
    batch = hidden.shape[1]
    position = position[None].expand(batch, -1, -1)
    return Stages(logits, boxes, hidden, torch.zeros_like(position), position)


def _read_conditional(model: nn.Module, out: Any, captured: Captured) -> Stages:
    hidden = _layer_states(model, out, captured)
    logits = model.class_labels_classifier(hidden)
    reference = inverse_sigmoid(out.reference_points).transpose(0, 1)  # [B,Q,2]
    deltas = model.bbox_predictor(hidden)
    boxes = torch.cat([deltas[..., :2] + reference, deltas[..., 2:]], -1).sigmoid()
    position = model.model.query_position_embeddings.weight[None].expand(hidden.shape[1], -1, -1)
    return Stages(logits, boxes, hidden, torch.zeros_like(position), position)


def _read_dab(model: nn.Module, out: Any, captured: Captured) -> Stages:
    hidden = out.intermediate_hidden_states  # [L,B,Q,D]
    logits = model.class_embed(hidden)
    deltas = model.bbox_predictor(hidden)
    dim = model.config.query_dim
    reference = inverse_sigmoid(out.reference_points)
    boxes = torch.cat([deltas[..., :dim] + reference, deltas[..., dim:]], -1).sigmoid()
    anchors = model.model.query_refpoint_embeddings.weight.sigmoid()
    anchors = anchors[None].expand(hidden.shape[1], -1, -1)
    content = anchors.new_zeros(*anchors.shape[:2], hidden.shape[-1])
    return Stages(logits, boxes, hidden, content, anchors)


def _read_deformable(model: nn.Module, out: Any, captured: Captured) -> Stages:
    hidden = out.intermediate_hidden_states.transpose(0, 1)  # [L,B,Q,D]
    inter = out.intermediate_reference_points.transpose(0, 1)  # [L,B,Q,R]
    references = [out.init_reference_points, *inter[:-1]]
    logits, boxes = [], []
    for level, reference in enumerate(references):
        logits.append(model.class_embed[level](hidden[level]))
        delta = model.bbox_embed[level](hidden[level])
        reference = inverse_sigmoid(reference)
        width = reference.shape[-1]
        boxes.append(torch.cat([delta[..., :width] + reference, delta[..., width:]], -1).sigmoid())
    inputs = captured.decoder_inputs
    content = inputs["inputs_embeds"]
    if model.config.two_stage:
        position = inputs["reference_points"]  # [B,Q,4] anchors, already sigmoid
    else:
        position = inputs["object_queries_position_embeddings"]
    return Stages(torch.stack(logits), torch.stack(boxes), hidden, content, position)


def _read_rtdetr(model: nn.Module, out: Any, captured: Captured) -> Stages:
    logits = out.intermediate_logits.transpose(0, 1)  # [L,B,Q,C]
    boxes = out.intermediate_reference_points.transpose(0, 1)
    hidden = out.intermediate_hidden_states.transpose(0, 1)  # RT-DETR stacks them batch-first
    inputs = captured.decoder_inputs
    return Stages(
        logits, boxes, hidden, inputs["inputs_embeds"], inputs["reference_points"].sigmoid()
    )


def _read_dfine(model: nn.Module, out: Any, captured: Captured) -> Stages:
    """D-FINE / DEIMv2: index 0 of the intermediate outputs is the pre-box head's first guess,
    then one entry per decoder layer (the decoder computes them all: see `_all_stages`)."""
    logits = out.intermediate_logits.transpose(0, 1)[1:]
    boxes = out.intermediate_reference_points.transpose(0, 1)[1:]
    hidden = out.intermediate_hidden_states  # D-FINE stacks them stage-first
    inputs = captured.decoder_inputs
    return Stages(
        logits, boxes, hidden, inputs["inputs_embeds"], inputs["reference_points"].sigmoid()
    )


def _read_lwdetr(model: nn.Module, out: Any, captured: Captured) -> Stages:
    """LW-DETR / RF-DETR: every layer refines the same initial boxes (no sigmoid: the models'
    own box parametrisation, reproduced here from the shared `init_reference_points`)."""
    hidden = out.intermediate_hidden_states  # [L,B,Q,D]
    reference = out.init_reference_points  # [B,Q,4] cxcywh
    delta = model.bbox_embed(hidden)
    centre = delta[..., :2] * reference[..., 2:] + reference[..., :2]
    size = delta[..., 2:].exp() * reference[..., 2:]
    inputs = captured.decoder_inputs
    return Stages(
        model.class_embed(hidden),
        torch.cat([centre, size], -1),
        hidden,
        inputs["inputs_embeds"],
        inputs["reference_points"],
    )


def _all_stages(model: nn.Module, pixels: torch.Tensor, mask: torch.Tensor) -> Any:
    """D-FINE's decoder keeps only its `eval_idx` layer's predictions in eval mode; its own
    `training` flag (not its layers': no dropout, no denoising) makes it return every layer's."""
    decoder = model.model.decoder
    decoder.training = True
    try:
        return model(pixel_values=pixels, pixel_mask=mask)
    finally:
        decoder.training = False


def _lwdetr_unit(config: Any) -> int:
    backbone = config.backbone_config
    return backbone.patch_size * math.isqrt(backbone.num_windows)


def _rfdetr_unit(config: Any) -> int:
    backbone = config.backbone_config
    return backbone.patch_size * backbone.num_windows


def _layers(model: nn.Module) -> list[nn.Module]:
    return list(model.model.decoder.layers)


FAMILIES = (
    Family(
        "detr",
        ("DetrForObjectDetection",),
        _base_forward,
        _read_detr,
        lambda m: [m.model.input_projection],
        _layers,
        lambda c: "position",
        normalise=True,
    ),
    Family(
        "conditional_detr",
        ("ConditionalDetrForObjectDetection",),
        _base_forward,
        _read_conditional,
        lambda m: [m.model.input_projection],
        _layers,
        lambda c: "position",
        normalise=True,
    ),
    Family(
        "dab_detr",
        ("DabDetrForObjectDetection",),
        _base_forward,
        _read_dab,
        lambda m: [m.model.input_projection],
        None,
        lambda c: "anchor",
        normalise=True,
    ),
    Family(
        "deformable_detr",
        ("DeformableDetrForObjectDetection",),
        _full_forward,
        _read_deformable,
        lambda m: list(m.model.input_proj),
        None,
        lambda c: "anchor" if c.two_stage else "position",
        normalise=True,
    ),
    Family(
        "rtdetr",
        ("RTDetrForObjectDetection", "RTDetrV2ForObjectDetection"),
        _full_forward,
        _read_rtdetr,
        lambda m: list(m.model.decoder_input_proj),
        None,
        lambda c: "anchor",
        normalise=False,
        unit=lambda c: 32,  # its FPN upsamples by 2 and concatenates
    ),
    Family(
        "d_fine",
        ("DFineForObjectDetection", "Deimv2ForObjectDetection"),
        _all_stages,
        _read_dfine,
        lambda m: list(m.model.decoder_input_proj),
        None,
        lambda c: "anchor",
        normalise=False,
        unit=lambda c: 32,
    ),
    Family(
        "lw_detr",
        ("LwDetrForObjectDetection",),
        _full_forward,
        _read_lwdetr,
        lambda m: [m.model.backbone.projector],
        None,
        lambda c: "anchor",
        normalise=True,
        unit=_lwdetr_unit,
    ),
    Family(
        "rf_detr",
        ("RfDetrForObjectDetection",),
        _full_forward,
        _read_lwdetr,
        lambda m: [m.model.backbone.projector],
        None,
        lambda c: "anchor",
        normalise=True,
        unit=_rfdetr_unit,
        square=True,
    ),
)


def family_of(class_name: str) -> Family | None:
    for family in FAMILIES:
        if class_name in family.classes:
            return family
    return None


def supported_classes() -> list[str]:
    return [name for family in FAMILIES for name in family.classes]
