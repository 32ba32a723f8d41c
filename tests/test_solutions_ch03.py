"""Unit tests of solutions/ch03_attention.py beyond the exercises' own tests: gradients, dtypes and
devices that later chapters rely on, the invariants of attention, its nan behaviour, and its O(T^2)
memory. Every expected value comes from PyTorch's own functions, a closed form or an invariant.
(The measuring tools themselves, peak_memory and best_time, are tested in tests/test_testing.py.)"""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from solutions.ch03_attention import (AttentionConfig, SelfAttention, attention_scores, attention_weights, causal_mask,
                                      first_leak, padding_mask, scaled_dot_product_attention)
from solutions.testing import peak_memory


def _qkv(*lead, T_q=5, T_k=7, d_k=8, d_v=6, dtype=torch.float64, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = [(*lead, T_q, d_k), (*lead, T_k, d_k), (*lead, T_k, d_v)]
    return [torch.randn(s, generator=g, dtype=torch.float64).to(dtype).requires_grad_(requires_grad) for s in shapes]


def _masks(T_q, T_k, dtype=torch.float64, seed=1):
    """Every kind of mask the chapter's attention accepts, as keyword arguments."""
    g = torch.Generator().manual_seed(seed)
    keep = torch.rand(T_q, T_k, generator=g) < 0.6
    keep[:, 0] = True                                   # no fully masked row: those have a case of their own
    alibi = -(torch.arange(T_q)[:, None] - torch.arange(T_k)[None, :]).abs().to(dtype) * 0.5
    return {"no mask": {}, "is_causal": {"is_causal": True}, "bool": {"attn_mask": keep},
            "bool over the keys": {"attn_mask": keep[:1]}, "float bias": {"attn_mask": alibi},
            "float with -inf": {"attn_mask": alibi.masked_fill(~keep, float("-inf"))}}


MASKS = list(_masks(5, 7))


def test_scores_are_the_scaled_dot_products():
    Q, K, _ = _qkv(2, 3)
    torch.testing.assert_close(attention_scores(Q, K), torch.einsum("bhqd,bhkd->bhqk", Q, K) / math.sqrt(8))


def test_padding_mask_matches_its_definition_for_any_integer_dtype():
    for dtype in (torch.int64, torch.int32, torch.int16):
        lengths = torch.tensor([0, 3, 5, 1], dtype=dtype)
        expected = torch.tensor([[[j < n for j in range(5)]] for n in (0, 3, 5, 1)])
        assert torch.equal(padding_mask(lengths, 5), expected)


@pytest.mark.parametrize("mask", MASKS)
def test_attention_matches_pytorch_with_leading_dims_and_cross_lengths(mask):
    for lead, T_q, T_k in [((), 5, 7), ((3,), 7, 5), ((2, 3), 6, 6), ((2, 1, 4), 1, 9)]:
        q, k, v = _qkv(*lead, T_q=T_q, T_k=T_k)
        kw = _masks(T_q, T_k)[mask]
        torch.testing.assert_close(scaled_dot_product_attention(q, k, v, **kw),
                                   F.scaled_dot_product_attention(q, k, v, **kw))


def test_weights_are_a_distribution_over_the_allowed_keys():
    q, k, _ = _qkv(4, T_q=6, T_k=6)
    allowed = causal_mask(6)
    w = attention_weights(q, k, allowed)
    assert torch.all(w >= 0) and torch.all(w.masked_select(~allowed.expand_as(w)) == 0)
    torch.testing.assert_close(w.sum(-1), torch.ones(4, 6, dtype=torch.float64))
    torch.testing.assert_close(w[..., 0, 0], torch.ones(4, dtype=torch.float64))    # query 0 sees only key 0


@pytest.mark.parametrize("mask", MASKS)
def test_gradients_match_pytorch(mask):
    q, k, v = _qkv(2, T_q=4, T_k=5, d_k=3, d_v=2, requires_grad=True)
    kw = _masks(4, 5)[mask]
    assert torch.autograd.gradcheck(lambda *t: scaled_dot_product_attention(*t, **kw), (q, k, v))
    w = torch.randn(2, 4, 2, dtype=torch.float64)
    mine = torch.autograd.grad((scaled_dot_product_attention(q, k, v, **kw) * w).sum(), (q, k, v))
    ref = torch.autograd.grad((F.scaled_dot_product_attention(q, k, v, **kw) * w).sum(), (q, k, v))
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b)


