"""The official repos' weight names (facebookresearch/detr, fundamentalvision/Deformable-DETR,
Atten4Vis/ConditionalDETR, IDEA-Research/DAB-DETR) <-> this product's, both ways. Their attention layers are `nn.MultiheadAttention`s, whose
packed `in_proj_weight` [3D, D] holds our q, k and v projections one after another."""

from __future__ import annotations

import re

import torch

from detr_models.pretrained import official_keys_conditional as conditional

_BACKBONE = [
    ("backbone.0.body.conv1.", "backbone.stem.0."),
    ("backbone.0.body.bn1.", "backbone.stem.1."),
    *[(f"backbone.0.body.layer{i + 1}.", f"backbone.stages.{i}.") for i in range(4)],
]
_FFN = [
    ("transformer.{part}.layers.{i}.linear1.", "{part}.layers.{i}.ffn.linear1."),
    ("transformer.{part}.layers.{i}.linear2.", "{part}.layers.{i}.ffn.linear2."),
]
_DETR = [
    ("input_proj.", "input_convs.0."),
    ("query_embed.", "query_position."),
    (
        "transformer.encoder.layers.{i}.self_attn.out_proj.",
        "encoder.layers.{i}.self_attn.attn.out_proj.",
    ),
    ("transformer.encoder.layers.{i}.norm1.", "encoder.layers.{i}.attn_out.norm."),
    ("transformer.encoder.layers.{i}.norm2.", "encoder.layers.{i}.ffn.norm."),
    (
        "transformer.decoder.layers.{i}.self_attn.out_proj.",
        "decoder.layers.{i}.self_attn.attn.out_proj.",
    ),
    (
        "transformer.decoder.layers.{i}.multihead_attn.out_proj.",
        "decoder.layers.{i}.cross_attn.attn.out_proj.",
    ),
    ("transformer.decoder.layers.{i}.norm1.", "decoder.layers.{i}.self_out.norm."),
    ("transformer.decoder.layers.{i}.norm2.", "decoder.layers.{i}.cross_out.norm."),
    ("transformer.decoder.layers.{i}.norm3.", "decoder.layers.{i}.ffn.norm."),
    ("transformer.decoder.norm.", "decoder.norm."),
    ("class_embed.", "class_head.linear."),
    ("bbox_embed.", "decoder.box_head."),
]
_DEFORMABLE = [
    ("input_proj.{i}.0.", "input_convs.{i}."),
    ("input_proj.{i}.1.", "input_norms.{i}."),
    ("transformer.level_embed", "level_embed"),
    ("transformer.encoder.layers.{i}.self_attn.", "encoder.layers.{i}.attn."),
    ("transformer.encoder.layers.{i}.norm1.", "encoder.layers.{i}.attn_out.norm."),
    ("transformer.encoder.layers.{i}.norm2.", "encoder.layers.{i}.ffn.norm."),
    ("transformer.decoder.layers.{i}.cross_attn.", "decoder.layers.{i}.cross_attn."),
    ("transformer.decoder.layers.{i}.norm1.", "decoder.layers.{i}.cross_out.norm."),
    (
        "transformer.decoder.layers.{i}.self_attn.out_proj.",
        "decoder.layers.{i}.self_attn.attn.out_proj.",
    ),
    ("transformer.decoder.layers.{i}.norm2.", "decoder.layers.{i}.self_out.norm."),
    ("transformer.decoder.layers.{i}.norm3.", "decoder.layers.{i}.ffn.norm."),
    ("transformer.reference_points.", "decoder.reference_head."),
]
_DEFORMABLE_HEADS = {
    True: [  # box refinement: one head per stage
        ("class_embed.{i}.", "class_head.{i}."),
        ("bbox_embed.{i}.", "decoder.box_head.{i}."),
    ],
    False: [("class_embed.0.", "class_head."), ("bbox_embed.0.", "decoder.box_head.")],
}
# two-stage: the encoder's proposal layers, and its heads (the ones after the decoder's)
_TWO_STAGE = [
    ("transformer.enc_output.", "proposals.memory_proj."),
    ("transformer.enc_output_norm.", "proposals.memory_norm."),
    ("transformer.pos_trans.", "proposals.pos_proj."),
    ("transformer.pos_trans_norm.", "proposals.pos_norm."),
    ("class_embed.{stages}.", "proposals.class_head."),
    ("bbox_embed.{stages}.", "proposals.box_head."),
]
# packed q/k/v: official prefix -> our attention module
_PACKED = {
    "detr": [
        ("transformer.encoder.layers.{i}.self_attn.", "encoder.layers.{i}.self_attn."),
        ("transformer.decoder.layers.{i}.self_attn.", "decoder.layers.{i}.self_attn."),
        ("transformer.decoder.layers.{i}.multihead_attn.", "decoder.layers.{i}.cross_attn."),
    ],
    "deformable_detr": [
        ("transformer.decoder.layers.{i}.self_attn.", "decoder.layers.{i}.self_attn."),
    ],
    "conditional_detr": conditional.PACKED,
    "dab_detr": conditional.PACKED,
}


