"""Reference solutions for 7. The GPT, assembled.

Generated from chapters/ch07_gpt/ch07_gpt.ipynb by tools/export_solutions.py: edit the notebook, then re-run
`python tools/export_solutions.py`. tests/test_single_source.py fails if the two differ.
"""


import json
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from solutions.ch01_tensors import merge_heads, split_heads
from solutions.ch05_block import Block, BlockConfig, block_param_count
from solutions.ch06_tokens import (Download, EmbeddingConfig, GPTEmbedding,
                                   embedding_param_count, fetch)


@dataclass
class GPTConfig(BlockConfig, EmbeddingConfig):
    """GPT-2 small by default: vocab_size 50257, block_size 1024, d_model 768,
    n_head 12, n_layer 12, d_ff 4 * d_model, biases, no dropout."""

    d_model: int = 768  # width of the residual stream
    n_head: int = 12  # h; d_k = d_model // n_head
    n_layer: int = 12  # the number of Blocks

    @classmethod
    def preset(cls, name, **changes):
        """GPT-2's published sizes by name, with any field changed."""
        if name not in PRESETS:
            raise ValueError(f"no preset {name!r}; there are {list(PRESETS)}")
        return cls(**PRESETS[name], **changes)


PRESETS = {  # (layers, heads, width) of the released GPT-2 checkpoints
    "gpt2": dict(n_layer=12, n_head=12, d_model=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, d_model=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, d_model=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, d_model=1600),
}


def gpt_param_count(config):
    """Parameters of a GPT with this GPTConfig (the tied lm_head once)."""
    embeddings = embedding_param_count(
        config.vocab_size, config.block_size, config.d_model
    )
    blocks = config.n_layer * block_param_count(
        config.d_model, config.d_ff, config.bias
    )
    ln_f = 2 * config.d_model if config.bias else config.d_model
    return embeddings + blocks + ln_f


class GPT(nn.Module):
    """GPT-2: chapter 6's embeddings, n_layer of chapter 5's blocks, a final
    LayerNorm and the tied output projection, with GPT-2's names."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = GPTEmbedding(config)  # wte, wpe, drop
        self.transformer.h = nn.ModuleList(
            Block(config) for _ in range(config.n_layer)
        )
        self.transformer.ln_f = nn.LayerNorm(config.d_model, bias=config.bias)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied: one matrix

    def forward(self, idx, targets=None):
        """idx: (B, T) int64 -> (logits (B, T, vocab_size), loss or None)."""
        x = self.transformer(idx)  # wte[idx] + wpe[t], dropout: (B, T, d_model)
        for block in self.transformer.h:
            x = block(x)  # (B, T, d_model)
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, vocab_size)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), ignore_index=-1
        )
        return logits, loss


def init_gpt2_(model, std=0.02):
    """GPT-2's initialisation of a GPT, in place."""
    n_layer = model.config.n_layer
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("c_proj.weight"):  # residual projections
                p.normal_(0.0, std / math.sqrt(2 * n_layer))
            elif p.dim() == 2:  # wte, wpe, c_attn, c_fc
                p.normal_(0.0, std)
            elif ".ln_" in name and name.endswith("weight"):  # LayerNorm gains
                p.fill_(1.0)
            else:  # biases
                p.zero_()


def top_k_filter(logits, k):
    """logits (..., V) -> the same shape, -inf outside the k largest of each
    row."""
    if k < 1:
        raise ValueError(f"top_k must be at least 1, not {k}")
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits, p):
    """logits (..., V) -> the same shape, -inf outside each row's nucleus: the
    fewest most likely tokens whose probability sums to at least p."""
    if not 0 < p <= 1:
        raise ValueError(f"top_p must be in (0, 1], not {p}")
    if p == 1:
        return logits.clone()
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    above = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above
    drop = (above >= p).scatter(-1, order, above >= p)  # back to vocab order
    return logits.masked_fill(drop, float("-inf"))


def next_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """logits (B, V) of the last position -> (B, 1) int64 ids."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None,
             top_p=None, generator=None):
    """idx (B, T) -> (B, T + max_new_tokens): idx and the tokens that follow."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for _ in range(max_new_tokens):
            context = idx[:, -model.config.block_size :]  # what wpe can place
            logits = model(context)[0][:, -1]  # (B, vocab_size)
            new = next_token(logits, temperature, top_k, top_p, generator)
            idx = torch.cat([idx, new], dim=1)  # (B, T + 1)
    model.train(was_training)
    return idx


