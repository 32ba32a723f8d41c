"""Unit tests of solutions/testing.py, the course's test machinery: the switch-off (every route to a
refused operation, in every thread, and everything put back afterwards), the messages, the oracles
and the meters. Every expectation here is worked out by hand or taken from PyTorch itself, never
from the module's own output."""
import _thread
import math
import os
import queue
import subprocess
import sys
import textwrap
import threading
import time
from collections import OrderedDict

import pytest
import torch
import torch._refs
import torch._refs.nn.functional
import torch.autograd.forward_ad as fwAD
import torch.autograd.functional
import torch.func
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.variable import Variable
from torch.overrides import _get_current_function_mode_stack
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack, _pop_mode, _push_mode

from solutions.testing import (ATTENTION, GELU, NORMALIZATION, ORACLE, SOFTMAX, Forbidden, FunctionContext,
                               best_time, call, check, check_close, check_raises, check_state_dict,
                               check_tensor, check_untouched, median_time, peak_memory, prerequisite,
                               substituted, switched_off)

aten = torch.ops.aten

# References taken before any switch-off, the way a learner's notebook could keep them in a global.
CAPTURED = {
    "torch.softmax": torch.softmax, "F.softmax": F.softmax, "Tensor.softmax": torch.Tensor.softmax,
    "F.log_softmax": F.log_softmax, "aten._softmax": aten._softmax, "F.layer_norm": F.layer_norm,
    "F.rms_norm": F.rms_norm, "F.batch_norm": F.batch_norm, "torch.layer_norm": torch.layer_norm,
    "F.gelu": F.gelu, "torch._C._nn.gelu": torch._C._nn.gelu, "F.sdpa": F.scaled_dot_product_attention,
    "F.mha_forward": F.multi_head_attention_forward, "autograd.grad": torch.autograd.grad,
    "Tensor.backward": torch.Tensor.backward, "func.grad": torch.func.grad, "func.jvp": torch.func.jvp,
    "engine": Variable._execution_engine, "set_grad_enabled": torch._C._set_grad_enabled,
    "Thread.start": threading.Thread.start, "start_new_thread": _thread.start_new_thread,
    "os.fork": os.fork if hasattr(os, "fork") else None,
    # PyTorch's Python references: they compute the operation out of elementwise ones
    "_refs.softmax": torch._refs.softmax, "_refs.gelu": torch._refs.nn.functional.gelu,
    "_refs.native_layer_norm": torch._refs.native_layer_norm,
    "_refs.layer_norm": torch._refs.nn.functional.layer_norm,
}

X = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.5, 0.25, -0.75, 3.0], [-2.0, 1.0, 0.5, -0.5]])
Q = torch.tensor([[[0.1, 0.2, -0.3, 0.4], [0.5, -0.6, 0.7, 0.8], [0.9, 1.0, -1.1, 1.2]]])  # (1, 3, 4)


def _refused(fn, *families, autograd=True, reason=None):
    """fn() under the switch-off must fail with Forbidden (and through call(), an AssertionError)."""
    with pytest.raises(Forbidden) as info:
        with switched_off(*families, autograd=autograd):
            fn()
    if reason:
        assert reason in str(info.value), str(info.value)
    with pytest.raises(AssertionError) as info2:
        call(fn, "the exercise", "a hint", forbid=families, autograd=autograd)
    assert "the exercise" in str(info2.value)
    return str(info.value)


def _lines_ok(message):
    for line in str(message).split("\n"):
        assert len(line) <= 88, f"{len(line)} columns: {line!r}"


# ---------------------------------------------------------------------------------------------
# 1. Families: every route is refused

SOFTMAX_ROUTES = {
    "torch.softmax": lambda: torch.softmax(X, -1),
    "torch.log_softmax": lambda: torch.log_softmax(X, -1),
    "F.softmax": lambda: F.softmax(X, -1),
    "F.log_softmax": lambda: F.log_softmax(X, -1),
    "F.softmin": lambda: F.softmin(X, -1),
    "torch.special.softmax": lambda: torch.special.softmax(X, -1),
    "torch._softmax": lambda: torch._softmax(X, -1, False),
    "Tensor.softmax": lambda: X.softmax(-1),
    "Tensor.log_softmax": lambda: X.log_softmax(-1),
    "nn.Softmax()": lambda: nn.Softmax(-1)(X),
    "aten._softmax": lambda: aten._softmax(X, -1, False),
    "aten._softmax.default": lambda: aten._softmax.default(X, -1, False),
    "aten._safe_softmax.default": lambda: aten._safe_softmax.default(X, -1),
    "aten._masked_softmax": lambda: aten._masked_softmax(X, torch.zeros(3, 4, dtype=torch.bool)),
    "aten.log_softmax.int": lambda: aten.log_softmax.int(X, -1),
    "aten._log_softmax.default": lambda: aten._log_softmax.default(X, -1, False),
    "aten.softmax.int": lambda: aten.softmax.int(X, -1),
    "aten._softmax_backward_data": lambda: aten._softmax_backward_data(X, X, -1, torch.float32),
}

NORMALIZATION_ROUTES = {
    "F.layer_norm": lambda: F.layer_norm(X, (4,)),
    "torch.layer_norm": lambda: torch.layer_norm(X, (4,)),
    "F.rms_norm": lambda: F.rms_norm(X - X.mean(-1, keepdim=True), (4,)),
    "F.batch_norm": lambda: F.batch_norm(X.T, None, None, training=True),
    "torch.batch_norm": lambda: torch.batch_norm(X.T, None, None, None, None, True, 0.1, 1e-5, False),
    "F.group_norm": lambda: F.group_norm(X, 1),
    "F.instance_norm": lambda: F.instance_norm(X[None]),
    "F.normalize": lambda: F.normalize(X),
    "aten.native_layer_norm": lambda: aten.native_layer_norm(X, [4], None, None, 1e-5),
    "aten.native_layer_norm.default": lambda: aten.native_layer_norm.default(X, [4], None, None, 1e-5),
    "aten.rms_norm": lambda: aten.rms_norm(X, [4]),
    "aten._fused_rms_norm": lambda: aten._fused_rms_norm(X, [4], None, None),
    "aten.native_batch_norm": lambda: aten.native_batch_norm(X.T, None, None, None, None, True, 0.1, 1e-5),
    "aten._native_batch_norm_legit": lambda: aten._native_batch_norm_legit(X.T, None, None, True, 0.1, 1e-5),
    "aten.native_group_norm": lambda: aten.native_group_norm(X[None], None, None, 1, 3, 4, 1, 1e-5),
}

GELU_ROUTES = {
    "F.gelu": lambda: F.gelu(X),
    "F.gelu tanh": lambda: F.gelu(X, approximate="tanh"),
    "torch._C._nn.gelu": lambda: torch._C._nn.gelu(X),
    "aten.gelu": lambda: aten.gelu(X),
    "aten.gelu.default": lambda: aten.gelu.default(X, approximate="tanh"),
    "aten.gelu_backward": lambda: aten.gelu_backward(torch.ones_like(X), X),
    "aten.gelu_backward.default": lambda: aten.gelu_backward.default(torch.ones_like(X), X, approximate="tanh"),
}

ATTENTION_ROUTES = {
    "F.scaled_dot_product_attention": lambda: F.scaled_dot_product_attention(Q, Q, Q),
    "torch._C._nn.scaled_dot_product_attention": lambda: torch._C._nn.scaled_dot_product_attention(Q, Q, Q),
    "F.multi_head_attention_forward": lambda: F.multi_head_attention_forward(
        Q.transpose(0, 1), Q.transpose(0, 1), Q.transpose(0, 1), 4, 2, torch.ones(12, 4), torch.zeros(12),
        None, None, False, 0.0, torch.eye(4), torch.zeros(4)),
    "aten.scaled_dot_product_attention": lambda: aten.scaled_dot_product_attention(Q, Q, Q),
    "aten._scaled_dot_product_flash_attention_for_cpu":
        lambda: aten._scaled_dot_product_flash_attention_for_cpu(Q[None], Q[None], Q[None]),
    "aten._scaled_dot_product_flash_attention_for_cpu.default":
        lambda: aten._scaled_dot_product_flash_attention_for_cpu.default(Q[None], Q[None], Q[None]),
    "aten._scaled_dot_product_attention_math": lambda: aten._scaled_dot_product_attention_math(Q, Q, Q),
}