def rules(
    architecture: str, box_refine: bool = False, two_stage_stages: int | None = None
) -> list[tuple[str, str]]:
    """(official template, our template) pairs; `{i}` is a layer/stage number.
    `two_stage_stages`: the decoder's stage count of a two-stage model (else None)."""
    if architecture == "detr":
        named = _DETR
    elif architecture == "deformable_detr":
        named = _DEFORMABLE + _DEFORMABLE_HEADS[box_refine]
        if two_stage_stages is not None:
            extra = str(two_stage_stages)
            named = [(a.replace("{stages}", extra), b) for a, b in _TWO_STAGE] + named
    elif architecture == "conditional_detr":
        named = conditional.CONDITIONAL
    elif architecture == "dab_detr":
        named = conditional.DAB
    else:
        raise ValueError(f"no official weight format for {architecture!r}")
    ffn = [
        (a.replace("{part}", p), b.replace("{part}", p))
        for a, b in _FFN
        for p in ("encoder", "decoder")
    ]
    return _BACKBONE + ffn + named


def _pattern(template: str) -> re.Pattern:
    return re.compile("^" + re.escape(template).replace(r"\{i\}", r"(?P<i>\d+)"))


def _rename(name: str, pairs: list[tuple[str, str]]) -> str | None:
    for source, target in pairs:
        match = _pattern(source).match(name)
        if match:
            return target.replace("{i}", match.groupdict().get("i") or "") + name[match.end() :]
    return None


def official_to_ours(
    state: dict[str, torch.Tensor], architecture: str, hidden_dim: int, box_refine: bool = False
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our state dict, the official names no rule maps)."""
    two_stage = "transformer.enc_output.weight" in state
    stages = count_layers(state, "transformer.decoder.layers.") if two_stage else None
    pairs = rules(architecture, box_refine, stages)
    ours: dict[str, torch.Tensor] = {}
    unmapped = []
    for name, tensor in state.items():
        if name.endswith("num_batches_tracked") or name.startswith(
            ("transformer.decoder.bbox_embed", "transformer.decoder.class_embed")
        ):
            continue  # a counter; and the decoder's tied copies of the heads
        if architecture == "deformable_detr" and name == "query_embed.weight":
            ours["query_position.weight"] = tensor[:, :hidden_dim]
            ours["query_content.weight"] = tensor[:, hidden_dim:]
            continue
        packed = _rename(name, _PACKED[architecture])
        if packed is not None and "in_proj_" in name:
            ours.update(split_packed(packed, tensor))
            continue
        new = _rename(name, pairs)
        if new is None:
            if not box_refine and re.match(r"^(class|bbox)_embed\.[1-9]", name):
                continue  # the plain model's heads are one module listed once per stage
            unmapped.append(name)
        else:
            ours[new] = tensor
    return ours, unmapped


def ours_to_official(
    state: dict[str, torch.Tensor], architecture: str, box_refine: bool = False, stages: int = 6
) -> dict[str, torch.Tensor]:
    """Our state dict under the official names (what the official code loads)."""
    two_stage = "proposals.pos_proj.weight" in state
    pairs = [(b, a) for a, b in rules(architecture, box_refine, stages if two_stage else None)]
    packed_pairs = [(b, a) for a, b in _PACKED[architecture]]
    official: dict[str, torch.Tensor] = {}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        if (
            name in ("query_position.weight", "query_content.weight")
            and "query_content.weight" in state
        ):
            official["query_embed.weight"] = torch.cat(
                (state["query_position.weight"], state["query_content.weight"]), 1
            )
            continue
        match = re.match(r"^(.*\.)([qkv])_proj\.(weight|bias)$", name)
        prefix = _rename(match[1], packed_pairs) if match else None
        if match and prefix is not None and match[1].endswith(("self_attn.", "cross_attn.")):
            pending.setdefault((prefix, match[3]), {})[match[2]] = tensor
            continue
        new = _rename(name, pairs)
        if new is None:
            raise ValueError(f"{name} has no official name")
        official[new] = tensor
    for (prefix, kind), parts in pending.items():
        official[f"{prefix}in_proj_{kind}"] = torch.cat([parts[p] for p in "qkv"])
    if architecture == "deformable_detr":
        for name in list(official):
            if not box_refine and name.startswith(("class_embed.0.", "bbox_embed.0.")):
                for stage in range(1, stages):  # listed once per stage, as the official model
                    official[name.replace(".0.", f".{stage}.", 1)] = official[name]
            elif box_refine and name.startswith("bbox_embed."):
                official[f"transformer.decoder.{name}"] = official[name]
            if two_stage and name.startswith("class_embed."):
                official[f"transformer.decoder.{name}"] = official[name]
    if architecture == "dab_detr":  # the decoder refines anchors with the shared box head
        for name in [n for n in official if n.startswith("bbox_embed.")]:
            official[f"transformer.decoder.{name}"] = official[name]
    return official


def split_packed(renamed: str, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
    """A packed `...in_proj_weight|bias` [3D,...] (renamed to our module's prefix) as our
    `q_proj`, `k_proj` and `v_proj` tensors."""
    kind = "weight" if renamed.endswith("in_proj_weight") else "bias"
    base = renamed.rsplit("in_proj_", 1)[0]
    return {
        f"{base}{part}_proj.{kind}": chunk
        for part, chunk in zip("qkv", tensor.chunk(3), strict=True)
    }


def count_layers(state: dict[str, torch.Tensor], prefix: str) -> int:
    """How many numbered layers `prefix<N>.` the state dict holds."""
    found = {int(m[1]) for k in state if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0
