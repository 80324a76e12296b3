"""The official repos' `.pth` checkpoints (facebookresearch/detr, fundamentalvision/
Deformable-DETR, Atten4Vis/ConditionalDETR, IDEA-Research/DAB-DETR): read without running code (tensors, plus the training `args` namespace the
Deformable DETR releases carry), the config inferred from the weights' shapes and those args,
and loaded into our reference-exact model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from detr_models.config import REFERENCE_OPTIONS, model_config_from_dict
from detr_models.pretrained.coco_names import coco_slot_names
from detr_models.pretrained.hf_config import UnsupportedCheckpoint
from detr_models.pretrained.hf_folder import Imported, ImportError_, loaded
from detr_models.pretrained.official_keys import count_layers, official_to_ours

_RESNETS = {(2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50"}


def read_official(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, training args) of an official checkpoint; nothing but tensors, numbers,
    strings and an `argparse.Namespace` (a plain attribute holder) is accepted."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ImportError_(
            f"{path}: not a readable checkpoint of tensors ({type(err).__name__}); files that "
            "hold other Python objects are refused, never unpickled"
        ) from None
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        args = payload.get("args")
        return payload["model"], vars(args) if isinstance(args, argparse.Namespace) else {}
    if isinstance(payload, dict) and payload and all(torch.is_tensor(v) for v in payload.values()):
        return payload, {}
    raise ImportError_(f"{path}: expected {{'model': state dict, ...}} or a bare state dict")


def official_architecture(state: dict[str, torch.Tensor]) -> str:
    """Which official model a state dict is, from the names only that one has."""
    if "transformer.level_embed" in state:
        return "deformable_detr"
    if "refpoint_embed.weight" in state:
        return "dab_detr"
    if "transformer.decoder.query_scale.layers.0.weight" in state:
        return "conditional_detr"
    if "transformer.decoder.layers.0.multihead_attn.in_proj_weight" in state:
        return "detr"
    raise UnsupportedCheckpoint(
        "not an official DETR, Conditional DETR, DAB-DETR or Deformable DETR checkpoint "
        "(none of their characteristic weight names is present)"
    )


def config_from_official(state: dict[str, torch.Tensor], args: dict[str, Any]):
    """(our reference-exact config, class names) inferred from an official state dict."""
    architecture = official_architecture(state)
    deformable = architecture == "deformable_detr"
    two_stage = "transformer.enc_output.weight" in state
    heads = int(args.get("nheads", 8))
    data: dict[str, Any] = {
        "architecture": architecture,
        "backbone": _backbone(state),
        "hidden_dim": args.get("hidden_dim", _count_dim(state, deformable)),
        "num_heads": heads,
        "encoder_layers": count_layers(state, "transformer.encoder.layers."),
        "decoder_layers": count_layers(state, "transformer.decoder.layers."),
        "ffn_dim": state["transformer.encoder.layers.0.linear1.weight"].shape[0],
        "dropout": float(args.get("dropout", 0.1)),
        "levels": ["C5"],
    }
    if deformable:
        data.update(_deformable(state, args, heads, two_stage))
    elif architecture == "detr":
        data.update(
            num_queries=state["query_embed.weight"].shape[0],
            num_classes=state["class_embed.weight"].shape[0] - 1,  # the last is no-object
        )
    else:
        queries = "refpoint_embed.weight" if architecture == "dab_detr" else "query_embed.weight"
        data.update(
            num_queries=state[queries].shape[0], num_classes=state["class_embed.weight"].shape[0]
        )
    data.update(REFERENCE_OPTIONS[architecture])
    if architecture == "dab_detr":
        data.update(_dab(state, args))
    try:
        config = model_config_from_dict(data)
    except ValueError as err:
        raise UnsupportedCheckpoint(f"config does not translate: {err}") from None
    return config, coco_slot_names(config.num_classes)


def _deformable(
    state: dict[str, torch.Tensor], args: dict[str, Any], heads: int, two_stage: bool
) -> dict[str, Any]:
    levels = state["transformer.level_embed"].shape[0]
    if levels == 1:
        raise UnsupportedCheckpoint("single-level Deformable DETR is not importable yet")
    weights = state["transformer.encoder.layers.0.self_attn.attention_weights.weight"]
    refine = "transformer.decoder.bbox_embed.0.layers.0.weight" in state
    if two_stage and not refine:
        raise UnsupportedCheckpoint(
            "two-stage Deformable DETR without box refinement is not importable (its "
            "encoder shares the decoder's heads); two-stage with box refinement is"
        )
    return {
        "levels": ["C3", "C4", "C5"],
        "num_feature_levels": levels,
        "num_points": weights.shape[0] // (heads * levels),
        "box_refine": refine,
        "two_stage": two_stage,
        "num_queries": (
            int(args.get("num_queries", 300)) if two_stage else state["query_embed.weight"].shape[0]
        ),
        "num_classes": state["class_embed.0.weight"].shape[0],
    }


def _dab(state: dict[str, torch.Tensor], args: dict[str, Any]) -> dict[str, Any]:
    """DAB-DETR's variants this product represents (the released defaults), else a refusal."""
    if "transformer.patterns.weight" in state or int(args.get("num_patterns", 0) or 0):
        raise UnsupportedCheckpoint("DAB-DETR with num_patterns > 0 is not supported")
    if "transformer.decoder.layers.1.ca_qpos_proj.weight" in state:
        raise UnsupportedCheckpoint("DAB-DETR with keep_query_pos is not supported")
    if state["refpoint_embed.weight"].shape[1] != 4:
        raise UnsupportedCheckpoint("DAB-DETR with query_dim != 4 is not supported")
    height, width = args.get("pe_temperatureH", 20), args.get("pe_temperatureW", 20)
    if height != width:
        raise UnsupportedCheckpoint(
            f"pe_temperatureH {height} != pe_temperatureW {width}: one temperature only"
        )
    prelu = "transformer.encoder.layers.0.activation.weight" in state
    return {"position_temperature": float(height), "ffn_activation": "prelu" if prelu else "relu"}


def import_official(path: str | Path) -> Imported:
    """Our model from an official `.pth`, weights loaded strictly."""
    state, args = read_official(path)
    try:
        config, names = config_from_official(state, args)
    except (UnsupportedCheckpoint, KeyError) as err:
        raise ImportError_(f"{path}: {err}") from None
    refine = getattr(config, "box_refine", False)
    converted, unmapped = official_to_ours(state, config.architecture, config.hidden_dim, refine)
    return loaded(config, names, converted, unmapped, f"{path} (as its shapes describe it)")


def _count_dim(state: dict[str, torch.Tensor], deformable: bool) -> int:
    key = "input_proj.0.0.weight" if deformable else "input_proj.weight"
    return state[key].shape[0]


def _backbone(state: dict[str, torch.Tensor]) -> str:
    blocks = count_layers(state, "backbone.0.body.layer3.")
    bottleneck = "backbone.0.body.layer1.0.conv3.weight" in state
    if bottleneck and blocks == 23:
        return "resnet101"
    name = _RESNETS.get((blocks, bottleneck))
    if name is None:
        raise UnsupportedCheckpoint(
            f"backbone with {blocks} layer3 blocks is not a ResNet-18/34/50/101"
        )
    return name