FAMILY_ROUTES = [(SOFTMAX, SOFTMAX_ROUTES), (NORMALIZATION, NORMALIZATION_ROUTES), (GELU, GELU_ROUTES),
                 (ATTENTION, ATTENTION_ROUTES)]
ROUTE_CASES = [pytest.param(fam, fn, id=f"{fam[0]}-{name}") for fam, routes in FAMILY_ROUTES
               for name, fn in routes.items()]


@pytest.mark.parametrize("family, route", ROUTE_CASES)
def test_every_route_of_a_family_is_refused(family, route):
    route()                                    # the route works outside the switch-off
    message = _refused(route, family)
    assert "switched off" in message or "switches off" in message


# Modules built before the call and called inside it (their forward uses the refused kernels).
MODULES = {
    "nn.Softmax": (SOFTMAX, lambda: nn.Softmax(-1), lambda m: m(X)),
    "nn.LogSoftmax": (SOFTMAX, lambda: nn.LogSoftmax(-1), lambda m: m(X)),
    "nn.LayerNorm": (NORMALIZATION, lambda: nn.LayerNorm(4), lambda m: m(X)),
    "nn.RMSNorm": (NORMALIZATION, lambda: nn.RMSNorm(4), lambda m: m(X)),
    "nn.BatchNorm1d": (NORMALIZATION, lambda: nn.BatchNorm1d(4), lambda m: m(X)),
    "nn.GroupNorm": (NORMALIZATION, lambda: nn.GroupNorm(1, 3), lambda m: m(X[None])),
    "nn.GELU": (GELU, lambda: nn.GELU(), lambda m: m(X)),
    "nn.GELU tanh": (GELU, lambda: nn.GELU(approximate="tanh"), lambda m: m(X)),
    "nn.MultiheadAttention": (ATTENTION, lambda: nn.MultiheadAttention(4, 2, batch_first=True),
                              lambda m: m(Q, Q, Q)),
    "nn.MultiheadAttention.forward": (ATTENTION, lambda: nn.MultiheadAttention(4, 2, batch_first=True),
                                      lambda m: m.forward(Q, Q, Q, need_weights=False)),
    "nn.TransformerEncoderLayer": (ATTENTION, lambda: nn.TransformerEncoderLayer(4, 2, 8, 0.0,
                                                                                 batch_first=True).eval(),
                                   lambda m: m(Q)),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_modules_built_before_the_call_are_refused_inside(name):
    family, build, use = MODULES[name]
    module = build()
    with torch.no_grad():
        use(module)
    _refused(lambda: use(module), family)


@pytest.mark.parametrize("family, name", [
    (SOFTMAX, "nn.Softmax"), (NORMALIZATION, "nn.LayerNorm"), (GELU, "nn.GELU"),
    (ATTENTION, "nn.MultiheadAttention")])
def test_modules_cannot_be_built_inside(family, name):
    cls = getattr(nn, name.split(".")[1])
    args = {"nn.Softmax": (-1,), "nn.LayerNorm": (4,), "nn.GELU": (), "nn.MultiheadAttention": (4, 2)}[name]
    _refused(lambda: cls(*args), family)
    _refused(lambda: getattr(nn, name.split(".")[1])(*args), family)


CAPTURED_ROUTES = [
    (SOFTMAX, "torch.softmax", lambda f: f(X, -1)), (SOFTMAX, "F.softmax", lambda f: f(X, -1)),
    (SOFTMAX, "Tensor.softmax", lambda f: f(X, -1)), (SOFTMAX, "F.log_softmax", lambda f: f(X, -1)),
    (SOFTMAX, "aten._softmax", lambda f: f(X, -1, False)), (NORMALIZATION, "F.layer_norm", lambda f: f(X, (4,))),
    (NORMALIZATION, "F.rms_norm", lambda f: f(X, (4,))), (NORMALIZATION, "torch.layer_norm", lambda f: f(X, (4,))),
    (NORMALIZATION, "F.batch_norm", lambda f: f(X.T, None, None, training=True)),
    (GELU, "F.gelu", lambda f: f(X)), (GELU, "torch._C._nn.gelu", lambda f: f(X)),
    (ATTENTION, "F.sdpa", lambda f: f(Q, Q, Q)),
    (SOFTMAX, "_refs.softmax", lambda f: f(X, -1)), (GELU, "_refs.gelu", lambda f: f(X)),
    (NORMALIZATION, "_refs.native_layer_norm", lambda f: f(X, (4,), None, None, 1e-5)),
    (NORMALIZATION, "_refs.layer_norm", lambda f: f(X, (4,))),
]


@pytest.mark.parametrize("family, name, use", [pytest.param(*c, id=c[1]) for c in CAPTURED_ROUTES])
def test_references_captured_before_the_call_are_refused(family, name, use):
    f = CAPTURED[name]
    _refused(lambda: use(f), family)


@pytest.mark.parametrize("family, route", [
    pytest.param(SOFTMAX, lambda: torch.softmax(X, -1), id="softmax"),
    pytest.param(SOFTMAX, lambda: aten._safe_softmax.default(X, -1), id="safe_softmax"),
    pytest.param(NORMALIZATION, lambda: F.layer_norm(X, (4,)), id="layer_norm"),
    pytest.param(NORMALIZATION, lambda: aten.native_batch_norm(X.T, None, None, None, None, True, 0.1, 1e-5),
                 id="native_batch_norm"),
    pytest.param(GELU, lambda: CAPTURED["F.gelu"](X), id="gelu"),
    pytest.param(ATTENTION, lambda: CAPTURED["F.sdpa"](Q, Q, Q), id="sdpa")])
def test_the_refusal_is_reported_when_the_learner_catches_it(family, route):
    def sneaky():
        try:
            return route()
        except BaseException:          # even catching BaseException does not hide the refusal
            return torch.zeros(3)

    message = _refused(sneaky, family)
    assert "caught" in message


def test_legit_elementary_code_passes_every_family():
    def softmax(x):
        e = (x - x.amax(-1, keepdim=True)).exp()
        return e / e.sum(-1, keepdim=True)

    def standardize(x):
        m = x.mean(-1, keepdim=True)
        return (x - m) / ((x - m).pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()

    def gelu(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

    def attention(q, k, v):
        return softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])) @ v

    families = (SOFTMAX, NORMALIZATION, GELU, ATTENTION)
    got = call(lambda: (softmax(X), standardize(X), gelu(X), attention(Q, Q, Q)), "all", "h",
               forbid=families, autograd=False)
    want = (torch.softmax(X, -1), F.layer_norm(X, (4,)), F.gelu(X, approximate="tanh"),
            F.scaled_dot_product_attention(Q, Q, Q))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
    # hand-checkable: softmax of log(1), log(2), log(3) is 1/6, 2/6, 3/6
    p = call(lambda: softmax(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64).log()), "s", "h", forbid=SOFTMAX)
    torch.testing.assert_close(p, torch.tensor([1 / 6, 2 / 6, 3 / 6], dtype=torch.float64))
    # a family given as a single string works too, and other operations stay allowed
    assert call(lambda: F.gelu(torch.tensor([0.0])).item(), "g", "h", forbid=SOFTMAX) == 0.0
    assert call(lambda: torch.tensor([2.0]).exp().item(), "e", "h", forbid="softmax") == pytest.approx(math.e ** 2)


