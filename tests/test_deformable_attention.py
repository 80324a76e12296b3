import math

import pytest
import torch

from detr_models.deformable_attention import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attention,
    naive_multi_scale_deformable_attention,
    valid_ratios,
)

SHAPES = torch.tensor([[4, 5], [2, 3]])  # (H_l, W_l)
B, Q, HEADS, LEVELS, POINTS, HEAD_DIM = 2, 5, 2, 2, 3, 3
S = 4 * 5 + 2 * 3


def _toy_inputs(seed: int = 0, special: bool = True):
    """float64 value, locations and weights; with `special`, the first points sit on pixel
    centres, pixel edges, map edges and outside the map, at coordinates that are exact in
    float64 for both levels (so both paths see the same kinks)."""
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(B, S, HEADS, HEAD_DIM, generator=g, dtype=torch.float64)
    loc = torch.rand(B, Q, HEADS, LEVELS, POINTS, 2, generator=g, dtype=torch.float64)
    loc = loc * 1.6 - 0.3  # some points fall outside [0, 1]
    if special:
        # x: W is 5 or 3, so 0.5 is a pixel centre; 0 and 1 are the map edges.
        xs = [0.0, 0.5, 1.0, -0.2, 1.25]
        # y: H is 4 or 2; centres at k/8 or k/4, -0.125 / -0.25 is one pixel above the map.
        ys = [0.0, 0.125, 0.25, 0.5, 0.75, 0.875, 1.0, -0.125, -0.25, 1.25]
        pairs = torch.tensor([(x, y) for x in xs for y in ys], dtype=torch.float64)
        flat = loc.view(-1, 2)
        flat[: len(pairs)] = pairs
    weights = torch.rand(B, Q, HEADS, LEVELS * POINTS, generator=g, dtype=torch.float64)
    weights = weights.softmax(-1).view(B, Q, HEADS, LEVELS, POINTS)
    return value, loc, weights


def test_fast_path_matches_naive_reference():
    inputs = [t.requires_grad_() for t in _toy_inputs()]
    fast = multi_scale_deformable_attention(inputs[0], SHAPES, inputs[1], inputs[2])
    assert fast.shape == (B, Q, HEADS * HEAD_DIM)
    grad_out = torch.randn_like(fast)
    fast_grads = torch.autograd.grad(fast, inputs, grad_out)

    naive = naive_multi_scale_deformable_attention(inputs[0], SHAPES, inputs[1], inputs[2])
    naive_grads = torch.autograd.grad(naive, inputs, grad_out)

    torch.testing.assert_close(fast, naive, atol=1e-10, rtol=0)
    for a, b in zip(fast_grads, naive_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=0)


def test_fast_path_gradcheck():
    inputs = tuple(t.requires_grad_() for t in _toy_inputs(seed=1, special=False))
    assert torch.autograd.gradcheck(
        lambda v, loc, w: multi_scale_deformable_attention(v, SHAPES, loc, w), inputs
    )


@pytest.mark.parametrize(
    "fn", [multi_scale_deformable_attention, naive_multi_scale_deformable_attention]
)
def test_pixel_centre_returns_pixel_value(fn):
    shapes = torch.tensor([[2, 4], [4, 8]])
    value = torch.arange(2 * 4 + 4 * 8, dtype=torch.float32).view(1, -1, 1, 1) + 1
    loc = torch.zeros(1, 4, 1, 2, 1, 2)
    weights = torch.zeros(1, 4, 1, 2, 1)
    # Query 0: level 1, pixel (row 2, col 5); query 1: level 0, pixel (row 1, col 0).
    loc[0, 0, 0, 1, 0] = torch.tensor([5.5 / 8, 2.5 / 4])
    weights[0, 0, 0, 1] = 1
    loc[0, 1, 0, 0, 0] = torch.tensor([0.5 / 4, 1.5 / 2])
    weights[0, 1, 0, 0] = 1
    # Query 2: left edge of level 0 at row 0: half of pixel (0, 0), half zero padding.
    loc[0, 2, 0, 0, 0] = torch.tensor([0.0, 0.5 / 2])
    weights[0, 2, 0, 0] = 1
    # Query 3: well outside the map.
    loc[0, 3, 0, 0, 0] = torch.tensor([1.5, -0.5])
    weights[0, 3, 0, 0] = 1
    out = fn(value, shapes, loc, weights).flatten()
    expected = torch.tensor([8 + 2 * 8 + 5 + 1, 1 * 4 + 0 + 1, 0.5 * 1, 0.0])
    torch.testing.assert_close(out, expected, atol=0, rtol=0)


def test_value_length_must_match_shapes():
    value, loc, weights = _toy_inputs(special=False)
    with pytest.raises(ValueError, match="positions"):
        multi_scale_deformable_attention(value[:, :-1], SHAPES, loc, weights)


def _module_inputs(ref_dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dim = 16
    query = torch.randn(B, Q, dim, generator=g)
    if ref_dim == 2:
        ref = torch.rand(B, Q, LEVELS, 2, generator=g)
    else:
        ref = torch.cat(
            [torch.rand(B, Q, LEVELS, 2, generator=g), torch.rand(B, Q, LEVELS, 2, generator=g)],
            dim=-1,
        )
    value = torch.randn(B, S, dim, generator=g)
    return query, ref, value


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_module_output_shape(ref_dim):
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(dim=16, num_heads=4, num_levels=LEVELS, num_points=3)
    query, ref, value = _module_inputs(ref_dim)
    # Random offset weights so the query actually steers the sampling.
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.1)
    out = module(query, ref, value, SHAPES)
    assert out.shape == (B, Q, 16)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("ref_dim", [2, 4])
