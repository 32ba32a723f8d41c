"""Reference solutions for 1. Tensors (テンソル).

Generated from chapters/ch01_tensors/ch01_tensors.ipynb by tools/export_solutions.py: edit the notebook, then re-run
`python tools/export_solutions.py`. tests/test_single_source.py fails if the two differ.
"""


import contextlib
import math

import torch
import torch.nn.functional as F


def check(ok, what, expected, got, hint):
    """Fail with a message that says what was expected, what came back, and a hint."""
    if not ok:
        raise AssertionError(f"{what}\n  expected: {expected}\n  got:      {got}\n  hint:     {hint}")


def check_tensor(got, expected, what, hint, atol=1e-5, rtol=1e-5):
    """Check type, shape, dtype and values of a tensor against an expected one."""
    check(isinstance(got, torch.Tensor), f"{what}: type", "a torch.Tensor", type(got).__name__, hint)
    check(got.shape == expected.shape, f"{what}: shape", tuple(expected.shape), tuple(got.shape), hint)
    check(got.dtype == expected.dtype, f"{what}: dtype", expected.dtype, got.dtype, hint)
    if expected.dtype == torch.bool:
        bad = (got != expected).nonzero().tolist()
        check(not bad, f"{what}: values", "the same entries", f"{len(bad)} entries differ, first at index {bad[:1]}", hint)
        return
    close = torch.isclose(got.detach().cpu(), expected.detach().cpu(), rtol=rtol, atol=atol, equal_nan=True)
    if not bool(close.all()):
        first = tuple((~close).nonzero()[0].tolist())
        check(False, f"{what}: values", f"{expected[first].item():.6g} at index {first}",
              f"{got[first].item():.6g} ({int((~close).sum())} of {close.numel()} entries differ)", hint)


@contextlib.contextmanager
def switched_off(*targets):
    """While the block runs, calling any of the named library functions raises an error.

    Each target is (owner, attribute name), e.g. (torch, "softmax").
    """
    saved = [(owner, name, getattr(owner, name)) for owner, name in targets]

    def refuse(*args, **kwargs):
        raise AssertionError("this exercise asks you to build the operation yourself; the library "
                             "version is switched off while the test runs")

    try:
        for owner, name, _ in saved:
            setattr(owner, name, refuse)
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def causal_mask(T):
    """(T, T) bool tensor, True where query i may attend to key j (j <= i)."""
    return torch.ones(T, T, dtype=torch.bool).tril()


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
