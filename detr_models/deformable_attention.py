"""Multi-scale deformable attention (Deformable DETR) in plain PyTorch, no compiled extension.

Each query samples a few points per head on every feature level around its reference point and
returns their attention-weighted sum. Feature levels are flattened row-major into one sequence of
length S = sum_l H_l * W_l, level after level.

Coordinate convention: sampling locations are normalised (x, y) in [0, 1] of each level's map,
0 being the left/top edge and 1 the right/bottom edge, so pixel i has its centre at (i + 0.5) / W.
`F.grid_sample` with align_corners=False maps -1 to the left edge of the first pixel and +1 to the
right edge of the last, hence grid = 2 * loc - 1. Sampling is bilinear and the map is surrounded
by zeros, so a location half a pixel outside the map gets half the edge pixel's value.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Shapes = torch.Tensor | list[tuple[int, int]]


def level_sizes(spatial_shapes: Shapes) -> list[tuple[int, int]]:
    """[(H_l, W_l)] of a [L,2] tensor, or of a list of pairs as given. The models pass lists
    built from their feature maps' shapes: under torch.export those sizes stay symbolic, which
    a tensor's `.tolist()` cannot give."""
    if isinstance(spatial_shapes, torch.Tensor):
        if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
            raise ValueError(f"spatial_shapes must be [L, 2], got {tuple(spatial_shapes.shape)}")
        return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]
    return [(h, w) for h, w in spatial_shapes]


