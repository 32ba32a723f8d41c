"""Unit tests of solutions/ch05_block.py beyond the exercises' own tests: a nanoGPT-style block's state dict
(written here from PyTorch's primitives with nanoGPT's names) loads into Block and back, Block and PostLNBlock
against nn.TransformerEncoderLayer (outputs and every gradient), BlockConfig, the MLP's layout and dropout,
ffn / gelu / layer_norm against torch.nn.functional, layer_grad_norms, block_param_count and causality.
Every expected value comes from PyTorch or a closed form, never from the module's own output."""
import dataclasses
import functools
import io
import math
import runpy
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import solutions.ch05_block
from solutions.ch01_tensors import gpt2_param_count
from solutions.ch03_attention import first_leak
from solutions.ch04_multihead import CausalSelfAttention, MultiHeadConfig
from solutions.ch05_block import (MLP, Block, BlockConfig, PostLNBlock, block_param_count, ffn, gelu,
                                  layer_grad_norms, layer_norm)
from solutions.testing import randomised  # every parameter drawn at random, eval mode

ATOL = RTOL = 1e-5
GELU_TANH = functools.partial(F.gelu, approximate="tanh")   # a plain callable: see _encoder_layer


def block(cls, d_model, n_head, seed, d_ff=None, bias=True, dropout=0.0, dtype=torch.float32):
    cfg = BlockConfig(d_model=d_model, n_head=n_head, d_ff=d_ff, bias=bias, dropout=dropout)
    return randomised(cls(cfg).to(dtype), seed)


def _x(B, T, C, seed, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(10_000 + seed)
    return (torch.randn(B, T, C, generator=g, dtype=torch.float64) * scale).to(dtype)


def seeded(seed, fn):
    torch.manual_seed(seed)
    return fn()


# --------------------------------------------------------------------------------------------------
# 1. A nanoGPT-style block, written from PyTorch's primitives with nanoGPT's names (model.py of
#    karpathy/nanoGPT), loads into Block with strict=True and back

@dataclass
class GPTConfig:           # the fields of nanoGPT's GPTConfig that a block reads
    n_embd: int = 768
    n_head: int = 12
    dropout: float = 0.0
    bias: bool = True


class NanoLayerNorm(nn.Module):
    """nanoGPT's LayerNorm: nn.LayerNorm with an optional bias (written when nn.LayerNorm had no bias=)."""

    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, input):
        return F.layer_norm(input, self.weight.shape, self.weight, self.bias, 1e-5)


class NanoCausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)   # (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=self.dropout if self.training else 0,
                                           is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class NanoMLP(nn.Module):
    def __init__(self, config, exact_gelu=False):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # GPT-2's GELU is the tanh approximation; nanoGPT itself uses nn.GELU(), the exact (erf) one,
        # which differs by up to about 1e-3 (see test_the_tanh_approximation_is_visible)
        self.gelu = nn.GELU() if exact_gelu else nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        x = self.c_fc(x)
        x = self.gelu(x)
        x = self.c_proj(x)
        x = self.dropout(x)
        return x


class NanoBlock(nn.Module):
    def __init__(self, config, norm="nanoGPT", exact_gelu=False):
        super().__init__()
        ln = ((lambda: NanoLayerNorm(config.n_embd, bias=config.bias)) if norm == "nanoGPT"
              else (lambda: nn.LayerNorm(config.n_embd, bias=config.bias)))
        self.ln_1 = ln()
        self.attn = NanoCausalSelfAttention(config)
        self.ln_2 = ln()
        self.mlp = NanoMLP(config, exact_gelu)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return x


