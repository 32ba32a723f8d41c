"""Test machinery of the course: checks with messages that teach, PyTorch oracles, switch-off, meters.

Hand-written (not generated from a notebook) and unit-tested in tests/test_testing.py. Every
chapter imports what it needs in one short cell, e.g.

    from solutions.testing import ORACLE, call, check, check_tensor, check_untouched

The rule the tests follow: the learner's code is only *called* (a function, a module, a method),
through `call` or `check_tensor(lambda: ...)`, and every call that must not use a PyTorch feature
names it with `forbid=` (families of operations) or `autograd=False`. The switch-off holds for the
duration of that one call, in every thread: the refused functions are replaced where Python finds
them (torch, torch.nn.functional, torch.Tensor, torch.ops.aten, ...), PyTorch's function and
dispatch modes refuse them in the calling thread, and the call fails if it starts or meets another
thread or starts a process (solutions/guard.py).

The same tests run two ways. In the learner's notebook, in its kernel, as written. While a
submission is graded, in the judge (tools/judge.py), where the learner's names are handles of
objects in a sandboxed worker (solutions/channel.py): `judging(endpoint)` switches this module to
that mode, in which a call's switch-off goes with the request and is put on in the worker, and
`substituted` rebinds the name in the worker's namespace.
"""
from __future__ import annotations

import contextlib
import math
import textwrap
import time
import weakref
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["ORACLE", "SOFTMAX", "NORMALIZATION", "GELU", "ATTENTION", "EMBEDDING", "LOOKUP", "Forbidden", "FunctionContext",
           "best_time", "call", "check", "check_close", "check_raises", "check_state_dict", "check_tensor",
           "check_untouched", "median_time", "peak_memory", "prerequisite", "substituted", "switched_off", "type_of",
           # chapter 4
           "ReferenceMultiHeadAttention", "causal_dropout_oracle", "causal_oracle", "causal_twin", "from_torch_state",
           "oracle_head_weights", "randomised", "run_oracle", "seeded", "torch_mask", "torch_mha", "twin",
           # chapter 5
           "ReferenceBlock", "block_dropout_oracle", "block_input_grad", "block_oracle", "block_twin", "gelu_tanh",
           "grad_norms_oracle", "mlp_input_grad", "mlp_oracle", "reference_mlp",
           # chapter 7
           "TinyLM", "generate_oracle", "gpt2_names", "gpt_oracle", "gpt_skeleton", "next_token_oracle",
           "random_gpt_state", "reference_gpt", "top_k_oracle", "top_p_oracle"]

WIDTH = 88          # nbgrader validate cuts message lines at about 90 columns


# ---------------------------------------------------------------------------------------------
# Messages

def _block(label, text):
    """'  label: text', wrapped to WIDTH with continuation lines aligned under the text."""
    head = f"  {label + ':':<10}"
    lines = []
    for i, part in enumerate(str(text).split("\n")):
        lines += textwrap.wrap(part, WIDTH, initial_indent=head if i == 0 else " " * len(head),
                               subsequent_indent=" " * len(head), break_on_hyphens=False) or [head.rstrip()]
    return "\n".join(lines)


def _message(what, expected, got, hint, extra=()):
    parts = textwrap.wrap(str(what), WIDTH, break_on_hyphens=False) or [""]
    parts += [_block("expected", expected), _block("got", got)]
    parts += [_block(label, text) for label, text in extra]
    parts.append(_block("hint", hint))
    return "\n".join(parts)


def check(ok, what, expected, got, hint):
    """Fail with a message that says what was expected, what came back, and a hint."""
    if not ok:
        raise AssertionError(_message(what, expected, got, hint))


# ---------------------------------------------------------------------------------------------
# The library functions the tests compare with, taken before any of the learner's code runs.

class _Oracle(NamedTuple):      # a tuple: its entries cannot be reassigned
    softmax: Callable
    log_softmax: Callable
    layer_norm: Callable
    linear: Callable
    gelu: Callable
    dropout: Callable
    scaled_dot_product_attention: Callable
    multi_head_attention_forward: Callable
    MultiheadAttention: type
    LayerNorm: type
    TransformerEncoderLayer: type
    embedding: Callable
    Embedding: type
    grad: Callable
    gradcheck: Callable
    cross_entropy: Callable
    multinomial: Callable


ORACLE = _Oracle(softmax=torch.softmax, log_softmax=torch.log_softmax, layer_norm=F.layer_norm, linear=F.linear,
                 gelu=F.gelu, dropout=F.dropout, scaled_dot_product_attention=F.scaled_dot_product_attention,
                 multi_head_attention_forward=F.multi_head_attention_forward,
                 MultiheadAttention=nn.MultiheadAttention, LayerNorm=nn.LayerNorm,
                 TransformerEncoderLayer=nn.TransformerEncoderLayer, embedding=F.embedding, Embedding=nn.Embedding,
                 grad=torch.autograd.grad, gradcheck=torch.autograd.gradcheck,
                 cross_entropy=F.cross_entropy, multinomial=torch.multinomial)


# ---------------------------------------------------------------------------------------------
# Switch-off: solutions/guard.py (the sandboxed grading worker runs it too)

from solutions.guard import (ATTENTION, EMBEDDING, GELU, LOOKUP, NORMALIZATION, SOFTMAX, Forbidden,  # noqa: E402,F401
                             FunctionContext, switched_off)


