"""Deformable DETR's and DAB-DETR's Hugging Face weight names -> this product's. Besides
renames: Deformable DETR's query embedding [Q, 2D] splits into position and content halves,
and its per-stage heads may be stored once (transformers ties them when they are shared)."""

from __future__ import annotations

import re

import torch

DEFORMABLE = [  # after the shared feed-forward, norm and self-attention rules
    (r"^model\.level_embed$", "level_embed"),
    (r"^model\.input_proj\.(\d+)\.0\.", r"input_convs.\1."),
    (r"^model\.input_proj\.(\d+)\.1\.", r"input_norms.\1."),
    (r"^model\.encoder\.layers\.(\d+)\.self_attn\.", r"encoder.layers.\1.attn."),
    (r"^model\.decoder\.layers\.(\d+)\.encoder_attn\.", r"decoder.layers.\1.cross_attn."),
    (r"^model\.reference_points\.", "decoder.reference_head."),
    # two-stage (reference queries)
    (r"^model\.enc_output\.", "proposals.memory_proj."),
    (r"^model\.enc_output_norm\.", "proposals.memory_norm."),
    (r"^model\.pos_trans\.", "proposals.pos_proj."),
    (r"^model\.pos_trans_norm\.", "proposals.pos_norm."),
]
_HEAD = re.compile(
    r"^(?:model\.decoder\.)?(class|bbox)_embed\.(\d+)\.(weight|bias|layers\.\d+\.(?:weight|bias))$"
)


def split_deformable_special(
    state: dict[str, torch.Tensor], hidden_dim: int, num_stages: int, box_refine: bool
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(our keys for the query embedding and the heads, the remaining HF entries).

    The query embedding's first half is the positional query, the second the content. Heads:
    one per stage with box refinement, else one shared; a stage whose head the file stores
    only once (tied) takes the stored one; a two-stage model's extra head (index num_stages)
    is its encoder's proposal head."""
    ours: dict[str, torch.Tensor] = {}
    rest: dict[str, torch.Tensor] = {}
    heads: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for name, tensor in state.items():
        if name == "model.query_position_embeddings.weight":
            ours["query_position.weight"] = tensor[:, :hidden_dim]
            ours["query_content.weight"] = tensor[:, hidden_dim:]
            continue
        match = _HEAD.match(name)
        if match:
            kind, stage, param = match[1], int(match[2]), match[3]
            heads.setdefault((kind, param), {})[stage] = tensor
            continue
        rest[name] = tensor
    for (kind, param), stored in heads.items():
        prefix = "class_head" if kind == "class" else "decoder.box_head"
        if num_stages in stored:  # two-stage: the head after the decoder's is the encoder's
            name = "class_head" if kind == "class" else "box_head"
            ours[f"proposals.{name}.{param}"] = stored.pop(num_stages)
        if box_refine:
            for stage in range(num_stages):
                tensor = stored.get(stage, stored[min(stored)])  # tied: stored once
                ours[f"{prefix}.{stage}.{param}"] = tensor
        else:
            ours[f"{prefix}.{param}"] = stored[min(stored)]
    return ours, rest
