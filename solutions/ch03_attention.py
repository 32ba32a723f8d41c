"""Reference solutions for 3. Attention (アテンション).

Generated from chapters/ch03_attention/ch03_attention.ipynb by tools/export_solutions.py: edit the notebook, then re-run
`python tools/export_solutions.py`. tests/test_single_source.py fails if the two differ.
"""


import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from solutions.ch01_tensors import causal_mask


def attention_scores(Q, K):
    """(..., T_q, d_k), (..., T_k, d_k) -> (..., T_q, T_k): every query dotted with
    every key, / sqrt(d_k)."""
    return Q @ K.transpose(-2, -1) / math.sqrt(Q.shape[-1])


def padding_mask(lengths, T):
    """lengths: (B,) int tensor -> (B, 1, T) bool, True where key j is a real token
    (j < lengths[b])."""
    return (torch.arange(T, device=lengths.device) < lengths[:, None])[:, None, :]


def attention_weights(Q, K, mask=None):
    """softmax(Q K^T / sqrt(d_k)) over the keys, with -inf where the bool mask is
    False -> (..., T_q, T_k).
    A row with no allowed key gets all-zero weights."""
    scores = attention_scores(Q, K)
    if mask is None:
        return torch.softmax(scores, dim=-1)
    scores = scores.masked_fill(~mask, float("-inf"))
    dead = ~mask.any(dim=-1, keepdim=True)  # rows with no allowed key
    return torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)


def scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False):
    """softmax(q k^T / sqrt(d_k) + mask) v, like F.scaled_dot_product_attention.
    q: (..., T_q, d_k), k: (..., T_k, d_k), v: (..., T_k, d_v) -> (..., T_q, d_v).
    attn_mask: bool (True = may attend) or float (added to the scores), broadcastable to
    (..., T_q, T_k).
    """
    if is_causal:
        if attn_mask is not None:
            raise ValueError("pass either attn_mask or is_causal=True, not both")
        attn_mask = torch.ones(
            q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device
        ).tril()
    if (
        attn_mask is not None and attn_mask.dtype != torch.bool
    ):  # additive: add it to the scores
        scores = attention_scores(q, k) + attn_mask
        dead = (scores == float("-inf")).all(
            dim=-1, keepdim=True
        )  # rows with no allowed key
        weights = torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(
            dead, 0.0
        )
    else:
        weights = attention_weights(q, k, attn_mask)
    return weights @ v


@dataclass
class AttentionConfig:
    d_model: int = 64      # width of the token vectors
    d_k: int = 64          # width of queries, keys and values (d_v = d_k)
    causal: bool = True    # query i may only see keys j <= i
    bias: bool = False     # biases in W_Q, W_K, W_V (the paper's projections have none)


class SelfAttention(nn.Module):
    """Single-head self-attention: softmax(Q K^T / sqrt(d_k)) V with Q, K, V = x W^Q,
    x W^K, x W^V."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.W_Q = nn.Linear(config.d_model, config.d_k, bias=config.bias)
        self.W_K = nn.Linear(config.d_model, config.d_k, bias=config.bias)
        self.W_V = nn.Linear(config.d_model, config.d_k, bias=config.bias)

    def forward(self, x, attn_mask=None):
        """x: (B, T, d_model), attn_mask: bool, broadcastable to (B, T, T) -> (B, T,
        d_k)."""
        Q, K, V = self.W_Q(x), self.W_K(x), self.W_V(x)  # (B, T, d_k) each
        if self.config.causal:
            causal = causal_mask(x.shape[-2], device=x.device)  # (T, T)
            attn_mask = causal if attn_mask is None else attn_mask & causal
        return scaled_dot_product_attention(Q, K, V, attn_mask=attn_mask)


def first_leak(f, x, atol=1e-6):
    """The first position t whose output f(x)[:, :t+1] changes when the tokens after
    t change, or None."""
    with torch.no_grad():
        y = f(x)
        for t in range(x.shape[1] - 1):
            x2 = x.clone()
            x2[:, t + 1 :] = torch.randn_like(x2[:, t + 1 :])
            if not torch.allclose(f(x2)[:, : t + 1], y[:, : t + 1], atol=atol):
                return t
    return None