def attention_with_cache(attn, x, cache=None):
    """attn: chapter 4's CausalSelfAttention; x: (B, T, d_model) new positions;
    cache: (k, v) of the past, each (B, n_head, past, d_k), or None.
    -> (y (B, T, d_model), (k, v) each (B, n_head, past + T, d_k))."""
    d_model, n_head = attn.config.d_model, attn.config.n_head
    q, k, v = attn.c_attn(x).split(d_model, dim=-1)  # (B, T, d_model) each
    q, k, v = (split_heads(t, n_head) for t in (q, k, v))  # (B, h, T, d_k)
    if cache is not None:
        k = torch.cat([cache[0], k], dim=2)  # (B, h, past + T, d_k)
        v = torch.cat([cache[1], v], dim=2)
    T, S = q.shape[2], k.shape[2]
    mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, h, T, d)
    return attn.c_proj(merge_heads(y)), (k, v)


def forward_with_cache(model, idx, cache=None):
    """idx: (B, T) new tokens after the cached ones -> (logits (B, T, V),
    [(k, v)] * n_layer)."""
    t = model.transformer
    past = 0 if cache is None else cache[0][0].shape[2]
    T = idx.shape[1]
    if past + T > model.config.block_size:
        raise ValueError(
            f"{past} cached + {T} new tokens are more than "
            f"block_size={model.config.block_size}"
        )
    pos = torch.arange(past, past + T, device=idx.device)  # (T,)
    x = t.drop(t.wte(idx) + t.wpe(pos))  # (B, T, d_model)
    new_cache = []
    for i, block in enumerate(t.h):
        layer_cache = None if cache is None else cache[i]
        a, kv = attention_with_cache(block.attn, block.ln_1(x), layer_cache)
        x = x + a
        x = x + block.mlp(block.ln_2(x))
        new_cache.append(kv)
    return model.lm_head(t.ln_f(x)), new_cache


def generate_cached(model, idx, max_new_tokens, temperature=1.0, top_k=None,
                    top_p=None, generator=None):
    """generate with a key-value cache: the same tokens, one position's work
    per step. The prompt and the new tokens must fit in block_size."""
    if idx.shape[1] + max_new_tokens > model.config.block_size:
        raise ValueError(
            f"{idx.shape[1]} + {max_new_tokens} tokens do not fit in "
            f"block_size={model.config.block_size}; use generate()"
        )
    was_training = model.training
    model.eval()
    with torch.no_grad():
        logits, cache = forward_with_cache(model, idx)  # the whole prompt
        for step in range(max_new_tokens):
            new = next_token(logits[:, -1], temperature, top_k, top_p,
                             generator)
            idx = torch.cat([idx, new], dim=1)
            if step + 1 < max_new_tokens:  # the last token needs no logits
                logits, cache = forward_with_cache(model, new, cache)
    model.train(was_training)
    return idx


CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
          "mlp.c_proj.weight")  # stored (in, out): transposed for nn.Linear


def from_hf_gpt2(state):
    """A Hugging Face GPT-2 state dict -> one for the course's GPT."""
    out = {}
    for name, t in state.items():
        if name.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal mask, a buffer: not a parameter
        if not name.startswith(("transformer.", "lm_head.")):
            name = "transformer." + name  # the published file's names
        out[name] = t.t() if name.endswith(CONV1D) else t
    out.setdefault("lm_head.weight", out["transformer.wte.weight"])  # tied
    return out


GPT2_SMALL = Download(  # openai-community/gpt2 at a fixed revision
    "gpt2.safetensors",
    "https://huggingface.co/openai-community/gpt2/resolve/"
    "607a30d783dfa663caf39e06633721c8d4cfcd7e/model.safetensors",
    "248dfc3911869ec493c76e65bf2fcf7f615828b0254c12b473182f0f81d3a707",
)
SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32,
                      "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32,
                      "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path):
    """The tensors of a .safetensors file, by name: an 8-byte little-endian
    header length, a JSON header (dtype, shape, byte offsets), the bytes."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        body = bytearray(f.read())
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        if begin == end:  # an empty tensor
            tensors[name] = torch.empty(info["shape"], dtype=dtype)
        else:
            flat = torch.frombuffer(body, dtype=dtype, offset=begin,
                                    count=(end - begin) // dtype.itemsize)
            tensors[name] = flat.reshape(info["shape"])
    return tensors


def load_gpt2():
    """OpenAI's GPT-2 small (124M parameters) in the course's GPT, eval mode."""
    path = fetch(GPT2_SMALL, "gpt2")
    model = GPT(GPTConfig.preset("gpt2"))
    model.load_state_dict(from_hf_gpt2(read_safetensors(path)), strict=True)
    return model.eval()
