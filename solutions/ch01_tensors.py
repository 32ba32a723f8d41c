"""Reference solutions for 1. Tensors (テンソル).

Generated from chapters/ch01_tensors/ch01_tensors.ipynb by tools/export_solutions.py: edit the notebook, then re-run
`python tools/export_solutions.py`. tests/test_single_source.py fails if the two differ.
"""


import contextlib
import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode


def check(ok, what, expected, got, hint):
    """Fail with a message that says what was expected, what came back, and a hint."""
    if not ok:
        raise AssertionError(f"{what}\n  expected: {expected}\n  got:      {got}\n  hint:     {hint}")


def call(fn, what, hint):
    """Run a piece of the learner's code; if it raises, fail with the hint instead of a bare traceback."""
    try:
        return fn()
    except AssertionError:
        raise
    except Exception as err:
        raise AssertionError(f"{what}\n  expected: a result\n  got:      {type(err).__name__}: {err}\n"
                             f"  hint:     {hint}") from None


def check_tensor(got, expected, what, hint, atol=1e-5, rtol=1e-5):
    """Check type, shape, dtype and values of a tensor against an expected one.
    `got` may be a function of no arguments: it is called, and an error it raises becomes a failed check."""
    if callable(got):
        got = call(got, what, hint)
    check(isinstance(got, torch.Tensor), f"{what}: type", "a torch.Tensor", type(got).__name__,
          "return a tensor")
    check(got.shape == expected.shape, f"{what}: shape", tuple(expected.shape), tuple(got.shape), hint)
    check(got.dtype == expected.dtype, f"{what}: dtype", expected.dtype, got.dtype,
          f"make the result {expected.dtype}: create it with dtype={expected.dtype} or convert with .to()")
    if expected.dtype == torch.bool:
        bad = (got.cpu() != expected.cpu()).nonzero().tolist()
        check(not bad, f"{what}: values", "the same entries",
              f"{len(bad)} entries differ, the first at index {tuple(bad[0]) if bad else ()}", hint)
        return
    close = torch.isclose(got.detach().cpu(), expected.detach().cpu(), rtol=rtol, atol=atol, equal_nan=True)
    if not bool(close.all()):
        first = tuple((~close).nonzero()[0].tolist())
        check(False, f"{what}: values", f"{expected[first].item():.6g} at index {first}",
              f"{got[first].item():.6g} ({int((~close).sum())} of {close.numel()} entries differ)", hint)


def check_untouched(before, after, what):
    """An exercise must not modify its input in place."""
    check(torch.equal(before, after), f"{what}: its input", "left unchanged", "modified in place",
          "return a new tensor; don't use in-place operations (sub_, div_, -=, /=) on the input")


class _Oracle(NamedTuple):    # a tuple: its entries cannot be reassigned
    softmax: Callable
    layer_norm: Callable
    linear: Callable
    scaled_dot_product_attention: Callable


# The library functions the tests compare with, kept here before any exercise cell runs.
ORACLE = _Oracle(softmax=torch.softmax, layer_norm=F.layer_norm, linear=F.linear,
                 scaled_dot_product_attention=F.scaled_dot_product_attention)


def _base_name(name):
    """'_softmax', 'native_layer_norm', 'softmax.int' -> 'softmax', 'layer_norm', 'softmax'."""
    name = name.split(".")[0].lstrip("_")
    return name[len("native_"):] if name.startswith("native_") else name


class _SwitchedOff(TorchFunctionMode):
    """Refuses PyTorch functions by name, whatever route reaches them (torch.*, F.*, Tensor methods)."""

    def __init__(self, names):
        super().__init__()
        self.names = names

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if _base_name(getattr(func, "__name__", "")) in self.names:
            raise AssertionError(f"this exercise asks you to build {func.__name__} yourself; PyTorch's version "
                                 "is switched off while the test runs. Use the elementary operations instead.")
        return func(*args, **(kwargs or {}))


class _SwitchedOffKernels(TorchDispatchMode):
    """The same one level down, for calls that skip the Python API (torch.ops.aten.*, torch._C.*)."""

    def __init__(self, names):
        super().__init__()
        self.names = names

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _base_name(func.overloadpacket.__name__) in self.names:
            raise AssertionError(f"this exercise asks you to build {func.overloadpacket.__name__} yourself; "
                                 "PyTorch's kernel is switched off while the test runs.")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def switched_off(*names):
    """While the block runs, any PyTorch operation with one of these names raises an error,
    e.g. switched_off("softmax", "log_softmax")."""
    with _SwitchedOff(set(names)), _SwitchedOffKernels(set(names)):
        yield


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