# ---------------------------------------------------------------------------------------------
# Calling the learner's code

# While a submission is graded, these tests run in the judge (tools/judge.py) and the learner's
# names are handles of objects in the sandboxed worker (solutions/channel.py). Then the switch-off
# a call asks for goes with each request and is put on in the worker, around the learner's code,
# and a substitution is made in the worker's namespace.
_CHANNEL = None


def judging(endpoint):
    """Make the tests work through the judge's channel to the worker (None: in this process again)."""
    global _CHANNEL
    _CHANNEL = endpoint


@contextlib.contextmanager
def _remote(forbid, autograd):
    saved = dict(_CHANNEL.options)
    fragments = [forbid] if isinstance(forbid, str) else [f for family in forbid for f in
                                                          ((family,) if isinstance(family, str) else family)]
    _CHANNEL.options = dict(saved, forbid=list(dict.fromkeys([*saved.get("forbid", []), *fragments])),
                            autograd=saved.get("autograd", True) and autograd)
    try:
        yield
    finally:
        _CHANNEL.options = saved


def _guarded(forbid, autograd):
    """The switch-off a call asks for (forbid: a family or families), or nothing."""
    if _CHANNEL is not None:
        return _remote(forbid, autograd)
    if not forbid and autograd:
        return contextlib.nullcontext()
    return switched_off(*((forbid,) if isinstance(forbid, str) else forbid), autograd=autograd)


def call(fn, what, hint, forbid=(), autograd=True):
    """Run fn() (a piece of the learner's code); if it raises, fail with the hint instead of a bare
    traceback. forbid: families of PyTorch operations refused while it runs; autograd=False
    refuses autograd in every mode (see switched_off)."""
    try:
        with _guarded(forbid, autograd):
            return fn()
    except Forbidden as err:
        raise AssertionError(_message(what, "an answer built without the switched-off operations",
                                      str(err), hint)) from None
    except AssertionError:
        raise
    except Exception as err:
        raise AssertionError(_message(what, "a result", f"{type(err).__name__}: {err}", hint)) from None


def check_raises(fn, error, what, hint, forbid=(), autograd=True):
    """fn() must raise `error` (an exception class); returns the exception."""
    try:
        with _guarded(forbid, autograd):
            fn()
    except Forbidden as err:
        raise AssertionError(_message(what, f"a {error.__name__}", str(err), hint)) from None
    except error as err:
        return err
    except Exception as err:
        raise AssertionError(_message(what, f"a {error.__name__}", f"{type(err).__name__}: {err}", hint)) from None
    raise AssertionError(_message(what, f"a {error.__name__}", "no error", hint))


def prerequisite(fn, exercise):
    """Run fn(), a short check of an earlier exercise that this test relies on; if it fails, say
    which exercise to fix first rather than blaming this one."""
    try:
        fn()
    except AssertionError as err:
        first = str(err).split("\n")[0]
        raise AssertionError(_message(f"this test uses your {exercise}, which is not right yet",
                                      "a working " + exercise, first,
                                      f"fix {exercise} first (its own test says how), then run this "
                                      "test again")) from None


def type_of(obj):
    """type(obj), also for the learner's objects while grading (which then live in the worker)."""
    from solutions.channel import is_remote
    return obj._endpoint.request("type", obj, [], {}) if is_remote(obj) else type(obj)


@contextlib.contextmanager
def substituted(namespace, **names):
    """Give names in a namespace (a notebook's globals()) other values for the block: a hidden test
    grades exercise N on its own by running it on correct versions of exercises before N."""
    missing = object()
    depth = None
    if _CHANNEL is not None:           # the learner's code looks the names up in the worker
        from solutions.channel import is_remote
        for k, v in names.items():
            got = _CHANNEL.request("substitute", None, [k, v], {})
            depth = got if depth is None else depth
        names = {k: v for k, v in names.items() if not is_remote(namespace.get(k))}
    saved = {k: namespace.get(k, missing) for k in names}
    namespace.update(names)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is missing:
                namespace.pop(k, None)
            else:
                namespace[k] = v
        if depth is not None and not _CHANNEL.broken:
            _CHANNEL.request("restore", None, [depth], {})


# ---------------------------------------------------------------------------------------------
# Tensors

def _fmt(x, digits):
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}g}"


def _pair(a, b):
    """a and b printed with just enough digits to tell them apart."""
    for digits in range(6, 18):
        sa, sb = _fmt(a, digits), _fmt(b, digits)
        if sa != sb:        # a float's shortest repr where it is shorter: 0.3, not 0.29999999999999999
            return tuple(repr(x) if isinstance(x, float) and len(repr(x)) < len(s) else s
                         for x, s in ((a, sa), (b, sb)))
    return _fmt(a, 17), _fmt(b, 17)