def _snapshot():
    """Every attribute of the places the switch-off patches, and the process state it changes."""
    import torch.nn.modules.activation
    import torch.nn.modules.batchnorm
    import torch.nn.modules.normalization
    import torch.nn.modules.transformer
    places = [torch, F, torch.nn, torch.nn.modules, torch.special, torch.linalg, torch.autograd,
              torch.autograd.functional, fwAD, torch.func, torch._C._nn, torch._C._special, torch.Tensor,
              Variable, torch.autograd.graph, torch.nn.modules.activation, torch.nn.modules.normalization,
              torch.nn.modules.batchnorm, torch.nn.modules.transformer, threading, threading.Thread, _thread,
              os, subprocess, subprocess.Popen, torch.ops.aten, nn.Softmax, nn.LayerNorm, nn.RMSNorm, nn.GELU,
              nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.BatchNorm1d]
    state = {}
    for place in places:
        try:
            items = dict(vars(place))
        except TypeError:
            items = {n: getattr(place, n, None) for n in dir(place)}
        state[repr(place)] = items
    state["modes"] = (len(_get_current_function_mode_stack()), len(_get_current_dispatch_mode_stack()))
    state["grad"] = (torch.is_grad_enabled(), torch._C._is_fwd_grad_enabled())
    return state


def _same(before, after):
    """Every attribute is the same object as before; one that PyTorch added lazily meanwhile (an
    aten op looked up for the first time) is no stub of the switch-off."""
    assert before["modes"] == after["modes"] == (0, 0) and before["grad"] == after["grad"]
    for place, items in before.items():
        if place in ("modes", "grad"):
            continue
        changed = [k for k, v in items.items() if k not in after[place] or after[place][k] is not v]
        assert not changed, (place, changed)
        added = [k for k in after[place] if k not in items
                 and "switched_off" in getattr(after[place][k], "__name__", "")]
        assert not added, (place, added)


@pytest.mark.parametrize("raises", [False, True], ids=["returns", "raises"])
@pytest.mark.parametrize("grad_before", [True, False], ids=["grad-on", "grad-off"])
def test_everything_is_put_back_after_the_call(raises, grad_before):
    def learner():
        x = torch.softmax(X, -1) if raises else X.exp()
        if raises:
            raise ValueError("boom")
        return x

    configurations = [((SOFTMAX,), True), ((NORMALIZATION, GELU, ATTENTION), False),
                      ((SOFTMAX, NORMALIZATION, GELU, ATTENTION), False), ((), False)]
    for families, autograd in configurations:      # once first: PyTorch's lazy imports patch torch too
        with pytest.raises(AssertionError):
            call(lambda: (torch.softmax(X, -1), 1 / 0), "w", "h", forbid=families, autograd=autograd)
    torch._C._set_grad_enabled(grad_before)
    try:
        before = _snapshot()
        start, fork = threading.Thread.start, getattr(os, "fork", None)
        for families, autograd in configurations:
            try:
                call(learner, "w", "h", forbid=families, autograd=autograd)
            except AssertionError:
                assert raises
            _same(before, _snapshot())
        assert threading.Thread.start is start and getattr(os, "fork", None) is fork
        assert torch.softmax(X, -1).shape == (3, 4)         # and usable again
        assert torch.is_grad_enabled() is grad_before
    finally:
        torch._C._set_grad_enabled(True)


def test_forward_grad_mode_and_dual_levels_are_put_back():
    torch._C._set_fwd_grad_enabled(False)
    try:
        call(lambda: X.exp(), "w", "h", autograd=False)
        assert torch._C._is_fwd_grad_enabled() is False
    finally:
        torch._C._set_fwd_grad_enabled(True)
    call(lambda: X.exp(), "w", "h", autograd=False)
    assert torch._C._is_fwd_grad_enabled() is True
    with fwAD.dual_level():                  # forward mode still works after the call
        d = fwAD.make_dual(torch.tensor(3.0), torch.tensor(1.0))
        assert fwAD.unpack_dual(d * d).tangent.item() == 6.0


# ---------------------------------------------------------------------------------------------
# 2. autograd=False

_W = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
_LOSS = (_W * _W).sum()          # a graph built before the call


def _dual():
    with fwAD.dual_level():
        d = fwAD.make_dual(torch.ones(3), torch.ones(3))
        return fwAD.unpack_dual(d * d).tangent


def _sq(t):
    return (t * t).sum()


AUTOGRAD_ROUTES = {
    "autograd.grad": lambda: torch.autograd.grad(_sq(torch.ones(3, requires_grad=True)), []),
    "autograd.grad on an old graph": lambda: torch.autograd.grad(_LOSS, _W, retain_graph=True),
    "captured autograd.grad": lambda: CAPTURED["autograd.grad"](_LOSS, _W, retain_graph=True),
    "Tensor.backward": lambda: _LOSS.backward(retain_graph=True),
    "captured Tensor.backward": lambda: CAPTURED["Tensor.backward"](_LOSS, retain_graph=True),
    "autograd.backward": lambda: torch.autograd.backward(_LOSS, retain_graph=True),
    "func.grad": lambda: torch.func.grad(_sq)(torch.ones(3)),
    "captured func.grad": lambda: CAPTURED["func.grad"](_sq)(torch.ones(3)),
    "func.jacrev": lambda: torch.func.jacrev(_sq)(torch.ones(3)),
    "func.jacfwd": lambda: torch.func.jacfwd(_sq)(torch.ones(3)),
    "func.jvp": lambda: torch.func.jvp(_sq, (torch.ones(3),), (torch.ones(3),)),
    "captured func.jvp": lambda: CAPTURED["func.jvp"](_sq, (torch.ones(3),), (torch.ones(3),)),
    "func.vjp": lambda: torch.func.vjp(_sq, torch.ones(3)),
    "func.vmap": lambda: torch.func.vmap(lambda t: t * 2)(torch.ones(3, 2)),
    "torch.vmap": lambda: torch.vmap(lambda t: t * 2)(torch.ones(3, 2)),
    "forward_ad dual numbers": _dual,
    "functional.jacobian forward-mode": lambda: torch.autograd.functional.jacobian(
        lambda t: t * t, torch.ones(3), strategy="forward-mode", vectorize=True),
    "functional.jacobian": lambda: torch.autograd.functional.jacobian(lambda t: t * t, torch.ones(3)),
    "functional.jvp": lambda: torch.autograd.functional.jvp(lambda t: t * t, torch.ones(3), torch.ones(3)),
    "engine.run_backward, old graph": lambda: Variable._execution_engine.run_backward(
        (_LOSS,), (torch.tensor(1.0),), True, False, (_W,), True, False),
    "captured engine.run_backward, old graph": lambda: CAPTURED["engine"].run_backward(
        (_LOSS,), (torch.tensor(1.0),), True, False, (_W,), True, False),
    "enable_grad + requires_grad_": lambda: _with_enable_grad(),
    "set_grad_enabled(True)": lambda: (torch.set_grad_enabled(True), _sq(torch.ones(3).requires_grad_())),
    "captured _C._set_grad_enabled(True)":
        lambda: (CAPTURED["set_grad_enabled"](True), _sq(torch.ones(3, requires_grad=True))),
    "gradcheck": lambda: torch.autograd.gradcheck(_sq, (torch.ones(3, dtype=torch.float64, requires_grad=True),)),
}


def _with_enable_grad():
    with torch.enable_grad():
        t = torch.ones(3).requires_grad_()
        return _sq(t)


@pytest.mark.parametrize("name", list(AUTOGRAD_ROUTES))
def test_autograd_false_refuses(name):
    route = AUTOGRAD_ROUTES[name]
    try:
        # The route must not give an answer: refused, or unusable (e.g. the engine is replaced)
        with pytest.raises((Forbidden, AttributeError, TypeError)):
            with switched_off(autograd=False):
                route()
        with pytest.raises(AssertionError):
            call(route, "the gradient", "by hand", autograd=False)
    finally:
        torch._C._set_grad_enabled(True)
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("name", ["captured autograd.grad", "captured engine.run_backward, old graph",
                                  "captured func.jvp", "forward_ad dual numbers",
                                  "functional.jacobian forward-mode", "captured _C._set_grad_enabled(True)"])
