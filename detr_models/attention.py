"""Multi-head attention on batch-first tensors where queries/keys may be wider than values.

Conditional DETR and DAB-DETR concatenate a content part and a spatial part per head, so the
query/key width is twice the value width; projections are done by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def attention_mask(
    key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None
) -> torch.Tensor | None:
    """Combine key padding [B,Lk] and a blocking mask [Lq,Lk] (both True = blocked) into the
    boolean "may attend" mask [B,1,Lq,Lk] (or [1,1,Lq,Lk]) that SDPA expects."""
    allowed = None
    if key_padding_mask is not None:
        allowed = ~key_padding_mask[:, None, None, :]  # [B,1,1,Lk]
    if attn_mask is not None:
        block = ~attn_mask[None, None]  # [1,1,Lq,Lk]
        allowed = block if allowed is None else allowed & block
    return allowed


@dataclass(frozen=True)
class BlockDiagonal:
    """Self-attention only within consecutive query sets (extra query groups never see the
    main queries or each other).

    Attention runs set by set: it costs sum(n_i^2) instead of (sum n_i)^2 and needs no mask, so
    SDPA keeps its fast kernels (the attention of 300 + 300 queries runs 2-3x faster than under a
    dense mask on the CPU; a whole R-50 distillation step 5-20% faster, see
    bench/results/step_time_dense_mask.md).
    """

    sizes: tuple[int, ...]

    def dense(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The equivalent [Q,Q] blocking mask (True = may not attend)."""
        total = sum(self.sizes)
        mask = torch.ones((total, total), dtype=torch.bool, device=device)
        start = 0
        for size in self.sizes:
            mask[start : start + size, start : start + size] = False
            start += size
        return mask


@dataclass(frozen=True)
class DenoisingLayout:
    """Self-attention of [denoising groups, main queries, extra groups...] without a mask:
    `groups` denoising groups of `group_size` queries first, each seeing itself and the main
    queries; then `sizes` (main, extra groups), each seeing only itself (DINO / RT-DETR with
    distillation groups). Each part runs as its own unmasked attention, so SDPA keeps its
    fast kernels; `dense()` is the equivalent mask."""

    groups: int
    group_size: int
    sizes: tuple[int, ...]

    def dense(self, device: torch.device | str | None = None) -> torch.Tensor:
        """The equivalent [T,T] blocking mask (True = may not attend)."""
        n, main = self.groups * self.group_size, self.sizes[0]
        mask = torch.ones((n + sum(self.sizes),) * 2, dtype=torch.bool, device=device)
        mask[n:, n:] = BlockDiagonal(self.sizes).dense(device)
        group_of = torch.arange(n, device=device) // self.group_size
        mask[:n, :n] = group_of[:, None] != group_of[None, :]
        mask[:n, n : n + main] = False
        return mask


def _denoising_attention(q, k, v, layout: DenoisingLayout, dropout: float) -> torch.Tensor:
    """Attention under a `DenoisingLayout`: q/k/v [B,h,T,d] -> [B,h,T,dv]."""
    g, s, main = layout.groups, layout.group_size, layout.sizes[0]
    n = g * s
    rest = list(layout.sizes)
    parts = [
        F.scaled_dot_product_attention(qi, ki, vi, dropout_p=dropout)
        for qi, ki, vi in zip(
            q[:, :, n:].split(rest, 2),
            k[:, :, n:].split(rest, 2),
            v[:, :, n:].split(rest, 2),
            strict=True,
        )
    ]

    def with_main(x: torch.Tensor) -> torch.Tensor:  # [B,h,G,S+main,d]: own group, then main
        own = x[:, :, :n].unflatten(2, (g, s))
        shared = x[:, :, n : n + main, None].transpose(2, 3).expand(-1, -1, g, -1, -1)
        return torch.cat((own, shared), 3)

    denoised = F.scaled_dot_product_attention(
        q[:, :, :n].unflatten(2, (g, s)), with_main(k), with_main(v), dropout_p=dropout
    )  # [B,h,G,S,dv]
    return torch.cat([denoised.flatten(2, 3), *parts], 2)


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over pre-projected q, k, v, with an output projection."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.dropout = dropout
        self.out_proj = nn.Linear(dim, dim)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | BlockDiagonal | DenoisingLayout | None = None,
    ) -> torch.Tensor:
        """q [B,Lq,Dqk], k [B,Lk,Dqk], v [B,Lk,D] -> [B,Lq,D]; Dqk may differ from D.

        `attn_mask` is a [Lq,Lk] blocking mask or, for self-attention, a `BlockDiagonal` or a
        `DenoisingLayout` (no key padding with those)."""
        b, lq, _ = q.shape
        h = self.num_heads
        q = q.view(b, lq, h, -1).transpose(1, 2)  # [B,h,Lq,dqk]
        k = k.view(b, k.shape[1], h, -1).transpose(1, 2)  # [B,h,Lk,dqk]
        v = v.view(b, v.shape[1], h, -1).transpose(1, 2)  # [B,h,Lk,dv]
        dropout = self.dropout if self.training else 0.0
        if isinstance(attn_mask, DenoisingLayout):
            if key_padding_mask is not None:
                raise ValueError("a DenoisingLayout takes no key padding mask")
            out = _denoising_attention(q, k, v, attn_mask, dropout)
        elif isinstance(attn_mask, BlockDiagonal):
            sizes = list(attn_mask.sizes)
            pads = (
                key_padding_mask.split(sizes, 1)
                if key_padding_mask is not None
                else [None] * len(sizes)
            )
            parts = [
                F.scaled_dot_product_attention(
                    qi, ki, vi, attn_mask=attention_mask(pad, None), dropout_p=dropout
                )
                for qi, ki, vi, pad in zip(
                    q.split(sizes, 2), k.split(sizes, 2), v.split(sizes, 2), pads, strict=True
                )
            ]
            out = torch.cat(parts, 2)  # [B,h,Lq,dv]
        else:
            mask = attention_mask(key_padding_mask, attn_mask)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        return self.out_proj(out.transpose(1, 2).reshape(b, lq, -1))


class SelfAttention(nn.Module):
    """Standard attention block: q = k = x + pos, v = x (DETR's encoder and decoder)."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.attn = MultiHeadAttention(dim, num_heads, dropout)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        attn_mask: torch.Tensor | BlockDiagonal | None = None,
    ) -> torch.Tensor:
        return self.attn(
            self.q_proj(query), self.k_proj(key), self.v_proj(value), key_padding_mask, attn_mask
        )
