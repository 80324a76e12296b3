"""Hugging Face DETR-family weight names -> this product's, as ordered regex rules per
architecture. Names from the Hub's older files (`backbone.conv_encoder`, `out_proj`,
`fc1`, Conditional DETR's `sa_qcontent_proj`, ...) are first renamed the way transformers
renames them when it loads those files."""

from __future__ import annotations

import re

import torch

from detr_models.config import DeformableDetrConfig, ModelConfig
from detr_models.pretrained.hf_keys_deformable import DEFORMABLE, split_deformable_special
from detr_models.pretrained.hf_rtdetr import RTDETR_RULES

# the renames transformers applies to older Hub files (its conversion_mapping.py)
_LEGACY = [
    (r"backbone\.conv_encoder\.", "backbone."),
    (r"\.out_proj\.", ".o_proj."),
    (r"layers\.(\d+)\.fc([12])\.", r"layers.\1.mlp.fc\2."),
    (r"decoder\.layers\.(\d+)\.(sa|ca)_qcontent_proj\.", r"decoder.layers.\1.\2.q_content_proj."),
    (r"decoder\.layers\.(\d+)\.(sa|ca)_qpos_proj\.", r"decoder.layers.\1.\2.q_pos_proj."),
    (r"decoder\.layers\.(\d+)\.(sa|ca)_kcontent_proj\.", r"decoder.layers.\1.\2.k_content_proj."),
    (r"decoder\.layers\.(\d+)\.(sa|ca)_kpos_proj\.", r"decoder.layers.\1.\2.k_pos_proj."),
    (r"decoder\.layers\.(\d+)\.(sa|ca)_v_proj\.", r"decoder.layers.\1.\2.v_proj."),
    (r"decoder\.layers\.(\d+)\.ca_qpos_sine_proj\.", r"decoder.layers.\1.ca.q_pos_sine_proj."),
    (r"decoder\.layers\.(\d+)\.sa\.", r"decoder.layers.\1.self_attn."),
    (r"decoder\.layers\.(\d+)\.ca\.", r"decoder.layers.\1.encoder_attn."),
]

# HF's own ResNet and timm's (torchvision names) -> our backbone
_BACKBONE = [
    (r"^model\.backbone\.model\.embedder\.embedder\.convolution\.", "backbone.stem.0."),
    (r"^model\.backbone\.model\.embedder\.embedder\.normalization\.", "backbone.stem.1."),
    (
        r"^model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.",
        lambda m: f"backbone.stages.{m[1]}.{m[2]}.conv{int(m[3]) + 1}.",
    ),
    (
        r"^model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.",
        lambda m: f"backbone.stages.{m[1]}.{m[2]}.bn{int(m[3]) + 1}.",
    ),
    (
        r"^model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.",
        r"backbone.stages.\1.\2.downsample.0.",
    ),
    (
        r"^model\.backbone\.model\.encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.",
        r"backbone.stages.\1.\2.downsample.1.",
    ),
    (r"^model\.backbone\.model\.conv1\.", "backbone.stem.0."),
    (r"^model\.backbone\.model\.bn1\.", "backbone.stem.1."),
    (r"^model\.backbone\.model\.layer(\d)\.", lambda m: f"backbone.stages.{int(m[1]) - 1}."),
]

_FFN = [
    (r"^model\.(en|de)coder\.layers\.(\d+)\.mlp\.fc1\.", r"\1coder.layers.\2.ffn.linear1."),
    (r"^model\.(en|de)coder\.layers\.(\d+)\.mlp\.fc2\.", r"\1coder.layers.\2.ffn.linear2."),
    (r"^model\.(en|de)coder\.layers\.(\d+)\.final_layer_norm\.", r"\1coder.layers.\2.ffn.norm."),
]

_NORMS = [
    (
        r"^model\.encoder\.layers\.(\d+)\.self_attn_layer_norm\.",
        r"encoder.layers.\1.attn_out.norm.",
    ),
    (
        r"^model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.",
        r"decoder.layers.\1.self_out.norm.",
    ),
    (
        r"^model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.",
        r"decoder.layers.\1.cross_out.norm.",
    ),
]

_TRANSFORMER = [
    *_FFN,
    (r"^model\.query_position_embeddings\.", "query_position."),
    *_NORMS,
    (r"^model\.decoder\.layernorm\.", "decoder.norm."),
    (r"^bbox_predictor\.", "decoder.box_head."),
]

_SINGLE_SCALE_ENCODER = [
    (r"^model\.input_projection\.", "input_convs.0."),
    (
        r"^model\.encoder\.layers\.(\d+)\.self_attn\.o_proj\.",
        r"encoder.layers.\1.self_attn.attn.out_proj.",
    ),
    (r"^model\.encoder\.layers\.(\d+)\.self_attn\.", r"encoder.layers.\1.self_attn."),
]

_DECODER_SELF_ATTN = [
    (
        r"^model\.decoder\.layers\.(\d+)\.self_attn\.o_proj\.",
        r"decoder.layers.\1.self_attn.attn.out_proj.",
    ),
    (r"^model\.decoder\.layers\.(\d+)\.self_attn\.", r"decoder.layers.\1.self_attn."),
]

_DETR = [
    *_DECODER_SELF_ATTN,
    (
        r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.o_proj\.",
        r"decoder.layers.\1.cross_attn.attn.out_proj.",
    ),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.", r"decoder.layers.\1.cross_attn."),
]

