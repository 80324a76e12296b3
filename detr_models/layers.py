"""Small building blocks shared by encoders, decoders and heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them (box heads, reference heads)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        outs = [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, outs, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class FeedForward(nn.Module):
    """Post-norm feed-forward block: x + dropout(W2 act(W1 x)), then LayerNorm; act is ReLU,
    PReLU (one learned slope, as DAB-DETR) or GELU (RT-DETR's encoder)."""

    def __init__(
        self, dim: int, ffn_dim: int, dropout: float = 0.0, activation: str = "relu"
    ) -> None:
        super().__init__()
        if activation not in ("relu", "prelu", "gelu"):
            raise ValueError(f"activation must be relu, prelu or gelu, got {activation!r}")
        self.linear1 = nn.Linear(dim, ffn_dim)
        self.linear2 = nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)
        self.activation = nn.PReLU() if activation == "prelu" else None
        self.gelu = activation == "gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.linear1(x)
        if self.activation is not None:
            hidden = self.activation(hidden)
        else:
            hidden = F.gelu(hidden) if self.gelu else F.relu(hidden)
        y = self.linear2(self.dropout(hidden))
        return self.norm(x + self.dropout(y))


class ResidualNorm(nn.Module):
    """Post-norm residual: LayerNorm(x + dropout(y))."""

    def __init__(self, dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(y))


class MaskedGroupNorm(nn.GroupNorm):
    """GroupNorm whose statistics ignore padded pixels, so padding an image into a larger
    batch does not change its normalised features. mask [B,H,W] is True on padding."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return super().forward(x)
        b, c, h, w = x.shape
        valid = (~mask).to(x.dtype)[:, None]  # [B,1,H,W]
        grouped = x.view(b, self.num_groups, c // self.num_groups, h, w)
        weight = valid.view(b, 1, 1, h, w)
        count = weight.sum(dim=(2, 3, 4), keepdim=True).clamp(min=1) * (c // self.num_groups)
        mean = (grouped * weight).sum(dim=(2, 3, 4), keepdim=True) / count
        var = (((grouped - mean) * weight) ** 2).sum(dim=(2, 3, 4), keepdim=True) / count
        normed = ((grouped - mean) / torch.sqrt(var + self.eps)).view(b, c, h, w)
        if self.affine:
            normed = normed * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return normed * valid  # padding stays exactly zero


class PerStage(nn.ModuleList):
    """One head per decoder stage (box refinement): x [L,...] -> stack(head_l(x[l]))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([head(x[i]) for i, head in enumerate(self)])


class SoftmaxClassHead(nn.Module):
    """The reference DETR classifier: a softmax over K classes + "no object" (`linear` has
    K+1 outputs). It returns, for the K real classes, the logits whose sigmoid is the softmax
    probability (log p - log(1-p)), so everything downstream reads it like a sigmoid head."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, num_classes + 1)
        self.keep: torch.Tensor | None = None  # a subset of the classes (restrict_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_p = self.linear(x).float().log_softmax(-1)[..., :-1]
        if self.keep is not None:
            log_p = log_p.index_select(-1, self.keep)
        log_p = log_p.clamp(max=-1e-7)
        return (log_p - torch.log(-torch.expm1(log_p))).to(x.dtype)


def cached(function):
    """`function` through its lru_cache, or around it while torch.export traces (sizes are
    symbolic there, and a cache keyed by them would freeze one size into the graph)."""
    if torch.compiler.is_exporting():
        return function.__wrapped__
    return function
