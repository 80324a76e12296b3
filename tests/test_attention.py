"""Set-by-set self-attention (BlockDiagonal) must equal attention under the dense mask."""

import pytest
import torch

from detr_models.attention import BlockDiagonal, DenoisingLayout, MultiHeadAttention


@pytest.mark.parametrize("padded", [False, True])
def test_block_diagonal_equals_dense_mask(padded):
    torch.manual_seed(0)
    sizes = (5, 3, 4)
    attention = MultiHeadAttention(16, 4).eval()
    q, k, v = (torch.randn(2, sum(sizes), 16, requires_grad=True) for _ in range(3))
    pad = None
    if padded:  # a padded key in the second set of the first image
        pad = torch.zeros(2, sum(sizes), dtype=torch.bool)
        pad[0, 6] = True
    blocks = BlockDiagonal(sizes)
    fast = attention(q, k, v, pad, blocks)
    (grad_fast,) = torch.autograd.grad(fast.square().sum(), q)
    dense = attention(q, k, v, pad, blocks.dense())
    (grad_dense,) = torch.autograd.grad(dense.square().sum(), q)
    torch.testing.assert_close(fast, dense, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_fast, grad_dense, atol=1e-5, rtol=1e-5)
    # and the sets really are isolated: changing the last set leaves the first unchanged
    v2 = v.detach().clone()
    v2[:, -4:] += 10.0
    moved = attention(q, k, v2, pad, blocks)
    torch.testing.assert_close(moved[:, :8], fast[:, :8])
    assert not torch.allclose(moved[:, 8:], fast[:, 8:])


def test_dense_mask_layout():
    mask = BlockDiagonal((2, 1)).dense()
    expected = torch.tensor([[False, False, True], [False, False, True], [True, True, False]])
    assert torch.equal(mask, expected)


def test_the_denoising_layout_is_its_dense_mask_without_one():
    """Denoising groups (3 of 4) see themselves and the 5 main queries; main and an extra
    group of 2 see only themselves: computed part by part, the same as under the dense mask."""
    torch.manual_seed(0)
    layout = DenoisingLayout(groups=3, group_size=4, sizes=(5, 2))
    attn = MultiHeadAttention(16, 4)
    q, k, v = (torch.randn(2, 19, 16) for _ in range(3))
    dense = layout.dense()
    assert dense.shape == (19, 19)
    assert not dense[0, 3] and dense[0, 4] and not dense[0, 12] and dense[0, 17]  # group 0
    assert dense[12, 0] and not dense[12, 16] and dense[17, 12] and not dense[18, 17]
    assert torch.allclose(
        attn(q, k, v, attn_mask=layout), attn(q, k, v, attn_mask=dense), atol=1e-6
    )


def test_the_denoising_layout_agrees_with_the_denoising_groups_own_mask():
    from detr_models.denoising import make_denoising_group
    from detr_models.denoising_queries import self_attention_mask

    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 2)}]
    group = make_denoising_group(
        targets, torch.nn.Embedding(4, 8), 3, num_queries=6, num_denoising=8
    )
    layout = self_attention_mask(group, (6, 3))
    n = group.num_denoising
    assert torch.equal(layout.dense()[: n + 6, : n + 6], group.attn_mask)
