"""Set-by-set self-attention (BlockDiagonal) must equal attention under the dense mask."""

import pytest
import torch

from detr_models.attention import BlockDiagonal, MultiHeadAttention


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
