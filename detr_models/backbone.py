"""Backbones: torchvision ResNets with frozen BatchNorm, and a tiny conv net for CPU runs.

Each returns a list of feature maps for the requested levels (C2..C5, strides 4..32).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.ops import FrozenBatchNorm2d

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the normalisation of torchvision's ResNet weights
IMAGENET_STD = (0.229, 0.224, 0.225)
LEVELS = ("C2", "C3", "C4", "C5")
STRIDES = {"C2": 4, "C3": 8, "C4": 16, "C5": 32}
RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101}
RESNET_CHANNELS = {
    "resnet18": (64, 128, 256, 512),
    "resnet34": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "resnet101": (256, 512, 1024, 2048),
}


def check_levels(levels: Sequence[str]) -> list[str]:
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown or not levels:
        raise ValueError(
            f"backbone levels must be a non-empty subset of {LEVELS}, got {list(levels)}"
        )
    return sorted(levels, key=LEVELS.index)


class StagedBackbone(nn.Module):
    """A stem then four stages (C2..C5); returns the maps of `self.levels`."""

    stem: nn.Module
    stages: nn.ModuleList
    levels: list[str]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(images)
        out = []
        for level, stage in zip(LEVELS, self.stages, strict=True):
            x = stage(x)
            if level in self.levels:
                out.append(x)
        return out


class ResNetBackbone(StagedBackbone):
    """A torchvision ResNet with frozen BatchNorm returning the requested levels.

    frozen_stages: -1 trains everything, 0 freezes the stem, k freezes the stem and layer1..k
    (DETR's default is 1). `weights` is a local torchvision state-dict file or None (random).
    """

    def __init__(
        self,
        name: str = "resnet50",
        levels: Sequence[str] = ("C5",),
        frozen_stages: int = 1,
        weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(RESNETS)}")
        self.levels = check_levels(levels)
        net = RESNETS[name](weights=None, norm_layer=FrozenBatchNorm2d)
        if weights is not None:
            load_backbone_weights(net, weights, name)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.stages = nn.ModuleList([net.layer1, net.layer2, net.layer3, net.layer4])
        channels = dict(zip(LEVELS, RESNET_CHANNELS[name], strict=True))
        self.channels = [channels[lv] for lv in self.levels]
        self.strides = [STRIDES[lv] for lv in self.levels]
        frozen = [self.stem, *self.stages][: frozen_stages + 1] if frozen_stages >= 0 else []
        for module in frozen:
            module.requires_grad_(False)


TORCHVISION_PREFIX = "torchvision:"


def torchvision_weights(name: str, source: str):
    """torchvision's weights enum member for `torchvision:<NAME>` (e.g. IMAGENET1K_V1) of the
    ResNet `name`; ValueError listing the valid names."""
    from torchvision.models import get_model_weights

    choices = get_model_weights(name)
    wanted = source[len(TORCHVISION_PREFIX) :]
    if wanted not in choices.__members__:
        valid = ", ".join(TORCHVISION_PREFIX + m for m in choices.__members__)
        raise ValueError(f"{source!r} is not a torchvision weight of {name}; choose {valid}")
    return choices[wanted]


def load_backbone_weights(net: nn.Module, path: str | Path, name: str = "resnet50") -> None:
    """Load a torchvision ResNet state dict (the classifier head is ignored) from a local file,
    or `torchvision:<NAME>` downloaded by torchvision (cached in $TORCH_HOME)."""
    if str(path).startswith(TORCHVISION_PREFIX):
        weights = torchvision_weights(name, str(path))
        try:
            state = weights.get_state_dict(progress=False, check_hash=True)
        except Exception as err:
            raise ValueError(
                f"cannot download {path} ({type(err).__name__}); without internet, save "
                f"torchvision's {name} state dict to a file and give its path"
            ) from None
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        net.load_state_dict(state, strict=False)
        return
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"backbone weights file {path} is not a readable torch state dict: {err}"
        ) from None
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise ValueError(
            f"backbone weights file {path} does not fit this ResNet: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}"
        )


class TinyBackbone(StagedBackbone):
    """A small conv net (strides 4..32) for tests and CPU demos; trains from scratch."""

    def __init__(self, levels: Sequence[str] = ("C5",), width: int = 32) -> None:
        super().__init__()
        self.levels = check_levels(levels)
        widths = [width, width * 2, width * 4, width * 8]
        self.stem = nn.Sequential(_conv_block(3, width // 2, 2), _conv_block(width // 2, width, 2))
        self.stages = nn.ModuleList(
            [_conv_block(width, widths[0], 1)]
            + [_conv_block(widths[i - 1], widths[i], 2) for i in range(1, 4)]
        )
        self.channels = [widths[LEVELS.index(lv)] for lv in self.levels]
        self.strides = [STRIDES[lv] for lv in self.levels]


def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    groups = min(8, c_out)
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
        nn.GroupNorm(groups, c_out),
        nn.ReLU(inplace=True),
    )


def build_backbone(
    name: str,
    levels: Sequence[str],
    frozen_stages: int = 1,
    weights: str | Path | None = None,
    width: int = 32,
) -> nn.Module:
    """`tiny` or one of the torchvision ResNets."""
    if name == "tiny":
        return TinyBackbone(levels, width)
    return ResNetBackbone(name, levels, frozen_stages, weights)


def downsample_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Padding mask [B,H,W] -> [B,h,w] at a feature map's resolution."""
    return F.interpolate(mask[:, None].float(), size=size).to(torch.bool)[:, 0]
