"""Hugging Face RT-DETRv2 (`RTDetrV2ForObjectDetection`, `model_type: rt_detr_v2`): its
config.json -> our `RtDetrConfig`, and its weight names -> ours (regex rules)."""

from __future__ import annotations

from typing import Any

from detr_models.pretrained.hf_keys_resnet_vd import RESNET_VD_RULES, resnet_vd_depth


class RtDetrUnsupported(ValueError):
    """An RT-DETRv2 variant this product does not represent (the message says which)."""


# what the reference-exact model here assumes, with the config keys' reference values
_FIXED = {
    "encode_proj_layers": [2],
    "encoder_activation_function": "gelu",
    "decoder_activation_function": "relu",
    "activation_function": "silu",
    "normalize_before": False,
    "learn_initial_query": False,
    "with_box_refine": True,
    "decoder_offset_scale": 0.5,
    "decoder_method": "default",
    "feat_strides": [8, 16, 32],
}


def rtdetr_config_data(hf: dict[str, Any]) -> dict[str, Any]:
    """Our config fields (without num_classes) of an RT-DETRv2 config.json, or a refusal."""
    for key, value in _FIXED.items():
        found = hf.get(key, value)
        if (list(found) if isinstance(found, (list, tuple)) else found) != value:
            raise RtDetrUnsupported(f"{key} {found!r}: only {value!r} is supported")
    dim = hf.get("d_model", 256)
    for key in ("encoder_hidden_dim",):
        if hf.get(key, 256) != dim:
            raise RtDetrUnsupported(f"{key} {hf.get(key)} != d_model {dim}: one width only")
    if list(hf.get("decoder_in_channels", [dim] * 3)) != [dim] * 3:
        raise RtDetrUnsupported("decoder_in_channels must be d_model on each of 3 levels")
    if hf.get("num_feature_levels", 3) != 3 or hf.get("decoder_n_levels", 3) != 3:
        raise RtDetrUnsupported("num_feature_levels / decoder_n_levels must be 3")
    heads = hf.get("encoder_attention_heads", 8)
    if hf.get("decoder_attention_heads", 8) != heads:
        raise RtDetrUnsupported("encoder and decoder attention heads differ")
    backbone = hf.get("backbone_config") or {}
    try:
        depth = resnet_vd_depth(backbone)
    except ValueError as err:
        raise RtDetrUnsupported(f"backbone_config: {err}") from None
    return {
        "architecture": "rtdetr_v2",
        "backbone": f"resnet{depth}vd",
        "levels": ["C3", "C4", "C5"],
        "hidden_dim": dim,
        "num_heads": heads,
        "encoder_layers": hf.get("encoder_layers", 1),
        "encoder_ffn_dim": hf.get("encoder_ffn_dim", 1024),
        "decoder_layers": hf.get("decoder_layers", 6),
        "ffn_dim": hf.get("decoder_ffn_dim", 1024),
        "num_queries": hf.get("num_queries", 300),
        "dropout": hf.get("dropout", 0.0),
        "expansion": hf.get("hidden_expansion", 1.0),
        "num_points": hf.get("decoder_n_points", 4),
        "position_temperature": float(hf.get("positional_encoding_temperature", 10000)),
        "num_denoising": hf.get("num_denoising", 100),
        "label_noise_ratio": hf.get("label_noise_ratio", 0.5),
        "box_noise_scale": hf.get("box_noise_scale", 1.0),
    }