def through_a_file(state):
    """state saved with torch.save and read back with torch.load, as a checkpoint would be."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


NANO_SIZES = [  # seed, B, T, n_embd, n_head
    (0, 1, 1, 4, 1),
    (1, 2, 5, 8, 2),
    (2, 3, 9, 24, 6),
    (3, 2, 16, 64, 4),
    (4, 1, 12, 48, 12),
]


def _nano_names(bias):
    t = ["weight", "bias"] if bias else ["weight"]
    return ([f"ln_1.{s}" for s in t] + [f"attn.{m}.{s}" for m in ("c_attn", "c_proj") for s in t]
            + [f"ln_2.{s}" for s in t] + [f"mlp.{m}.{s}" for m in ("c_fc", "c_proj") for s in t])


@pytest.mark.parametrize("norm", ["nanoGPT", "nn.LayerNorm"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("seed, B, T, n_embd, n_head", NANO_SIZES)
def test_a_nanogpt_state_dict_loads_into_block_strictly(seed, B, T, n_embd, n_head, bias, norm):
    theirs = randomised(NanoBlock(GPTConfig(n_embd=n_embd, n_head=n_head, bias=bias), norm=norm), seed)
    state = through_a_file(theirs.state_dict())
    assert list(state) == _nano_names(bias)
    ours = Block(BlockConfig(d_model=n_embd, n_head=n_head, bias=bias))
    result = ours.load_state_dict(state, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert list(ours.state_dict()) == list(state)
    for name, t in ours.state_dict().items():
        assert torch.equal(t, state[name]), name
    x = _x(B, T, n_embd, seed)
    with torch.no_grad():
        got, want = ours.eval()(x), theirs(x)
    assert got.shape == (B, T, n_embd) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("norm", ["nanoGPT", "nn.LayerNorm"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("seed, B, T, n_embd, n_head", NANO_SIZES)
def test_blocks_state_dict_loads_into_a_nanogpt_block_strictly(seed, B, T, n_embd, n_head, bias, norm):
    ours = block(Block, n_embd, n_head, 100 + seed, bias=bias)
    state = through_a_file(ours.state_dict())
    theirs = NanoBlock(GPTConfig(n_embd=n_embd, n_head=n_head, bias=bias), norm=norm).eval()
    result = theirs.load_state_dict(state, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    x = _x(B, T, n_embd, seed)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), ours(x), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("bias", [True, False])
def test_a_nanogpt_block_in_training_mode_draws_the_same_dropout(bias):
    """nanoGPT drops attention weights (in F.scaled_dot_product_attention), the attention output and the
    MLP output, in that order: after the same seed a loaded Block gives the same numbers."""
    cfg = GPTConfig(n_embd=16, n_head=4, dropout=0.3, bias=bias)
    theirs = randomised(NanoBlock(cfg), 5).train()
    ours = Block(BlockConfig(d_model=16, n_head=4, bias=bias, dropout=0.3))
    ours.load_state_dict(through_a_file(theirs.state_dict()), strict=True)
    ours.train()
    x = _x(3, 7, 16, 5)
    with torch.no_grad():
        for seed in (0, 1):
            torch.testing.assert_close(seeded(seed, lambda: ours(x)), seeded(seed, lambda: theirs(x)),
                                       atol=1e-6, rtol=1e-6)
        assert not torch.allclose(seeded(0, lambda: ours(x)), seeded(1, lambda: ours(x)))


def test_the_tanh_approximation_is_visible():
    """nanoGPT's own exact GELU gives a different block output: the agreement above is not vacuous."""
    cfg = GPTConfig(n_embd=16, n_head=2)
    exact = randomised(NanoBlock(cfg, exact_gelu=True), 6, scale=1.0)
    ours = Block(BlockConfig(d_model=16, n_head=2))
    ours.load_state_dict(through_a_file(exact.state_dict()), strict=True)
    x = _x(2, 6, 16, 6, scale=2.0)
    with torch.no_grad():
        diff = (ours.eval()(x) - exact(x)).abs().max().item()
    assert 1e-5 < diff < 1.0, diff


def test_gpt2_small_block_state_dict_layout_on_the_meta_device():
    with torch.device("meta"):
        theirs = NanoBlock(GPTConfig())
        ours = Block(BlockConfig(d_model=768, n_head=12, dropout=0.1))
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert list(ours.state_dict()) == list(theirs.state_dict())
    result = ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys


# --------------------------------------------------------------------------------------------------
# 2. Block and PostLNBlock against nn.TransformerEncoderLayer, outputs and gradients

# our name -> nn.TransformerEncoderLayer's name
TO_TORCH = {
    "ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias",
    "attn.c_attn.weight": "self_attn.in_proj_weight", "attn.c_attn.bias": "self_attn.in_proj_bias",
    "attn.c_proj.weight": "self_attn.out_proj.weight", "attn.c_proj.bias": "self_attn.out_proj.bias",
    "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
    "mlp.c_fc.weight": "linear1.weight", "mlp.c_fc.bias": "linear1.bias",
    "mlp.c_proj.weight": "linear2.weight", "mlp.c_proj.bias": "linear2.bias",
}

ENCODER_SIZES = [  # seed, B, T, d_model, n_head, d_ff, bias
    (0, 1, 1, 4, 1, 7, True),
    (1, 2, 6, 8, 2, 32, True),       # d_ff = 4 d_model
    (2, 3, 9, 24, 6, 40, False),
    (3, 2, 12, 32, 4, 20, True),
    (4, 1, 5, 12, 3, 1, False),
    (5, 2, 16, 16, 16, 96, True),
]


def _encoder_layer(d_model, n_head, d_ff, bias, norm_first, dtype, seed):
    """nn.TransformerEncoderLayer with random weights. The activation is passed as a partial of F.gelu: with
    F.gelu itself or an nn.GELU module, PyTorch's fused eval-mode path would run the exact GELU."""
    layer = nn.TransformerEncoderLayer(d_model, n_head, dim_feedforward=d_ff, dropout=0.0, activation=GELU_TANH,
                                       batch_first=True, norm_first=norm_first, bias=bias, dtype=dtype)
    return randomised(layer, seed)


