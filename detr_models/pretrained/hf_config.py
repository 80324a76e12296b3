"""A Hugging Face DETR-family `config.json` -> this product's model config (reference-exact)
and the class names (`id2label`)."""

from __future__ import annotations

from typing import Any

from detr_models.config import REFERENCE_OPTIONS, ModelConfig, model_config_from_dict
from detr_models.pretrained.hf_rtdetr import rtdetr_config_data

HF_ARCHITECTURES = {
    "detr": "detr",
    "conditional_detr": "conditional_detr",
    "deformable_detr": "deformable_detr",
    "dab-detr": "dab_detr",
    "dab_detr": "dab_detr",
    "rt_detr_v2": "rtdetr_v2",
}
# HF ResNetConfig (layer_type, depths) -> the torchvision ResNet of the same layout
_RESNETS = {
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
}
_LEVELS = ["C2", "C3", "C4", "C5"]


class UnsupportedCheckpoint(ValueError):
    """A checkpoint this product cannot represent exactly (the message says what and why)."""


def architecture_of(hf: dict[str, Any]) -> str:
    """Our architecture name for an HF config's `model_type`."""
    model_type = hf.get("model_type")
    if model_type not in HF_ARCHITECTURES:
        raise UnsupportedCheckpoint(
            f"model_type {model_type!r} is not a supported DETR-family architecture; "
            f"supported: {sorted(set(HF_ARCHITECTURES))}"
        )
    return HF_ARCHITECTURES[model_type]


def config_from_hf(hf: dict[str, Any]) -> tuple[ModelConfig, list[str]]:
    """(our reference-exact model config, class names by label id) of an HF config dict."""
    architecture = architecture_of(hf)
    if architecture == "rtdetr_v2":
        return _rtdetr(hf)
    _same("encoder_attention_heads", "decoder_attention_heads", hf)
    _same("encoder_ffn_dim", "decoder_ffn_dim", hf)
    if hf.get("auxiliary_loss"):
        # HF feeds each normed stage into the next when this is set: not the paper's model
        raise UnsupportedCheckpoint(
            "auxiliary_loss: true changes the forward pass of the transformers implementation; "
            "set it to false in config.json (the official checkpoints use false)"
        )
    if hf.get("position_embedding_type", "sine") != "sine":
        raise UnsupportedCheckpoint(
            "position_embedding_type must be 'sine' (learned is not supported)"
        )
    names = class_names(hf)
    backbone, levels = _backbone(hf, architecture)
    data: dict[str, Any] = {
        "architecture": architecture,
        "num_classes": len(names),
        "backbone": backbone,
        "levels": levels,
        "hidden_dim": hf.get("d_model", hf.get("hidden_size", 256)),
        "num_heads": hf.get("encoder_attention_heads", 8),
        "encoder_layers": hf.get("encoder_layers", 6),
        "decoder_layers": hf.get("decoder_layers", 6),
        "ffn_dim": hf.get("encoder_ffn_dim", 2048),
        "num_queries": hf.get("num_queries", 100),
        "dropout": hf.get("dropout", 0.1),
        **REFERENCE_OPTIONS[architecture],
    }
    if architecture == "deformable_detr":
        _same("encoder_n_points", "decoder_n_points", hf)
        if hf.get("two_stage") and not hf.get("with_box_refine"):
            raise UnsupportedCheckpoint(
                "two-stage Deformable DETR without box refinement is not importable (its "
                "encoder shares the decoder's heads); two-stage with box refinement is"
            )
        if hf.get("num_feature_levels", 4) == 1:
            raise UnsupportedCheckpoint(
                "single-level Deformable DETR checkpoints are not importable yet (their level "
                "embedding has no place in this product's one-level model)"
            )
        data.update(
            num_feature_levels=hf.get("num_feature_levels", 4),
            num_points=hf.get("encoder_n_points", 4),
            box_refine=bool(hf.get("with_box_refine", False)),
            two_stage=bool(hf.get("two_stage", False)),
        )
        if data["two_stage"]:  # its queries are the proposals; num_queries is unused
            data["num_queries"] = hf.get("two_stage_num_proposals", 300)
    if architecture == "dab_detr":
        data.update(_dab_options(hf))
    try:
        return model_config_from_dict(data), names
    except ValueError as err:
        raise UnsupportedCheckpoint(f"config does not translate: {err}") from None