def _diagnose(got, expected):
    """A guess at what kind of mistake turned `expected` into `got` (same shape), or None."""
    g, e = got.detach().cpu().double(), expected.detach().cpu().double()
    if bool(torch.isnan(g).any()) and not bool(torch.isnan(e).any()):
        i = tuple(torch.isnan(g).nonzero()[0].tolist())
        return f"NaN at index {i} where the answer is {e[i].item():.6g}: an overflow, 0/0 or inf - inf?"
    if bool(torch.isinf(g).any()) and not bool(torch.isinf(e).any()):
        i = tuple(torch.isinf(g).nonzero()[0].tolist())
        return f"{g[i].item()} at index {i} where the answer is {e[i].item():.6g}: an overflow?"
    fin = torch.isfinite(g) & torch.isfinite(e) & (e.abs() > 1e-12)
    if int(fin.sum()) >= 2:
        ratio = g[fin] / e[fin]
        r = ratio.median().item()
        if abs(r - 1) > 1e-3 and torch.allclose(ratio, torch.full_like(ratio, r), rtol=1e-4, atol=1e-6):
            return f"every entry is {r:.6g} times the answer: a missing or extra scale factor?"
        diff = g[fin] - e[fin]
        d = diff.median().item()
        if abs(d) > 1e-6 and torch.allclose(diff, torch.full_like(diff, d), rtol=1e-4, atol=1e-6):
            return f"every entry is the answer plus {d:.6g}: a missing or extra offset?"
    if g.ndim >= 2 and g.shape[-1] == g.shape[-2] and torch.allclose(g.transpose(-1, -2), e, rtol=1e-5, atol=1e-6):
        return "the result is the answer transposed (its last two axes swapped)"
    return None


def check_tensor(got, expected, what, hint, atol=1e-5, rtol=1e-5, forbid=(), autograd=True):
    """Check type, shape, dtype, device and values of a tensor against an expected one.
    `got` may be a function of no arguments: it is called (through `call`, with `forbid` and
    `autograd`), and an error it raises becomes a failed check."""
    if callable(got) and not isinstance(got, torch.Tensor):
        got = call(got, what, hint, forbid=forbid, autograd=autograd)
    check(isinstance(got, torch.Tensor), f"{what}: type", "a torch.Tensor", type(got).__name__, "return a tensor")
    # a subclass could redefine the comparisons below; the exercises return plain tensors
    check(type(got) in (torch.Tensor, nn.Parameter), f"{what}: type", "a plain torch.Tensor",
          f"{type(got).__module__}.{type(got).__name__}, a subclass",
          "return an ordinary tensor, not an instance of a subclass of torch.Tensor")
    if got.shape != expected.shape:
        extra = []
        if got.ndim >= 2 and got.shape == expected.transpose(-1, -2).shape:
            extra.append(("note", "that is the expected shape with its last two axes swapped"))
        elif got.numel() == expected.numel():
            extra.append(("note", "the same number of entries: a view, squeeze or keepdim away?"))
        raise AssertionError(_message(f"{what}: shape", tuple(expected.shape), tuple(got.shape), hint, extra))
    check(got.dtype == expected.dtype, f"{what}: dtype", expected.dtype, got.dtype,
          f"{hint}; the result must be {expected.dtype}: create new tensors with dtype={expected.dtype} "
          "(or the input's dtype), or convert with .to()")
    check(got.device.type == expected.device.type, f"{what}: device", expected.device, got.device,
          "create new tensors on the input's device (device=x.device)")
    if got.device.type == "meta":
        return
    if expected.dtype == torch.bool:
        bad = (got.cpu() != expected.cpu()).nonzero().tolist()
        if bad:
            i = tuple(bad[0])
            e_row, g_row = expected.cpu(), got.cpu()
            extra = [("differ", f"{len(bad)} of {expected.numel()} entries")]
            if expected.ndim >= 1:      # the whole row around the first difference
                row = i[:-1]
                extra.append(("row", f"{row}: expected {e_row[row].int().tolist()}, "
                                     f"got {g_row[row].int().tolist()} (1 = True)"))
            raise AssertionError(_message(f"{what}: values", f"{bool(e_row[i])} at index {i}",
                                          f"{bool(g_row[i])}", hint, extra))
        return
    if not (expected.dtype.is_floating_point or expected.dtype.is_complex):
        atol = rtol = 0     # integers are exact: a tolerance would pass 2**40 + 3 as 2**40
    g, e = got.detach().cpu(), expected.detach().cpu()
    close = torch.isclose(g, e, rtol=rtol, atol=atol, equal_nan=True)
    if bool(close.all()):
        return
    gd, ed = g.double(), e.double()
    excess = ((gd - ed).abs() - (atol + rtol * ed.abs())).nan_to_num(nan=float("inf"))
    excess = excess.masked_fill(close, -float("inf"))
    worst = tuple(int(i) for i in torch.unravel_index(excess.argmax(), excess.shape)) if excess.ndim else ()
    a, b = _pair(ed[worst].item(), gd[worst].item())
    diff = abs(gd[worst].item() - ed[worst].item())
    tol = atol + rtol * abs(ed[worst].item())
    extra = [("differ", f"{int((~close).sum())} of {close.numel()} entries; the worst at index {worst}: "
                        f"|got - expected| = {diff:.3g}, allowed {tol:.3g}")]
    guess = _diagnose(g, e)
    if guess:
        extra.append(("note", guess))
    raise AssertionError(_message(f"{what}: values", f"{a} at index {worst}", b, hint, extra))


def check_close(got, expected, what, hint, rel=1e-9, abs_tol=0.0):
    """A Python number against an expected one, both printed with enough digits to differ."""
    ok = isinstance(got, (int, float)) and not isinstance(got, bool) and math.isclose(
        got, expected, rel_tol=rel, abs_tol=abs_tol)
    if not ok:
        if isinstance(got, (int, float)) and not isinstance(got, bool):
            a, b = _pair(float(expected), float(got))
            raise AssertionError(_message(what, a, b, hint, [("differ", f"by {abs(got - expected):.3g}")]))
        raise AssertionError(_message(what, expected, f"{type(got).__name__}: {got!r}"[:200], hint))


