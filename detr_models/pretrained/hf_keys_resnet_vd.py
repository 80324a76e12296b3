"""Hugging Face RT-DETR ResNet-vd weight names (the backbone inside an RT-DETR/RT-DETRv2
detector, `model.backbone.model.*`) -> this product's `backbone.*` (detr_models/resnet_vd.py),
and the depth an HF backbone config describes."""

from __future__ import annotations

import re
from collections.abc import Callable

from detr_models.resnet_vd import RESNET_VD_LAYOUTS, STAGE_WIDTHS, STEM_WIDTH

_PREFIX = r"^model\.backbone\.model\."
_BLOCK = _PREFIX + r"encoder\.stages\.(\d)\.layers\.(\d+)\."
_PARTS = {"convolution": "conv", "normalization": "norm"}

# applied in order with re.subn(pattern, replacement, name, count=1); the first match wins
RESNET_VD_RULES: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
    (
        _PREFIX + r"embedder\.embedder\.(\d)\.(convolution|normalization)\.",
        lambda m: f"backbone.stem.{m[1]}.{_PARTS[m[2]]}.",
    ),
    (
        _BLOCK + r"layer\.(\d)\.(convolution|normalization)\.",
        lambda m: f"backbone.stages.{m[1]}.{m[2]}.conv{int(m[3]) + 1}.{_PARTS[m[4]]}.",
    ),
    # a strided shortcut is Sequential(AvgPool2d, projection) in transformers: index 1
    (
        _BLOCK + r"shortcut\.(?:1\.)?(convolution|normalization)\.",
        lambda m: f"backbone.stages.{m[1]}.{m[2]}.shortcut.{_PARTS[m[3]]}.",
    ),
]

# transformers' RTDetrResNetConfig defaults, for fields a config dict leaves out
_HF_DEFAULTS = {
    "num_channels": 3,
    "embedding_size": 64,
    "hidden_sizes": [256, 512, 1024, 2048],
    "depths": [3, 4, 6, 3],
    "layer_type": "bottleneck",
    "hidden_act": "relu",
    "downsample_in_first_stage": False,
    "downsample_in_bottleneck": False,
}


def resnet_vd_depth(hf_backbone_config: dict) -> int:
    """18, 34, 50 or 101 for an HF RTDetrResNetConfig dict (`backbone_config` of an RT-DETR
    config.json); ValueError when it is not one of those four published ResNet-vd layouts."""
    config = {**_HF_DEFAULTS, **hf_backbone_config}
    described = (config["layer_type"], tuple(config["depths"]))
    depth = next((d for d, layout in RESNET_VD_LAYOUTS.items() if layout == described), None)
    if depth is None:
        known = ", ".join(f"{d}: {t} {list(b)}" for d, (t, b) in RESNET_VD_LAYOUTS.items())
        raise ValueError(
            f"HF backbone config layer_type={described[0]!r} depths={list(described[1])} is not "
            f"a ResNet-vd this product builds ({known})"
        )
    expected = {
        "num_channels": 3,
        "embedding_size": STEM_WIDTH,
        "hidden_sizes": list(STAGE_WIDTHS[described[0]]),
        "hidden_act": "relu",
        "downsample_in_first_stage": False,
        "downsample_in_bottleneck": False,
    }
    wrong = {k: config[k] for k, v in expected.items() if _listed(config[k]) != v}
    if wrong:
        raise ValueError(
            f"HF backbone config differs from ResNet-vd-{depth} in {wrong}; expected "
            f"{ {k: expected[k] for k in wrong} }"
        )
    return depth


def _listed(value):
    return list(value) if isinstance(value, (list, tuple)) else value
