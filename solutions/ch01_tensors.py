"""Reference solutions for 1. Tensors (テンソル).

Generated from chapters/ch01_tensors/ch01_tensors.ipynb by tools/export_solutions.py: edit the notebook, then re-run
`python tools/export_solutions.py`. tests/test_single_source.py fails if the two differ.
"""


import torch


def causal_mask(T, device=None):
    """(T, T) bool tensor, True where query i may attend to key j (j <= i)."""
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def linear(x, W, b=None):
    """x: (..., d_in), W: (d_out, d_in), b: (d_out,) or None -> (..., d_out)."""
    y = x @ W.T
    return y if b is None else y + b


def standardize(x, eps=1e-5):
    """Zero mean and unit variance along the last axis: (..., C) -> (..., C)."""
    mean = x.mean(dim=-1, keepdim=True)
    var = x.var(dim=-1, keepdim=True, correction=0)
    return (x - mean) / torch.sqrt(var + eps)


def softmax(x, dim=-1):
    """Softmax along `dim`, stable for large inputs."""
    e = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def split_heads(x, n_head):
    """(B, T, d_model) -> (B, n_head, T, d_model // n_head)."""
    B, T, C = x.shape
    if C % n_head != 0:
        raise ValueError(f"d_model={C} is not divisible by n_head={n_head}")
    return x.view(B, T, n_head, C // n_head).transpose(1, 2)


def merge_heads(x):
    """(B, n_head, T, d_k) -> (B, T, n_head * d_k), the inverse of split_heads."""
    B, h, T, d_k = x.shape
    return x.transpose(1, 2).reshape(B, T, h * d_k)


def pick_device():
    """The best available device: CUDA, else Apple's MPS, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def gpt2_param_count(vocab_size, n_ctx, d_model, n_layer):
    """Number of parameters of a GPT-2 with tied input and output embeddings."""
    embeddings = vocab_size * d_model + n_ctx * d_model
    attention = (d_model * 3 * d_model + 3 * d_model) + (d_model * d_model + d_model)
    mlp = (d_model * 4 * d_model + 4 * d_model) + (4 * d_model * d_model + d_model)
    layer_norms = 2 * 2 * d_model
    return embeddings + n_layer * (attention + mlp + layer_norms) + 2 * d_model