def test_a_fully_masked_boolean_row_gives_zeros_and_finite_gradients():
    q, k, v = _qkv(T_q=4, T_k=4, d_k=3, d_v=2, requires_grad=True)
    mask = torch.tensor([[True, False, True, False], [False] * 4, [True] * 4, [False, False, False, True]])
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert torch.all(out[1] == 0)
    mine = torch.autograd.grad(out.sum(), (q, k, v))
    ref = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum(), (q, k, v))
    for a, b in zip(mine, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda *t: scaled_dot_product_attention(*t, attn_mask=mask), (q, k, v))


def test_a_fully_masked_float_row_gives_zeros_and_the_gradients_of_pytorch():
    """A row of -inf in an additive mask: zeros out, and finite gradients equal to PyTorch's for q,
    k and v (torch.nan_to_num after the softmax would give nan gradients for q and k here)."""
    q, k, v = _qkv(2, T_q=4, T_k=5, d_k=3, d_v=2, requires_grad=True)
    bias = -(torch.arange(4)[:, None] - torch.arange(5)[None, :]).abs().double() * 0.5
    bias[1] = float("-inf")
    bias[3, :2] = float("-inf")
    out = scaled_dot_product_attention(q, k, v, attn_mask=bias)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(out, ref)
    assert torch.all(out[:, 1] == 0)
    w = torch.randn(out.shape, dtype=torch.float64)
    mine = torch.autograd.grad((out * w).sum(), (q, k, v))
    theirs = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for a, b in zip(mine, theirs):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda *t: scaled_dot_product_attention(*t, attn_mask=bias), (q, k, v))


def _with_nan(t, index):
    t = t.detach().clone()
    t[index] = float("nan")
    return t


@pytest.mark.parametrize("mask", MASKS)
def test_a_nan_in_the_inputs_comes_out_like_pytorchs(mask):
    """Only rows with no allowed key are zeroed: a nan in a query, or in a key that every query may
    see, reaches the output where PyTorch's attention puts it (not hidden as zeros)."""
    q, k, v = _qkv(2, T_q=5, T_k=7)
    kw = _masks(5, 7)[mask]                      # key 0 is allowed for every query
    for args in [(_with_nan(q, (1, 3, 2)), k, v), (q, _with_nan(k, (0, 0, 5)), v), (q, k, _with_nan(v, (1, 4, 0)))]:
        out, ref = scaled_dot_product_attention(*args, **kw), F.scaled_dot_product_attention(*args, **kw)
        assert torch.isnan(ref).any()
        torch.testing.assert_close(out, ref, equal_nan=True)
    bool_mask = kw.get("attn_mask")
    if bool_mask is None or bool_mask.dtype == torch.bool:
        args = (_with_nan(q, (1, 3, 2)), k, bool_mask if bool_mask is not None else None)
        w = attention_weights(*args)
        assert torch.isnan(w[1, 3]).all() and not torch.isnan(w[1, :3]).any() and not torch.isnan(w[0]).any()


def test_a_nan_beside_a_fully_masked_row():
    """The fully masked row stays zero and the row with the nan stays nan, in both kinds of mask."""
    q, k, v = _qkv(T_q=4, T_k=4)
    keep = torch.tensor([[True, True, False, True], [False] * 4, [True] * 4, [False, False, False, True]])
    bias = torch.zeros(4, 4, dtype=torch.float64).masked_fill(~keep, float("-inf"))
    qn = _with_nan(q, (2, 1))
    for mask in (keep, bias):
        out, ref = scaled_dot_product_attention(qn, k, v, attn_mask=mask), F.scaled_dot_product_attention(qn, k, v, attn_mask=mask)
        torch.testing.assert_close(out, ref, equal_nan=True)
        assert torch.all(out[1] == 0) and torch.isnan(out[2]).all()
    w = attention_weights(qn, k, keep)
    assert torch.all(w[1] == 0) and torch.isnan(w[2]).all() and torch.isfinite(w[[0, 3]]).all()


def test_both_masks_is_an_error_like_pytorch():
    q, k, v = _qkv()
    keep = torch.ones(5, 7, dtype=torch.bool)
    with pytest.raises(RuntimeError):
        F.scaled_dot_product_attention(q, k, v, attn_mask=keep, is_causal=True)
    with pytest.raises(ValueError):
        scaled_dot_product_attention(q, k, v, attn_mask=keep, is_causal=True)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("mask", MASKS)