_CONDITIONAL_PROJ = {
    "self_attn.q_content_proj": "sa_q_content",
    "self_attn.q_pos_proj": "sa_q_pos",
    "self_attn.k_content_proj": "sa_k_content",
    "self_attn.k_pos_proj": "sa_k_pos",
    "self_attn.v_proj": "sa_v",
    "self_attn.o_proj": "self_attn.out_proj",
    "encoder_attn.q_content_proj": "ca_q_content",
    "encoder_attn.q_pos_proj": "ca_q_pos",
    "encoder_attn.k_content_proj": "ca_k_content",
    "encoder_attn.k_pos_proj": "ca_k_pos",
    "encoder_attn.v_proj": "ca_v",
    "encoder_attn.q_pos_sine_proj": "ca_q_sine",
    "encoder_attn.o_proj": "cross_attn.out_proj",
}
_CONDITIONAL = [
    (
        r"^model\.decoder\.layers\.(\d+)\.((?:self|encoder)_attn\.\w+)\.",
        lambda m: f"decoder.layers.{m[1]}.{_CONDITIONAL_PROJ.get(m[2], m[2])}.",
    ),
    (r"^model\.decoder\.query_scale\.", "decoder.query_scale."),
    (r"^model\.decoder\.ref_point_head\.", "decoder.reference_head."),
]

_DAB_PROJ = {
    "self_attn.self_attn_query_content_proj": "sa_q_content",
    "self_attn.self_attn_query_pos_proj": "sa_q_pos",
    "self_attn.self_attn_key_content_proj": "sa_k_content",
    "self_attn.self_attn_key_pos_proj": "sa_k_pos",
    "self_attn.self_attn_value_proj": "sa_v",
    "self_attn.self_attn.output_proj": "self_attn.out_proj",
    "self_attn.self_attn_layer_norm": "self_out.norm",
    "cross_attn.cross_attn_query_content_proj": "ca_q_content",
    "cross_attn.cross_attn_query_pos_proj": "ca_q_pos",
    "cross_attn.cross_attn_key_content_proj": "ca_k_content",
    "cross_attn.cross_attn_key_pos_proj": "ca_k_pos",
    "cross_attn.cross_attn_value_proj": "ca_v",
    "cross_attn.cross_attn_query_pos_sine_proj": "ca_q_sine",
    "cross_attn.cross_attn.output_proj": "cross_attn.out_proj",
    "cross_attn.cross_attn_layer_norm": "cross_out.norm",
    "mlp.final_layer_norm": "ffn.norm",
    "mlp.activation_fn": "ffn.activation",
}
_DAB = [
    (r"^model\.query_refpoint_embeddings\.", "query_position."),
    (r"^model\.encoder\.layers\.(\d+)\.activation_fn\.", r"encoder.layers.\1.ffn.activation."),
    (r"^model\.encoder\.query_scale\.", "encoder.query_scale."),
    (
        r"^model\.decoder\.layers\.(\d+)\.((?:self_attn|cross_attn|mlp)\.[\w.]+?)\.(weight|bias)$",
        lambda m: f"decoder.layers.{m[1]}.{_DAB_PROJ.get(m[2], m[2])}.{m[3]}",
    ),
    (r"^model\.decoder\.query_scale\.", "decoder.query_scale."),
    (r"^model\.decoder\.ref_point_head\.", "decoder.reference_head."),
    (r"^model\.decoder\.ref_anchor_head\.", "decoder.anchor_size_head."),
    (r"^model\.decoder\.bbox_embed\.", None),  # the box predictor's tied copy
    (r"^class_embed\.", "class_head."),
]

RULES = {
    "detr": _BACKBONE
    + _TRANSFORMER
    + _SINGLE_SCALE_ENCODER
    + _DETR
    + [(r"^class_labels_classifier\.", "class_head.linear.")],
    "conditional_detr": _BACKBONE
    + _TRANSFORMER
    + _SINGLE_SCALE_ENCODER
    + _CONDITIONAL
    + [(r"^class_labels_classifier\.", "class_head.")],
}
_IGNORED = re.compile(r"(num_batches_tracked|\.fc\.(weight|bias))$")


RULES["dab_detr"] = _BACKBONE + _TRANSFORMER + _SINGLE_SCALE_ENCODER + _DAB
RULES["deformable_detr"] = _BACKBONE + _FFN + _NORMS + _DECODER_SELF_ATTN + DEFORMABLE
RULES["rtdetr_v2"] = RTDETR_RULES


def convert_hf_state(
    state: dict[str, torch.Tensor], config: ModelConfig
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our state dict, the HF names no rule maps) for an HF model's state dict."""
    rules = RULES[config.architecture]
    converted: dict[str, torch.Tensor] = {}
    unmapped = []
    state = {legacy_renamed(name): tensor for name, tensor in state.items()}
    if isinstance(config, DeformableDetrConfig):
        converted, state = split_deformable_special(
            state, config.hidden_dim, config.decoder_layers, config.box_refine
        )
    for name, tensor in state.items():
        if _IGNORED.search(name):
            continue
        key = name
        for pattern, target in rules:
            if target is None:  # a tied copy of a tensor mapped under another name
                if re.search(pattern, key):
                    break
                continue
            new, count = re.subn(pattern, target, key, count=1)
            if count:
                converted[new] = tensor
                break
        else:
            unmapped.append(name)
    return converted, unmapped


def legacy_renamed(name: str) -> str:
    """`name` after transformers' renames of older Hub weight names."""
    for pattern, target in _LEGACY:
        name = re.sub(pattern, target, name)
    return name