def _ours_from(layer, cls, d_model, n_head, d_ff, bias, dtype):
    ours = cls(BlockConfig(d_model=d_model, n_head=n_head, d_ff=d_ff, bias=bias)).to(dtype)
    theirs = layer.state_dict()
    names = list(ours.state_dict())
    assert {TO_TORCH[n] for n in names} == set(theirs), "every parameter of the layer is mapped"
    ours.load_state_dict({n: theirs[TO_TORCH[n]].clone() for n in names}, strict=True)
    return ours.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls, norm_first", [(Block, True), (PostLNBlock, False)], ids=["Block", "PostLNBlock"])
@pytest.mark.parametrize("seed, B, T, d_model, n_head, d_ff, bias", ENCODER_SIZES)
def test_agrees_with_transformer_encoder_layer(seed, B, T, d_model, n_head, d_ff, bias, cls, norm_first, dtype):
    layer = _encoder_layer(d_model, n_head, d_ff, bias, norm_first, dtype, seed)
    ours = _ours_from(layer, cls, d_model, n_head, d_ff, bias, dtype)
    x = _x(B, T, d_model, seed, dtype, scale=2.0)
    mask = nn.Transformer.generate_square_subsequent_mask(T, dtype=dtype)      # -inf above the diagonal
    w = _x(B, T, d_model, seed + 50, dtype)                                     # the loss's weights
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=1e-11, rtol=1e-11)

    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = ours(x1), layer(x2, src_mask=mask, is_causal=True)
    assert y1.shape == (B, T, d_model) and y1.dtype == dtype
    torch.testing.assert_close(y1, y2, **tol)
    (y1 * w).sum().backward()
    (y2 * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **tol, msg=lambda m: f"d loss / d x: {m}")
    theirs = dict(layer.named_parameters())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, theirs[TO_TORCH[name]].grad, **tol, msg=lambda m: f"{name}: {m}")


def test_post_ln_differs_from_pre_ln():
    """The same weights in the two arrangements give different outputs (the tests above would notice a swap)."""
    pre = block(Block, 16, 4, 7)
    post = PostLNBlock(pre.config)
    post.load_state_dict(pre.state_dict(), strict=True)
    x = _x(2, 5, 16, 7)
    with torch.no_grad():
        assert not torch.allclose(pre(x), post.eval()(x), atol=1e-2)


def test_block_gradcheck():
    for cls in (Block, PostLNBlock):
        b = block(cls, 6, 2, 8, d_ff=5, dtype=torch.float64)
        x = _x(2, 4, 6, 8, torch.float64).requires_grad_()
        assert torch.autograd.gradcheck(b, (x,))


def test_residual_closed_forms():
    """With both output projections zero, each sublayer adds nothing: Block is the identity (exactly), and
    PostLNBlock is ln_2(ln_1(x)) by F.layer_norm."""
    for cls in (Block, PostLNBlock):
        b = block(cls, 12, 3, 9, d_ff=20)
        with torch.no_grad():
            for lin in (b.attn.c_proj, b.mlp.c_proj):
                lin.weight.zero_()
                lin.bias.zero_()
            x = _x(2, 7, 12, 9, scale=3.0)
            if cls is Block:
                assert torch.equal(b(x), x)
            else:
                ln = lambda t, m: F.layer_norm(t, (12,), m.weight, m.bias, 1e-5)
                torch.testing.assert_close(b(x), ln(ln(x, b.ln_1), b.ln_2), atol=ATOL, rtol=RTOL)