def class_names(hf: dict[str, Any]) -> list[str]:
    """Class names by label id 0..K-1 (`id2label`, else `num_labels` generic names)."""
    id2label = hf.get("id2label") or {}
    count = max([int(i) + 1 for i in id2label] + [int(hf.get("num_labels", 0) or 0)])
    if count < 1:
        raise UnsupportedCheckpoint("config.json has neither id2label nor num_labels")
    labels = {int(i): str(name) for i, name in id2label.items()}
    return [labels.get(i, f"class_{i}") for i in range(count)]


def _same(a: str, b: str, hf: dict[str, Any]) -> None:
    if a in hf and b in hf and hf[a] != hf[b]:
        raise UnsupportedCheckpoint(f"{a} ({hf[a]}) must equal {b} ({hf[b]}) in this product")


def _backbone(hf: dict[str, Any], architecture: str) -> tuple[str, list[str]]:
    """(our backbone name, levels) from the HF backbone description."""
    sub = hf.get("backbone_config") or {}
    if hf.get("dilation") or sub.get("output_stride") not in (None, 32):
        raise UnsupportedCheckpoint("dilated (DC5) backbones are not supported")
    if sub.get("model_type") == "resnet":
        key = (sub.get("layer_type"), tuple(sub.get("depths", ())))
        if key not in _RESNETS or sub.get("embedding_size", 64) != 64:
            raise UnsupportedCheckpoint(f"ResNet backbone {key} is not a torchvision ResNet")
        name = _RESNETS[key]
        stages = sub.get("out_features") or ["stage4"]
        levels = [f"C{int(s.removeprefix('stage')) + 1}" for s in stages]
    else:  # timm ("timm_backbone" sub-config, or the legacy use_timm_backbone flag)
        name = str(sub.get("backbone") or hf.get("backbone") or "resnet50").removeprefix("timm/")
        indices = sub.get("out_indices") or [4]
        levels = [f"C{i + 1}" for i in indices if 1 <= i <= 4]
    if name not in {"resnet18", "resnet34", "resnet50", "resnet101"}:
        raise UnsupportedCheckpoint(f"backbone {name!r} is not supported (ResNet-18/34/50/101)")
    if architecture == "deformable_detr":
        levels = _deformable_levels(hf.get("num_feature_levels", 4))
    else:
        levels = ["C5"]  # the single-scale models use the last map only
    return name, [lv for lv in _LEVELS if lv in levels]


def _deformable_levels(num_feature_levels: int) -> list[str]:
    """Deformable DETR: one level -> C5; more -> C3, C4, C5 (then extra stride-2 levels)."""
    return ["C5"] if num_feature_levels == 1 else ["C3", "C4", "C5"]


def _dab_options(hf: dict[str, Any]) -> dict[str, Any]:
    """DAB-DETR's variants this product represents (the official ones), or a clear refusal."""
    if hf.get("keep_query_pos") or hf.get("num_patterns", 0) or hf.get("query_dim", 4) != 4:
        raise UnsupportedCheckpoint(
            "DAB-DETR with keep_query_pos, num_patterns > 0 or query_dim != 4 is not supported"
        )
    _same("temperature_height", "temperature_width", hf)
    activation = hf.get("activation_function", "prelu")
    if activation not in ("prelu", "relu"):
        raise UnsupportedCheckpoint(f"activation_function {activation!r}: prelu or relu only")
    return {
        "position_temperature": float(hf.get("temperature_height", 20)),
        "ffn_activation": activation,
    }


def _rtdetr(hf: dict[str, Any]) -> tuple[ModelConfig, list[str]]:
    names = class_names(hf)
    try:
        data = rtdetr_config_data(hf)
        return model_config_from_dict({**data, "num_classes": len(names)}), names
    except ValueError as err:  # RtDetrUnsupported, or a config that does not validate
        raise UnsupportedCheckpoint(f"RT-DETRv2: {err}") from None
