"""Unit tests of solutions/ch04_multihead.py beyond the exercises' own tests: agreement with
torch.nn.MultiheadAttention (outputs, masks, layouts, gradients), dtypes and devices, the GPT-2 parameter
layout that chapter 7 loads weights into, and dropout. Every expected value comes from PyTorch or a closed form."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from solutions.ch04_multihead import (CausalSelfAttention, MultiHeadAttention, MultiHeadConfig, from_torch,
                                      head_weights, mha_param_count, multi_head_attention_loop)
from solutions.testing import causal_dropout_oracle, causal_twin, from_torch_state, seeded

ATOL = RTOL = 1e-5


def randomised(mha, seed, scale=0.3):
    """nn.MultiheadAttention starts with zero biases: random values everywhere make any swap show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mha.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)
    return mha


def torch_causal(T_q, T_k=None):
    """nn.MultiheadAttention's bool mask for causal attention: True = may NOT attend."""
    return torch.ones(T_q, T_q if T_k is None else T_k, dtype=torch.bool).triu(1)


def csa(d_model, n_head, seed, bias=True, dropout=0.0, dtype=torch.float32):
    torch.manual_seed(seed)
    attn = CausalSelfAttention(MultiHeadConfig(d_model=d_model, n_head=n_head, bias=bias, dropout=dropout))
    return randomised(attn.to(dtype), seed)


# --------------------------------------------------------------------------------------------------
# MultiHeadAttention (through from_torch) against nn.MultiheadAttention

SIZES = [  # seed, B, T_q, T_k, d_model, n_head, bias
    (0, 1, 1, 1, 4, 1, True),
    (1, 2, 5, 5, 8, 2, True),
    (2, 3, 4, 9, 12, 3, False),
    (3, 2, 7, 3, 32, 8, True),
    (4, 4, 16, 16, 64, 4, True),
    (5, 1, 6, 11, 48, 12, False),
]


def _inputs(seed, B, T_q, T_k, d_model, dtype=torch.float32):
    g = torch.Generator().manual_seed(1000 + seed)
    q = torch.randn(B, T_q, d_model, generator=g, dtype=dtype)
    k = torch.randn(B, T_k, d_model, generator=g, dtype=dtype)
    v = torch.randn(B, T_k, d_model, generator=g, dtype=dtype)
    return g, q, k, v


def _mask_cases(g, B, T_q, T_k, n_head):
    """(our keyword arguments, nn.MultiheadAttention's keyword arguments) for the same masking."""
    keep = torch.rand(T_q, T_k, generator=g) < 0.5
    keep[torch.arange(T_q), torch.randint(T_k, (T_q,), generator=g)] = True   # every query keeps at least one key
    per_head = torch.rand(B, n_head, T_q, T_k, generator=g) < 0.5
    per_head[..., 0] = True
    lengths = torch.randint(1, T_k + 1, (B,), generator=g)
    real = torch.arange(T_k) < lengths[:, None]                       # (B, T_k), True = a real key
    additive = torch.randn(T_q, T_k, generator=g)
    cases = {
        "no mask": ({}, {}),
        "bool mask": ({"attn_mask": keep}, {"attn_mask": ~keep}),
        "float mask": ({"attn_mask": additive}, {"attn_mask": additive}),
        "per-head mask": ({"attn_mask": per_head}, {"attn_mask": ~per_head.reshape(B * n_head, T_q, T_k)}),
        "padding": ({"attn_mask": real[:, None, None, :]}, {"key_padding_mask": ~real}),
    }
    if T_q <= T_k:
        cases["causal"] = ({"is_causal": True}, {"attn_mask": torch_causal(T_q, T_k)})
    return cases


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("seed, B, T_q, T_k, d_model, n_head, bias", SIZES)
def test_from_torch_agrees_with_nn_multiheadattention(seed, B, T_q, T_k, d_model, n_head, bias, batch_first):
    theirs = randomised(nn.MultiheadAttention(d_model, n_head, bias=bias, batch_first=batch_first), seed).eval()
    ours = from_torch(theirs).eval()
    g, q, k, v = _inputs(seed, B, T_q, T_k, d_model)
    layout = (lambda t: t) if batch_first else (lambda t: t.transpose(0, 1))   # (B, T, d) <-> (T, B, d)
    for name, (our_kw, their_kw) in _mask_cases(g, B, T_q, T_k, n_head).items():
        with torch.no_grad():
            expected = layout(theirs(layout(q), layout(k), layout(v), need_weights=False, **their_kw)[0])
            got = ours(q, k, v, **our_kw)
        assert got.shape == (B, T_q, d_model) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")