def test_position_zero_closed_form():
    """Position 0 attends to itself only (softmax over one key is 1): Block's output there is
    x0 + a, a = W_O (W_V ln_1(x0) + b_V) + b_O, plus the MLP of ln_2(x0 + a), all by F."""
    b = block(Block, 8, 2, 10, d_ff=12)
    x = _x(3, 5, 8, 10)
    with torch.no_grad():
        x0 = x[:, 0]
        h = F.layer_norm(x0, (8,), b.ln_1.weight, b.ln_1.bias)
        a = F.linear(F.linear(h, b.attn.c_attn.weight[16:], b.attn.c_attn.bias[16:]), b.attn.c_proj.weight,
                     b.attn.c_proj.bias)
        r = x0 + a
        m = F.linear(GELU_TANH(F.linear(F.layer_norm(r, (8,), b.ln_2.weight, b.ln_2.bias), b.mlp.c_fc.weight,
                                        b.mlp.c_fc.bias)), b.mlp.c_proj.weight, b.mlp.c_proj.bias)
        torch.testing.assert_close(b(x)[:, 0], r + m, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("cls", [Block, PostLNBlock])
def test_training_mode_equals_a_seeded_functional_forward(cls):
    """Dropout in three places, drawn in the modules' order: attention weights, attention output, MLP output."""
    p = 0.25
    b = block(cls, 16, 4, 11, d_ff=24, dropout=p).train()
    x = _x(2, 6, 16, 11)

    def attn(t):
        B, T, C = t.shape
        q, k, v = (s.reshape(B, T, 4, 4).transpose(1, 2)
                   for s in F.linear(t, b.attn.c_attn.weight, b.attn.c_attn.bias).split(C, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True).transpose(1, 2).reshape(B, T, C)
        return F.dropout(F.linear(y, b.attn.c_proj.weight, b.attn.c_proj.bias), p)

    def mlp(t):
        h = GELU_TANH(F.linear(t, b.mlp.c_fc.weight, b.mlp.c_fc.bias))
        return F.dropout(F.linear(h, b.mlp.c_proj.weight, b.mlp.c_proj.bias), p)

    ln1 = lambda t: F.layer_norm(t, (16,), b.ln_1.weight, b.ln_1.bias)
    ln2 = lambda t: F.layer_norm(t, (16,), b.ln_2.weight, b.ln_2.bias)

    def functional():
        if cls is Block:
            h = x + attn(ln1(x))
            return h + mlp(ln2(h))
        h = ln1(x + attn(x))
        return ln2(h + mlp(h))

    with torch.no_grad():
        for seed in (0, 3):
            torch.testing.assert_close(seeded(seed, lambda: b(x)), seeded(seed, functional), atol=1e-6, rtol=1e-6)
        b.eval()
        torch.testing.assert_close(b(x), b(x), atol=0.0, rtol=0.0)


def test_block_in_bfloat16_is_close_to_float32():
    """bfloat16 keeps 8 significant bits: compare with float32 on the same (rounded) weights and inputs."""
    b16 = block(Block, 32, 4, 12).to(torch.bfloat16)
    b32 = Block(b16.config)
    b32.load_state_dict({k: v.float() for k, v in b16.state_dict().items()}, strict=True)
    x = _x(2, 8, 32, 12).to(torch.bfloat16)
    with torch.no_grad():
        got, want = b16(x), b32.eval()(x.float())
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), want, atol=6e-2, rtol=6e-2)


@pytest.mark.parametrize("d_model, n_head", [(768, 12), (1600, 25)])
def test_block_on_the_meta_device(d_model, n_head):
    with torch.device("meta"):
        b = Block(BlockConfig(d_model=d_model, n_head=n_head))
        y = b(torch.empty(2, 1024, d_model))
    assert y.device.type == "meta" and y.shape == (2, 1024, d_model)
    assert sum(p.numel() for p in b.parameters()) == 12 * d_model**2 + 13 * d_model