def test_attention_keeps_the_dtype(dtype, tol, mask):
    """Compared with PyTorch's attention in float64 on the same (rounded) inputs."""
    q, k, v = _qkv(2, dtype=dtype)
    kw = _masks(5, 7, dtype=dtype)[mask]
    out = scaled_dot_product_attention(q, k, v, **kw)
    assert out.dtype == dtype and attention_scores(q, k).dtype == dtype and attention_weights(q, k).dtype == dtype
    kw64 = {n: (m.double() if isinstance(m, torch.Tensor) and m.is_floating_point() else m) for n, m in kw.items()}
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), **kw64)
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


def _module_oracle(module, x, attn_mask=None):
    Q, K, V = (F.linear(x, lin.weight, lin.bias) for lin in (module.W_Q, module.W_K, module.W_V))
    if module.config.causal:
        causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool, device=x.device).tril()
        attn_mask = causal if attn_mask is None else attn_mask & causal
    return F.scaled_dot_product_attention(Q, K, V, attn_mask=attn_mask)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_self_attention_in_every_dtype(dtype, tol):
    torch.manual_seed(0)
    attn = SelfAttention(AttentionConfig(d_model=16, d_k=8, causal=True, bias=True)).to(dtype)
    x = torch.randn(3, 6, 16).to(dtype)
    pad = padding_mask(torch.tensor([6, 4, 1]), 6)
    out = attn(x, pad)
    assert out.dtype == dtype and out.shape == (3, 6, 8)
    ref = _module_oracle(attn.double(), x.double(), pad)
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


def test_self_attention_gradients():
    torch.manual_seed(0)
    attn = SelfAttention(AttentionConfig(d_model=6, d_k=4, causal=True, bias=True)).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    pad = padding_mask(torch.tensor([5, 3]), 5)
    assert torch.autograd.gradcheck(lambda t: attn(t, pad), (x,))
    params = [x, *attn.parameters()]
    mine = torch.autograd.grad(attn(x, pad).square().sum(), params)
    ref = torch.autograd.grad(_module_oracle(attn, x, pad).square().sum(), params)
    for a, b in zip(mine, ref):
        torch.testing.assert_close(a, b)


def test_everything_runs_on_the_meta_device():
    """Shapes and devices without memory or arithmetic: the masks must be built where the inputs live."""
    q, k, v = (t.to("meta") for t in _qkv(2, 3, dtype=torch.float32))
    for name, kw in _masks(5, 7, dtype=torch.float32).items():
        kw = {n: (m.to("meta") if isinstance(m, torch.Tensor) else m) for n, m in kw.items()}
        out = scaled_dot_product_attention(q, k, v, **kw)
        assert out.device.type == "meta" and out.shape == (2, 3, 5, 6), name
    assert attention_weights(q, k, torch.ones(5, 7, dtype=torch.bool, device="meta")).shape == (2, 3, 5, 7)
    mask = padding_mask(torch.tensor([3, 0], device="meta"), 4)
    assert mask.device.type == "meta" and mask.shape == (2, 1, 4) and mask.dtype == torch.bool
    with torch.device("meta"):
        attn = SelfAttention(AttentionConfig(d_model=16, d_k=8, causal=True))
    x = torch.randn(2, 5, 16, device="meta")       # called outside the block: no default device to lean on
    for out in (attn(x), attn(x, padding_mask(torch.tensor([5, 2], device="meta"), 5))):
        assert out.device.type == "meta" and out.shape == (2, 5, 8)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_attention_on_the_gpu():
    q, k, v = (t.cuda() for t in _qkv(2, dtype=torch.float32))
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, is_causal=True),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-4, rtol=1e-4)
    assert padding_mask(torch.tensor([1, 2], device="cuda"), 3).is_cuda
    attn = SelfAttention(AttentionConfig(d_model=8, d_k=8)).cuda()
    x = torch.randn(2, 5, 8, device="cuda")
    torch.testing.assert_close(attn(x), _module_oracle(attn, x), atol=1e-4, rtol=1e-4)


