"""Conditional DETR's and DAB-DETR's official weight names (Atten4Vis/ConditionalDETR,
IDEA-Research/DAB-DETR) <-> this product's. Their encoders are DETR's (packed q/k/v); their
decoders name each projection (`sa_qcontent_proj`, `ca_qpos_sine_proj`, ...)."""

from __future__ import annotations

_ENCODER = [
    (
        "transformer.encoder.layers.{i}.self_attn.out_proj.",
        "encoder.layers.{i}.self_attn.attn.out_proj.",
    ),
    ("transformer.encoder.layers.{i}.norm1.", "encoder.layers.{i}.attn_out.norm."),
    ("transformer.encoder.layers.{i}.norm2.", "encoder.layers.{i}.ffn.norm."),
]
_PROJECTIONS = {
    "sa_qcontent_proj": "sa_q_content",
    "sa_qpos_proj": "sa_q_pos",
    "sa_kcontent_proj": "sa_k_content",
    "sa_kpos_proj": "sa_k_pos",
    "sa_v_proj": "sa_v",
    "self_attn.out_proj": "self_attn.out_proj",
    "norm1": "self_out.norm",
    "ca_qcontent_proj": "ca_q_content",
    "ca_qpos_proj": "ca_q_pos",
    "ca_kcontent_proj": "ca_k_content",
    "ca_kpos_proj": "ca_k_pos",
    "ca_v_proj": "ca_v",
    "ca_qpos_sine_proj": "ca_q_sine",
    "cross_attn.out_proj": "cross_attn.out_proj",
    "norm2": "cross_out.norm",
    "norm3": "ffn.norm",
}
_DECODER = [
    (f"transformer.decoder.layers.{{i}}.{official}.", f"decoder.layers.{{i}}.{ours}.")
    for official, ours in _PROJECTIONS.items()
] + [
    ("transformer.decoder.norm.", "decoder.norm."),
    ("transformer.decoder.query_scale.", "decoder.query_scale."),
    ("transformer.decoder.ref_point_head.", "decoder.reference_head."),
    ("input_proj.", "input_convs.0."),
    ("class_embed.", "class_head."),
    ("bbox_embed.", "decoder.box_head."),
]
CONDITIONAL = _ENCODER + _DECODER + [("query_embed.", "query_position.")]
DAB = (
    _ENCODER
    + _DECODER
    + [
        ("refpoint_embed.", "query_position."),
        ("transformer.encoder.query_scale.", "encoder.query_scale."),
        ("transformer.decoder.ref_anchor_head.", "decoder.anchor_size_head."),
        ("transformer.encoder.layers.{i}.activation.", "encoder.layers.{i}.ffn.activation."),
        ("transformer.decoder.layers.{i}.activation.", "decoder.layers.{i}.ffn.activation."),
    ]
)
# packed q/k/v: official prefix -> our attention module
PACKED = [("transformer.encoder.layers.{i}.self_attn.", "encoder.layers.{i}.self_attn.")]