def test_block_is_batch_independent_and_takes_non_contiguous_inputs():
    b = block(Block, 16, 4, 13)
    x = _x(4, 7, 16, 13)
    with torch.no_grad():
        y = b(x)
        torch.testing.assert_close(b(x[2:3]), y[2:3], atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(b(x.transpose(1, 2).contiguous().transpose(1, 2)), y, atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------------------------------
# 3. BlockConfig

def test_block_config_defaults():
    c = BlockConfig()
    assert (c.d_model, c.n_head, c.bias, c.dropout, c.d_ff) == (64, 4, True, 0.0, 256)
    assert isinstance(c, MultiHeadConfig)
    assert BlockConfig(d_model=768, n_head=12).d_ff == 3072


@pytest.mark.parametrize("d_model, n_head, d_ff", [(8, 2, 1), (8, 2, 32), (8, 2, 100), (12, 3, 7), (1, 1, 5)])
def test_block_config_keeps_an_explicit_d_ff(d_model, n_head, d_ff):
    c = BlockConfig(d_model=d_model, n_head=n_head, d_ff=d_ff)
    assert c.d_ff == d_ff
    assert c == BlockConfig(d_model=d_model, n_head=n_head, d_ff=d_ff)
    assert BlockConfig(d_model=d_model, n_head=n_head).d_ff == 4 * d_model


@pytest.mark.parametrize("d_model, n_head", [(10, 4), (7, 2), (12, 5), (768, 7), (1, 2)])
def test_block_config_rejects_indivisible_widths(d_model, n_head):
    with pytest.raises(ValueError, match=str(d_model)):
        BlockConfig(d_model=d_model, n_head=n_head)
    with pytest.raises(ValueError):
        BlockConfig(d_model=d_model, n_head=n_head, d_ff=4)


def test_block_config_is_a_multi_head_config():
    c = BlockConfig(d_model=24, n_head=6, bias=False, dropout=0.1, d_ff=50)
    attn = CausalSelfAttention(c)
    assert attn.config is c
    assert [tuple(p.shape) for p in attn.parameters()] == [(72, 24), (24, 24)]
    assert {f.name for f in dataclasses.fields(MultiHeadConfig)} < {f.name for f in dataclasses.fields(BlockConfig)}
    b = Block(c)
    assert type(b.attn) is CausalSelfAttention and b.attn.config.n_head == 6
    assert b.mlp.c_fc.weight.shape == (50, 24) and b.mlp.c_fc.bias is None


# --------------------------------------------------------------------------------------------------
# 4. MLP

@pytest.mark.parametrize("d_model, d_ff, bias", [(4, None, True), (8, 3, False), (12, 20, True), (64, 300, False)])
def test_mlp_parameter_count_and_layout(d_model, d_ff, bias):
    mlp = MLP(BlockConfig(d_model=d_model, n_head=1, d_ff=d_ff, bias=bias))
    f = 4 * d_model if d_ff is None else d_ff
    expected = {"c_fc.weight": (f, d_model), "c_fc.bias": (f,), "c_proj.weight": (d_model, f),
                "c_proj.bias": (d_model,)}
    if not bias:
        expected = {k: v for k, v in expected.items() if k.endswith("weight")}
    assert [(k, tuple(v.shape)) for k, v in mlp.state_dict().items()] == list(expected.items())
    assert sum(p.numel() for p in mlp.parameters()) == 2 * d_model * f + ((f + d_model) if bias else 0)
    assert [name for name, _ in mlp.named_children()] == ["c_fc", "gelu", "c_proj", "dropout"]


def _mlp_functional(mlp, x):
    return F.linear(GELU_TANH(F.linear(x, mlp.c_fc.weight, mlp.c_fc.bias)), mlp.c_proj.weight, mlp.c_proj.bias)


@pytest.mark.parametrize("shape", [(12,), (5, 12), (2, 5, 12), (2, 3, 4, 12), (0, 12)])
def test_mlp_is_position_wise_for_any_leading_dims(shape):
    mlp = randomised(MLP(BlockConfig(d_model=12, n_head=3, d_ff=20)), 14)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        y = mlp(x)
        assert y.shape == shape
        torch.testing.assert_close(y, _mlp_functional(mlp, x), atol=ATOL, rtol=RTOL)
        if x.dim() >= 2 and x.shape[0] > 0:
            torch.testing.assert_close(mlp(x[0]), y[0], atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("p, dtype", [(0.1, torch.float32), (0.5, torch.float64), (0.9, torch.float32)])
def test_mlp_training_dropout_is_f_dropout_after_c_proj(p, dtype):
    mlp = randomised(MLP(BlockConfig(d_model=16, n_head=4, d_ff=24, dropout=p)).to(dtype), 15).train()
    x = torch.randn(4, 9, 16, dtype=dtype)
    with torch.no_grad():
        for seed in (0, 1, 2):
            got = seeded(seed, lambda: mlp(x))
            want = seeded(seed, lambda: F.dropout(_mlp_functional(mlp, x), p, training=True))
            torch.testing.assert_close(got, want, atol=0.0, rtol=0.0)
        assert not torch.equal(seeded(0, lambda: mlp(x)), seeded(1, lambda: mlp(x)))


def test_mlp_dropout_zeroes_outputs_not_hidden_units():
    """Dropout on the output: about p of the (B, T, d_model) outputs are exactly 0, and the kept ones are
    the eval output / (1 - p)."""
    p = 0.5
    mlp = randomised(MLP(BlockConfig(d_model=16, n_head=4, dropout=p)), 16)
    x = torch.randn(64, 32, 16)
    with torch.no_grad():
        full = mlp.eval()(x)
        dropped = seeded(4, lambda: mlp.train()(x))
    zero = dropped == 0
    assert abs(zero.float().mean().item() - p) < 0.02
    torch.testing.assert_close(dropped[~zero], full[~zero] / (1 - p), atol=ATOL, rtol=RTOL)


def test_mlp_eval_mode_is_deterministic():
    mlp = randomised(MLP(BlockConfig(d_model=8, n_head=2, dropout=0.7)), 17)
    x = torch.randn(3, 5, 8)
    with torch.no_grad():
        a, b = seeded(0, lambda: mlp(x)), seeded(1, lambda: mlp(x))
    assert torch.equal(a, b)
    torch.testing.assert_close(a, _mlp_functional(mlp, x), atol=ATOL, rtol=RTOL)


# --------------------------------------------------------------------------------------------------
# 5. ffn, gelu, layer_norm against torch.nn.functional

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ffn_agrees_with_f_linear_and_f_relu_with_gradients(dtype):
    g = torch.Generator().manual_seed(18)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    for lead in [(), (5,), (2, 3), (2, 1, 4)]:
        x, W1, b1, W2, b2 = mk(*lead, 6), mk(11, 6), mk(11), mk(6, 11), mk(6)
        args = (x, W1, b1, W2, b2)
        got = ffn(*args)
        want = F.linear(F.relu(F.linear(x, W1, b1)), W2, b2)
        torch.testing.assert_close(got, want)
        v = torch.randn(want.shape, generator=g, dtype=torch.float64).to(dtype)
        for a, b in zip(torch.autograd.grad((got * v).sum(), args), torch.autograd.grad((want * v).sum(), args)):
            torch.testing.assert_close(a, b)


def test_ffn_gradcheck_and_position_wise():
    g = torch.Generator().manual_seed(19)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
    x, W1, b1, W2, b2 = mk(2, 3, 4), mk(7, 4), mk(7), mk(4, 7), mk(4)
    assert torch.autograd.gradcheck(ffn, (x, W1, b1, W2, b2))
    with torch.no_grad():
        y = ffn(x, W1, b1, W2, b2)
        for t in range(3):
            torch.testing.assert_close(ffn(x[:, t], W1, b1, W2, b2), y[:, t])


EXTREMES = [-1e4, -1e3, -100.0, -37.0, -30.0, -10.0, -5.0, -1.0, -1e-3, 0.0, 1e-3, 1.0, 5.0, 10.0, 30.0, 37.0,
            100.0, 1e3, 1e4]


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gelu_agrees_with_f_gelu_with_gradients(approximate, dtype):
    g = torch.Generator().manual_seed(20)
    x = torch.cat([torch.tensor(EXTREMES, dtype=torch.float64), torch.randn(200, generator=g, dtype=torch.float64) * 4,
                   torch.linspace(-8, 8, 161, dtype=torch.float64)]).to(dtype).requires_grad_()
    got, want = gelu(x, approximate=approximate), F.gelu(x, approximate=approximate)
    assert got.dtype == dtype and torch.isfinite(got).all()
    torch.testing.assert_close(got, want)
    dg, dw = torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(want.sum(), x)[0]
    assert torch.isfinite(dg).all()
    torch.testing.assert_close(dg, dw)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_closed_forms(approximate):
    """GELU(x) - GELU(-x) = x (both forms: Phi(x) + Phi(-x) = 1, tanh is odd); GELU(0) = 0; x Phi(x) -> x
    for large x and 0 for very negative x; the tanh form is 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    x = torch.cat([torch.linspace(-6, 6, 121, dtype=torch.float64), torch.tensor([1e4, 1e3, 50.0],
                                                                               dtype=torch.float64)])
    torch.testing.assert_close(gelu(x, approximate) - gelu(-x, approximate), x, atol=1e-12, rtol=1e-12)
    assert gelu(torch.zeros(3), approximate).eq(0).all()
    big = torch.tensor([50.0, 1e3, 1e4], dtype=torch.float64)
    assert torch.equal(gelu(big, approximate), big) and gelu(-big, approximate).abs().max() == 0
    if approximate == "tanh":
        want = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    else:
        want = x * torch.special.ndtr(x)
    torch.testing.assert_close(gelu(x, approximate), want, atol=1e-12, rtol=1e-12)


def test_gelu_gradcheck_default_and_bad_argument():
    x = torch.randn(30, dtype=torch.float64, requires_grad=True)
    for approximate in ("none", "tanh"):
        assert torch.autograd.gradcheck(lambda t: gelu(t, approximate=approximate), (x,))
    torch.testing.assert_close(gelu(x), F.gelu(x))
    with pytest.raises(ValueError):
        gelu(x, approximate="erf")


def _ln_ref(x, w=None, b=None, eps=1e-5):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(8,), (3, 5), (2, 4, 16), (2, 1, 3, 7), (4, 1)])
def test_layer_norm_agrees_with_f_layer_norm_with_gradients(shape, dtype):
    g = torch.Generator().manual_seed(21)
    mk = lambda *s: (torch.randn(*s, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype).requires_grad_()
    C = shape[-1]
    x, w, b = mk(*shape), mk(C), mk(C)
    v = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    for args in [(w, b), (w, None), (None, b), (None, None)]:
        for eps in (1e-5, 0.5):
            got, want = layer_norm(x, *args, eps=eps), _ln_ref(x, *args, eps=eps)
            assert got.dtype == dtype
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            inputs = [x] + [a for a in args if a is not None]
            for a, c in zip(torch.autograd.grad((got * v).sum(), inputs),
                            torch.autograd.grad((want * v).sum(), inputs)):
                torch.testing.assert_close(a, c, atol=1e-4, rtol=1e-4)


def test_layer_norm_gradcheck():
    g = torch.Generator().manual_seed(22)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
    x, w, b = mk(2, 3, 5), mk(5), mk(5)
    assert torch.autograd.gradcheck(layer_norm, (x, w, b))
    assert torch.autograd.gradgradcheck(layer_norm, (x, w, b))
    assert torch.autograd.gradcheck(lambda t: layer_norm(t, eps=1e-2), (x,))


@pytest.mark.parametrize("offset, dtype", [(1e2, torch.float32), (1e3, torch.float32), (-1e4, torch.float32),
                                           (1e5, torch.float32), (1e6, torch.float64), (-1e8, torch.float64),
                                           (1e10, torch.float64)])
def test_layer_norm_is_stable_for_large_offsets(offset, dtype):
    """Inputs of spread 2 around a large offset: the error against the float64 LayerNorm of the same numbers
    stays within a few roundings of the offset (8 eps |offset| / std), as PyTorch's own kernel's does;
    mean(x**2) - mean(x)**2 would lose every digit."""
    g = torch.Generator().manual_seed(23)
    x = (torch.randn(6, 64, generator=g, dtype=torch.float64) * 2 + offset).to(dtype)
    w, b = torch.randn(64, generator=g).to(dtype), torch.randn(64, generator=g).to(dtype)
    truth = _ln_ref(x.double(), w.double(), b.double())
    bound = 1e-6 + 8 * torch.finfo(dtype).eps * abs(offset) / 2
    got = layer_norm(x, w, b)
    assert got.dtype == dtype
    assert (got.double() - truth).abs().max() <= bound
    assert (_ln_ref(x, w, b).double() - truth).abs().max() <= bound      # the bound holds for PyTorch too


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("offset", [0.0, 20.0, -100.0])
def test_layer_norm_in_half_precision(dtype, offset):
    g = torch.Generator().manual_seed(24)
    x = (torch.randn(5, 3, 96, generator=g) * 2 + offset).to(dtype)
    w, b = torch.randn(96, generator=g).to(dtype), torch.randn(96, generator=g).to(dtype)
    got = layer_norm(x, w, b)
    assert got.dtype == dtype and torch.isfinite(got).all()
    # PyTorch's kernel in the same dtype, and the float32 computation of the same numbers rounded to dtype:
    # within 2 of dtype's roundings, plus float32's error at this offset (see the test above)
    torch.testing.assert_close(got, _ln_ref(x, w, b))
    torch.testing.assert_close(got, _ln_ref(x.float(), w.float(), b.float()).to(dtype),
                               atol=1e-5 + 8 * torch.finfo(torch.float32).eps * abs(offset) / 2,
                               rtol=2 * torch.finfo(dtype).eps)
    torch.testing.assert_close(layer_norm(x), _ln_ref(x))


def test_layer_norm_closed_forms():
    """One feature: x - mean = 0, so the output is the bias. No weight or bias: each row has mean 0 and
    variance var / (var + eps)."""
    x = torch.randn(4, 3, 1, dtype=torch.float64)
    b = torch.tensor([0.7], dtype=torch.float64)
    assert torch.equal(layer_norm(x, torch.tensor([2.0], dtype=torch.float64), b), b.expand(4, 3, 1))
    x = torch.randn(6, 50, dtype=torch.float64) * 0.01
    y = layer_norm(x, eps=1e-5)
    var = x.var(-1, correction=0)
    torch.testing.assert_close(y.mean(-1), torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.var(-1, correction=0), var / (var + 1e-5), atol=1e-12, rtol=1e-12)


def test_layer_norm_normalises_each_position_on_its_own():
    g = torch.Generator().manual_seed(25)
    x = torch.randn(3, 6, 16, generator=g)
    w, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    y = layer_norm(x, w, b)
    for bi, t in [(0, 0), (1, 3), (2, 5)]:
        x2 = x.clone()
        x2[bi, t] = torch.randn(16, generator=g) * 10 + 3
        y2 = layer_norm(x2, w, b)
        changed = (y2 != y).any(-1)
        expected = torch.zeros(3, 6, dtype=torch.bool)
        expected[bi, t] = True
        assert torch.equal(changed, expected)
        torch.testing.assert_close(y2[bi, t], _ln_ref(x2[bi, t], w, b))
    # and the same holds through a scaled copy: LayerNorm is invariant to scaling a row
    torch.testing.assert_close(layer_norm(x * 7.0, w, b, eps=0.0), layer_norm(x, w, b, eps=0.0))


# --------------------------------------------------------------------------------------------------
# 6. layer_grad_norms

def _independent_norms(blocks, x, loss_fn):
    """One torch.autograd.grad over every parameter, then each block's global 2-norm (in float64)."""
    y = x
    for b in blocks:
        y = b(y)
    params = [list(b.parameters()) for b in blocks]
    grads = torch.autograd.grad(loss_fn(y), [p for ps in params for p in ps])
    out, i = [], 0
    for ps in params:
        flat = torch.cat([g.double().flatten() for g in grads[i:i + len(ps)]])
        out.append(torch.linalg.vector_norm(flat))
        i += len(ps)
    return torch.stack(out)


def _stack(cls, depth, seed, dtype=torch.float32, dropout=0.0):
    return [block(cls, 16, 4, seed + i, d_ff=24, dropout=dropout, dtype=dtype) for i in range(depth)]


HEAD = torch.randn(16, 5, generator=torch.Generator().manual_seed(26))
TARGET = torch.randint(5, (2, 7), generator=torch.Generator().manual_seed(27))
LOSSES = {
    "cross entropy": lambda y: F.cross_entropy((y @ HEAD.to(y.dtype)).flatten(0, 1), TARGET.flatten()),
    "sum of squares": lambda y: (y ** 2).sum(),
    "last position": lambda y: y[:, -1].sum(),
}


@pytest.mark.parametrize("loss", list(LOSSES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cls", [Block, PostLNBlock])
def test_layer_grad_norms_equals_an_independent_computation(cls, dtype, loss):
    blocks = _stack(cls, 4, 28, dtype)
    x = _x(2, 7, 16, 28, dtype)
    got = layer_grad_norms(blocks, x, LOSSES[loss])
    want = _independent_norms(blocks, x, LOSSES[loss])
    assert got.shape == (4,) and got.dtype == dtype and not got.requires_grad
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)
    assert all(p.grad is None for b in blocks for p in b.parameters())


def test_layer_grad_norms_on_module_list_plain_list_and_tuple():
    blocks = _stack(Block, 3, 29)
    x = _x(2, 7, 16, 29).requires_grad_()
    loss = LOSSES["cross entropy"]
    want = _independent_norms(blocks, x, loss)
    for container in (nn.ModuleList(blocks), list(blocks), tuple(blocks)):
        got = layer_grad_norms(container, x, loss)
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
        assert all(p.grad is None for b in blocks for p in b.parameters())
        assert x.grad is None
    # one block, and the order of the norms follows the order of the blocks
    torch.testing.assert_close(layer_grad_norms(blocks[:1], x, loss).double(),
                               _independent_norms(blocks[:1], x, loss), atol=1e-5, rtol=1e-5)
    rev = layer_grad_norms(blocks[::-1], x, loss).double()
    torch.testing.assert_close(rev, _independent_norms(blocks[::-1], x, loss), atol=1e-5, rtol=1e-5)


def test_layer_grad_norms_with_dropout_after_the_same_seed():
    blocks = [b.train() for b in _stack(PostLNBlock, 3, 30, dropout=0.2)]
    x = _x(2, 7, 16, 30)
    loss = LOSSES["sum of squares"]
    got = seeded(5, lambda: layer_grad_norms(blocks, x, loss))
    want = seeded(5, lambda: _independent_norms(blocks, x, loss))
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_layer_grad_norms_of_a_constant_loss_are_zero():
    """Closed form: with loss = sum(y * 0), every gradient is 0, so every norm is 0."""
    blocks = _stack(Block, 2, 31)
    got = layer_grad_norms(blocks, _x(2, 7, 16, 31), lambda y: (y * 0).sum())
    assert torch.equal(got, torch.zeros(2))


# --------------------------------------------------------------------------------------------------
# 7. block_param_count

CASES = [(d, f, bias) for d in (1, 2, 3, 8, 12, 64, 100, 768, 1024, 1600)
         for f in (None, 1, 7, 3 * d) for bias in (True, False)]


@pytest.mark.parametrize("d_model, d_ff, bias", CASES)
def test_block_param_count_equals_the_modules(d_model, d_ff, bias):
    with torch.device("meta"):
        b = Block(BlockConfig(d_model=d_model, n_head=1, d_ff=d_ff, bias=bias))
    count = block_param_count(d_model, d_ff, bias)
    assert type(count) is int
    assert count == sum(p.numel() for p in b.parameters())
    f = 4 * d_model if d_ff is None else d_ff
    assert count == 4 * d_model**2 + 2 * d_model * f + ((9 * d_model + f) if bias else 2 * d_model)


@pytest.mark.parametrize("d_model", [1, 2, 16, 64, 512, 768, 1024, 1280, 1600, 4096])
def test_block_param_count_closed_form_and_gpt2(d_model):
    assert block_param_count(d_model) == 12 * d_model**2 + 13 * d_model
    assert block_param_count(d_model) == block_param_count(d_model, 4 * d_model, True)
    for n_layer in (0, 1, 11, 47):
        diff = gpt2_param_count(50257, 1024, d_model, n_layer + 1) - gpt2_param_count(50257, 1024, d_model, n_layer)
        assert block_param_count(d_model) == diff


def test_block_param_count_of_gpt2_small():
    assert block_param_count(768) == 7_087_872
    embeddings_and_final_ln = 50257 * 768 + 1024 * 768 + 2 * 768
    assert embeddings_and_final_ln + 12 * block_param_count(768) == gpt2_param_count(50257, 1024, 768, 12) \
        == 124_439_808


# --------------------------------------------------------------------------------------------------
# 8. Causality

@pytest.mark.parametrize("cls", [Block, PostLNBlock])
@pytest.mark.parametrize("d_model, n_head, T", [(8, 2, 6), (16, 4, 12), (12, 12, 9)])
def test_blocks_are_causal(cls, d_model, n_head, T):
    b = block(cls, d_model, n_head, 32 + T)
    x = _x(2, T, d_model, 32)
    assert first_leak(b, x) is None
    assert first_leak(b.train(), x) is None          # no dropout configured: training mode is the same
    # a leaking function is caught by the same test: the tokens in reverse order
    assert first_leak(lambda t: b(t.flip(1)), x) == 0


# --------------------------------------------------------------------------------------------------
# Importing the module

def test_running_the_module_prints_nothing(capsys):
    """A library module should not write to stdout when imported (run here in a fresh namespace)."""
    runpy.run_path(solutions.ch05_block.__file__, run_name="ch05_block_fresh")
    assert capsys.readouterr().out == ""