def test_from_torch_agrees_in_training_mode_without_dropout():
    """nn.MultiheadAttention takes a different (non-fused) path when gradients are on; same numbers."""
    theirs = randomised(nn.MultiheadAttention(16, 4, batch_first=True), 7)
    ours = from_torch(theirs)
    _, q, k, v = _inputs(7, 3, 5, 6, 16)
    torch.testing.assert_close(ours(q, k, v), theirs(q, k, v, need_weights=False)[0], atol=ATOL, rtol=RTOL)


def test_self_attention_uses_one_tensor_three_times():
    theirs = randomised(nn.MultiheadAttention(24, 6, batch_first=True), 8).eval()
    ours = from_torch(theirs)
    x = torch.randn(2, 9, 24)
    with torch.no_grad():     # the fused fast path of nn.MultiheadAttention (query is key is value)
        torch.testing.assert_close(ours(x, x, x), theirs(x, x, x, need_weights=False)[0], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(ours(x, x, x, is_causal=True),
                                   theirs(x, x, x, attn_mask=torch_causal(9), need_weights=False)[0],
                                   atol=ATOL, rtol=RTOL)


def test_from_torch_copies_dtype_and_values_independently():
    theirs = randomised(nn.MultiheadAttention(12, 3, batch_first=True, dtype=torch.float64), 9)
    before = {k: v.clone() for k, v in theirs.state_dict().items()}
    ours = from_torch(theirs)
    assert isinstance(ours, MultiHeadAttention)
    assert (ours.config.d_model, ours.config.n_head, ours.config.bias) == (12, 3, True)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    W_Q, W_K, W_V = before["in_proj_weight"].chunk(3)
    b_Q, b_K, b_V = before["in_proj_bias"].chunk(3)
    expected = {"W_Q.weight": W_Q, "W_Q.bias": b_Q, "W_K.weight": W_K, "W_K.bias": b_K, "W_V.weight": W_V,
                "W_V.bias": b_V, "W_O.weight": before["out_proj.weight"], "W_O.bias": before["out_proj.bias"]}
    got = ours.state_dict()
    assert list(got) == list(expected)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name
    theirs_ptrs = {p.untyped_storage().data_ptr() for p in theirs.parameters()}
    assert not theirs_ptrs & {p.untyped_storage().data_ptr() for p in ours.parameters()}, "storage is shared"
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(-2.0)
    assert all(torch.equal(before[k], v) for k, v in theirs.state_dict().items())


@pytest.mark.parametrize("bias", [True, False])
def test_from_torch_keeps_the_meta_device(bias):
    """A layer on the meta device (GPT-2 XL's width, no memory) loads into a module on the meta device
    with the same names, shapes and dtypes as the chunks of in_proj and out_proj."""
    theirs = nn.MultiheadAttention(1600, 25, bias=bias, batch_first=True, device="meta", dtype=torch.float64)
    ours = from_torch(theirs)
    expected = from_torch_state(theirs)
    got = ours.state_dict()
    assert list(got) == list(expected)
    for name, want in expected.items():
        assert (got[name].shape, got[name].dtype, got[name].device.type) == (want.shape, torch.float64, "meta"), name


def test_from_torch_without_bias():
    ours = from_torch(nn.MultiheadAttention(8, 2, bias=False))
    assert ours.config.bias is False and all(lin.bias is None for lin in (ours.W_Q, ours.W_K, ours.W_V, ours.W_O))


@pytest.mark.parametrize("kw", [{"kdim": 4, "vdim": 6}, {"kdim": 4}, {"add_bias_kv": True}, {"add_zero_attn": True}])
def test_from_torch_refuses_layers_it_cannot_represent(kw):
    """Separate key/value widths, learned extra key/value biases or an all-zero extra key change what
    nn.MultiheadAttention computes; MultiHeadAttention has no counterpart, so loading must fail loudly."""
    theirs = nn.MultiheadAttention(8, 2, batch_first=True, **kw)
    with pytest.raises(ValueError):
        from_torch(theirs)


def test_the_loaded_module_computes_with_its_own_weights():
    """After loading, training our module must change its output: the loaded weights are the ones used."""
    theirs = randomised(nn.MultiheadAttention(12, 3, batch_first=True), 26).eval()
    ours = from_torch(theirs)
    with torch.no_grad():
        for p in list(ours.parameters()) + list(theirs.parameters()):
            p.mul_(1.5)
        _, q, k, v = _inputs(26, 2, 4, 5, 12)
        torch.testing.assert_close(ours(q, k, v), theirs(q, k, v, need_weights=False)[0], atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------------------------------
# Gradients

def _loss_weights(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("bias", [True, False])
def test_gradients_match_nn_multiheadattention(bias):
    """Same loss through both modules: the same gradients for the inputs and for every weight."""
    theirs = randomised(nn.MultiheadAttention(12, 3, bias=bias, batch_first=True, dtype=torch.float64), 10)
    ours = from_torch(theirs)
    _, q, k, v = _inputs(10, 2, 4, 6, 12, dtype=torch.float64)
    keep = torch.rand(4, 6, generator=torch.Generator().manual_seed(3)) < 0.6
    keep[:, 0] = True
    w = _loss_weights((2, 4, 12), 11)
    grads = []
    for run in ("ours", "theirs"):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        if run == "ours":
            out = ours(*inputs, attn_mask=keep)
        else:
            out = theirs(*inputs, attn_mask=~keep, need_weights=False)[0]
        (out * w).sum().backward()
        grads.append([t.grad for t in inputs])
    for name, g_ours, g_theirs in zip("qkv", *grads):
        torch.testing.assert_close(g_ours, g_theirs, msg=lambda m: f"d loss / d {name}: {m}")
    torch.testing.assert_close(torch.cat([ours.W_Q.weight.grad, ours.W_K.weight.grad, ours.W_V.weight.grad]),
                               theirs.in_proj_weight.grad)
    torch.testing.assert_close(ours.W_O.weight.grad, theirs.out_proj.weight.grad)
    if bias:
        torch.testing.assert_close(torch.cat([ours.W_Q.bias.grad, ours.W_K.bias.grad, ours.W_V.bias.grad]),
                                   theirs.in_proj_bias.grad)
        torch.testing.assert_close(ours.W_O.bias.grad, theirs.out_proj.bias.grad)


def test_causal_self_attention_gradients_match_nn_multiheadattention():
    ours = csa(16, 4, 12, dtype=torch.float64)
    theirs = causal_twin(ours)
    x = torch.randn(3, 7, 16, dtype=torch.float64)
    w = _loss_weights((3, 7, 16), 13)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    (ours(x1) * w).sum().backward()
    (theirs(x2, x2, x2, attn_mask=torch_causal(7), need_weights=False)[0] * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.c_attn.weight.grad, theirs.in_proj_weight.grad)
    torch.testing.assert_close(ours.c_attn.bias.grad, theirs.in_proj_bias.grad)
    torch.testing.assert_close(ours.c_proj.weight.grad, theirs.out_proj.weight.grad)
    torch.testing.assert_close(ours.c_proj.bias.grad, theirs.out_proj.bias.grad)


def test_gradcheck():
    """Finite differences agree with backpropagation through the loop, the module and the fused layer."""
    g = torch.Generator().manual_seed(14)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
    q, kv = mk(2, 3, 6), mk(2, 4, 6)
    Ws = [mk(6, 6) for _ in range(4)]
    keep = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda q, kv, *W: multi_head_attention_loop(q, kv, kv, *W, 2, keep), (q, kv, *Ws))
    mha = MultiHeadAttention(MultiHeadConfig(d_model=6, n_head=3)).double()
    assert torch.autograd.gradcheck(lambda q, kv: mha(q, kv, kv, attn_mask=keep), (q, kv))
    attn = csa(6, 2, 15, dtype=torch.float64)
    assert torch.autograd.gradcheck(attn, (mk(2, 5, 6),))


# --------------------------------------------------------------------------------------------------
# The loop, the batched module and head_weights agree with PyTorch and with each other

@pytest.mark.parametrize("seed, B, T_q, T_k, d_model, n_head, bias", SIZES)
def test_loop_agrees_with_nn_multiheadattention(seed, B, T_q, T_k, d_model, n_head, bias):
    theirs = randomised(nn.MultiheadAttention(d_model, n_head, bias=False, batch_first=True), seed).eval()
    W_Q, W_K, W_V = theirs.in_proj_weight.detach().chunk(3)
    W_O = theirs.out_proj.weight.detach()
    g, q, k, v = _inputs(seed, B, T_q, T_k, d_model)
    for name, (our_kw, their_kw) in _mask_cases(g, B, T_q, T_k, n_head).items():
        if "is_causal" in our_kw or name == "per-head mask":    # the loop takes one mask shared by every head
            continue
        with torch.no_grad():
            expected = theirs(q, k, v, need_weights=False, **their_kw)[0]
            mask = our_kw.get("attn_mask")
            if name == "padding":                                  # one head's scores are (B, T_q, T_k)
                mask = mask[:, 0]
            got = multi_head_attention_loop(q, k, v, W_Q, W_K, W_V, W_O, n_head, mask)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("seed, B, T_q, T_k, d_model, n_head, bias", SIZES)
def test_head_weights_are_nn_multiheadattentions_per_head_weights(seed, B, T_q, T_k, d_model, n_head, bias):
    theirs = randomised(nn.MultiheadAttention(d_model, n_head, bias=bias, batch_first=True), seed).eval()
    ours = from_torch(theirs)
    g, q, k, _ = _inputs(seed, B, T_q, T_k, d_model)
    keep = torch.rand(T_q, T_k, generator=g) < 0.5
    keep[:, -1] = True
    for our_mask, their_mask in [(None, None), (keep, ~keep)]:
        with torch.no_grad():
            got = head_weights(ours, q, k, our_mask)
            _, expected = theirs(q, k, k, attn_mask=their_mask, need_weights=True, average_attn_weights=False)
            _, averaged = theirs(q, k, k, attn_mask=their_mask, need_weights=True)
        assert got.shape == (B, n_head, T_q, T_k)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(got.mean(1), averaged, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(got.sum(-1), torch.ones(B, n_head, T_q))
        if our_mask is not None:
            assert torch.all(got.masked_select(~our_mask) == 0)


def test_causal_self_attention_equals_multiheadattention_with_the_same_weights():
    attn = csa(20, 5, 16).eval()
    mha = MultiHeadAttention(MultiHeadConfig(d_model=20, n_head=5)).eval()
    with torch.no_grad():
        for lin, w, b in zip((mha.W_Q, mha.W_K, mha.W_V), attn.c_attn.weight.chunk(3), attn.c_attn.bias.chunk(3)):
            lin.weight.copy_(w)
            lin.bias.copy_(b)
        mha.W_O.load_state_dict(attn.c_proj.state_dict())
        x = torch.randn(3, 10, 20)
        torch.testing.assert_close(attn(x), mha(x, x, x, is_causal=True), atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------------------------------
# CausalSelfAttention: PyTorch agreement, causality, dtypes, devices

@pytest.mark.parametrize("seed, B, T, d_model, n_head, bias", [(0, 1, 1, 4, 2, True), (1, 2, 7, 16, 4, True),
                                                               (2, 3, 12, 24, 6, False), (3, 2, 33, 64, 1, True),
                                                               (4, 1, 20, 48, 16, False)])
def test_causal_self_attention_agrees_with_nn_multiheadattention(seed, B, T, d_model, n_head, bias):
    attn = csa(d_model, n_head, seed, bias=bias).eval()
    theirs = causal_twin(attn).eval()
    x = torch.randn(B, T, d_model, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = theirs(x, x, x, attn_mask=torch_causal(T), need_weights=False)[0]
        torch.testing.assert_close(attn(x), expected, atol=ATOL, rtol=RTOL)
        # a non-contiguous input gives the same result
        torch.testing.assert_close(attn(x.transpose(1, 2).contiguous().transpose(1, 2)), expected,
                                   atol=ATOL, rtol=RTOL)


def test_causal_self_attention_is_causal_and_batch_independent():
    attn = csa(16, 4, 17).eval()
    g = torch.Generator().manual_seed(17)
    x = torch.randn(2, 9, 16, generator=g)
    with torch.no_grad():
        y = attn(x)
        for t in range(9):
            x2 = x.clone()
            x2[:, t + 1:] = torch.randn(x2[:, t + 1:].shape, generator=g)
            y2 = attn(x2)
            torch.testing.assert_close(y2[:, :t + 1], y[:, :t + 1], atol=ATOL, rtol=RTOL)
            if t < 8:
                assert not torch.allclose(y2[:, t + 1:], y[:, t + 1:]), "later positions must see the changed tokens"
        torch.testing.assert_close(attn(x[1:]), y[1:], atol=ATOL, rtol=RTOL)
        # position 0 only sees itself: softmax over one key is 1, so its output is W_O (W_V x_0 + b_V) + b_O
        W_V, b_V = attn.c_attn.weight[32:], attn.c_attn.bias[32:]
        torch.testing.assert_close(y[:, 0], F.linear(F.linear(x[:, 0], W_V, b_V), attn.c_proj.weight, attn.c_proj.bias),
                                   atol=ATOL, rtol=RTOL)


def test_causal_self_attention_in_float64():
    attn = csa(24, 3, 18, dtype=torch.float64).eval()
    x = torch.randn(2, 11, 24, dtype=torch.float64)
    with torch.no_grad():
        y = attn(x)
        expected = causal_twin(attn).eval()(x, x, x, attn_mask=torch_causal(11), need_weights=False)[0]
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, expected, atol=1e-12, rtol=1e-12)


def test_causal_self_attention_in_bfloat16():
    """bfloat16 keeps 8 significant bits: compare with the float32 computation of the same (rounded) numbers."""
    attn = csa(32, 4, 19, dtype=torch.bfloat16).eval()
    x = torch.randn(2, 10, 32).to(torch.bfloat16)
    with torch.no_grad():
        y = attn(x)
        reference = causal_twin(attn).float().eval()
        expected = reference(x.float(), x.float(), x.float(), attn_mask=torch_causal(10), need_weights=False)[0]
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), expected, atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("d_model, n_head", [(768, 12), (1600, 25)])
def test_causal_self_attention_on_the_meta_device(d_model, n_head):
    """GPT-2 small and XL widths without allocating memory: shapes and parameter counts only."""
    with torch.device("meta"):
        attn = CausalSelfAttention(MultiHeadConfig(d_model=d_model, n_head=n_head))
        x = torch.empty(2, 1024, d_model)
        y = attn(x)
    assert y.device.type == "meta" and y.shape == (2, 1024, d_model) and y.dtype == torch.float32
    assert all(p.device.type == "meta" for p in attn.parameters())
    assert sum(p.numel() for p in attn.parameters()) == mha_param_count(d_model, n_head)


def test_multiheadattention_on_the_meta_device():
    with torch.device("meta"):
        mha = MultiHeadAttention(MultiHeadConfig(d_model=64, n_head=8))
        q, kv = torch.empty(3, 5, 64), torch.empty(3, 7, 64)
        y = mha(q, kv, kv)
    assert y.device.type == "meta" and y.shape == (3, 5, 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_causal_self_attention_on_cuda_matches_the_cpu():
    attn = csa(64, 8, 20).eval()
    x = torch.randn(2, 50, 64)
    with torch.no_grad():
        cpu = attn(x)
        gpu = attn.to("cuda")(x.to("cuda"))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)   # TF32 / fused kernels on the GPU


# --------------------------------------------------------------------------------------------------
# Dropout

def test_dropout_is_off_in_eval_mode_and_with_p_zero():
    attn = csa(16, 4, 21, dropout=0.3).eval()
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        expected = causal_twin(attn).eval()(x, x, x, attn_mask=torch_causal(8), need_weights=False)[0]
        torch.testing.assert_close(attn(x), expected, atol=ATOL, rtol=RTOL)
        nodrop = csa(16, 4, 21, dropout=0.0).train()
        torch.testing.assert_close(nodrop(x), expected, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(nodrop(x), nodrop(x))


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_training_mode_dropout_keeps_the_mean(p):
    """Inverted dropout: each output is an unbiased estimate of the eval-mode output (the dropout masks enter
    linearly), and the residual dropout zeroes a fraction p of the outputs."""
    attn = csa(16, 4, 22, dropout=p)
    x = torch.randn(1, 6, 16, generator=torch.Generator().manual_seed(22))
    N = 20_000
    torch.manual_seed(23)
    with torch.no_grad():
        expected = attn.eval()(x)[0]                                    # (T, d_model)
        samples = attn.train()(x.expand(N, -1, -1))                      # each row of the batch: its own masks
    assert attn.training
    zeros = (samples == 0).float().mean().item()
    assert abs(zeros - p) < 0.01, f"fraction of zeroed outputs {zeros:.4f}, expected about {p}"
    mean, std = samples.mean(0), samples.std(0)
    # 6 standard errors: a false alarm is out of the question, a missing 1 / (1 - p) is not missed
    assert torch.all((mean - expected).abs() <= 6 * std / math.sqrt(N) + 1e-4), (mean - expected).abs().max()
    assert not torch.allclose(samples[0], samples[1])


@pytest.mark.parametrize("p, dtype", [(0.1, torch.float32), (0.5, torch.float64), (0.0, torch.float32)])
def test_training_mode_equals_the_seeded_reference(p, dtype):
    """In training mode, after the same seed, the module draws the same random numbers as PyTorch's functions
    doing the same steps in the same order (attention dropout, then residual dropout): equal outputs."""
    attn = csa(24, 6, 27, dropout=p, dtype=dtype).train()
    x = torch.randn(3, 10, 24, dtype=dtype)
    with torch.no_grad():
        for seed in (0, 1):
            torch.testing.assert_close(seeded(seed, lambda: attn(x)), causal_dropout_oracle(attn, x, seed),
                                       atol=0.0, rtol=0.0)
        if p > 0:
            assert not torch.equal(seeded(0, lambda: attn(x)), seeded(1, lambda: attn(x)))


def test_dropout_in_attention_weights_too():
    """With the residual dropout taken out, training mode still differs from eval mode: the attention weights
    are dropped as well (as in GPT-2 and F.scaled_dot_product_attention(dropout_p=...))."""
    attn = csa(16, 4, 24, dropout=0.5)
    attn.resid_dropout = nn.Identity()
    x = torch.randn(2, 8, 16)
    torch.manual_seed(25)
    with torch.no_grad():
        assert not torch.allclose(attn.train()(x), attn.eval()(x))


# --------------------------------------------------------------------------------------------------
# Configuration, parameter counts, state_dict layout

@pytest.mark.parametrize("d_model, n_head", [(10, 4), (7, 2), (12, 5), (768, 7), (1, 2)])
def test_config_rejects_indivisible_widths(d_model, n_head):
    with pytest.raises(ValueError, match=str(d_model)):
        MultiHeadConfig(d_model=d_model, n_head=n_head)
    with pytest.raises(ValueError) as err:
        mha_param_count(d_model, n_head)
    assert str(d_model) in str(err.value) and str(n_head) in str(err.value)


def test_config_defaults_and_divisors():
    c = MultiHeadConfig()
    assert (c.d_model, c.n_head, c.bias, c.dropout) == (64, 4, True, 0.0)
    for n_head in (1, 2, 3, 4, 6, 8, 12, 16, 24, 48):
        MultiHeadConfig(d_model=48, n_head=n_head)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("d_model, n_head", [(1, 1), (8, 2), (64, 16), (512, 8), (768, 12), (1024, 16), (1600, 25)])
def test_param_count_equals_real_modules(d_model, n_head, bias):
    count = mha_param_count(d_model, n_head, bias=bias)
    assert type(count) is int
    assert count == 4 * d_model * d_model + (4 * d_model if bias else 0)
    with torch.device("meta"):
        config = MultiHeadConfig(d_model=d_model, n_head=n_head, bias=bias)
        modules = [nn.MultiheadAttention(d_model, n_head, bias=bias), MultiHeadAttention(config),
                   CausalSelfAttention(config)]
    for m in modules:
        assert sum(p.numel() for p in m.parameters()) == count, type(m).__name__
    assert mha_param_count(d_model, n_head) == mha_param_count(d_model, n_head, bias=True)


def test_param_count_of_gpt2_small_attention():
    """GPT-2 small: 12 layers of attention at width 768 hold 12 * 2,362,368 of its 124M parameters."""
    assert mha_param_count(768, 12) == 2_362_368
    assert 12 * mha_param_count(768, 12) == 28_348_416


@pytest.mark.parametrize("bias", [True, False])
def test_state_dict_layout_is_gpt2s(bias):
    """Chapter 7 loads GPT-2's weights by these names (transposing HF's Conv1D to nn.Linear's layout)."""
    d_model = 24
    attn = CausalSelfAttention(MultiHeadConfig(d_model=d_model, n_head=3, bias=bias, dropout=0.1))
    state = attn.state_dict()
    expected = {"c_attn.weight": (3 * d_model, d_model), "c_attn.bias": (3 * d_model,),
                "c_proj.weight": (d_model, d_model), "c_proj.bias": (d_model,)}
    if not bias:
        expected = {k: v for k, v in expected.items() if k.endswith("weight")}
    assert list(state) == list(expected)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    # a state_dict with exactly these names loads strictly into a fresh module and reproduces its outputs
    fresh = CausalSelfAttention(MultiHeadConfig(d_model=d_model, n_head=3, bias=bias, dropout=0.1))
    fresh.load_state_dict({k: v.clone() for k, v in state.items()}, strict=True)
    x = torch.randn(2, 5, d_model)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), attn.eval()(x))


def test_multiheadattention_state_dict_layout():
    mha = MultiHeadAttention(MultiHeadConfig(d_model=8, n_head=2))
    assert list(mha.state_dict()) == [f"W_{p}.{t}" for p in "QKVO" for t in ("weight", "bias")]
    no_bias = MultiHeadAttention(MultiHeadConfig(d_model=8, n_head=2, bias=False))
    assert list(no_bias.state_dict()) == [f"W_{p}.weight" for p in "QKVO"]
