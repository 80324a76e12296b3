"""RT-DETRv2's official weight names (lyuwenyu/RT-DETR, `rtdetrv2_pytorch`: `RTDETR` holding
`PResNet` as `backbone`, `HybridEncoder` as `encoder`, `RTDETRTransformerv2` as `decoder`) <->
this product's, both ways.

The AIFI encoder layer and the decoder's self-attention are `nn.MultiheadAttention`s, whose
packed `in_proj_weight` [3D, D] holds our q, k and v projections one after another. The official
model also stores constants as buffers (`decoder.anchors` and `decoder.valid_mask` for its
640x640 eval size, `num_points_scale` in each deformable attention): skipped on import, written
back on export so that the official code loads the result strictly.
"""

from __future__ import annotations

import re

import torch

from detr_models.pretrained.official_keys import split_packed
from detr_models.rtdetr import grid_anchors

# a ConvNormLayer (`conv` + `norm`) -> our ConvNorm Sequential (0: conv, 1: BatchNorm)
_CONV_NORM = [(".conv.", ".0."), (".norm.", ".1.")]

_BACKBONE = [
    *[(f"backbone.conv1.conv1_{k + 1}.", f"backbone.stem.{k}.") for k in range(3)],
    *[
        (
            f"backbone.res_layers.{{s}}.blocks.{{b}}.{branch}.",
            f"backbone.stages.{{s}}.{{b}}.{conv}.",
        )
        for branch, conv in (("branch2a", "conv1"), ("branch2b", "conv2"), ("branch2c", "conv3"))
    ],
    # stage 1 keeps its stride: its projection shortcut is a plain ConvNormLayer; the others
    # (variant d, stride 2) are Sequential(pool, conv=ConvNormLayer)
    ("backbone.res_layers.0.blocks.{b}.short.conv.", "backbone.stages.0.{b}.shortcut.conv."),
    ("backbone.res_layers.0.blocks.{b}.short.norm.", "backbone.stages.0.{b}.shortcut.norm."),
    (
        "backbone.res_layers.{s}.blocks.{b}.short.conv.conv.",
        "backbone.stages.{s}.{b}.shortcut.conv.",
    ),
    (
        "backbone.res_layers.{s}.blocks.{b}.short.conv.norm.",
        "backbone.stages.{s}.{b}.shortcut.norm.",
    ),
]


def _csp(official: str, ours: str) -> list[tuple[str, str]]:
    """A CSPRepLayer -> our CspRep (RepVGG units: official conv1 is the 3x3, conv2 the 1x1)."""
    parts = [
        ("conv1", "branch1"),
        ("conv2", "branch2"),
        ("conv3", "out"),
        ("bottlenecks.{j}.conv1", "blocks.{j}.conv3"),
        ("bottlenecks.{j}.conv2", "blocks.{j}.conv1"),
    ]
    return [
        (f"encoder.{official}.{{i}}.{a}{conv}", f"encoder.{ours}.{{i}}.{b}{seq}")
        for a, b in parts
        for conv, seq in _CONV_NORM
    ]


_ENCODER = [
    *[(f"encoder.input_proj.{{i}}{a}", f"encoder.input_proj.{{i}}{b}") for a, b in _CONV_NORM],
    *[(f"encoder.lateral_convs.{{i}}{a}", f"encoder.lateral.{{i}}{b}") for a, b in _CONV_NORM],
    *[
        (f"encoder.downsample_convs.{{i}}{a}", f"encoder.downsample.{{i}}{b}")
        for a, b in _CONV_NORM
    ],
    *_csp("fpn_blocks", "fpn"),
    *_csp("pan_blocks", "pan"),
    *[
        (f"encoder.encoder.0.layers.{{i}}.{a}", f"encoder.aifi.{{i}}.{b}")
        for a, b in [
            ("self_attn.out_proj.", "self_attn.attn.out_proj."),
            ("norm1.", "attn_out.norm."),
            ("linear1.", "ffn.linear1."),
            ("linear2.", "ffn.linear2."),
            ("norm2.", "ffn.norm."),
        ]
    ],
]
_DECODER = [
    *[(f"decoder.input_proj.{{i}}{a}", f"decoder_proj.{{i}}{b}") for a, b in _CONV_NORM],
    *[
        (f"decoder.decoder.layers.{{i}}.{a}", f"decoder.layers.{{i}}.{b}")
        for a, b in [
            ("self_attn.out_proj.", "self_attn.attn.out_proj."),
            ("norm1.", "self_out.norm."),
            ("cross_attn.sampling_offsets.", "cross_attn.sampling_offsets."),
            ("cross_attn.attention_weights.", "cross_attn.attention_weights."),
            ("cross_attn.value_proj.", "cross_attn.value_proj."),
            ("cross_attn.output_proj.", "cross_attn.output_proj."),
            ("norm2.", "cross_out.norm."),
            ("linear1.", "ffn.linear1."),
            ("linear2.", "ffn.linear2."),
            ("norm3.", "ffn.norm."),
        ]
    ],
    ("decoder.query_pos_head.", "decoder.query_pos_head."),
    ("decoder.dec_bbox_head.{i}.", "decoder.box_head.{i}."),
    ("decoder.dec_score_head.{i}.", "class_head.{i}."),
    ("decoder.enc_output.proj.", "proposals.memory_proj."),
    ("decoder.enc_output.norm.", "proposals.memory_norm."),
    ("decoder.enc_score_head.", "proposals.class_head."),
    ("decoder.enc_bbox_head.", "proposals.box_head."),
    ("decoder.denoising_class_embed.", "denoising.label_embedding."),
]
RULES = _BACKBONE + _ENCODER + _DECODER
# packed q/k/v: official nn.MultiheadAttention prefix -> our attention module
PACKED = [
    ("encoder.encoder.0.layers.{i}.self_attn.", "encoder.aifi.{i}.self_attn."),
    ("decoder.decoder.layers.{i}.self_attn.", "decoder.layers.{i}.self_attn."),
]
POINTS_SCALE = "decoder.decoder.layers.{i}.cross_attn.num_points_scale"
# constants the official model keeps as buffers (and BatchNorm's step counters)
_CONSTANTS = re.compile(
    r"^decoder\.(anchors|valid_mask|decoder\.layers\.\d+\.cross_attn\.num_points_scale)$"
    r"|num_batches_tracked$"
)
FEATURE_STRIDES = (8, 16, 32)  # the decoder's levels: C3, C4, C5