def check_untouched(before, after, what):
    """An exercise must not modify its input in place."""
    check(torch.equal(before, after), f"{what}: its input", "left unchanged", "modified in place",
          "return a new tensor; don't use in-place operations (sub_, div_, -=, /=) on the input")


def check_state_dict(module, expected, what, hint, atol=0.0, rtol=0.0):
    """Every entry of module.state_dict(): the same names (in order), shapes, dtypes, devices and
    values as the dict `expected`."""
    state = call(module.state_dict, f"{what}: state_dict()", hint)
    check(list(state) == list(expected), f"{what}: the names in state_dict()", list(expected), list(state), hint)
    for name, want in expected.items():
        check_tensor(state[name], want, f"{what}: {name}", hint, atol=atol, rtol=rtol)


# ---------------------------------------------------------------------------------------------
# Measuring: time and memory

def best_time(fn, repeat=5):
    """Fastest of `repeat` runs of fn(), in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def median_time(fn, repeat=7, warmup=1):
    """Median of `repeat` runs of fn(), in seconds, after `warmup` runs that are not counted."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


class _MemoryMeter(TorchDispatchMode):
    """Tracks the bytes held by the tensors that PyTorch operations create, and their peak."""

    def __init__(self):
        super().__init__()
        self.live, self.peak, self.users = 0, 0, {}      # storage address -> [bytes, tensors using it]

    def _release(self, key):
        entry = self.users[key]
        entry[1] -= 1
        if entry[1] == 0:                                 # the last tensor on this storage is gone
            self.live -= entry[0]
            del self.users[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = t.untyped_storage().data_ptr()
                if key in self.users:                     # a new view of a storage created here: one more user
                    self.users[key][1] += 1
                elif key in inputs:                       # a view of a tensor made before: no new memory
                    continue
                else:
                    self.users[key] = [t.untyped_storage().nbytes(), 1]
                    self.live += self.users[key][0]
                    self.peak = max(self.peak, self.live)
                weakref.finalize(t, self._release, key)
        return out


def peak_memory(fn):
    """Peak bytes held by the tensors that PyTorch operations create while fn() runs."""
    with _MemoryMeter() as meter:
        fn()
    return meter.peak


# ---------------------------------------------------------------------------------------------
# Oracles of chapter 4: nn.MultiheadAttention holding given weights
#
# Built from ORACLE's classes and functions (taken before any learner code ran). The learner's
# modules are only read (their weights and config), never run, except where a test calls them.

def torch_mha(W_Q, W_K, W_V, W_O, n_head, b_in=None, b_out=None, batch_first=True):
    """nn.MultiheadAttention (eval mode) holding the given weights, in nn.Linear's layout: W^Q, W^K,
    W^V are packed into one in_proj_weight, b_in is the packed (3 d_model,) bias."""
    mha = ORACLE.MultiheadAttention(W_Q.shape[1], n_head, bias=b_in is not None, batch_first=batch_first,
                                    dtype=W_Q.dtype, device=W_Q.device)
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([W_Q, W_K, W_V]))
        mha.out_proj.weight.copy_(W_O)
        if b_in is not None:
            mha.in_proj_bias.copy_(b_in)
            mha.out_proj.bias.copy_(b_out)
    return mha.eval()


def torch_mask(attn_mask):
    """The course's bool masks say True = may attend; nn.MultiheadAttention's say True = may NOT."""
    return ~attn_mask if attn_mask is not None and attn_mask.dtype == torch.bool else attn_mask


def run_oracle(mha, query, key, value, attn_mask=None, key_padding_mask=None):
    """The output of the nn.MultiheadAttention `mha`; attn_mask in the course's convention."""
    with torch.no_grad():
        out, _ = mha(query, key, value, attn_mask=torch_mask(attn_mask), key_padding_mask=key_padding_mask,
                     need_weights=False)
    return out


def twin(ours, batch_first=True):
    """nn.MultiheadAttention with the weights of a MultiHeadAttention (W_Q, W_K, W_V, W_O)."""
    with torch.no_grad():
        b = ours.config.bias
        return torch_mha(ours.W_Q.weight, ours.W_K.weight, ours.W_V.weight, ours.W_O.weight, ours.config.n_head,
                         torch.cat([ours.W_Q.bias, ours.W_K.bias, ours.W_V.bias]) if b else None,
                         ours.W_O.bias if b else None, batch_first=batch_first)


def oracle_head_weights(mha, query, key, attn_mask=None):
    """(B, h, T_q, T_k): the per-head weights of nn.MultiheadAttention holding the weights of `mha`."""
    with torch.no_grad():
        _, w = twin(mha)(query, key, key, attn_mask=torch_mask(attn_mask), need_weights=True,
                         average_attn_weights=False)
    return w