def _csp(block: str, ours: str) -> list[tuple[str, str]]:
    """A CSPRepLayer (fpn_blocks / pan_blocks) -> our CspRep."""
    base = rf"^model\.encoder\.{block}\.(\d+)\."
    return [
        (base + r"conv1\.conv\.", rf"encoder.{ours}.\1.branch1.0."),
        (base + r"conv1\.norm\.", rf"encoder.{ours}.\1.branch1.1."),
        (base + r"conv2\.conv\.", rf"encoder.{ours}.\1.branch2.0."),
        (base + r"conv2\.norm\.", rf"encoder.{ours}.\1.branch2.1."),
        (base + r"conv3\.conv\.", rf"encoder.{ours}.\1.out.0."),
        (base + r"conv3\.norm\.", rf"encoder.{ours}.\1.out.1."),
        (base + r"bottlenecks\.(\d+)\.conv1\.conv\.", rf"encoder.{ours}.\1.blocks.\2.conv3.0."),
        (base + r"bottlenecks\.(\d+)\.conv1\.norm\.", rf"encoder.{ours}.\1.blocks.\2.conv3.1."),
        (base + r"bottlenecks\.(\d+)\.conv2\.conv\.", rf"encoder.{ours}.\1.blocks.\2.conv1.0."),
        (base + r"bottlenecks\.(\d+)\.conv2\.norm\.", rf"encoder.{ours}.\1.blocks.\2.conv1.1."),
    ]


_ATTENTION_LAYER = [  # HF names inside an encoder/decoder layer -> ours
    (r"self_attn\.o_proj\.", "self_attn.attn.out_proj."),
    (r"self_attn\.", "self_attn."),
    (r"mlp\.fc1\.", "ffn.linear1."),
    (r"mlp\.fc2\.", "ffn.linear2."),
    (r"final_layer_norm\.", "ffn.norm."),
]
RTDETR_RULES: list[tuple[str, Any]] = [
    *RESNET_VD_RULES,
    (r"^model\.encoder_input_proj\.(\d+)\.", r"encoder.input_proj.\1."),
    *[  # `encoder.encoder.0`: the name in files (and save_pretrained's output) of `aifi.0`
        (rf"^model\.encoder\.(?:aifi|encoder)\.0\.layers\.(\d+)\.{a}", rf"encoder.aifi.\1.{b}")
        for a, b in [*_ATTENTION_LAYER, (r"self_attn_layer_norm\.", "attn_out.norm.")]
    ],
    (r"^model\.encoder\.lateral_convs\.(\d+)\.conv\.", r"encoder.lateral.\1.0."),
    (r"^model\.encoder\.lateral_convs\.(\d+)\.norm\.", r"encoder.lateral.\1.1."),
    (r"^model\.encoder\.downsample_convs\.(\d+)\.conv\.", r"encoder.downsample.\1.0."),
    (r"^model\.encoder\.downsample_convs\.(\d+)\.norm\.", r"encoder.downsample.\1.1."),
    *_csp("fpn_blocks", "fpn"),
    *_csp("pan_blocks", "pan"),
    (r"^model\.enc_output\.0\.", "proposals.memory_proj."),
    (r"^model\.enc_output\.1\.", "proposals.memory_norm."),
    (r"^model\.enc_score_head\.", "proposals.class_head."),
    (r"^model\.enc_bbox_head\.", "proposals.box_head."),
    (r"^model\.decoder_input_proj\.(\d+)\.", r"decoder_proj.\1."),
    (r"^model\.decoder\.query_pos_head\.", "decoder.query_pos_head."),
    (r"^model\.decoder\.layers\.\d+\.encoder_attn\.n_points_scale$", None),  # a constant
    *[
        (rf"^model\.decoder\.layers\.(\d+)\.{a}", rf"decoder.layers.\1.{b}")
        for a, b in [
            *_ATTENTION_LAYER,
            (r"self_attn_layer_norm\.", "self_out.norm."),
            (r"encoder_attn\.", "cross_attn."),
            (r"encoder_attn_layer_norm\.", "cross_out.norm."),
        ]
    ],
    # the heads are tied to the decoder's copies, which are the ones files hold
    (r"^model\.decoder\.class_embed\.(\d+)\.", r"class_head.\1."),
    (r"^model\.decoder\.bbox_embed\.(\d+)\.", r"decoder.box_head.\1."),
    (r"^(class|bbox)_embed\.", None),
    (r"^model\.denoising_class_embed\.", "denoising.label_embedding."),
]