def test_padded_values_are_ignored(ref_dim):
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(dim=16, num_heads=4, num_levels=LEVELS, num_points=3)
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.5)
    torch.nn.init.normal_(module.attention_weights.weight, std=0.5)
    query, ref, value = _module_inputs(ref_dim)
    mask = torch.zeros(B, S, dtype=torch.bool)
    mask[1, 3:20:2] = True
    mask[0, 21:] = True
    changed = value.clone()
    changed[mask] = torch.randn(int(mask.sum()), 16) * 100
    out = module(query, ref, value, SHAPES, mask)
    out_changed = module(query, ref, changed, SHAPES, mask)
    torch.testing.assert_close(out, out_changed, atol=1e-6, rtol=0)
    # Without the mask the changed values do matter.
    assert not torch.allclose(module(query, ref, changed, SHAPES), out, atol=1e-3)


def test_standard_init_head_directions():
    heads, levels, points = 8, 2, 3
    module = MultiScaleDeformableAttention(
        dim=32, num_heads=heads, num_levels=levels, num_points=points
    )
    query = torch.zeros(1, 1, 32)
    offsets = module.sampling_offsets(query).view(heads, levels, points, 2)
    first = offsets[:, 0, 0]  # [H,2]
    angles = torch.atan2(first[:, 1], first[:, 0]) % (2 * math.pi)
    expected = torch.arange(heads) * (2 * math.pi / heads)
    torch.testing.assert_close(angles, expected, atol=1e-5, rtol=0)
    assert torch.allclose(first.abs().amax(-1), torch.ones(heads))
    for p in range(points):
        torch.testing.assert_close(
            offsets[:, :, p], offsets[:, :1, 0].expand(-1, levels, -1) * (p + 1)
        )
    weights = module.attention_weights(query)
    assert (weights == 0).all()


def test_module_validation():
    with pytest.raises(ValueError, match="divisible"):
        MultiScaleDeformableAttention(dim=30, num_heads=4)
    module = MultiScaleDeformableAttention(dim=16, num_heads=4, num_levels=LEVELS, num_points=3)
    query, ref, value = _module_inputs(2)
    with pytest.raises(ValueError, match="2 \\(x, y\\) or 4"):
        module(query, torch.rand(B, Q, LEVELS, 3), value, SHAPES)
    with pytest.raises(ValueError, match="rows"):
        module(query, ref, value[:, :20], SHAPES[:1])
    with pytest.raises(ValueError, match="reference_points"):
        module(query, ref[:, :, :1], value, SHAPES)
    with pytest.raises(ValueError, match="positions"):
        module(query, ref, value[:, :-1], SHAPES)


def test_valid_ratios():
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[1, 3:, :] = True  # 3 of 4 rows valid
    mask[1, :, 2:] = True  # 2 of 5 columns valid
    ratios = valid_ratios(mask)
    assert ratios.dtype == torch.float32
    torch.testing.assert_close(ratios, torch.tensor([[1.0, 1.0], [2 / 5, 3 / 4]]))


def test_points_per_level_sample_each_level_with_its_own_count():
    """RT-DETRv2's ragged layout: 2 points on level 0, 3 on level 1; every point's value is
    the bilinear sample of its own level, weighted as the softmax over all 5 says."""
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(dim=8, num_heads=2, num_levels=2, num_points=[2, 3])
    with torch.no_grad():
        for param in attn.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    shapes = torch.tensor([[6, 5], [3, 4]])
    value = torch.randn(1, 6 * 5 + 3 * 4, 8)
    query = torch.randn(1, 3, 8)
    refs = torch.rand(1, 3, 1, 4).clamp(0.2, 0.8).expand(-1, -1, 2, -1)
    out = attn(query, refs, value, shapes)
    # by hand: every point alone through the naive sampler, summed with its weight
    proj = attn.value_proj(value).view(1, -1, 2, 4)
    offsets = attn.sampling_offsets(query).view(1, 3, 2, 5, 2)
    weights = attn.attention_weights(query).view(1, 3, 2, 5).softmax(-1)
    levels, counts = [0, 0, 1, 1, 1], [2, 2, 3, 3, 3]
    per_level = proj.split([30, 12], dim=1)
    expected = 0
    for t, (level, count) in enumerate(zip(levels, counts, strict=True)):
        loc = (
            refs[:, :, level, None, :2]
            + offsets[:, :, :, t] / count * refs[:, :, level, None, 2:] * 0.5
        )
        sample = naive_multi_scale_deformable_attention(
            per_level[level],
            shapes[level : level + 1],
            loc[:, :, :, None, None],
            weights[:, :, :, t, None, None],
        )
        expected = expected + sample
    assert torch.allclose(out, attn.output_proj(expected), atol=1e-5)


def test_equal_points_per_level_are_the_uniform_layout():
    torch.manual_seed(0)
    attn = MultiScaleDeformableAttention(dim=8, num_heads=2, num_levels=2, num_points=[3, 3])
    assert attn.num_points == 3  # the uniform path: same parameters, same layout
    shapes = torch.tensor([[6, 5], [3, 4]])
    value, query = torch.randn(2, 42, 8), torch.randn(2, 4, 8)
    refs = torch.rand(2, 4, 2, 4).clamp(0.1, 0.9)
    assert torch.allclose(
        attn(query, refs, value, shapes), attn._ragged(query, refs, value, shapes, None), atol=1e-6
    )
