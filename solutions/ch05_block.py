"""Reference solutions for 5. The Transformer block: feed-forward network, residuals and LayerNorm.

Generated from chapters/ch05_block/ch05_block.ipynb by tools/export_solutions.py: edit the notebook, then re-run
`python tools/export_solutions.py`. tests/test_single_source.py fails if the two differ.
"""


import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from solutions.ch01_tensors import linear, standardize
from solutions.ch02_autograd import GELUTanh
from solutions.ch04_multihead import (CausalSelfAttention, MultiHeadConfig,
                                      mha_param_count)


def ffn(x, W1, b1, W2, b2):
    """Equation (2), max(0, x W1 + b1) W2 + b2, on the last axis of x.
    x: (..., d_model); W1: (d_ff, d_model), b1: (d_ff,); W2: (d_model, d_ff),
    b2: (d_model,) in nn.Linear's layout -> (..., d_model)."""
    return linear(torch.relu(linear(x, W1, b1)), W2, b2)


def gelu(x, approximate="none"):
    """GELU(x) = x * Phi(x): exact with erf ("none"), or GPT-2's tanh
    approximation ("tanh", chapter 2's GELUTanh)."""
    if approximate == "none":
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    if approximate == "tanh":
        return GELUTanh.apply(x)
    raise ValueError(
        f"approximate must be 'none' or 'tanh', not {approximate!r}"
    )


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """LayerNorm over the last axis: standardize(x) * weight + bias.
    x: (..., C); weight, bias: (C,) or None. float16 and bfloat16 inputs are
    computed in float32 and returned in x's dtype."""
    half = x.dtype in (torch.float16, torch.bfloat16)
    y = standardize(x.float() if half else x, eps)  # (..., C)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y.to(x.dtype)


@dataclass
class BlockConfig(MultiHeadConfig):
    # the MLP's inner width; None means 4 * d_model, GPT-2's choice
    d_ff: int | None = None

    def __post_init__(self):
        super().__post_init__()  # checks that n_head divides d_model
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model


class MLP(nn.Module):
    """GPT-2's position-wise feed-forward network: c_fc, GELU (tanh), c_proj,
    dropout. (..., d_model) -> (..., d_model)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.c_fc = nn.Linear(config.d_model, config.d_ff, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(config.d_ff, config.d_model, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """GPT-2's Transformer block (Pre-LN): x + attn(ln_1(x)), then
    x + mlp(ln_2(x)). (B, T, d_model) -> (B, T, d_model)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.ln_1 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))  # (B, T, d_model)
        x = x + self.mlp(self.ln_2(x))  # (B, T, d_model)
        return x


class PostLNBlock(Block):
    """The paper's arrangement: LayerNorm(x + Sublayer(x)) for each sublayer,
    with Block's modules and names. (B, T, d_model) -> (B, T, d_model)."""

    def forward(self, x):
        x = self.ln_1(x + self.attn(x))
        x = self.ln_2(x + self.mlp(x))
        return x


def layer_grad_norms(blocks, x, loss_fn):
    """(len(blocks),): the gradient norm of loss_fn(blocks applied to x in turn)
    with respect to all the parameters of each block."""
    y = x
    for block in blocks:
        y = block(y)
    loss = loss_fn(y)
    norms = []
    for block in blocks:
        grads = torch.autograd.grad(
            loss, list(block.parameters()), retain_graph=True
        )
        norms.append(torch.sqrt(sum((g**2).sum() for g in grads)))
    return torch.stack(norms)


def block_param_count(d_model, d_ff=None, bias=True):
    """Parameters of one Block: two LayerNorms, attention and the MLP."""
    d_ff = 4 * d_model if d_ff is None else d_ff
    layer_norms = 2 * (2 * d_model if bias else d_model)
    attention = mha_param_count(d_model, 1, bias)
    mlp = 2 * d_model * d_ff + ((d_ff + d_model) if bias else 0)
    return layer_norms + attention + mlp