def randomised(module, seed, scale=0.3):
    """The module (in eval mode) with every parameter drawn at random: nn.MultiheadAttention starts
    with zero biases, and random values everywhere make a swap or a skipped copy show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.device.type != "meta":
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * scale)
    return module.eval()


class ReferenceMultiHeadAttention(nn.Module):
    """A correct chapter 4 MultiHeadAttention built from PyTorch's functions: the tests of from_torch
    and head_weights run on it, so that they do not depend on the learner's exercise 3."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        for name in ("W_Q", "W_K", "W_V", "W_O"):
            setattr(self, name, nn.Linear(config.d_model, config.d_model, bias=config.bias))

    def forward(self, query, key, value, attn_mask=None, is_causal=False):
        h = self.config.n_head

        def heads(t, lin):                                      # (B, T, d_model) -> (B, h, T, d_k)
            t = ORACLE.linear(t, lin.weight, lin.bias)
            return t.reshape(*t.shape[:2], h, -1).transpose(1, 2)

        y = ORACLE.scaled_dot_product_attention(heads(query, self.W_Q), heads(key, self.W_K),
                                                heads(value, self.W_V), attn_mask=attn_mask, is_causal=is_causal)
        y = y.transpose(1, 2).reshape(*query.shape[:2], -1)
        return ORACLE.linear(y, self.W_O.weight, self.W_O.bias)


def from_torch_state(theirs):
    """The state_dict a MultiHeadAttention loaded from the nn.MultiheadAttention `theirs` must have:
    in_proj cut into W_Q, W_K, W_V (.chunk(3)), out_proj as W_O; theirs' dtype and device."""
    with torch.no_grad():
        weights = theirs.in_proj_weight.chunk(3)
        biases = theirs.in_proj_bias.chunk(3) if theirs.in_proj_bias is not None else (None,) * 3
        state = {}
        for name, w, b in zip("QKV", weights, biases):
            state[f"W_{name}.weight"] = w.clone()
            if b is not None:
                state[f"W_{name}.bias"] = b.clone()
        state["W_O.weight"] = theirs.out_proj.weight.clone()
        if theirs.out_proj.bias is not None:
            state["W_O.bias"] = theirs.out_proj.bias.clone()
    return state


def causal_twin(ours):
    """nn.MultiheadAttention with the weights of a CausalSelfAttention: c_attn is in in_proj's layout."""
    with torch.no_grad():
        W_Q, W_K, W_V = ours.c_attn.weight.chunk(3)
        b = ours.config.bias
        return torch_mha(W_Q, W_K, W_V, ours.c_proj.weight, ours.config.n_head, ours.c_attn.bias if b else None,
                         ours.c_proj.bias if b else None)


def causal_oracle(ours, x):
    """What the CausalSelfAttention `ours` computes without dropout (eval mode), by nn.MultiheadAttention."""
    T = x.shape[1]
    return run_oracle(causal_twin(ours), x, x, x, attn_mask=torch.ones(T, T, dtype=torch.bool, device=x.device).tril())


def seeded(seed, fn):
    """fn() right after torch.manual_seed(seed)."""
    torch.manual_seed(seed)
    return fn()


