"""The official repos' `.pth` checkpoints (facebookresearch/detr, fundamentalvision/
Deformable-DETR, Atten4Vis/ConditionalDETR, IDEA-Research/DAB-DETR, lyuwenyu/RT-DETR's
RT-DETRv2): read without running code (tensors, plus the training `args` namespace the
Deformable DETR releases carry), the config inferred from the weights' shapes and those args,
and loaded into our reference-exact model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from detr_models.config import REFERENCE_OPTIONS, model_config_from_dict
from detr_models.pretrained import official_keys_rtdetr
from detr_models.pretrained.coco_names import coco_label_names, coco_slot_names
from detr_models.pretrained.hf_config import UnsupportedCheckpoint
from detr_models.pretrained.hf_folder import Imported, ImportError_, loaded
from detr_models.pretrained.official_keys import count_layers, official_to_ours
from detr_models.resnet_vd import RESNET_VD_LAYOUTS, STAGE_WIDTHS

_RESNETS = {(2, False): "resnet18", (6, False): "resnet34", (6, True): "resnet50"}


def read_official(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """(state dict, training args, which weights) of an official checkpoint; nothing but
    tensors, numbers, strings and an `argparse.Namespace` (a plain attribute holder) is
    accepted. A training checkpoint's EMA weights (`{'ema': {'module': ...}}`, RT-DETR's
    solver) are preferred to its raw `model` weights: they are what the releases evaluate."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ImportError_(
            f"{path}: not a readable checkpoint of tensors ({type(err).__name__}); files that "
            "hold other Python objects are refused, never unpickled"
        ) from None
    if isinstance(payload, dict):
        args = payload.get("args")
        args = vars(args) if isinstance(args, argparse.Namespace) else {}
        ema = payload.get("ema")
        if isinstance(ema, dict) and isinstance(ema.get("module"), dict):
            return ema["module"], args, "ema"
        if isinstance(payload.get("model"), dict):
            return payload["model"], args, "model"
    if isinstance(payload, dict) and payload and all(torch.is_tensor(v) for v in payload.values()):
        return payload, {}, "state dict"
    raise ImportError_(
        f"{path}: expected {{'model': state dict, ...}}, {{'ema': {{'module': state dict}}, "
        "...}} or a bare state dict"
    )


def official_architecture(state: dict[str, torch.Tensor]) -> str:
    """Which official model a state dict is, from the names only that one has."""
    if "decoder.dec_score_head.0.weight" in state:
        return "rtdetr_v2"
    if "transformer.level_embed" in state:
        return "deformable_detr"
    if "refpoint_embed.weight" in state:
        return "dab_detr"
    if "transformer.decoder.query_scale.layers.0.weight" in state:
        return "conditional_detr"
    if "transformer.decoder.layers.0.multihead_attn.in_proj_weight" in state:
        return "detr"
    raise UnsupportedCheckpoint(
        "not an official DETR, Conditional DETR, DAB-DETR, Deformable DETR or RT-DETRv2 checkpoint "
        "(none of their characteristic weight names is present)"
    )


def config_from_official(state: dict[str, torch.Tensor], args: dict[str, Any]):
    """(our reference-exact config, class names) inferred from an official state dict."""
    architecture = official_architecture(state)
    if architecture == "rtdetr_v2":
        data = _rtdetr(state, args)
        try:
            config = model_config_from_dict(data)
        except ValueError as err:
            raise UnsupportedCheckpoint(f"config does not translate: {err}") from None
        if config.num_classes == 80:  # the releases' labels: COCO's categories in id order
            return config, coco_label_names()
        return config, [f"class_{i}" for i in range(config.num_classes)]
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


def _rtdetr(state: dict[str, torch.Tensor], args: dict[str, Any]) -> dict[str, Any]:
    """RT-DETRv2's config from its weights' shapes (lyuwenyu/RT-DETR, rtdetrv2_pytorch), or a
    refusal naming the variant this product does not represent."""
    if "encoder.input_proj.0.0.weight" in state:
        raise UnsupportedCheckpoint(
            "an RT-DETR (v1) checkpoint (HybridEncoder version v1 names): only RT-DETRv2 "
            "releases (rtdetrv2_pytorch) import"
        )
    if "decoder.tgt_embed.weight" in state:
        raise UnsupportedCheckpoint(
            "RT-DETRv2 with learn_query_content (learnt initial queries, decoder.tgt_embed) "
            "is not supported: queries are the selected encoder tokens"
        )
    if count_layers(state, "encoder.encoder.") != 1:
        raise UnsupportedCheckpoint(
            "RT-DETRv2 with attention on several levels (use_encoder_idx) is not supported: "
            "on the coarsest level only"
        )
    dim, feat = state["decoder.input_proj.0.conv.weight"].shape[:2]
    width = state["encoder.input_proj.0.conv.weight"].shape[0]
    if width != dim or feat != dim:
        raise UnsupportedCheckpoint(
            f"encoder width {width} != decoder width {dim} (as the R-101 release: 384 vs 256) "
            "is not supported: one width only"
        )
    backbone, stage_widths = _resnet_vd(state)
    levels = count_layers(state, "decoder.input_proj.")
    in_channels = [
        state[f"encoder.input_proj.{i}.conv.weight"].shape[1]
        for i in range(count_layers(state, "encoder.input_proj."))
    ]
    if levels != 3 or in_channels != list(stage_widths[1:]):
        raise UnsupportedCheckpoint(
            f"{levels} decoder levels on backbone widths {in_channels}: only C3, C4, C5 "
            f"({list(stage_widths[1:])}) feeding 3 levels are supported"
        )
    num_classes = state["decoder.dec_score_head.0.weight"].shape[0]
    if state["decoder.enc_score_head.weight"].shape[0] != num_classes:
        raise UnsupportedCheckpoint(
            "RT-DETRv2 with query_select_method agnostic (one encoder score) is not supported"
        )
    heads, points = _rtdetr_attention(state, args, levels)
    branch = state["encoder.fpn_blocks.0.conv1.conv.weight"].shape[0]
    if int(dim * (branch / dim)) != branch:
        raise UnsupportedCheckpoint(f"CSP width {branch} of {dim} is not an expansion ratio")
    if count_layers(state, "encoder.fpn_blocks.0.bottlenecks.") != 3:
        raise UnsupportedCheckpoint("RT-DETRv2 with depth_mult != 1 is not supported")
    denoising = "decoder.denoising_class_embed.weight" in state
    return {
        "architecture": "rtdetr_v2",
        "backbone": backbone,
        "levels": ["C3", "C4", "C5"],
        "hidden_dim": dim,
        "num_heads": heads,
        "encoder_layers": count_layers(state, "encoder.encoder.0.layers."),
        "encoder_ffn_dim": state["encoder.encoder.0.layers.0.linear1.weight"].shape[0],
        "decoder_layers": count_layers(state, "decoder.decoder.layers."),
        "ffn_dim": state["decoder.decoder.layers.0.linear1.weight"].shape[0],
        "num_queries": int(args.get("num_queries", 300)),  # not in the weights
        "dropout": 0.0,
        "expansion": branch / dim,
        "num_points": points,
        "num_classes": num_classes,
        "num_denoising": int(args.get("num_denoising", 100)) if denoising else 0,
    }