def test_autograd_false_refusal_is_a_forbidden_one(name):
    route = AUTOGRAD_ROUTES[name]

    def sneaky():
        try:
            route()
        except Exception:
            pass

    try:
        message = _refused(sneaky, autograd=False)
    finally:
        torch._C._set_grad_enabled(True)
    assert "switches off" in message and "caught" in message


def test_autograd_false_allows_no_grad_and_elementary_code():
    x = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)

    def by_hand():
        assert not torch.is_grad_enabled()
        with torch.no_grad():
            y = x * x
        return 2 * x, y, x.detach() ** 3

    g, y, c = call(by_hand, "grad", "h", autograd=False)
    assert g.tolist() == [2.0, 4.0, 6.0] and y.tolist() == [1.0, 4.0, 9.0] and c.tolist() == [1.0, 8.0, 27.0]
    assert not g.requires_grad
    assert torch.is_grad_enabled()


@pytest.mark.xfail(strict=True, reason="calling a grad_fn Node of a graph built before the call runs one step "
                                       "of backward outside the engine; no state or name reveals it")
def test_autograd_false_refuses_calling_a_grad_fn_directly():
    _refused(lambda: _LOSS.grad_fn(torch.tensor(1.0)), autograd=False)


# ---------------------------------------------------------------------------------------------
# 3. Threads and processes

def test_a_thread_started_inside_the_call_is_refused():
    t = threading.Thread(target=lambda: None)
    message = _refused(lambda: (t.start(), t.join()), SOFTMAX, reason="thread")
    assert "thread" in message
    _refused(lambda: threading.Thread(target=lambda: None).start(), autograd=False, reason="thread")


def test_start_new_thread_is_refused():
    def start():
        done = _thread.allocate_lock()
        done.acquire()
        _thread.start_new_thread(done.release, ())
        done.acquire(timeout=5)

    _refused(start, SOFTMAX, reason="thread")


def test_a_captured_thread_start_is_refused():
    """Thread.start taken before the call, and a worker that ends before the call returns."""
    def attack():
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("p", CAPTURED["torch.softmax"](X, -1)))
        CAPTURED["Thread.start"](t)
        t.join()
        return out["p"]

    _refused(attack, SOFTMAX, reason="thread")


@pytest.mark.xfail(strict=True, reason="_thread.start_new_thread taken before the call is a C function that "
                                       "cannot be replaced; a worker that ends before the call returns is "
                                       "not seen")
def test_a_captured_start_new_thread_is_refused():
    def attack():
        out, done = {}, _thread.allocate_lock()
        done.acquire()

        def work():
            out["p"] = CAPTURED["torch.softmax"](X, -1)
            done.release()

        CAPTURED["start_new_thread"](work, ())
        done.acquire(timeout=5)
        time.sleep(0.02)            # let the worker's thread state go
        return out["p"]

    _refused(attack, SOFTMAX, reason="thread")


def test_a_worker_thread_started_before_the_call_is_refused():
    jobs, results = queue.Queue(), queue.Queue()

    def worker():
        while (item := jobs.get()) is not None:
            results.put(torch.softmax(item, -1))

    t = threading.Thread(target=worker, name="helper-worker", daemon=True)
    t.start()
    try:
        message = _refused(lambda: (jobs.put(X), results.get(timeout=5))[1], SOFTMAX, reason="thread")
        assert "helper-worker" in message
        _refused(lambda: 1, autograd=False, reason="helper-worker")
    finally:
        jobs.put(None)
        t.join(5)
    assert call(lambda: 1, "w", "h", forbid=SOFTMAX) == 1          # fine again once it is gone


def test_threads_that_existed_at_import_are_allowed():
    script = textwrap.dedent("""
        import threading, time
        threading.Thread(target=time.sleep, args=(60,), name="kernel-thread", daemon=True).start()
        from solutions.testing import call, SOFTMAX
        print(call(lambda: 6 * 7, "w", "h", forbid=SOFTMAX, autograd=False))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and processes: Linux")


def _fork_once(fork):
    """Forks only if the guard let it: the child leaves at once."""
    pid = fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


@linux_only
def test_os_fork_inside_the_call_is_refused():
    message = _refused(lambda: _fork_once(os.fork), SOFTMAX, reason="os.fork")
    assert "process" in message


@linux_only
@pytest.mark.parametrize("start", [
    pytest.param(lambda: subprocess.run(["true"], check=True), id="subprocess.run"),
    pytest.param(lambda: subprocess.Popen(["true"]).wait(), id="Popen"),
    pytest.param(lambda: subprocess.check_output(["true"]), id="check_output"),
    pytest.param(lambda: os.system("true"), id="os.system")])
def test_processes_inside_the_call_are_refused(start):
    _refused(start, SOFTMAX)
    _refused(start, autograd=False)


@linux_only
def test_a_captured_os_fork_is_refused():
    """Python's audit hook sees the fork, however os.fork was reached."""
    _refused(lambda: _fork_once(CAPTURED["os.fork"]), SOFTMAX)


# ---------------------------------------------------------------------------------------------
# 4. Removing the test's modes

def _pop_dispatch_and_call():
    mode = _pop_mode()
    try:
        return aten._softmax(X, -1, False)
    finally:
        _push_mode(mode)


def _pop_function_and_call():
    mode = torch._C._pop_torch_function_stack()
    try:
        return CAPTURED["torch.softmax"](X, -1)
    finally:
        torch._C._push_on_torch_function_stack(mode)


def _disable_dispatch():
    with torch._C._DisableTorchDispatch():
        return aten._softmax(X, -1, False)


def _disable_function():
    with torch._C.DisableTorchFunction():
        return CAPTURED["torch.softmax"](X, -1)


def _disable_function_subclass():
    with torch._C.DisableTorchFunctionSubclass():
        return CAPTURED["torch.softmax"](X, -1)


def _exclude_python_key():
    with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(torch._C.DispatchKey.Python)):
        return aten._softmax(X, -1, False)


def _pop_temporarily():
    from torch.utils._python_dispatch import _pop_mode_temporarily
    with _pop_mode_temporarily():
        return aten._softmax(X, -1, False)


@pytest.mark.parametrize("attack", [_pop_dispatch_and_call, _pop_function_and_call, _disable_dispatch,
                                    _disable_function, _disable_function_subclass, _exclude_python_key,
                                    _pop_temporarily])
def test_removing_one_of_the_modes_is_refused(attack):
    _refused(attack, SOFTMAX)
    assert _get_current_function_mode_stack() == [] and _get_current_dispatch_mode_stack() == []


@pytest.mark.parametrize("pop", [lambda: _pop_mode(), lambda: torch._C._pop_torch_function_stack()],
                         ids=["dispatch", "function"])
def test_removing_a_mode_for_good_is_refused_and_named(pop):
    message = _refused(lambda: (pop(), X.exp())[1], SOFTMAX)
    assert "switch-off was removed" in message
    assert _get_current_function_mode_stack() == [] and _get_current_dispatch_mode_stack() == []
    assert torch.softmax(X, -1).shape == (3, 4)


def _pop_both():
    fmode = torch._C._pop_torch_function_stack()
    dmode = _pop_mode()
    try:
        return CAPTURED["torch.softmax"](X, -1)
    finally:
        _push_mode(dmode)
        torch._C._push_on_torch_function_stack(fmode)


def _disable_both():
    with torch._C.DisableTorchFunction(), torch._C._DisableTorchDispatch():
        return CAPTURED["torch.softmax"](X, -1)


@pytest.mark.parametrize("attack", [_pop_both, _disable_both])
def test_removing_both_modes_is_refused(attack):
    """The profiler still sees the operator run."""
    _refused(attack, SOFTMAX)


