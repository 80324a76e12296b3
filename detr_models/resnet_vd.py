"""ResNet-vd, the backbone of RT-DETR and RT-DETRv2 (the reference's `PResNet`, transformers'
`RTDetrResNetBackbone`), with frozen BatchNorm.

The vd changes to a torchvision ResNet: a deep stem of three 3x3 convs instead of one 7x7, the
stride of a bottleneck on its 3x3 conv, and downsampling shortcuts that average-pool 2x2 before
a stride-1 1x1 conv, so the shortcut sees every input pixel.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from detr_models.backbone import STRIDES, StagedBackbone, check_levels

# depth -> (block type, blocks per stage); the four published RT-DETR backbones
RESNET_VD_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}
STEM_WIDTH = 64
STAGE_WIDTHS = {"basic": (64, 128, 256, 512), "bottleneck": (256, 512, 1024, 2048)}
BOTTLENECK_REDUCTION = 4


class ConvNorm(nn.Module):
    """k x k conv (padding k//2, no bias), frozen BatchNorm (eps 1e-5, as transformers'
    RT-DETR frozen norm), then ReLU unless `relu` is False."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int = 1, relu: bool = True
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
        self.norm = FrozenBatchNorm2d(c_out, eps=1e-5)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.norm(self.conv(x)))


class Shortcut(nn.Module):
    """Projection shortcut: 2x2 average pool (ceil mode) when the block strides, then a
    stride-1 1x1 conv and frozen BatchNorm."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2, 2, ceil_mode=True) if stride == 2 else nn.Identity()
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.norm = FrozenBatchNorm2d(c_out, eps=1e-5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(self.pool(x)))


class BasicBlock(nn.Module):
    """Two 3x3 convs (the first strides) plus the shortcut, then ReLU (ResNet-18/34)."""

    def __init__(self, c_in: int, c_out: int, stride: int, project: bool) -> None:
        super().__init__()
        self.conv1 = ConvNorm(c_in, c_out, 3, stride)
        self.conv2 = ConvNorm(c_out, c_out, 3, relu=False)
        self.shortcut = Shortcut(c_in, c_out, stride) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (strides, the vd choice), 1x1 expand, plus the shortcut, then ReLU
    (ResNet-50/101)."""

    def __init__(self, c_in: int, c_out: int, stride: int, project: bool) -> None:
        super().__init__()
        mid = c_out // BOTTLENECK_REDUCTION
        self.conv1 = ConvNorm(c_in, mid, 1)
        self.conv2 = ConvNorm(mid, mid, 3, stride)
        self.conv3 = ConvNorm(mid, c_out, 1, relu=False)
        self.shortcut = Shortcut(c_in, c_out, stride) if project else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv3(self.conv2(self.conv1(x))) + self.shortcut(x))


class ResNetVd(StagedBackbone):
    """ResNet-vd 18/34/50/101 with frozen BatchNorm returning the requested levels (C2..C5,
    strides 4..32; RT-DETR uses C3..C5).

    Layout as RT-DETR's published backbones: deep stem (3x3 convs of 32, 32, 64 channels, the
    first with stride 2) and a 3x3 max pool; stage 1 keeps stride 4; the first block of every
    stage has a projection shortcut (also in ResNet-18/34, where stage 1 keeps its width).
    frozen_stages: -1 trains every conv (transformers' behaviour), 0 freezes the stem, k the
    stem and stages 1..k.
    """

    def __init__(
        self,
        depth: int = 50,
        levels: Sequence[str] = ("C3", "C4", "C5"),
        frozen_stages: int = -1,
    ) -> None:
        super().__init__()
        if depth not in RESNET_VD_LAYOUTS:
            raise ValueError(
                f"ResNet-vd depth must be one of {sorted(RESNET_VD_LAYOUTS)}, got {depth}"
            )
        self.levels = check_levels(levels)
        block_type, blocks = RESNET_VD_LAYOUTS[depth]
        block = BasicBlock if block_type == "basic" else BottleneckBlock
        widths = STAGE_WIDTHS[block_type]
        half = STEM_WIDTH // 2
        self.stem = nn.Sequential(
            ConvNorm(3, half, 3, 2),
            ConvNorm(half, half, 3),
            ConvNorm(half, STEM_WIDTH, 3),
            nn.MaxPool2d(3, 2, 1),
        )  # [B,3,H,W] -> [B,64,H/4,W/4]
        stages = []
        c_in = STEM_WIDTH
        for index, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            stride = 1 if index == 0 else 2
            layers = [block(c_in, width, stride, project=True)]
            layers += [block(width, width, 1, project=False) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            c_in = width
        self.stages = nn.ModuleList(stages)
        channels = dict(zip(("C2", "C3", "C4", "C5"), widths, strict=True))
        self.channels = [channels[lv] for lv in self.levels]
        self.strides = [STRIDES[lv] for lv in self.levels]
        frozen = [self.stem, *self.stages][: frozen_stages + 1] if frozen_stages >= 0 else []
        for module in frozen:
            module.requires_grad_(False)
