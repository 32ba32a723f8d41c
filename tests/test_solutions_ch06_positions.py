"""Unit tests of solutions/ch06_tokens.py's positions beyond the exercises' own tests: the sinusoidal
encoding against the paper's formula computed with Python's math module, the shift matrices M_k
(PE[pos + k] = M_k PE[pos], orthogonal, M_j M_k = M_(j+k)), GPTEmbedding with GPT-2 small's shapes
(on the meta device) and a nanoGPT-style state dict written here, the tied output projection, the
parameter counts, and rotary embeddings against complex numbers. Every expected value comes from
PyTorch, Python's math module or a closed form, never from the module's own output."""
import math

import pytest
import torch
import torch.nn.functional as F

from solutions.ch06_tokens import (EmbeddingConfig, GPTEmbedding, apply_rope, embedding_param_count,
                                   shift_matrix, sinusoidal_encoding)

GPT2 = dict(vocab_size=50257, block_size=1024, d_model=768)


def pe_math(positions, d_model, base=10000.0):
    """The paper's PE(pos, 2i) = sin(pos / base^(2i/d_model)), PE(pos, 2i+1) = cos(...), in float64."""
    return torch.tensor([[f(p / base ** (2 * i / d_model)) for i in range(d_model // 2) for f in (math.sin, math.cos)]
                         for p in positions], dtype=torch.float64).reshape(len(positions), d_model)


def shift_math(k, d_model, base=10000.0):
    blocks = []
    for i in range(d_model // 2):
        a = k * base ** (-2 * i / d_model)
        blocks.append(torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float64))
    return torch.block_diag(*blocks)


def rope_complex(x, positions, base=10000.0):
    """Pairs as complex numbers times e^(i m base^(-2i/d)), in float64."""
    d = x.shape[-1]
    z = torch.view_as_complex(x.detach().double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    w = torch.tensor([base ** (-2 * i / d) for i in range(d // 2)], dtype=torch.float64)
    angle = positions.double()[:, None] * w
    return torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle)).reshape(x.shape)


# ------------------------------------------------------------------------------------ sinusoidal

def test_sinusoidal_position_zero_and_hand_checked_points():
    pe = sinusoidal_encoding(10, 6)
    assert pe.shape == (10, 6) and pe.dtype == torch.float32
    assert torch.equal(pe[0], torch.tensor([0.0, 1.0] * 3))
    # d_model = 6: the frequencies are 1, 10000^(-1/3) = 1/21.544..., 10000^(-2/3) = 1/464.15...
    assert pe[1, 0].item() == pytest.approx(math.sin(1.0), abs=1e-7)
    assert pe[1, 1].item() == pytest.approx(math.cos(1.0), abs=1e-7)
    assert pe[7, 2].item() == pytest.approx(math.sin(7 / 21.544346900318832), abs=1e-7)
    assert pe[9, 5].item() == pytest.approx(math.cos(9 / 464.15888336127773), abs=1e-7)
    # Section 3.5: wavelengths from 2 pi to 10000 * 2 pi; the last pair of d_model = 2 barely turns
    slow = sinusoidal_encoding(3, 512)[:, -2:]
    assert torch.allclose(slow[:, 1], torch.ones(3), atol=1e-6)


@pytest.mark.parametrize("n_pos, d_model, base", [(50, 16, 10000.0), (7, 2, 10000.0), (20, 10, 100.0),
                                                  (12, 64, 500000.0)])
def test_sinusoidal_matches_math(n_pos, d_model, base):
    want = pe_math(range(n_pos), d_model, base)
    got = sinusoidal_encoding(n_pos, d_model, base=base)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, atol=1.2e-7, rtol=0)


def test_sinusoidal_far_positions_are_float32_rounding_of_float64():
    pe = sinusoidal_encoding(100_001, 32)
    rows = [0, 1, 4096, 54_321, 99_999, 100_000]
    assert torch.allclose(pe[rows].double(), pe_math(rows, 32), atol=1.2e-7, rtol=0)
    # every pair lies on the unit circle
    pairs = pe.double().reshape(-1, 16, 2)
    assert torch.allclose(pairs.norm(dim=-1), torch.ones(1, dtype=torch.float64), atol=3e-7)


def test_sinusoidal_edge_cases():
    assert sinusoidal_encoding(0, 8).shape == (0, 8)
    for d in (1, 3, 769):
        with pytest.raises(ValueError):
            sinusoidal_encoding(4, d)


# ------------------------------------------------------------------------------------ shift matrix

@pytest.mark.parametrize("d_model, base", [(2, 10000.0), (8, 10000.0), (64, 10000.0), (12, 100.0)])
def test_shift_matrix_moves_the_encoding(d_model, base):
    g = torch.Generator().manual_seed(d_model)
    pos = torch.randint(-2000, 2000, (40,), generator=g).tolist()
    P = pe_math(pos, d_model, base)
    for k in [0, 1, -1, 2, 7, -13, 100, 1023, -4096, 100_000] + torch.randint(-10**4, 10**4, (10,), generator=g).tolist():
        M = shift_matrix(k, d_model, base=base)
        assert M.dtype == torch.float64 and M.shape == (d_model, d_model)
        assert torch.allclose(M, shift_math(k, d_model, base), atol=1e-10, rtol=0)
        assert torch.allclose(P @ M.T, pe_math([p + k for p in pos], d_model, base), atol=1e-9, rtol=0)


def test_shift_matrix_group_properties():
    eye = torch.eye(16, dtype=torch.float64)
    assert torch.equal(shift_matrix(0, 16), eye)
    for j, k in [(1, 1), (3, -3), (17, 250), (-1000, 31), (50_000, 50_000)]:
        Mj, Mk = shift_matrix(j, 16), shift_matrix(k, 16)
        assert torch.allclose(Mj @ Mk, shift_matrix(j + k, 16), atol=1e-10, rtol=0)
        assert torch.allclose(Mk @ Mk.T, eye, atol=1e-12, rtol=0)
        assert torch.allclose(shift_matrix(-k, 16), Mk.T, atol=1e-12, rtol=0)
    M = shift_matrix(5, 8)
    mask = torch.block_diag(*[torch.ones(2, 2)] * 4).bool()
    assert torch.equal(M[~mask], torch.zeros(int((~mask).sum()), dtype=torch.float64))
    with pytest.raises(ValueError):
        shift_matrix(1, 7)


# ------------------------------------------------------------------------------------ GPTEmbedding

def test_config_defaults_are_gpt2_small():
    cfg = EmbeddingConfig()
    assert (cfg.vocab_size, cfg.block_size, cfg.d_model, cfg.dropout) == (50257, 1024, 768, 0.0)


def test_gpt2_small_shapes_on_meta():
    with torch.device("meta"):
        emb = GPTEmbedding(EmbeddingConfig())
    assert [(n, tuple(p.shape)) for n, p in emb.named_parameters()] == [("wte.weight", (50257, 768)),
                                                                       ("wpe.weight", (1024, 768))]
    assert list(emb.state_dict()) == ["wte.weight", "wpe.weight"]
    assert [n for n, _ in emb.named_children()] == ["wte", "wpe", "drop"]
    assert all(p.device.type == "meta" for p in emb.parameters())
    out = emb(torch.zeros(2, 1024, dtype=torch.long, device="meta"))
    assert out.shape == (2, 1024, 768) and out.device.type == "meta"
    with pytest.raises(ValueError, match="block_size"):
        emb(torch.zeros(1, 1025, dtype=torch.long, device="meta"))


def _nanogpt_state(V, block, d, seed):
    """What nanoGPT's GPT.state_dict() holds for its input layer, written here."""
    g = torch.Generator().manual_seed(seed)
    return {"transformer.wte.weight": torch.randn(V, d, generator=g) * 0.02,
            "transformer.wpe.weight": torch.randn(block, d, generator=g) * 0.01,
            "transformer.h.0.ln_1.weight": torch.ones(d), "lm_head.weight": torch.zeros(V, d)}


def test_nanogpt_state_dict_loads_and_forward_is_two_lookups():
    V, block, d = 97, 16, 24
    theirs = _nanogpt_state(V, block, d, 0)
    prefix = "transformer."
    ours = {k.removeprefix(prefix): v for k, v in theirs.items() if k.startswith(prefix + "wt")
            or k.startswith(prefix + "wp")}
    emb = GPTEmbedding(EmbeddingConfig(vocab_size=V, block_size=block, d_model=d, dropout=0.1))
    emb.load_state_dict(ours, strict=True)
    W, P = theirs["transformer.wte.weight"], theirs["transformer.wpe.weight"]
    emb.eval()
    g = torch.Generator().manual_seed(1)
    for B, T in [(1, 1), (3, 16), (2, 7), (0, 5)]:
        idx = torch.randint(0, V, (B, T), generator=g)
        assert torch.equal(emb(idx), F.embedding(idx, W) + F.embedding(torch.arange(T), P))
    # training mode: one dropout on the sum, from the global generator
    emb.train()
    idx = torch.randint(0, V, (4, 10), generator=g)
    want = F.embedding(idx, W) + F.embedding(torch.arange(10), P)
    torch.manual_seed(3)
    got = emb(idx)
    torch.manual_seed(3)
    assert torch.equal(got, F.dropout(want, 0.1, training=True))
    with pytest.raises(ValueError, match="block_size"):
        emb(torch.zeros(1, block + 1, dtype=torch.long))


def _accumulated_variables(t):
    """The leaf tensors whose .grad a backward from t would fill."""
    seen, stack, leaves = set(), [t.grad_fn], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.append(fn.variable)
        stack.extend(f for f, _ in fn.next_functions)
    return leaves


def test_tied_logits_use_wte_weight_itself():
    V, block, d = 40, 8, 12
    emb = GPTEmbedding(EmbeddingConfig(vocab_size=V, block_size=block, d_model=d))
    before = [(n, p.data_ptr()) for n, p in emb.named_parameters()]
    g = torch.Generator().manual_seed(2)
    h = torch.randn(2, 5, d, generator=g, requires_grad=True)
    logits = emb.logits(h)
    assert logits.shape == (2, 5, V)
    assert torch.allclose(logits, F.linear(h, emb.wte.weight), atol=1e-6)
    leaves = _accumulated_variables(logits)
    params = [p for p in leaves if p is not h]
    assert len(params) == 1 and params[0] is emb.wte.weight       # the same Parameter, no copy
    assert params[0].data_ptr() == emb.wte.weight.data_ptr()
    assert [(n, p.data_ptr()) for n, p in emb.named_parameters()] == before   # no new parameter
    gy = torch.randn(2, 5, V, generator=g)
    logits.backward(gy)
    assert torch.allclose(emb.wte.weight.grad, torch.einsum("btv,btd->vd", gy, h.detach()), atol=1e-5)
    assert emb.wpe.weight.grad is None
    # the input layer and the output projection add their gradients in the one matrix
    emb.zero_grad()
    idx = torch.tensor([[3, 3, 7]])
    (emb.logits(emb(idx)) ** 2).sum().backward()
    assert emb.wte.weight.grad is not None and emb.wte.weight.grad.abs().sum() > 0


def test_param_counts():
    V, block, d = GPT2["vocab_size"], GPT2["block_size"], GPT2["d_model"]
    tied = embedding_param_count(V, block, d)
    untied = embedding_param_count(V, block, d, tied=False)
    assert type(tied) is int and type(untied) is int
    assert tied == 39_383_808 and embedding_param_count(V, block, d, True) == tied
    assert untied - tied == 50257 * 768 == 38_597_376          # what tying saves
    with torch.device("meta"):
        emb = GPTEmbedding(EmbeddingConfig())
    assert sum(p.numel() for p in emb.parameters()) == tied
    for V, block, d in [(1, 1, 1), (65, 256, 384), (128256, 8192, 4096)]:
        assert embedding_param_count(V, block, d) == (V + block) * d
        assert embedding_param_count(V, block, d, tied=False) == (2 * V + block) * d


# ------------------------------------------------------------------------------------ RoPE

@pytest.mark.parametrize("shape, base, dtype, tol", [((6, 8), 10000.0, torch.float64, 1e-10),
                                                     ((2, 3, 9, 16), 10000.0, torch.float64, 1e-10),
                                                     ((4, 5, 64), 500000.0, torch.float32, 2e-6),
                                                     ((2, 7, 32), 10000.0, torch.float16, 4e-3),
                                                     ((2, 7, 32), 10000.0, torch.bfloat16, 3e-2)])
def test_rope_matches_complex_numbers(shape, base, dtype, tol):
    g = torch.Generator().manual_seed(shape[-1])
    x = torch.randn(shape, generator=g).to(dtype)
    x0 = x.clone()
    positions = torch.randint(-5000, 100_000, (shape[-2],), generator=g)
    got = apply_rope(x, positions, base=base)
    assert got.shape == x.shape and got.dtype == dtype
    assert torch.allclose(got.double(), rope_complex(x, positions, base), atol=tol, rtol=tol)
    assert torch.equal(x, x0)


def test_rope_relative_positions_and_norms():
    g = torch.Generator().manual_seed(9)
    q = torch.randn(32, generator=g, dtype=torch.float64)
    k = torch.randn(32, generator=g, dtype=torch.float64)

    def rot(v, m):
        return apply_rope(v[None], torch.tensor([m]))[0]

    for _ in range(20):
        m, n, c = torch.randint(-10**4, 10**4, (3,), generator=g).tolist()
        assert rot(q, m) @ rot(k, n) == pytest.approx((rot(q, m + c) @ rot(k, n + c)).item(), abs=1e-9)
        assert rot(q, m) @ rot(k, n) == pytest.approx((rot(q, m - n) @ k).item(), abs=1e-9)
        assert rot(q, m).norm().item() == pytest.approx(q.norm().item(), rel=1e-12)
    with pytest.raises(ValueError):
        apply_rope(torch.zeros(2, 5), torch.arange(2))


def test_rope_gradcheck_float64():
    g = torch.Generator().manual_seed(10)
    x = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64, requires_grad=True)
    positions = torch.tensor([0, 5, 2, 900])
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, positions), (x,))


def test_rope_positions_from_a_cache_offset_are_slices_of_a_longer_run():
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, 64, 16, generator=g, dtype=torch.float64)
    full = apply_rope(x, torch.arange(64))
    for start, length in [(0, 1), (10, 1), (37, 27), (5, 32), (63, 1)]:
        part = apply_rope(x[:, :, start:start + length], torch.arange(start, start + length))
        assert torch.allclose(part, full[:, :, start:start + length], atol=1e-12, rtol=0)
    # one new token at a time, as a KV cache feeds it, equals the whole sequence at once
    steps = torch.cat([apply_rope(x[:, :, t:t + 1], torch.tensor([t])) for t in range(64)], dim=2)
    assert torch.allclose(steps, full, atol=1e-12, rtol=0)