# ---------------------------------------------------------------------------------------------
# 5. Messages

def _fail(fn):
    with pytest.raises(AssertionError) as info:
        fn()
    message = str(info.value)
    _lines_ok(message)
    return message


def test_check_tensor_names_the_worst_index_the_values_the_difference_and_the_tolerance():
    expected = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)
    got = expected.clone()
    got[0, 1] += 0.001        # small
    got[1, 2] += 0.5          # the worst
    message = " ".join(_fail(lambda: check_tensor(got, expected, "my_fn(x)", "look at the formula")).split())
    assert message.startswith("my_fn(x): values")
    assert "6 at index (1, 2)" in message
    assert "6.5" in message
    assert "2 of 6 entries" in message
    assert "|got - expected| = 0.5" in message
    assert f"allowed {1e-5 + 1e-5 * 6:.3g}" in message          # atol + rtol * |expected|
    assert "look at the formula" in message


def test_check_tensor_prints_enough_digits_to_differ():
    expected = torch.tensor([1.0000001], dtype=torch.float64)
    got = torch.tensor([1.0000002], dtype=torch.float64)
    message = _fail(lambda: check_tensor(got, expected, "f", "h", atol=0, rtol=0))
    assert "1.0000001" in message and "1.0000002" in message
    assert "allowed 0" in message
    check_tensor(expected.clone(), expected, "f", "h", atol=0, rtol=0)             # equal passes at 0


def test_check_tensor_compares_integers_exactly_whatever_the_tolerance():
    expected = torch.tensor([2**40 + 3, 5])
    message = _fail(lambda: check_tensor(torch.tensor([2**40, 5]), expected, "ids", "int64"))
    assert "allowed 0" in message                      # rtol=1e-5 would have let 3 in 2**40 pass
    check_tensor(expected.clone(), expected, "ids", "int64")
    _fail(lambda: check_tensor(torch.tensor([1, 2], dtype=torch.int32) + 1,
                               torch.tensor([1, 2], dtype=torch.int32), "x", "h", atol=5))


@pytest.mark.parametrize("make, words", [
    (lambda e: 2.5 * e, ["2.5 times"]),
    (lambda e: e + 0.75, ["plus 0.75"]),
    (lambda e: e.T.contiguous(), ["transposed"]),
    (lambda e: torch.where(e == e.max(), torch.tensor(float("nan"), dtype=e.dtype), e), ["NaN", "(1, 0)"]),
])
def test_check_tensor_diagnoses_the_kind_of_mistake(make, words):
    expected = torch.tensor([[1.0, 2.0, 3.0], [9.0, 5.0, 6.0], [7.0, 8.0, 4.0]], dtype=torch.float64)
    message = _fail(lambda: check_tensor(make(expected), expected, "f", "h"))
    for w in words:
        assert w in message, message


def test_check_tensor_shape_dtype_device_and_type_messages():
    e = torch.zeros(2, 3)
    message = _fail(lambda: check_tensor(torch.zeros(3, 2), e, "f", "h"))
    assert "f: shape" in message and "(2, 3)" in message and "(3, 2)" in message and "swapped" in message
    message = _fail(lambda: check_tensor(torch.zeros(6), e, "f", "h"))
    assert "(6,)" in message and "view, squeeze or keepdim" in message
    message = _fail(lambda: check_tensor(torch.zeros(4, 4), e, "f", "h"))
    assert "(4, 4)" in message and "keepdim" not in message
    message = _fail(lambda: check_tensor(torch.zeros(2, 3, dtype=torch.float64), e, "f", "h"))
    assert "f: dtype" in message and "torch.float32" in message and "torch.float64" in message
    message = _fail(lambda: check_tensor(torch.zeros(2, 3, device="meta"), e, "f", "h"))
    assert "f: device" in message and "meta" in message
    message = _fail(lambda: check_tensor([[0.0] * 3] * 2, e, "f", "h"))
    assert "f: type" in message and "list" in message
    check_tensor(torch.zeros(2, 3, device="meta"), torch.ones(2, 3, device="meta"), "f", "h")   # no values
    message = _fail(lambda: check_tensor(torch.tensor([True, False]), torch.tensor([True, True]), "m", "h"))
    assert "1 of 2 entries" in message and "(1,)" in message


def test_check_tensor_calls_a_function_through_call():
    e = torch.tensor([1.0, 2.0])
    check_tensor(lambda: e * 1, e, "f", "h")
    message = _fail(lambda: check_tensor(lambda: torch.softmax(e, 0), e, "soft", "h", forbid=SOFTMAX))
    assert message.startswith("soft") and "softmax" in message
    message = _fail(lambda: check_tensor(lambda: 1 / 0, e, "div", "h"))
    assert "ZeroDivisionError" in message


def test_nan_in_the_same_place_passes():
    e = torch.tensor([float("nan"), 1.0])
    check_tensor(e.clone(), e, "f", "h")


def test_every_message_line_fits_88_columns():
    what = "the attention weights of your CausalSelfAttention in training mode with dropout " * 3
    hint = ("remember that the mask must be applied before the softmax and that a fully masked row "
            "gives zeros rather than NaN; see section 3.4 " * 3 + "x" * 150)
    e = torch.arange(12.0).reshape(3, 4)
    messages = [
        _fail(lambda: check_tensor(e + 1, e, what, hint)),
        _fail(lambda: check_tensor(e.reshape(4, 3), e, what, hint)),
        _fail(lambda: check_tensor(lambda: torch.softmax(e, 0), e, what, hint, forbid=SOFTMAX)),
        _fail(lambda: check_tensor(lambda: {}["k" * 120], e, what, hint)),
        _fail(lambda: check(False, what, "y" * 200, "z" * 200, hint)),
        _fail(lambda: check_close(1.0, 2.0, what, hint)),
        _fail(lambda: check_close("a" * 300, 2.0, what, hint)),
        _fail(lambda: check_raises(lambda: None, ValueError, what, hint)),
        _fail(lambda: call(lambda: threading.Thread(target=lambda: None).start(), what, hint, forbid=SOFTMAX)),
    ]
    for m in messages:
        _lines_ok(m)
        flat = " ".join(m.split())
        assert "the mask must be applied before the softmax" in flat      # nothing of the hint is lost
        assert "CausalSelfAttention in training mode" in flat


def test_call_turns_an_exception_into_an_assertion_naming_what():
    message = _fail(lambda: call(lambda: [][1], "split_heads(x, 3)", "check the index"))
    assert message.startswith("split_heads(x, 3)")
    assert "IndexError" in message and "check the index" in message
    assert call(lambda: 41 + 1, "w", "h") == 42
    with pytest.raises(AssertionError, match="learner's own assert"):     # an AssertionError passes through
        call(lambda: (_ for _ in ()).throw(AssertionError("learner's own assert")), "w", "h")


def test_check_raises():
    def bad():
        raise ValueError("T must be divisible by 3")

    err = check_raises(bad, ValueError, "split_heads", "raise a ValueError")
    assert isinstance(err, ValueError) and str(err) == "T must be divisible by 3"
    message = _fail(lambda: check_raises(lambda: None, ValueError, "split_heads", "raise it"))
    assert "a ValueError" in message and "no error" in message
    message = _fail(lambda: check_raises(lambda: {}["k"], ValueError, "split_heads", "raise it"))
    assert "KeyError" in message and "a ValueError" in message
    message = _fail(lambda: check_raises(lambda: torch.softmax(X, 0), ValueError, "s", "h", forbid=SOFTMAX))
    assert "softmax" in message
    assert isinstance(check_raises(bad, Exception, "s", "h", forbid=SOFTMAX), ValueError)


