"""Reference solutions for 4. Multi-head attention (多頭アテンション).

Generated from chapters/ch04_multihead/ch04_multihead.ipynb by tools/export_solutions.py: edit the notebook, then re-run
`python tools/export_solutions.py`. tests/test_single_source.py fails if the two differ.
"""


from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from solutions.ch01_tensors import causal_mask, merge_heads, split_heads
from solutions.ch03_attention import (attention_weights, first_leak, padding_mask,
                                      scaled_dot_product_attention)


def mha_param_count(d_model, n_head, bias=True):
    """Parameters of multi-head attention: W^Q, W^K, W^V, W^O (each d_model x
    d_model) and their biases."""
    if d_model % n_head != 0:
        raise ValueError(f"d_model={d_model} is not divisible by n_head={n_head}")
    return 4 * d_model * d_model + (4 * d_model if bias else 0)


def multi_head_attention_loop(
    query, key, value, W_Q, W_K, W_V, W_O, n_head, attn_mask=None
):
    """Concat(head_1, ..., head_h) W^O with head_i = Attention(query W_i^Q, key
    W_i^K, value W_i^V), one head at a time.
    query: (B, T_q, d_model); key, value: (B, T_k, d_model); W_*: (d_model, d_model) as
    nn.Linear stores them.
    """
    d_k = W_Q.shape[0] // n_head
    heads = []
    for i in range(n_head):
        rows = slice(i * d_k, (i + 1) * d_k)
        q, k, v = (
            query @ W_Q[rows].T,
            key @ W_K[rows].T,
            value @ W_V[rows].T,
        )  # (B, T, d_k)
        heads.append(
            scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        )  # (B, T_q, d_k)
    return torch.cat(heads, dim=-1) @ W_O.T  # (B, T_q, d_model)


@dataclass
class MultiHeadConfig:
    d_model: int = 64  # width of the token vectors
    n_head: int = 4  # h; each head has d_k = d_v = d_model // n_head channels
    # biases in the four projections (GPT-2 has them; the paper's equations do not)
    bias: bool = True
    # dropout probability, used by CausalSelfAttention (section 4.6)
    dropout: float = 0.0

    def __post_init__(self):
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_head={self.n_head}: "
                "choose n_head among the divisors of d_model"
            )


class MultiHeadAttention(nn.Module):
    """Multi-head attention, all heads in one batched computation. Batch-first: (B,
    T, d_model)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.W_Q = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.W_K = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.W_V = nn.Linear(config.d_model, config.d_model, bias=config.bias)
        self.W_O = nn.Linear(config.d_model, config.d_model, bias=config.bias)

    def forward(self, query, key, value, attn_mask=None, is_causal=False):
        """query: (B, T_q, d_model); key, value: (B, T_k, d_model) -> (B, T_q,
        d_model)."""
        h = self.config.n_head
        q = split_heads(self.W_Q(query), h)  # (B, h, T_q, d_k)
        k = split_heads(self.W_K(key), h)  # (B, h, T_k, d_k)
        v = split_heads(self.W_V(value), h)  # (B, h, T_k, d_k)
        y = scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, is_causal=is_causal
        )  # (B, h, T_q, d_k)
        return self.W_O(merge_heads(y))  # (B, T_q, d_model)


def from_torch(theirs):
    """A MultiHeadAttention with the weights of the nn.MultiheadAttention `theirs`."""
    if theirs.in_proj_weight is None:
        raise ValueError(
            "this nn.MultiheadAttention has separate key/value widths (kdim/vdim); "
            "MultiHeadAttention needs one packed in_proj_weight"
        )
    if theirs.bias_k is not None or theirs.add_zero_attn:
        raise ValueError(
            "add_bias_kv and add_zero_attn have no counterpart in MultiHeadAttention"
        )
    bias = theirs.in_proj_bias is not None
    ours = MultiHeadAttention(
        MultiHeadConfig(d_model=theirs.embed_dim, n_head=theirs.num_heads, bias=bias)
    )
    ours = ours.to(
        dtype=theirs.in_proj_weight.dtype, device=theirs.in_proj_weight.device
    )
    with torch.no_grad():
        for lin, w in zip(
            (ours.W_Q, ours.W_K, ours.W_V), theirs.in_proj_weight.chunk(3)
        ):
            lin.weight.copy_(w)
        ours.W_O.weight.copy_(theirs.out_proj.weight)
        if bias:
            for lin, b in zip(
                (ours.W_Q, ours.W_K, ours.W_V), theirs.in_proj_bias.chunk(3)
            ):
                lin.bias.copy_(b)
            ours.W_O.bias.copy_(theirs.out_proj.bias)
    return ours


def head_weights(mha, query, key, attn_mask=None):
    """Attention weights of every head of `mha`: (B, T_q, d_model), (B, T_k, d_model)
    -> (B, h, T_q, T_k)."""
    q = split_heads(mha.W_Q(query), mha.config.n_head)  # (B, h, T_q, d_k)
    k = split_heads(mha.W_K(key), mha.config.n_head)  # (B, h, T_k, d_k)
    return attention_weights(q, k, attn_mask)


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention with a fused QKV projection, laid out as in
    GPT-2 (c_attn, c_proj)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.c_attn = nn.Linear(
            config.d_model, 3 * config.d_model, bias=config.bias
        )  # W^Q, W^K, W^V stacked
        self.c_proj = nn.Linear(config.d_model, config.d_model, bias=config.bias)  # W^O
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        """x: (B, T, d_model) -> (B, T, d_model); position t only sees positions <=
        t."""
        q, k, v = self.c_attn(x).split(
            self.config.d_model, dim=-1
        )  # (B, T, d_model) each
        q, k, v = (
            split_heads(t, self.config.n_head) for t in (q, k, v)
        )  # (B, h, T, d_k) each
        dropout_p = self.config.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout_p, is_causal=True
        )  # (B, h, T, d_k)
        return self.resid_dropout(self.c_proj(merge_heads(y)))  # (B, T, d_model)