def shapes_tensor(sizes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
    """[L,2] long (H_l, W_l) of level sizes (symbolic sizes stay symbolic under export)."""

    def scalar(n: int) -> torch.Tensor:
        return torch.full((), n, dtype=torch.long, device=device)

    return torch.stack([torch.stack((scalar(h), scalar(w))) for h, w in sizes])


def _level_sizes(spatial_shapes: Shapes, value: torch.Tensor) -> list[tuple[int, int]]:
    """Check spatial_shapes against value [B,S,...] and return [(H_l, W_l)]."""
    sizes = level_sizes(spatial_shapes)
    total = sum(h * w for h, w in sizes)
    if value.shape[1] != total:
        raise ValueError(
            f"value has {value.shape[1]} positions but spatial_shapes {sizes} sum to {total}"
        )
    return sizes


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: Shapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Bilinearly sample every level at the given locations and sum with the given weights.

    value [B,S,H,Dh], spatial_shapes [L,2] long (H_l, W_l), sampling_locations [B,Q,H,L,P,2]
    normalised (x, y), attention_weights [B,Q,H,L,P] -> [B,Q,H*Dh]. Uses `F.grid_sample`, one
    call per level with batch and heads folded together.
    """
    b, _, num_heads, head_dim = value.shape
    _, q, _, num_levels, num_points, _ = sampling_locations.shape
    sizes = _level_sizes(spatial_shapes, value)
    per_level = value.split([h * w for h, w in sizes], dim=1)
    grids = 2 * sampling_locations - 1  # [B,Q,H,L,P,2]
    sampled = []
    for level, (h, w) in enumerate(sizes):
        # Fold heads into the batch so one grid_sample call serves all heads of a level.
        v = per_level[level].permute(0, 2, 3, 1).reshape(b * num_heads, head_dim, h, w)
        grid = grids[:, :, :, level].transpose(1, 2)  # [B,H,Q,P,2]
        grid = grid.reshape(b * num_heads, q, num_points, 2)
        sampled.append(
            F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # [B*H,Dh,Q,P]
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # [B*H,Dh,Q,L*P]
    weights = attention_weights.transpose(1, 2).reshape(
        b * num_heads, 1, q, num_levels * num_points
    )  # [B*H,1,Q,L*P]
    out = (stacked * weights).sum(-1)  # [B*H,Dh,Q]
    return out.view(b, num_heads * head_dim, q).transpose(1, 2).contiguous()  # [B,Q,H*Dh]


def ragged_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: Shapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    points: list[int],
) -> torch.Tensor:
    """`multi_scale_deformable_attention` with `points[l]` points on level l (RT-DETRv2).

    sampling_locations [B,Q,H,T,2] and attention_weights [B,Q,H,T], T = sum(points), the
    points of level 0 first -> [B,Q,H*Dh]."""
    b, _, num_heads, head_dim = value.shape
    q = sampling_locations.shape[1]
    sizes = _level_sizes(spatial_shapes, value)
    per_level = value.split([h * w for h, w in sizes], dim=1)
    grids = (2 * sampling_locations - 1).transpose(1, 2).flatten(0, 1)  # [B*H,Q,T,2]
    sampled = []
    for (h, w), v, grid in zip(sizes, per_level, grids.split(points, dim=2), strict=True):
        v = v.permute(0, 2, 3, 1).reshape(b * num_heads, head_dim, h, w)
        sampled.append(
            F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # [B*H,Dh,Q,P_l]
    weights = attention_weights.transpose(1, 2).reshape(b * num_heads, 1, q, sum(points))
    out = (torch.cat(sampled, dim=-1) * weights).sum(-1)  # [B*H,Dh,Q]
    return out.view(b, num_heads * head_dim, q).transpose(1, 2).contiguous()


def naive_multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: Shapes,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Reference for `multi_scale_deformable_attention` with hand-written bilinear sampling.

    Same arguments and output. Slow and memory-hungry on purpose (it gathers the four
    neighbours of every point explicitly); meant for tests only.
    """
    b, _, num_heads, head_dim = value.shape
    _, q, _, _, num_points, _ = sampling_locations.shape
    sizes = _level_sizes(spatial_shapes, value)
    per_level = value.split([h * w for h, w in sizes], dim=1)
    out = value.new_zeros(b, q, num_heads, head_dim)
    for level, (h, w) in enumerate(sizes):
        v = per_level[level].transpose(1, 2)  # [B,H,H_l*W_l,Dh]
        loc = sampling_locations[:, :, :, level]  # [B,Q,H,P,2]
        x = loc[..., 0] * w - 0.5  # [B,Q,H,P] pixel coordinate, centres at integers
        y = loc[..., 1] * h - 0.5
        x0 = x.floor()
        y0 = y.floor()
        # Write the weights as x - x0 and 1 - (x - x0) rather than via abs(), so the gradient
        # at integer coordinates is the same one-sided derivative that grid_sample uses.
        fx = x - x0
        fy = y - y0
        corners = [
            (x0, y0, (1 - fx) * (1 - fy)),
            (x0 + 1, y0, fx * (1 - fy)),
            (x0, y0 + 1, (1 - fx) * fy),
            (x0 + 1, y0 + 1, fx * fy),
        ]
        sample = 0
        for cx, cy, weight in corners:
            inside = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
            index = cy.clamp(0, h - 1).long() * w + cx.clamp(0, w - 1).long()  # [B,Q,H,P]
            index = index.permute(0, 2, 1, 3).reshape(b, num_heads, q * num_points, 1)
            picked = v.gather(2, index.expand(-1, -1, -1, head_dim))  # [B,H,Q*P,Dh]
            picked = picked.view(b, num_heads, q, num_points, head_dim).transpose(1, 2)
            sample = sample + picked * (weight * inside)[..., None]  # [B,Q,H,P,Dh]
        out = out + (sample * attention_weights[:, :, :, level, :, None]).sum(3)  # [B,Q,H,Dh]
    return out.reshape(b, q, num_heads * head_dim)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over a flattened multi-level feature map.

    Each query predicts `num_points` sampling offsets and attention weights per head and level
    from its own features; the values are sampled around the query's reference point.
    `num_points` may be a list, one count per level (RT-DETRv2; box references only): the
    points of level 0 come first in the offset and weight layout.
    """

    def __init__(
        self,
        dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int | list[int] = 4,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden dim {dim} is not divisible by {num_heads} heads")
        points = [num_points] * num_levels if isinstance(num_points, int) else list(num_points)
        if len(points) != num_levels or min(points) < 1:
            raise ValueError(f"num_points {num_points}: one positive count per level")
        self.dim = dim
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.points = points
        self.num_points = points[0] if len(set(points)) == 1 else None  # None: ragged
        total = sum(points)
        self.sampling_offsets = nn.Linear(dim, num_heads * total * 2)
        self.attention_weights = nn.Linear(dim, num_heads * total)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Standard init: at the start each head looks in its own direction, at growing radii."""
        h = self.num_heads
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(h, dtype=torch.float64) * (2 * math.pi / h)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [H,2]
        # Scale so the larger component is 1: the first point lands on a neighbouring pixel.
        directions = directions / directions.abs().amax(dim=-1, keepdim=True)
        # points 1..P_l of every level at growing radii, the same pattern on every level
        radii = torch.cat([torch.arange(1, p + 1, dtype=torch.float64) for p in self.points])
        bias = directions[:, None, :] * radii[None, :, None]  # [H,T,2]
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for layer in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: Shapes,
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attend from queries to the multi-level value map.

        query [B,Q,D]; reference_points [B,Q,L,2] normalised (x, y) or [B,Q,L,4] normalised
        (cx, cy, w, h); value [B,S,D]; spatial_shapes [L,2] long (H_l, W_l); padding_mask [B,S]
        True on padding, or None. Returns [B,Q,D].
        """
        b, q, _ = query.shape
        h, lv, p = self.num_heads, self.num_levels, self.num_points
        if p is None:
            return self._ragged(query, reference_points, value, spatial_shapes, padding_mask)
        sizes = level_sizes(spatial_shapes)
        if len(sizes) != lv:
            raise ValueError(f"spatial_shapes must have {lv} rows (one per level), got {sizes}")
        if reference_points.dim() != 4 or reference_points.shape[2] != lv:
            raise ValueError(
                f"reference_points must be [B, Q, {lv}, 2 or 4], "
                f"got {tuple(reference_points.shape)}"
            )

        value = self.value_proj(value)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(b, value.shape[1], h, self.dim // h)  # [B,S,H,Dh]

        offsets = self.sampling_offsets(query).view(b, q, h, lv, p, 2)
        weights = self.attention_weights(query).view(b, q, h, lv * p).softmax(-1)
        weights = weights.view(b, q, h, lv, p)

        ref_dim = reference_points.shape[-1]
        if ref_dim == 2:
            # Offsets are in pixels of each level; divide by (W_l, H_l) to normalise them.
            level_size = shapes_tensor(sizes, offsets.device).flip(-1).to(offsets.dtype)  # (W, H)
            ref = reference_points[:, :, None, :, None, :]  # [B,Q,1,L,1,2]
            locations = ref + offsets / level_size[None, None, None, :, None, :]
        elif ref_dim == 4:
            # Offsets are relative to the box: points spread up to about half its size.
            ref_xy = reference_points[:, :, None, :, None, :2]  # [B,Q,1,L,1,2]
            ref_wh = reference_points[:, :, None, :, None, 2:]
            locations = ref_xy + offsets / p * ref_wh * 0.5
        else:
            raise ValueError(
                "reference_points must end in 2 (x, y) or 4 (cx, cy, w, h) coordinates, "
                f"got {ref_dim}"
            )  # locations: [B,Q,H,L,P,2]

        out = multi_scale_deformable_attention(value, sizes, locations, weights)
        return self.output_proj(out)

    def _ragged(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        value: torch.Tensor,
        spatial_shapes: Shapes,
        padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The forward with a count of points per level: box references [B,Q,L,4] only; each of
        level l's points moves by offset / P_l * half the box size (RT-DETRv2)."""
        if reference_points.shape[-1] != 4:
            raise ValueError("points per level need box references [B, Q, L, 4]")
        b, q, _ = query.shape
        h, total = self.num_heads, sum(self.points)
        value = self.value_proj(value)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(b, value.shape[1], h, self.dim // h)
        offsets = self.sampling_offsets(query).view(b, q, h, total, 2)
        weights = self.attention_weights(query).view(b, q, h, total).softmax(-1)
        level = torch.repeat_interleave(
            torch.arange(self.num_levels, device=query.device),
            torch.tensor(self.points, device=query.device),
        )  # [T]: the level of every point
        scale = 1.0 / torch.tensor(self.points, device=query.device, dtype=offsets.dtype)[level]
        ref = reference_points[:, :, None, level]  # [B,Q,1,T,4]
        locations = ref[..., :2] + offsets * scale[:, None] * ref[..., 2:] * 0.5  # [B,Q,H,T,2]
        out = ragged_deformable_attention(value, spatial_shapes, locations, weights, self.points)
        return self.output_proj(out)


def valid_ratios(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Share of each image's feature map that is not padding: mask [B,H,W] (True on padding)
    -> [B,2] as (valid width / W, valid height / H).

    Assumes DETR-style padding at the bottom and right, so the first row and column tell the
    valid width and height.
    """
    _, h, w = mask.shape
    valid_h = (~mask[:, :, 0]).sum(1)  # [B]
    valid_w = (~mask[:, 0, :]).sum(1)  # [B]
    return torch.stack([valid_w / w, valid_h / h], dim=-1).to(dtype)  # [B,2]