def test_check_close():
    check_close(0.1 + 0.2, 0.3, "sum", "h")                  # within the default rel=1e-9
    message = _fail(lambda: check_close(0.1 + 0.2, 0.3, "sum", "h", rel=0))
    assert "expected: 0.3\n" in message and "got:      0.30000000000000004\n" in message
    message = _fail(lambda: check_close(124_439_808, 124_439_809, "param count", "h"))
    assert "124439808" in message and "124439809" in message and "by 1" in message
    check_close(5, 5.0, "int", "h")
    message = _fail(lambda: check_close(True, 1.0, "bool", "h"))
    assert "bool" in message
    message = _fail(lambda: check_close(torch.tensor(1.0), 1.0, "tensor", "h"))
    assert "Tensor" in message
    check_close(1.0, 1.05, "abs", "h", rel=0, abs_tol=0.1)


def test_check_untouched():
    a = torch.ones(3)
    check_untouched(a.clone(), a, "f")
    message = _fail(lambda: check_untouched(a.clone(), a.sub_(1), "standardize"))
    assert "standardize: its input" in message and "in place" in message


def test_check_state_dict():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(3, 2), nn.LayerNorm(2))
    want = OrderedDict((k, v.clone()) for k, v in m.state_dict().items())
    check_state_dict(m, want, "from_torch", "h")

    missing = OrderedDict(list(want.items())[1:])
    message = _fail(lambda: check_state_dict(m, missing, "from_torch", "h"))
    assert "names" in message and "0.weight" in message

    reordered = OrderedDict([list(want.items())[1], list(want.items())[0]] + list(want.items())[2:])
    message = _fail(lambda: check_state_dict(m, reordered, "from_torch", "h"))
    assert "names" in message

    for key, change, word in [("0.weight", lambda t: t.T, "shape"), ("0.bias", lambda t: t.double(), "dtype"),
                              ("1.weight", lambda t: t.to("meta"), "device"), ("1.bias", lambda t: t + 1, "values")]:
        other = OrderedDict(want)
        other[key] = change(want[key])
        message = _fail(lambda: check_state_dict(m, other, "from_torch", "h"))
        assert f"from_torch: {key}: {word}" in message, message

    other = OrderedDict(want)
    other["0.weight"] = want["0.weight"] + 1e-7
    _fail(lambda: check_state_dict(m, other, "from_torch", "h"))            # exact by default
    check_state_dict(m, other, "from_torch", "h", atol=1e-6)


def test_prerequisite_says_which_exercise_to_fix():
    prerequisite(lambda: None, "exercise 4 (split_heads)")
    message = _fail(lambda: prerequisite(lambda: check(False, "split_heads: shape", (1, 2), (2, 1), "h"),
                                         "exercise 4 (split_heads)"))
    assert message.startswith("this test uses your exercise 4 (split_heads)")
    assert "split_heads: shape" in message
    assert "fix exercise 4 (split_heads) first" in message
    long = "exercise 3 (" + "the attention weights of your CausalSelfAttention " * 4 + ")"
    _fail(lambda: prerequisite(lambda: check(False, "w" * 30 + " " + long, 1, 2, "h" * 200), long))


def test_substituted_restores_the_namespace():
    ns = {"softmax": "mine", "other": 1}
    with substituted(ns, softmax="reference", new_name="added"):
        assert ns == {"softmax": "reference", "other": 1, "new_name": "added"}
    assert ns == {"softmax": "mine", "other": 1}
    with pytest.raises(RuntimeError):
        with substituted(ns, softmax="reference", new_name="added"):
            raise RuntimeError
    assert ns == {"softmax": "mine", "other": 1}


# ---------------------------------------------------------------------------------------------
# 6. Oracles and the autograd context

def test_oracle_entries_are_pytorchs_own():
    assert ORACLE.softmax is torch.softmax
    assert ORACLE.log_softmax is torch.log_softmax
    assert ORACLE.layer_norm is F.layer_norm
    assert ORACLE.linear is F.linear
    assert ORACLE.gelu is F.gelu
    assert ORACLE.dropout is F.dropout
    assert ORACLE.scaled_dot_product_attention is F.scaled_dot_product_attention
    assert ORACLE.multi_head_attention_forward is F.multi_head_attention_forward
    assert ORACLE.MultiheadAttention is nn.MultiheadAttention
    assert ORACLE.LayerNorm is nn.LayerNorm
    assert ORACLE.grad is torch.autograd.grad
    assert ORACLE.gradcheck is torch.autograd.gradcheck
    for entry in ORACLE:
        assert getattr(entry, "__module__", "").startswith("torch"), entry


def test_oracle_cannot_be_reassigned():
    assert isinstance(ORACLE, tuple)
    with pytest.raises(AttributeError):
        ORACLE.softmax = lambda x, dim: x
    with pytest.raises(TypeError):
        ORACLE[0] = lambda x, dim: x
    assert ORACLE.softmax is torch.softmax


def test_oracle_still_works_after_a_switch_off():
    call(lambda: X.exp(), "w", "h", forbid=(SOFTMAX, NORMALIZATION, GELU, ATTENTION), autograd=False)
    p = ORACLE.softmax(torch.tensor([0.0, math.log(3.0)]), -1)
    torch.testing.assert_close(p, torch.tensor([0.25, 0.75]))


class _Square(torch.autograd.Function):
    """Written the way PyTorch's "Extending PyTorch" page writes a Function."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, grad):
        x, = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = 2 * x * grad
        return grad_x


def test_function_context_supports_the_extending_pytorch_idioms():
    x = torch.tensor([1.0, -2.0, 3.0])
    ctx = FunctionContext()
    y = call(lambda: _Square.forward(ctx, x), "forward", "h", autograd=False)
    assert y.tolist() == [1.0, 4.0, 9.0]
    assert len(ctx.saved_tensors) == 1 and ctx.saved_tensors[0] is x
    assert ctx.needs_input_grad == (True,)
    g = call(lambda: _Square.backward(ctx, torch.ones(3)), "backward", "h", autograd=False)
    assert g.tolist() == [2.0, -4.0, 6.0]
    ctx = FunctionContext(needs_input_grad=(False,))
    _Square.forward(ctx, x)
    assert _Square.backward(ctx, torch.ones(3)) is None
    ctx.mark_dirty(x)
    ctx.mark_non_differentiable(x)
    ctx.set_materialize_grads(False)
    ctx.save_for_forward(x)
    # and the same Function through real autograd agrees
    xr = x.clone().requires_grad_()
    _Square.apply(xr).sum().backward()
    assert xr.grad.tolist() == [2.0, -4.0, 6.0]


# ---------------------------------------------------------------------------------------------
# 7. Meters

def test_peak_memory_of_nothing_is_zero():
    assert peak_memory(lambda: None) == 0
    x = torch.ones(10)
    assert peak_memory(lambda: x.view(2, 5)[0]) == 0           # views of old tensors hold no new memory


def test_peak_memory_counts_what_is_alive_at_once():
    def one_at_a_time():
        a = torch.ones(100)
        del a
        b = torch.ones(100)
        return b

    def both():
        a = torch.ones(100)
        b = torch.ones(100)
        return a, b

    assert peak_memory(one_at_a_time) == 100 * 4
    assert peak_memory(both) == 2 * 100 * 4
    assert peak_memory(lambda: torch.ones(100, dtype=torch.float64)) == 100 * 8
    assert peak_memory(lambda: torch.ones(100, dtype=torch.bfloat16)) == 100 * 2


def test_peak_memory_of_scores_grows_four_times_per_doubling_of_t():
    d = 4
    peaks = []
    for T in (8, 16, 32, 64):
        q, k = torch.randn(T, d), torch.randn(T, d)
        peak = peak_memory(lambda: q @ k.T)
        assert peak == T * T * 4                   # one (T, T) float32 tensor
        peaks.append(peak)
    assert [b / a for a, b in zip(peaks, peaks[1:])] == [4.0, 4.0, 4.0]


class _Clock:
    """A fake time.perf_counter: time moves only when the measured function says so."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 100.0, list(durations), 0

    def __call__(self):
        return self.now

    def run(self):
        self.now += self.durations[self.calls]
        self.calls += 1