def _rtdetr_attention(
    state: dict[str, torch.Tensor], args: dict[str, Any], levels: int
) -> tuple[int, int | list[int]]:
    """(heads, points per level: one count, or a list where levels differ) of the decoder's
    deformable attention. Its `num_points_scale` buffer holds 1/n for each of a level's n
    points: it gives both; without it heads are args' `nheads` or 8."""
    rows = state["decoder.decoder.layers.0.cross_attn.attention_weights.weight"].shape[0]
    scale = state.get("decoder.decoder.layers.0.cross_attn.num_points_scale")
    if scale is None:
        heads = int(args.get("nheads", 8))
        return heads, rows // (heads * levels)
    per_level, start = [], 0
    while start < scale.numel():
        per_level.append(max(1, round(1 / float(scale[start]))))
        start += per_level[-1]
    if len(per_level) != levels:
        raise UnsupportedCheckpoint(
            f"num_points_scale describes {len(per_level)} levels ({per_level}), the model {levels}"
        )
    points = per_level[0] if len(set(per_level)) == 1 else per_level
    return rows // scale.numel(), points


def _resnet_vd(state: dict[str, torch.Tensor]) -> tuple[str, tuple[int, ...]]:
    """(our backbone name, stage widths) of the official PResNet (variant d) in `state`."""
    if "backbone.conv1.conv1_2.conv.weight" not in state:
        raise UnsupportedCheckpoint(
            "the backbone is not a ResNet-vd (PResNet, variant d): HGNetv2 and other "
            "backbones are not supported"
        )
    kind = (
        "bottleneck" if "backbone.res_layers.0.blocks.0.branch2c.conv.weight" in state else "basic"
    )
    blocks = tuple(count_layers(state, f"backbone.res_layers.{s}.blocks.") for s in range(4))
    depth = next((d for d, layout in RESNET_VD_LAYOUTS.items() if layout == (kind, blocks)), None)
    if depth is None:
        raise UnsupportedCheckpoint(
            f"backbone with {kind} blocks {list(blocks)} is not ResNet-vd 18/34/50/101"
        )
    return f"resnet{depth}vd", STAGE_WIDTHS[kind]


def _release_name(name: str) -> list[str]:
    """What an RT-DETRv2 release's file name says and its weights do not: a refusal for the
    discrete-sampling releases (`*_dsp*`), a note for R-50-M (its config evaluates at decoder
    layer 3, eval_idx 2)."""
    if "_dsp" in name.lower():
        raise UnsupportedCheckpoint(
            f"{name!r} is named as a discrete-sampling release (dsp: cross_attn_method "
            "discrete, sampling points rounded to pixels): not supported, this product "
            "samples bilinearly; rename the file only if it is not one"
        )
    if "r50vd_m_" in name.lower():
        return [
            "the R-50-M config evaluates the 3rd decoder layer (eval_idx 2); this model "
            "reports the last one, as transformers' conversion does"
        ]
    return []


def import_official(path: str | Path) -> Imported:
    """Our model from an official `.pth`, weights loaded strictly."""
    state, args, which = read_official(path)
    try:
        config, names = config_from_official(state, args)
        notes = _release_name(Path(path).name) if config.architecture == "rtdetr_v2" else []
    except (UnsupportedCheckpoint, KeyError) as err:
        raise ImportError_(f"{path}: {err}") from None
    if config.architecture == "rtdetr_v2":
        converted, unmapped = official_keys_rtdetr.official_to_ours(state)
    else:
        refine = getattr(config, "box_refine", False)
        converted, unmapped = official_to_ours(
            state, config.architecture, config.hidden_dim, refine
        )
    imported = loaded(config, names, converted, unmapped, f"{path} (as its shapes describe it)")
    if which == "ema":
        notes.insert(0, "imported the EMA weights (the file's ema.module)")
    imported.notes.extend(notes)
    return imported


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
