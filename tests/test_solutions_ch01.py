"""Unit tests of solutions/ch01_tensors.py beyond the exercises' own tests: properties the later
chapters rely on (gradients, dtypes, views, devices)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from solutions.ch01_tensors import (causal_mask, gpt2_param_count, linear, merge_heads, pick_device, softmax,
                                    split_heads, standardize)


def test_pick_device_is_usable():
    device = pick_device()
    assert isinstance(device, torch.device)
    assert torch.ones(2, device=device).sum().item() == 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_softmax_and_standardize_keep_the_dtype(dtype):
    x = torch.randn(3, 5, dtype=torch.float64).to(dtype)
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-6
    assert softmax(x).dtype == dtype and standardize(x).dtype == dtype
    torch.testing.assert_close(softmax(x), torch.softmax(x, -1), atol=tol, rtol=tol)
    torch.testing.assert_close(standardize(x), F.layer_norm(x, (5,)), atol=tol * 10, rtol=tol * 10)


def test_gradients_match_pytorch():
    """Later chapters train through these functions: their gradients must be PyTorch's."""
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 6, dtype=torch.float64)
    for mine, ref in [(softmax, lambda t: torch.softmax(t, -1)), (standardize, lambda t: F.layer_norm(t, (6,)))]:
        g_mine, = torch.autograd.grad((mine(x) * w).sum(), x)
        g_ref, = torch.autograd.grad((ref(x) * w).sum(), x)
        torch.testing.assert_close(g_mine, g_ref)
    assert torch.autograd.gradcheck(lambda t: softmax(t, dim=0), (x,))
    W = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(linear, (x, W, b))


def test_softmax_of_masked_scores_is_causal_attention():
    T = 6
    scores = torch.randn(2, 3, T, T)
    weights = softmax(scores.masked_fill(~causal_mask(T), float("-inf")))
    assert torch.all(weights.triu(1) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, T))


def test_split_heads_is_a_view_and_merge_inverts_it():
    x = torch.randn(2, 5, 12)
    heads = split_heads(x, 4)
    assert heads.shape == (2, 4, 5, 3) and heads.data_ptr() == x.data_ptr(), "split_heads should not copy"
    torch.testing.assert_close(merge_heads(heads), x)
    with pytest.raises(ValueError, match="12"):
        split_heads(x, 5)


def test_param_count_matches_a_real_gpt2_layout():
    """The GPT-2 small layout built from PyTorch modules on the meta device (no memory) has
    exactly gpt2_param_count parameters; and the published 124M model is the one we count."""
    V, n_ctx, C, L = 50257, 1024, 768, 12
    with torch.device("meta"):
        blocks = [nn.ModuleList([nn.LayerNorm(C), nn.Linear(C, 3 * C), nn.Linear(C, C), nn.LayerNorm(C),
                                 nn.Linear(C, 4 * C), nn.Linear(4 * C, C)]) for _ in range(L)]
        model = nn.ModuleList([nn.Embedding(V, C), nn.Embedding(n_ctx, C), *blocks, nn.LayerNorm(C)])
    assert sum(p.numel() for p in model.parameters()) == gpt2_param_count(V, n_ctx, C, L) == 124_439_808



@pytest.mark.parametrize("dtype, offset, tol", [(torch.float32, 1e3, 1e-3), (torch.float32, 1e4, 1e-2),
                                                (torch.float64, 1e8, 1e-6)])
def test_standardize_is_accurate_far_from_zero(dtype, offset, tol):
    """Chapter 5's LayerNorm inherits standardize: it must not lose its digits on large offsets."""
    x = (torch.randn(4, 64, dtype=torch.float64) + offset).to(dtype)
    torch.testing.assert_close(standardize(x), F.layer_norm(x.double(), (64,)).to(dtype), atol=tol, rtol=0)