def test_best_time_is_the_fastest_run(monkeypatch):
    clock = _Clock([3.0, 1.0, 5.0, 2.0, 4.0])
    monkeypatch.setattr(time, "perf_counter", clock)
    assert best_time(clock.run, repeat=5) == 1.0
    assert clock.calls == 5
    clock = _Clock([7.0, 6.0])
    monkeypatch.setattr(time, "perf_counter", clock)
    assert best_time(clock.run, repeat=2) == 6.0


def test_median_time_skips_the_warmup(monkeypatch):
    clock = _Clock([1000.0, 5.0, 1.0, 4.0, 2.0, 3.0])      # the first run is the warmup
    monkeypatch.setattr(time, "perf_counter", clock)
    assert median_time(clock.run, repeat=5, warmup=1) == 3.0
    assert clock.calls == 6
    clock = _Clock([9.0, 9.0, 2.0, 8.0, 1.0])
    monkeypatch.setattr(time, "perf_counter", clock)
    assert median_time(clock.run, repeat=3, warmup=2) == 2.0


# ---------------------------------------------------------------------------------------------
# 8. Oracles of chapter 5 (the feed-forward network and the Transformer block), each against the
#    computation written out here with torch.nn.functional

from solutions.ch04_multihead import CausalSelfAttention  # noqa: E402
from solutions.ch05_block import BlockConfig  # noqa: E402
from solutions.testing import (ReferenceBlock, block_dropout_oracle, block_oracle, block_twin,  # noqa: E402
                               gelu_tanh, grad_norms_oracle, mlp_oracle, randomised, reference_mlp)


def _random_like(module, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * 0.3)
    return module


class _Container(nn.Module):
    """What the block oracles read: ln_1, attn (chapter 4's CausalSelfAttention, with dropout), ln_2, mlp."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.ln_1, self.ln_2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias), nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.mlp = reference_mlp(cfg)


def _written_out(b, x, norm_first, p_attn=0.0, p_mlp=0.0):
    """A block's forward by torch.nn.functional; dropout p_attn on the attention weights and output, p_mlp on
    the MLP's output, drawn in that order."""
    B, T, C = x.shape
    h = b.config.n_head
    train = p_attn > 0 or p_mlp > 0

    def ln(t, m):
        return F.layer_norm(t, (C,), m.weight, m.bias, 1e-5)

    def attn(t):
        q, k, v = (s.reshape(B, T, h, C // h).transpose(1, 2)
                   for s in F.linear(t, b.attn.c_attn.weight, b.attn.c_attn.bias).chunk(3, dim=-1))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p_attn, is_causal=True)
        y = F.linear(y.transpose(1, 2).reshape(B, T, C), b.attn.c_proj.weight, b.attn.c_proj.bias)
        return F.dropout(y, p_attn, training=train)

    def mlp(t):
        y = F.gelu(F.linear(t, b.mlp.c_fc.weight, b.mlp.c_fc.bias), approximate="tanh")
        return F.dropout(F.linear(y, b.mlp.c_proj.weight, b.mlp.c_proj.bias), p_mlp, training=train)

    with torch.no_grad():
        if norm_first:
            x = x + attn(ln(x, b.ln_1))
            return x + mlp(ln(x, b.ln_2))
        x = ln(x + attn(x), b.ln_1)
        return ln(x + mlp(x), b.ln_2)


def test_gelu_tanh_is_gpt2s_formula():
    x = torch.cat([torch.linspace(-8, 8, 161, dtype=torch.float64), torch.tensor([-1e4, 1e4], dtype=torch.float64)])
    want = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    torch.testing.assert_close(gelu_tanh(x), want, atol=1e-12, rtol=1e-12)
    assert torch.equal(gelu_tanh(x), F.gelu(x, approximate="tanh"))
    assert not torch.allclose(gelu_tanh(x), F.gelu(x), atol=1e-5)         # not the exact GELU


@pytest.mark.parametrize("bias", [True, False])
def test_reference_mlp_is_pytorchs_modules_with_gpt2s_names(bias):
    cfg = BlockConfig(d_model=12, n_head=3, d_ff=20, bias=bias, dropout=0.25)
    mlp = reference_mlp(cfg)
    assert [n for n, _ in mlp.named_children()] == ["c_fc", "gelu", "c_proj", "dropout"]
    assert type(mlp.gelu) is nn.GELU and mlp.gelu.approximate == "tanh"
    assert type(mlp.dropout) is nn.Dropout and mlp.dropout.p == 0.25
    shapes = [(n, tuple(p.shape)) for n, p in mlp.named_parameters()]
    assert shapes == ([("c_fc.weight", (20, 12)), ("c_fc.bias", (20,)), ("c_proj.weight", (12, 20)),
                       ("c_proj.bias", (12,))] if bias else [("c_fc.weight", (20, 12)), ("c_proj.weight", (12, 20))])
    mlp = _random_like(mlp, 1)
    x = torch.randn(2, 5, 12)
    want = F.linear(F.gelu(F.linear(x, mlp.c_fc.weight, mlp.c_fc.bias), approximate="tanh"), mlp.c_proj.weight,
                    mlp.c_proj.bias)
    with torch.no_grad():
        torch.testing.assert_close(mlp.eval()(x), want)
        torch.manual_seed(3)
        got = mlp.train()(x)
        torch.manual_seed(3)
        torch.testing.assert_close(got, F.dropout(want, 0.25, training=True))


@pytest.mark.parametrize("p, dtype", [(0.0, torch.float32), (0.3, torch.float32), (0.5, torch.float64)])
def test_mlp_oracle_is_the_written_out_mlp(p, dtype):
    mlp = _random_like(reference_mlp(BlockConfig(d_model=8, n_head=2, d_ff=12, dropout=p)).to(dtype), 2)
    x = torch.randn(3, 4, 8, dtype=dtype)
    want = F.linear(F.gelu(F.linear(x, mlp.c_fc.weight, mlp.c_fc.bias), approximate="tanh"), mlp.c_proj.weight,
                    mlp.c_proj.bias).detach()
    got = mlp_oracle(mlp, x)
    assert got.dtype == dtype and not got.requires_grad
    torch.testing.assert_close(got, want)
    for seed in (0, 1):
        torch.manual_seed(seed)
        got = mlp_oracle(mlp, x, training=True)
        torch.manual_seed(seed)
        torch.testing.assert_close(got, F.dropout(want, p, training=True))
        torch.manual_seed(seed)                                         # the module draws the same numbers
        torch.testing.assert_close(got, mlp.train()(x).detach())


_BLOCK_NAMES = {"ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias",
                "attn.c_attn.weight": "self_attn.in_proj_weight", "attn.c_attn.bias": "self_attn.in_proj_bias",
                "attn.c_proj.weight": "self_attn.out_proj.weight", "attn.c_proj.bias": "self_attn.out_proj.bias",
                "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
                "mlp.c_fc.weight": "linear1.weight", "mlp.c_fc.bias": "linear1.bias",
                "mlp.c_proj.weight": "linear2.weight", "mlp.c_proj.bias": "linear2.bias"}


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("bias, dtype", [(True, torch.float32), (False, torch.float64)])
def test_block_twin_holds_the_blocks_weights(bias, dtype, norm_first):
    cfg = BlockConfig(d_model=12, n_head=3, d_ff=20, bias=bias)
    b = _random_like(_Container(cfg).to(dtype), 3)
    layer = block_twin(b, norm_first=norm_first)
    assert type(layer) is nn.TransformerEncoderLayer and not layer.training
    assert layer.norm_first is norm_first and layer.self_attn.batch_first and layer.self_attn.num_heads == 3
    theirs, ours = layer.state_dict(), b.state_dict()
    assert set(theirs) == {_BLOCK_NAMES[n] for n in ours}
    for name, t in ours.items():
        assert theirs[_BLOCK_NAMES[name]].dtype == dtype and torch.equal(theirs[_BLOCK_NAMES[name]], t), name
    assert not {p.data_ptr() for p in layer.parameters()} & {p.data_ptr() for p in b.parameters()}
    # the twin runs GPT-2's GELU (the tanh form), not PyTorch's fused eval-mode path (exact GELU)
    x = torch.randn(2, 6, 12, dtype=dtype)
    mask = torch.ones(6, 6, dtype=torch.bool).triu(1)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, src_mask=mask), _written_out(b, x, norm_first))


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("B, T, d_model, n_head, d_ff, bias, dtype", [(1, 1, 4, 2, 16, True, torch.float32),
                                                                      (3, 9, 24, 6, 40, False, torch.float64),
                                                                      (2, 12, 16, 4, 7, True, torch.float32)])