def _causal_attention(x, attn, training, p=None):
    """A CausalSelfAttention's forward by PyTorch's functions: c_attn, split into heads, ORACLE's
    attention (with dropout p in training mode; None: attn.config.dropout) and is_causal=True,
    merge, c_proj, then dropout p. The random numbers are drawn in the order the module draws them."""
    p = (attn.config.dropout if p is None else p) if training else 0.0
    h = attn.config.n_head
    B, T, C = x.shape
    qkv = ORACLE.linear(x, attn.c_attn.weight, attn.c_attn.bias)
    q, k, v = (t.reshape(B, T, h, C // h).transpose(1, 2) for t in qkv.split(C, dim=-1))
    y = ORACLE.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
    y = ORACLE.linear(y.transpose(1, 2).reshape(B, T, C), attn.c_proj.weight, attn.c_proj.bias)
    return ORACLE.dropout(y, p, training=training)


def causal_dropout_oracle(ours, x, seed):
    """What the CausalSelfAttention `ours` computes in training mode after torch.manual_seed(seed),
    with p = ours.config.dropout, the same up to rounding."""
    with torch.no_grad():
        torch.manual_seed(seed)
        return _causal_attention(x, ours, True)


# ---------------------------------------------------------------------------------------------
# Chapter 5: the feed-forward network, LayerNorm and the Transformer block

def gelu_tanh(x):
    """GPT-2's GELU (tanh approximation), by ORACLE."""
    return ORACLE.gelu(x, approximate="tanh")


def mlp_oracle(ours, x, training=False, p=None):
    """What an MLP (c_fc, GELU tanh, c_proj, dropout) computes, by PyTorch's functions. In training
    mode the dropout draws from the global generator, as the module's does, with probability p (the
    tests pass their config's: a module that hard-codes its own must not set the answer), or
    ours.dropout.p if p is None."""
    with torch.no_grad():
        h = gelu_tanh(ORACLE.linear(x, ours.c_fc.weight, ours.c_fc.bias))
        y = ORACLE.linear(h, ours.c_proj.weight, ours.c_proj.bias)
        if not training:
            return y
        return ORACLE.dropout(y, ours.dropout.p if p is None else p, training=True)


def reference_mlp(config):
    """A correct chapter 5 MLP made of PyTorch's own modules (c_fc, gelu, c_proj, dropout): the tests
    of Block run on it, so that they do not depend on the learner's MLP. PyTorch's modules go to
    the grading worker by value and run there, drawing dropout from the worker's generator."""
    from collections import OrderedDict
    return nn.Sequential(OrderedDict(
        c_fc=nn.Linear(config.d_model, config.d_ff, bias=config.bias), gelu=nn.GELU(approximate="tanh"),
        c_proj=nn.Linear(config.d_ff, config.d_model, bias=config.bias), dropout=nn.Dropout(config.dropout)))


def _ln(x, ln):
    return ORACLE.layer_norm(x, (x.shape[-1],), ln.weight, ln.bias, 1e-5)   # nn.LayerNorm's default eps


def _block_forward(block, x, norm_first, training, p=None):
    """A block's forward by PyTorch's functions, drawing dropout in the order the modules do."""
    mlp = block.mlp
    if norm_first:
        x = x + _causal_attention(_ln(x, block.ln_1), block.attn, training, p)
        return x + mlp_oracle(mlp, _ln(x, block.ln_2), training, p)
    x = _ln(x + _causal_attention(x, block.attn, training, p), block.ln_1)
    return _ln(x + mlp_oracle(mlp, x, training, p), block.ln_2)


class ReferenceBlock(nn.Module):
    """A correct chapter 5 Block (Pre-LN) with chapter 4's CausalSelfAttention, its forward by
    PyTorch's functions: the tests of PostLNBlock call the learner's forward on this one."""

    def __init__(self, config):
        super().__init__()
        from solutions.ch04_multihead import CausalSelfAttention
        self.config = config
        self.ln_1 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, bias=config.bias)
        self.mlp = reference_mlp(config)

    def forward(self, x):
        return _block_forward(self, x, True, self.training)


def block_twin(block, norm_first=True):
    """nn.TransformerEncoderLayer (batch-first, GELU tanh, eval mode) holding the weights of a
    Block: c_attn is in_proj, attn.c_proj out_proj, mlp.c_fc linear1, mlp.c_proj linear2, ln_1
    norm1, ln_2 norm2."""
    cfg = block.config
    w = block.attn.c_attn.weight
    # the activation goes as a plain function: given F.gelu or an nn.GELU module, the layer takes
    # its fused path in eval mode, which runs the exact GELU whatever the module's approximation
    layer = ORACLE.TransformerEncoderLayer(cfg.d_model, cfg.n_head, dim_feedforward=cfg.d_ff, dropout=0.0,
                                       activation=gelu_tanh, batch_first=True, norm_first=norm_first,
                                       bias=cfg.bias, device=w.device, dtype=w.dtype)
    pairs = [(layer.self_attn.in_proj_weight, w), (layer.self_attn.out_proj.weight, block.attn.c_proj.weight),
             (layer.linear1.weight, block.mlp.c_fc.weight), (layer.linear2.weight, block.mlp.c_proj.weight),
             (layer.norm1.weight, block.ln_1.weight), (layer.norm2.weight, block.ln_2.weight)]
    if cfg.bias:
        pairs += [(layer.self_attn.in_proj_bias, block.attn.c_attn.bias),
                  (layer.self_attn.out_proj.bias, block.attn.c_proj.bias),
                  (layer.linear1.bias, block.mlp.c_fc.bias), (layer.linear2.bias, block.mlp.c_proj.bias),
                  (layer.norm1.bias, block.ln_1.bias), (layer.norm2.bias, block.ln_2.bias)]
    with torch.no_grad():
        for theirs, ours in pairs:
            theirs.copy_(ours)
    return layer.eval()


def block_oracle(block, x, norm_first=True):
    """What a Block (norm_first=True) or PostLNBlock computes in eval mode, by
    nn.TransformerEncoderLayer with a causal mask."""
    T = x.shape[1]
    mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)      # True = may NOT attend
    with torch.no_grad():
        return block_twin(block, norm_first)(x, src_mask=mask)


def block_dropout_oracle(block, x, seed, norm_first=True, p=None):
    """What a Block (or PostLNBlock) computes in training mode after torch.manual_seed(seed), by
    PyTorch's functions drawing their random numbers in the order the modules draw them, with
    dropout probability p in both sublayers (None: each sublayer's own)."""
    with torch.no_grad():
        torch.manual_seed(seed)
        return _block_forward(block, x, norm_first, True, p)


def _detached(t):
    return None if t is None else t.detach()


def mlp_input_grad(ours, x, gy):
    """The gradient of (MLP(x) * gy).sum() with respect to x, in eval mode, by PyTorch's functions
    on the MLP's parameters."""
    W1, b1, W2, b2 = (_detached(t) for t in (ours.c_fc.weight, ours.c_fc.bias, ours.c_proj.weight,
                                             ours.c_proj.bias))
    xx = x.detach().clone().requires_grad_()
    y = ORACLE.linear(gelu_tanh(ORACLE.linear(xx, W1, b1)), W2, b2)
    return ORACLE.grad((y * gy).sum(), xx)[0]


def block_input_grad(block, x, gy, norm_first=True):
    """The gradient of (block(x) * gy).sum() with respect to x, in eval mode, by
    nn.TransformerEncoderLayer holding the block's weights (a copy: the block's own are untouched)."""
    T = x.shape[1]
    mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
    xx = x.detach().clone().requires_grad_()
    return ORACLE.grad((block_twin(block, norm_first)(xx, src_mask=mask) * gy).sum(), xx)[0]