def _compile(template: str) -> re.Pattern:
    """`{name}` placeholders become named digit groups; the template matches a name's start."""
    return re.compile("^" + re.sub(r"\\\{(\w)\\\}", r"(?P<\1>\\d+)", re.escape(template)))


def _rename(name: str, pairs: list[tuple[str, str]]) -> str | None:
    for source, target in pairs:
        match = _compile(source).match(name)
        if match:
            return target.format(**match.groupdict()) + name[match.end() :]
    return None


def official_to_ours(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(our state dict, the official names no rule maps); constants and counters are left out."""
    ours: dict[str, torch.Tensor] = {}
    unmapped = []
    for name, tensor in state.items():
        if _CONSTANTS.search(name):
            continue
        packed = _rename(name, PACKED)
        if packed is not None and "in_proj_" in packed:
            ours.update(split_packed(packed, tensor))
            continue
        new = _rename(name, RULES)
        if new is None:
            unmapped.append(name)
        else:
            ours[new] = tensor
    return ours, unmapped


def ours_to_official(
    state: dict[str, torch.Tensor],
    num_points: int | list[int] = 4,
    eval_size: tuple[int, int] | None = (640, 640),
) -> dict[str, torch.Tensor]:
    """Our RT-DETRv2 state dict under the official names, with the official constants:
    `num_points_scale` per decoder layer and, for an `eval_size` (H, W; the releases' 640x640),
    the `decoder.anchors` / `decoder.valid_mask` the official model precomputes for it."""
    reverse = [(b, a) for a, b in RULES]
    packed_pairs = [(b, a) for a, b in PACKED]
    official: dict[str, torch.Tensor] = {}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        match = re.match(r"^(.*\.self_attn\.)([qkv])_proj\.(weight|bias)$", name)
        prefix = _rename(match[1], packed_pairs) if match else None
        if match and prefix is not None:
            pending.setdefault((prefix, match[3]), {})[match[2]] = tensor
            continue
        new = _rename(name, reverse)
        if new is None:
            raise ValueError(f"{name} has no official RT-DETRv2 name")
        official[new] = tensor
    for (prefix, kind), parts in pending.items():
        official[f"{prefix}in_proj_{kind}"] = torch.cat([parts[p] for p in "qkv"])
    levels = len({m[1] for k in state if (m := re.match(r"^decoder_proj\.(\d+)\.", k))})
    layers = {m[1] for k in state if (m := re.match(r"^decoder\.layers\.(\d+)\.", k))}
    points = [num_points] * levels if isinstance(num_points, int) else num_points
    scale = torch.cat([torch.full((p,), 1 / p) for p in points])
    for i in layers:
        official[POINTS_SCALE.format(i=i)] = scale.clone()
    if eval_size is not None:
        height, width = eval_size
        shapes = [(int(height / s), int(width / s)) for s in FEATURE_STRIDES[:levels]]
        logit, usable = grid_anchors(tuple(shapes), torch.device("cpu"), torch.float32)
        official["decoder.anchors"] = logit.masked_fill(~usable, torch.inf)  # [1,S,4]
        official["decoder.valid_mask"] = usable.clone()  # [1,S,1]
    return official