def test_block_oracle_is_the_written_out_block(B, T, d_model, n_head, d_ff, bias, dtype, norm_first):
    b = _random_like(_Container(BlockConfig(d_model=d_model, n_head=n_head, d_ff=d_ff, bias=bias)).to(dtype), T)
    x = torch.randn(B, T, d_model, dtype=dtype)
    got = block_oracle(b, x, norm_first=norm_first)
    assert got.shape == (B, T, d_model) and got.dtype == dtype and not got.requires_grad
    torch.testing.assert_close(got, _written_out(b, x, norm_first))
    assert not torch.allclose(got, _written_out(b, x, not norm_first), atol=1e-3)


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("p", [0.0, 0.2, 0.5])
def test_block_dropout_oracle_draws_in_the_modules_order(p, norm_first):
    b = _random_like(_Container(BlockConfig(d_model=16, n_head=4, d_ff=24, dropout=p)), 4)
    x = torch.randn(2, 7, 16)
    for seed in (0, 1):
        got = block_dropout_oracle(b, x, seed, norm_first=norm_first)
        torch.manual_seed(seed)
        torch.testing.assert_close(got, _written_out(b, x, norm_first, p_attn=p, p_mlp=p))
    if p > 0:
        assert not torch.equal(block_dropout_oracle(b, x, 0, norm_first), block_dropout_oracle(b, x, 1, norm_first))
    else:
        torch.testing.assert_close(block_dropout_oracle(b, x, 0, norm_first), block_oracle(b, x, norm_first))


def test_reference_block_has_gpt2s_layout_and_the_written_out_forward():
    cfg = BlockConfig(d_model=16, n_head=4, d_ff=24, dropout=0.3)
    ref = ReferenceBlock(cfg)
    assert list(ref.state_dict()) == list(_BLOCK_NAMES)
    assert type(ref.attn) is CausalSelfAttention and ref.attn.config.n_head == 4
    assert ref.config is cfg and cfg.dropout == 0.3 and ref.mlp.dropout.p == 0.3    # the config is not changed
    assert list(ReferenceBlock(BlockConfig(d_model=8, n_head=2, bias=False)).state_dict()) == \
        [n for n in _BLOCK_NAMES if n.endswith("weight")]
    ref = randomised(ref, 5)
    x = torch.randn(2, 6, 16)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), _written_out(ref, x, True))
        torch.manual_seed(2)
        got = ref.train()(x)
        torch.manual_seed(2)
        torch.testing.assert_close(got, _written_out(ref, x, True, p_attn=ref.attn.config.dropout, p_mlp=0.3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grad_norms_oracle_is_the_per_block_norm_of_backward(dtype):
    torch.manual_seed(6)
    stack = [nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, dtype=dtype) for _ in range(3)]
    x = torch.randn(2, 5, 8, dtype=dtype)
    loss_fn = lambda y: (y[:, -1] ** 2).sum()                                 # noqa: E731
    got = grad_norms_oracle(stack, x, loss_fn)
    assert got.shape == (3,) and got.dtype == dtype
    assert all(p.grad is None for layer in stack for p in layer.parameters())
    y = x
    for layer in stack:
        y = layer(y)
    loss_fn(y).backward()
    want = torch.stack([torch.sqrt(sum((p.grad.double() ** 2).sum() for p in layer.parameters()))
                        for layer in stack]).to(dtype)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(grad_norms_oracle(nn.ModuleList(stack), x, loss_fn), want)


# ---------------------------------------------------------------------------------------------
# chapter 7's oracles

def test_gpt_oracle_is_gpt2lmheadmodel():
    transformers = pytest.importorskip("transformers")
    from solutions.ch07_gpt import from_hf_gpt2
    from solutions.testing import gpt_oracle
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=30, n_positions=12, n_embd=16, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)).eval()
    idx = torch.randint(0, 30, (2, 12))
    state = from_hf_gpt2(hf.state_dict())
    logits, kv = gpt_oracle(state, idx, 4, kv=True)
    with torch.no_grad():
        out = hf(idx, use_cache=True)
    torch.testing.assert_close(logits, out.logits, atol=1e-5, rtol=1e-5)
    assert len(kv) == 2 and kv[0][0].shape == (2, 4, 12, 4)
    # the keys of block 0 are c_attn's middle third, split into heads
    h = torch.nn.functional.layer_norm(hf.transformer.wte(idx) + hf.transformer.wpe.weight[:12], (16,),
                                       state["transformer.h.0.ln_1.weight"], state["transformer.h.0.ln_1.bias"])
    k = (h @ state["transformer.h.0.attn.c_attn.weight"][16:32].T + state["transformer.h.0.attn.c_attn.bias"][16:32])
    torch.testing.assert_close(kv[0][0], k.reshape(2, 12, 4, 4).transpose(1, 2).detach(), atol=1e-6, rtol=1e-6)


def test_filter_oracles_by_hand():
    from solutions.testing import top_k_oracle, top_p_oracle
    inf = float("-inf")
    z = torch.tensor([[1.0, 3.0, 2.0, 2.0]])
    assert torch.equal(top_k_oracle(z, 2), torch.tensor([[inf, 3.0, 2.0, 2.0]]))     # the tie kept
    assert torch.equal(top_k_oracle(z, 9), z)
    p = torch.tensor([0.1, 0.6, 0.3]).log()
    assert torch.equal(top_p_oracle(p, 0.5), torch.tensor([inf, p[1].item(), inf]))
    assert torch.equal(top_p_oracle(p, 0.61), torch.tensor([inf, p[1].item(), p[2].item()]))
    assert torch.equal(top_p_oracle(p, 1.0), p)
    assert top_k_oracle(torch.zeros(0, 5), 2).shape == (0, 5)


def test_gpt_skeleton_has_a_gpts_parameters_and_ties_lm_head():
    from solutions.ch07_gpt import GPT, GPTConfig
    from solutions.testing import gpt2_names, gpt_skeleton, random_gpt_state
    for bias in (True, False):
        cfg = GPTConfig(vocab_size=20, block_size=6, d_model=8, n_head=2, n_layer=3, d_ff=10, bias=bias)
        sk, model = gpt_skeleton(cfg), GPT(cfg)
        assert [(k, p.shape) for k, p in sk.named_parameters()] == [(k, p.shape) for k, p in model.named_parameters()]
        assert sk.lm_head.weight is sk.transformer.wte.weight and sk.config is cfg
        assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == gpt2_names(cfg)
        state = random_gpt_state(cfg, torch.Generator().manual_seed(0))
        assert state["lm_head.weight"] is state["transformer.wte.weight"]


def test_tiny_lm_records_its_calls_and_refuses_a_long_context():
    from solutions.testing import TinyLM, generate_oracle
    model = TinyLM(12, 4)
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 5, dtype=torch.long))
    model.train()
    out = generate_oracle(model, torch.zeros(2, 3, dtype=torch.long), 4, temperature=0)
    assert out.shape == (2, 7) and model.training
    assert [c[2] for c in model.calls[1:]] == [3, 4, 4, 4] and all(not c[0] and not c[1] for c in model.calls[1:])