def grad_norms_oracle(blocks, x, loss_fn):
    """(len(blocks),): the 2-norm of the gradient of loss_fn(blocks applied in turn to x) with
    respect to all the parameters of each block, by torch.autograd.grad."""
    y = x
    for block in blocks:
        y = block(y)
    loss = loss_fn(y)
    params = [list(block.parameters()) for block in blocks]
    grads = ORACLE.grad(loss, [p for ps in params for p in ps])
    out, i = [], 0
    for ps in params:
        g = grads[i:i + len(ps)]
        i += len(ps)
        out.append(torch.sqrt(sum((t.double() ** 2).sum() for t in g)).to(x.dtype))
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------
# Chapter 7: the GPT, sampling, the key-value cache, GPT-2's checkpoints

def gpt2_names(config):
    """[(name, shape)] of a GPT's state dict in GPT-2's (and nanoGPT's) names and order."""
    d, d_ff, V = config.d_model, config.d_ff, config.vocab_size
    out = [("transformer.wte.weight", (V, d)), ("transformer.wpe.weight", (config.block_size, d))]

    def linear(name, n_in, n_out):
        out.append((f"{name}.weight", (n_out, n_in)))
        if config.bias:
            out.append((f"{name}.bias", (n_out,)))

    def norm(name):
        out.append((f"{name}.weight", (d,)))
        if config.bias:
            out.append((f"{name}.bias", (d,)))

    for i in range(config.n_layer):
        h = f"transformer.h.{i}"
        norm(f"{h}.ln_1")
        linear(f"{h}.attn.c_attn", d, 3 * d)
        linear(f"{h}.attn.c_proj", d, d)
        norm(f"{h}.ln_2")
        linear(f"{h}.mlp.c_fc", d, d_ff)
        linear(f"{h}.mlp.c_proj", d_ff, d)
    norm("transformer.ln_f")
    out.append(("lm_head.weight", (V, d)))
    return out


def random_gpt_state(config, generator, dtype=torch.float32):
    """A state dict with GPT-2's names and random values of a moderate size (logits of order 1);
    lm_head.weight is the same tensor as transformer.wte.weight."""
    state = {}
    for name, shape in gpt2_names(config):
        if name == "lm_head.weight":
            state[name] = state["transformer.wte.weight"]
        elif name.endswith("bias"):
            state[name] = 0.1 * torch.randn(shape, generator=generator, dtype=dtype)
        elif len(shape) == 1:                                   # a LayerNorm's gain
            state[name] = 1 + 0.1 * torch.randn(shape, generator=generator, dtype=dtype)
        else:
            state[name] = torch.randn(shape, generator=generator, dtype=dtype) / shape[-1] ** 0.5
    return state


def _layer_from_state(state, prefix, n_head, bias):
    """nn.TransformerEncoderLayer (Pre-LN, GELU tanh, batch-first, eval) holding one GPT-2 block of
    a state dict (nn.Linear layout)."""
    w = state[f"{prefix}.attn.c_attn.weight"]
    d, d_ff = w.shape[1], state[f"{prefix}.mlp.c_fc.weight"].shape[0]
    layer = ORACLE.TransformerEncoderLayer(d, n_head, dim_feedforward=d_ff, dropout=0.0, activation=gelu_tanh,
                                           batch_first=True, norm_first=True, bias=bias, dtype=w.dtype)
    names = [("self_attn.in_proj", "attn.c_attn"), ("self_attn.out_proj", "attn.c_proj"),
             ("linear1", "mlp.c_fc"), ("linear2", "mlp.c_proj"), ("norm1", "ln_1"), ("norm2", "ln_2")]
    theirs = dict(layer.named_parameters())
    with torch.no_grad():
        for a, b in names:
            for kind in ("weight", "bias") if bias else ("weight",):
                key = "self_attn.in_proj_" + kind if a == "self_attn.in_proj" else f"{a}.{kind}"
                theirs[key].copy_(state[f"{prefix}.{b}.{kind}"])
    return layer.eval()


def gpt_oracle(state, idx, n_head, kv=False):
    """GPT-2's logits (B, T, V) for idx (B, T) from a state dict with GPT-2's names in nn.Linear's
    layout, computed by PyTorch's own modules and functions: F.embedding, one
    nn.TransformerEncoderLayer (Pre-LN, causal mask) per block, F.layer_norm and F.linear with the
    tied wte. With kv=True also [(k, v)] per block, each (B, n_head, T, d_model / n_head): the keys
    and values that block's attention computes."""
    wte = state["transformer.wte.weight"]
    bias = "transformer.ln_f.bias" in state
    n_layer = sum(1 for k in state if k.endswith(".ln_1.weight"))
    B, T = idx.shape
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)              # True = may NOT attend
    cache = []
    with torch.no_grad():
        x = ORACLE.embedding(idx, wte) + state["transformer.wpe.weight"][:T]
        for i in range(n_layer):
            prefix = f"transformer.h.{i}"
            layer = _layer_from_state(state, prefix, n_head, bias)
            if kv:
                h = ORACLE.layer_norm(x, x.shape[-1:], state[f"{prefix}.ln_1.weight"],
                                      state.get(f"{prefix}.ln_1.bias"), 1e-5)
                qkv = ORACLE.linear(h, state[f"{prefix}.attn.c_attn.weight"], state.get(f"{prefix}.attn.c_attn.bias"))
                _, k, v = (t.reshape(B, T, n_head, -1).transpose(1, 2) for t in qkv.chunk(3, dim=-1))
                cache.append((k, v))
            x = layer(x, src_mask=mask.to(x.device))
        x = ORACLE.layer_norm(x, x.shape[-1:], state["transformer.ln_f.weight"], state.get("transformer.ln_f.bias"),
                              1e-5)
        logits = ORACLE.linear(x, state.get("lm_head.weight", wte))
    return (logits, cache) if kv else logits