def test_self_attention_without_a_mask_is_permutation_equivariant():
    """Shuffle the tokens and the outputs shuffle the same way (attention alone knows no order)."""
    torch.manual_seed(0)
    attn = SelfAttention(AttentionConfig(d_model=12, d_k=6, causal=False, bias=True)).double()
    x = torch.randn(3, 9, 12, dtype=torch.float64)
    perm = torch.randperm(9)
    torch.testing.assert_close(attn(x[:, perm]), attn(x)[:, perm])
    keys = torch.rand(3, 1, 9) < 0.7
    keys[..., 0] = True
    torch.testing.assert_close(attn(x[:, perm], keys[..., perm]), attn(x, keys)[:, perm])
    causal = SelfAttention(dataclasses.replace(attn.config, causal=True)).double()
    causal.load_state_dict(attn.state_dict())
    assert not torch.allclose(causal(x[:, perm]), causal(x)[:, perm]), "the causal mask makes order matter"


def test_first_leak_finds_the_leak_of_a_wrong_mask():
    x = torch.randn(2, 8, 4)
    x0 = x.clone()
    T = x.shape[1]

    def attention_with(mask):
        return lambda z: scaled_dot_product_attention(z, z, z, attn_mask=mask)

    assert first_leak(attention_with(torch.ones(T, T, dtype=torch.bool).triu()), x) == 0
    assert first_leak(attention_with(torch.ones(T, T, dtype=torch.bool).tril(1)), x) == 0
    one_peek = torch.ones(T, T, dtype=torch.bool).tril()
    one_peek[3, 5] = True                                   # query 3 sees key 5
    assert first_leak(attention_with(one_peek), x) == 3
    last = torch.ones(T, T, dtype=torch.bool).tril()
    last[T - 2, T - 1] = True                               # only the last comparison can see it
    assert first_leak(attention_with(last), x) == T - 2
    assert first_leak(attention_with(causal_mask(T)), x) is None
    second_only = torch.stack([causal_mask(T), one_peek])  # the leak is in the second sequence of the batch
    assert first_leak(attention_with(second_only), x) == 3
    assert first_leak(lambda z: F.scaled_dot_product_attention(z, z, z, is_causal=True), x) is None
    assert first_leak(lambda z: F.scaled_dot_product_attention(z, z, z), x) == 0
    assert torch.equal(x, x0) and torch.is_grad_enabled()


def test_first_leak_sees_a_leak_through_one_feature_of_one_later_token():
    x = torch.randn(2, 8, 6)

    def leak(s, source, feature):
        def f(z):
            out = z.cumsum(1)
            out[:, s, feature] = out[:, s, feature] + z[:, source, feature]
            return out
        return f

    assert first_leak(leak(2, 5, 4), x) == 2
    assert first_leak(leak(1, 4, 1), x) == 1                # three tokens ahead
    assert first_leak(leak(6, 7, 5), x) == 6                # the last feature of the last token
    assert first_leak(leak(3, 3, 2), x) is None              # its own token: no leak


def test_first_leak_of_the_modules():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 8)
    assert first_leak(SelfAttention(AttentionConfig(d_model=8, d_k=4, causal=True)), x) is None
    assert first_leak(SelfAttention(AttentionConfig(d_model=8, d_k=4, causal=False)), x) == 0
    assert first_leak(lambda z: z.cumsum(1), x[:, :1]) is None


def test_attention_memory_grows_as_T_squared():
    """One (T, T) float32 matrix is T*T*4 bytes; the scaled scores hold at most two at once."""
    d = 16
    for T in (64, 256):
        q, k = torch.randn(T, d), torch.randn(T, d)
        assert peak_memory(lambda: q @ k.mT) == T * T * 4
        assert T * T * 4 <= peak_memory(lambda: attention_scores(q, k)) <= 2 * T * T * 4
    q, k, v = torch.randn(3, 512, d).unbind(0)
    with torch.no_grad():
        small = peak_memory(lambda: scaled_dot_product_attention(q[:256], k[:256], v[:256], is_causal=True))
        large = peak_memory(lambda: scaled_dot_product_attention(q, k, v, is_causal=True))
    assert 256 * 256 * 4 <= small <= 5 * 256 * 256 * 4
    assert 3.5 < large / small <= 4.05


def test_attention_config_defaults():
    config = AttentionConfig()
    assert dataclasses.is_dataclass(config)
    assert (config.d_model, config.d_k, config.causal, config.bias) == (64, 64, True, False)
    assert config == AttentionConfig(64, 64, True, False)
    attn = SelfAttention(config)
    assert attn.config is config
    assert [n for n, _ in attn.named_parameters()] == ["W_Q.weight", "W_K.weight", "W_V.weight"]
    assert sum(p.numel() for p in attn.parameters()) == 3 * 64 * 64
