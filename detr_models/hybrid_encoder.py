"""RT-DETR's hybrid encoder: attention within the coarsest scale (AIFI: one transformer layer
on the stride-32 map with 2-D sine positions), then CNN fusion across scales (a top-down FPN
and a bottom-up PAN of CSP blocks made of RepVGG units)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from detr_models.encoder import EncoderLayer
from detr_models.layers import cached


class ConvNorm(nn.Sequential):
    """Conv (no bias) + BatchNorm, then SiLU when `act`."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, act: bool = True):
        layers = [
            nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - 1) // 2, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        super().__init__(*layers, *([nn.SiLU()] if act else []))


class RepVgg(nn.Module):
    """A 3x3 and a 1x1 conv branch summed, then SiLU (RepVGG's training-time form)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv3 = ConvNorm(channels, channels, 3, act=False)
        self.conv1 = ConvNorm(channels, channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.conv3(x) + self.conv1(x))


class CspRep(nn.Module):
    """Cross-stage-partial block: two 1x1 branches of width `expansion * out`, RepVGG units
    on one, summed, then a 1x1 conv back to `out` (none when the widths agree)."""

    def __init__(self, c_in: int, c_out: int, blocks: int = 3, expansion: float = 1.0) -> None:
        super().__init__()
        hidden = int(c_out * expansion)
        self.branch1 = ConvNorm(c_in, hidden, 1)
        self.branch2 = ConvNorm(c_in, hidden, 1)
        self.blocks = nn.Sequential(*(RepVgg(hidden) for _ in range(blocks)))
        self.out = ConvNorm(hidden, c_out, 1) if hidden != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.branch1(x)) + self.branch2(x))


@functools.lru_cache(maxsize=32)
def sincos_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """[H*W, dim] row-major: sin(y w), cos(y w), sin(x w), cos(x w) blocks over integer pixel
    indices, w = temperature^(-i / (dim/4)) (computed in float64; cached, not to be modified)."""
    quarter = dim // 4
    omega = temperature ** -(torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64),
        torch.arange(width, dtype=torch.float64),
        indexing="ij",
    )
    y, x = ys.reshape(-1, 1) * omega, xs.reshape(-1, 1) * omega
    return torch.cat((y.sin(), y.cos(), x.sin(), x.cos()), 1)


class HybridEncoder(nn.Module):
    """Backbone maps (finest first) -> fused maps of width `dim`, same strides.

    Input projections (1x1 conv + BN), AIFI on the last level, FPN top-down, PAN bottom-up.
    Padding is not masked: like the reference, RT-DETR sees a padded border as image content.
    """

    def __init__(
        self,
        in_channels: list[int],
        dim: int = 256,
        heads: int = 8,
        ffn_dim: int = 1024,
        layers: int = 1,
        dropout: float = 0.0,
        expansion: float = 1.0,
        temperature: float = 10000.0,
    ) -> None:
        super().__init__()
        self.dim, self.temperature = dim, temperature
        self.input_proj = nn.ModuleList(ConvNorm(c, dim, 1, act=False) for c in in_channels)
        self.aifi = nn.ModuleList(
            EncoderLayer(dim, heads, ffn_dim, dropout, "gelu") for _ in range(layers)
        )
        stages = len(in_channels) - 1
        self.lateral = nn.ModuleList(ConvNorm(dim, dim, 1) for _ in range(stages))
        self.fpn = nn.ModuleList(CspRep(2 * dim, dim, expansion=expansion) for _ in range(stages))
        self.downsample = nn.ModuleList(ConvNorm(dim, dim, 3, stride=2) for _ in range(stages))
        self.pan = nn.ModuleList(CspRep(2 * dim, dim, expansion=expansion) for _ in range(stages))

    def intra_scale(self, x: torch.Tensor) -> torch.Tensor:
        """AIFI on one map [B,D,H,W]."""
        b, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [B,HW,D]
        pos = cached(sincos_2d)(h, w, d, self.temperature).to(x.device, x.dtype)[None]
        for layer in self.aifi:
            tokens = layer(tokens, pos, None)
        return tokens.transpose(1, 2).reshape(b, d, h, w)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        maps = [proj(m) for proj, m in zip(self.input_proj, maps, strict=True)]
        if len(self.aifi):
            maps[-1] = self.intra_scale(maps[-1])
        top_down = [maps[-1]]  # coarsest first
        for i, (lateral, block) in enumerate(zip(self.lateral, self.fpn, strict=True)):
            finer = maps[-2 - i]
            top_down[-1] = lateral(top_down[-1])
            up = F.interpolate(top_down[-1], size=finer.shape[-2:], mode="nearest")
            top_down.append(block(torch.cat((up, finer), 1)))
        top_down.reverse()  # finest first
        fused = [top_down[0]]
        for i, (down, block) in enumerate(zip(self.downsample, self.pan, strict=True)):
            fused.append(block(torch.cat((down(fused[-1]), top_down[i + 1]), 1)))
        return fused