class _Node(nn.Module):
    """A bare module: a place to hang parameters and submodules by name."""


def gpt_skeleton(config):
    """A module with exactly a GPT's parameters (GPT-2's names, order and shapes, lm_head.weight
    tied to transformer.wte.weight), all zero, and .config; no forward. For the tests of
    chapter 7's initialisation, so that they do not depend on the learner's GPT."""
    root = _Node()
    root.config = config
    for name, shape in gpt2_names(config):
        if name == "lm_head.weight":
            continue
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if part not in node._modules:
                node.add_module(part, _Node())
            node = node._modules[part]
        node.register_parameter(leaf, nn.Parameter(torch.zeros(shape)))
    root.add_module("lm_head", _Node())
    root.lm_head.weight = root.transformer.wte.weight
    return root


def top_k_oracle(logits, k):
    """-inf outside each row's k largest logits (ties with the k-th kept), row by row in Python."""
    out = logits.detach().clone()
    flat = out.reshape(-1, out.shape[-1]) if out.numel() else out.reshape(0, out.shape[-1])
    for row in flat:
        values = sorted(row.tolist(), reverse=True)
        kth = values[min(k, len(values)) - 1]
        row[row < kth] = float("-inf")
    return flat.reshape(logits.shape)


def top_p_oracle(logits, p):
    """-inf outside each row's nucleus: a token is kept when the probabilities (softmax in float64)
    of the tokens ranked above it sum to less than p; p = 1 keeps everything."""
    out = logits.detach().clone()
    if p >= 1:
        return out
    flat = out.reshape(-1, out.shape[-1]) if out.numel() else out.reshape(0, out.shape[-1])
    for row in flat:
        probs = ORACLE.softmax(row.double(), dim=-1).tolist()
        order = sorted(range(len(probs)), key=lambda i: -probs[i])
        above = 0.0
        for i in order:
            if above >= p:
                row[i] = float("-inf")
            above += probs[i]
    return flat.reshape(logits.shape)


def next_token_oracle(logits, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Chapter 7's next_token by the oracles: argmax for temperature 0, else logits / temperature,
    top-k, then top-p, softmax and one torch.multinomial draw per row."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    z = logits / temperature
    if top_k is not None:
        z = top_k_oracle(z, top_k)
    if top_p is not None:
        z = top_p_oracle(z, top_p)
    return ORACLE.multinomial(ORACLE.softmax(z, dim=-1), 1, generator=generator)


def generate_oracle(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, generator=None):
    """Chapter 7's generate by the oracles, on the model's eval-mode forward (no gradients)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(idx[:, -model.config.block_size:])[0][:, -1]
            idx = torch.cat([idx, next_token_oracle(logits, temperature, top_k, top_p, generator)], dim=1)
    model.train(was)
    return idx


@dataclass
class TinyLMConfig:
    vocab_size: int
    block_size: int


class TinyLM(nn.Module):
    """A small causal language model for the tests of generation: the logits at position t are a
    fixed function of the tokens 0..t and of t, so every token of the context matters. It refuses
    a context longer than block_size, as a GPT does, and records the mode and grad mode of every
    call in .calls (training, grad enabled, T)."""

    def __init__(self, vocab_size, block_size, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.config = TinyLMConfig(vocab_size, block_size)
        self.emb = nn.Parameter(torch.randn(vocab_size, 8, generator=g))
        self.pos = nn.Parameter(torch.randn(block_size, 8, generator=g))
        self.out = nn.Parameter(torch.randn(vocab_size, 8, generator=g))
        self.calls = []

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        self.calls.append((self.training, torch.is_grad_enabled(), T))
        if T > self.config.block_size:
            raise ValueError(f"a sequence of {T} tokens is longer than block_size={self.config.block_size}")
        h = self.emb[idx].cumsum(dim=1) / torch.arange(1, T + 1)[:, None] + self.pos[:T]
        return 2 * h @ self.out.T, None


def reference_gpt(config, state=None, seed=0):
    """Chapter 7's GPT (the course's reference), holding `state` (a state dict with GPT-2's names)
    or, without one, random values from random_gpt_state; in eval mode. A model for the tests of
    the key-value cache, so that they do not depend on the learner's GPT."""
    from solutions.ch07_gpt import GPT
    if state is None:
        state = random_gpt_state(config, torch.Generator().manual_seed(seed))
    model = GPT(config).to(state["transformer.wte.weight"].dtype)
    model.load_state_dict(state, strict=True)
    # the blocks go to the grading worker pickled, and the notebook's GPTConfig (the judge's
    # __main__) cannot be: give them a plain namespace with the same fields
    import dataclasses
    from types import SimpleNamespace
    plain = SimpleNamespace(**dataclasses.asdict(config))
    for module in model.transformer.modules():
        if module is not model.transformer and hasattr(module, "config"):
            module.config = plain
    return model.eval()
