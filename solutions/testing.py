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
thread or starts a process.
"""
from __future__ import annotations

import _thread
import contextlib
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
import types
import weakref
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = ["ORACLE", "SOFTMAX", "NORMALIZATION", "GELU", "ATTENTION", "Forbidden", "FunctionContext",
           "best_time", "call", "check", "check_close", "check_raises", "check_state_dict", "check_tensor",
           "check_untouched", "median_time", "peak_memory", "prerequisite", "substituted", "switched_off",
           # chapter 4
           "ReferenceMultiHeadAttention", "causal_dropout_oracle", "causal_oracle", "causal_twin", "from_torch_state",
           "oracle_head_weights", "randomised", "run_oracle", "seeded", "torch_mask", "torch_mha", "twin"]

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
    grad: Callable
    gradcheck: Callable


ORACLE = _Oracle(softmax=torch.softmax, log_softmax=torch.log_softmax, layer_norm=F.layer_norm, linear=F.linear,
                 gelu=F.gelu, dropout=F.dropout, scaled_dot_product_attention=F.scaled_dot_product_attention,
                 multi_head_attention_forward=F.multi_head_attention_forward,
                 MultiheadAttention=nn.MultiheadAttention, LayerNorm=nn.LayerNorm,
                 grad=torch.autograd.grad, gradcheck=torch.autograd.gradcheck)


# ---------------------------------------------------------------------------------------------
# Switch-off: families of PyTorch operations refused while one call of the learner's code runs.
#
# A family is a list of name fragments; an operation belongs to it when its name, lower-cased and
# without underscores, contains one of them. So "softmax" also refuses _softmax, _safe_softmax,
# _masked_softmax, log_softmax, softmax_backward_data and nn.Softmax, at every level.

SOFTMAX = ("softmax",)
NORMALIZATION = ("layernorm", "groupnorm", "batchnorm", "instancenorm", "rmsnorm", "normalize",
                 "localresponsenorm")
GELU = ("gelu",)
ATTENTION = ("attention", "transformer", "sdpa", "flash", "multihead")

# What "autograd switched off" refuses by name, besides the state checks (grad mode, forward-mode
# AD, a running backward pass, functorch transforms): reverse and forward mode, and the engine.
# (Switching grad mode on is not refused by name, since torch.no_grad uses the same function;
# any operation that runs with grad mode on is refused instead.) torch.ops.aten is not patched:
# the dispatch mode sees those calls, and no other thread may run.
_AUTOGRAD_NAMES = {"grad", "backward", "requiresgrad", "jacobian", "hessian",
                   "jvp", "vjp", "jacfwd", "jacrev", "hvp", "vhp", "makedual", "unpackdual", "duallevel",
                   "enterduallevel", "setfwdgradenabled", "runbackward", "executionengine", "gradcheck", "gradgradcheck", "vmap", "linearize", "functionalcall"}
_AUTOGRAD_FRAGMENTS = ("backward", "jacobian", "hessian", "dual", "fwgrad", "fwprimal")


def _key(name):
    return str(name).lower().replace("_", "")


def _in_family(name, fragments):
    k = _key(name)
    return any(f in k for f in fragments)


def _autograd_name(name):
    k = _key(name)
    return k in _AUTOGRAD_NAMES or any(f in k for f in _AUTOGRAD_FRAGMENTS)


class Forbidden(AssertionError):
    """Raised when the learner's code reaches an operation that the exercise switches off."""


def _refusal(name, why="this exercise asks you to build it yourself"):
    return Forbidden(f"{name} is switched off while this test runs: {why}. "
                     "Use elementary operations instead.")


def _namespaces():
    """Where Python code finds PyTorch's functions and classes."""
    import torch.autograd.forward_ad
    import torch.autograd.functional
    import torch.func
    import torch.special
    spaces = [torch, F, torch.special, torch.linalg, torch.nn, torch.nn.modules, torch.autograd,
              torch.autograd.functional, torch.autograd.forward_ad, torch.func, torch._C._nn,
              torch._C._special, torch._VF, torch.nn.modules.activation, torch.nn.modules.normalization,
              torch.nn.modules.batchnorm, torch.nn.modules.transformer, torch.autograd.variable.Variable,
              torch.autograd.graph]
    return [s for s in spaces if s is not None]


_TARGETS = {}        # (families, autograd) -> [(owner, name)], computed once per combination


def _targets(fragments, autograd):
    key = (fragments, autograd)
    if key not in _TARGETS:
        def wanted(name):
            return (fragments and _in_family(name, fragments)) or (not autograd and _autograd_name(name))

        found = []
        for space in _namespaces() + [torch.Tensor]:
            for name in list(vars(space)) if isinstance(space, type) else dir(space):
                if name.startswith("__") or not wanted(name):
                    continue
                if isinstance(getattr(space, name, None), types.ModuleType):
                    continue            # a module is not refused; the functions in it are
                if space is torch.Tensor:
                    v = getattr(torch.Tensor, name, None)
                    if not callable(v) or isinstance(v, (property, type)):
                        continue
                found.append((space, name))
        # Tensor methods live on the C base class: shadow them on torch.Tensor
        for name in dir(torch._C.TensorBase):
            if not name.startswith("__") and wanted(name) and (torch.Tensor, name) not in found:
                v = getattr(torch._C.TensorBase, name, None)
                if callable(v) and not isinstance(v, type) and type(v).__name__ != "getset_descriptor":
                    found.append((torch.Tensor, name))
        _TARGETS[key] = found
    return _TARGETS[key]


def _stub(name, why, state):
    def refused(*args, **kwargs):
        state.refuse(name, why)
    refused.__name__ = refused.__qualname__ = f"switched_off_{name}"
    return refused


class _Replaced:
    """Replace attributes for the duration of a block, and put every one of them back afterwards."""

    def __init__(self):
        self.saved = []

    def put(self, owner, name, value):
        try:
            had = name in vars(owner)
            old = vars(owner)[name] if had else None
            setattr(owner, name, value)
        except (AttributeError, TypeError):
            return
        self.saved.append((owner, name, had, old))

    def restore(self):
        for owner, name, had, old in reversed(self.saved):
            with contextlib.suppress(AttributeError, TypeError):
                if had:
                    setattr(owner, name, old)
                else:
                    delattr(owner, name)
        self.saved.clear()


# Operator namespaces of PyTorch itself. An operator of any other namespace was registered by the
# learner's code (torch.library.custom_op, torch.library.Library): its Python body would run
# while the guards are paused (a mode steps aside while it runs the function it was given).
_TORCH_NAMESPACES = {"aten", "prims", "profiler", "quantized", "_quantized", "mkldnn", "mkl", "higher_order",
                     "debugprims", "rngprims", "_c10d_functional", "c10d", "_prims", "inductor"}


def _check_namespace(state, func):
    ns = getattr(func, "namespace", None)
    if isinstance(func, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)) and ns not in _TORCH_NAMESPACES:
        state.refuse(f"the custom operator {ns}::{func.__name__}",
                     "an exercise may not register operators of its own")


class _FunctionGuard(TorchFunctionMode):
    def __init__(self, state):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.state.check_name(getattr(func, "__name__", ""))
        _check_namespace(self.state, func)
        return func(*args, **(kwargs or {}))


class _DispatchGuard(TorchDispatchMode):
    def __init__(self, state):
        super().__init__()
        self.state = state

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.state.check_name(func.overloadpacket.__name__)
        _check_namespace(self.state, func)
        if not self.state.autograd:
            self.state.check_autograd_state(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _threads():
    return set(sys._current_frames())


_BASELINE_THREADS = _threads()       # the threads of the process before any learner code ran


class _State:
    def __init__(self, fragments, autograd):
        self.fragments, self.autograd = fragments, autograd
        self.refused = []

    def refuse(self, name, why):
        self.refused.append(name)
        raise _refusal(name, why)

    def check_name(self, name):
        if self.fragments and _in_family(name, self.fragments):
            self.refuse(name, "this exercise asks you to build it yourself")
        if not self.autograd and _autograd_name(name):
            self.refuse(name, "this exercise asks for gradients computed by hand, without autograd")

    def check_autograd_state(self, op):
        why = "this exercise asks for gradients computed by hand, without autograd"
        if torch.is_grad_enabled():
            self.refuse(f"autograd (grad mode was switched on before {op})", why)
        if torch._C._is_fwd_grad_enabled():
            self.refuse(f"forward-mode AD (switched on before {op})", why)
        if torch._C._current_graph_task_id() != -1:
            self.refuse(f"autograd's backward pass (it ran {op})", why)
        if torch._C._functorch.peek_interpreter_stack() is not None:
            self.refuse(f"a torch.func transform (it ran {op})", why)


def _no_threads_or_processes(replaced, state):
    """Make starting a thread or a process fail, for the duration of the block."""
    why = "the exercise's code must run in the calling thread and process"

    def refuse(name):
        def refused(*args, **kwargs):
            state.refused.append(name)
            raise Forbidden(f"{name} is refused while this test runs: {why}.")
        return refused

    replaced.put(threading.Thread, "start", refuse("starting a thread"))
    for name in ("start_new_thread", "start_new", "start_joinable_thread"):
        if hasattr(_thread, name):
            replaced.put(_thread, name, refuse("starting a thread"))
    for name in ("_start_new_thread", "_start_joinable_thread"):     # threading's own copies, which a
        if hasattr(threading, name):                                 # Thread.start saved earlier calls
            replaced.put(threading, name, refuse("starting a thread"))
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "spawnv", "spawnve", "execv", "execve",
                 "system", "popen"):
        if hasattr(os, name):
            replaced.put(os, name, refuse(f"os.{name}"))
    replaced.put(subprocess.Popen, "__init__", refuse("starting a process"))
    with contextlib.suppress(ImportError):
        import _posixsubprocess
        replaced.put(_posixsubprocess, "fork_exec", refuse("starting a process"))


_KERNEL_MODULES = ("zmq.", "ipykernel.", "IPython.", "jupyter_client.", "tornado.")


def _kernel_thread_classes():
    """The thread classes of Jupyter's machinery that start lazily (zmq starts a garbage-collector
    thread with the first large output, a plot), with their run() as the library defines it."""
    found = {}
    with contextlib.suppress(Exception):
        from zmq.utils.garbage import GarbageCollectorThread
        found[GarbageCollectorThread] = GarbageCollectorThread.run
    return found


_KERNEL_THREAD_CLASSES = _kernel_thread_classes()


def _kernel_thread(thread):
    """One of those threads: exactly that class (not a subclass or a look-alike), its own run()."""
    cls = type(thread)
    return (cls in _KERNEL_THREAD_CLASSES and cls.run is _KERNEL_THREAD_CLASSES[cls]
            and "run" not in vars(thread) and getattr(thread, "_target", None) is None)


_ACTIVE = []     # the states of the switch-offs in progress (the innermost last)
_PROCESS_EVENTS = ("os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                   "os.startfile", "subprocess.Popen",
                   # a foreign function called through ctypes (pthread_create, a C library)
                   "ctypes.call_function", "ctypes.dlopen", "ctypes.dlsym")


def _audit(event, args):
    """Python's audit hook (sys.addaudithook): it sees every fork, exec, spawn and ctypes call,
    however the function that does it was reached (a reference taken before the call included)."""
    if _ACTIVE and event in _PROCESS_EVENTS:
        _ACTIVE[-1].refused.append(event)
        raise Forbidden(f"{event} is refused while this test runs: the exercise's code must run in the "
                        "calling thread and process.")


sys.addaudithook(_audit)       # once per process; it does nothing unless a switch-off is active


def _foreign_threads():
    me = threading.get_ident()
    kernel = {t.ident for t in threading.enumerate() if _kernel_thread(t)}
    return sorted(t for t in _threads() - _BASELINE_THREADS if t != me and t not in kernel)


def _thread_names(idents):
    names = {t.ident: t.name for t in threading.enumerate()}
    return ", ".join(names.get(i, f"thread {i}") for i in idents)


@contextlib.contextmanager
def switched_off(*families, autograd=True):
    """While the block runs, the operations of the given families are refused (each family is a
    tuple of name fragments, e.g. SOFTMAX), and with autograd=False autograd in every mode too:
    grad mode and forward-mode AD start off, and turning them back on, a backward pass or a
    torch.func transform fails. Threads and processes cannot be started, and the block fails if a
    thread that the learner's code started earlier is still running."""
    fragments = tuple(sorted({_key(f) for family in families for f in ((family,) if isinstance(family, str)
                                                                          else family)}))
    state = _State(fragments, autograd)
    foreign = _foreign_threads()
    if foreign:
        raise Forbidden(f"another thread is running ({_thread_names(foreign)}): the exercise's code must "
                        "run in the calling thread only. Stop the threads your code started, then "
                        "restart the kernel and run the notebook again.")
    replaced = _Replaced()
    grad, fwd = torch.is_grad_enabled(), torch._C._is_fwd_grad_enabled()
    fmode, dmode = _FunctionGuard(state), _DispatchGuard(state)
    try:
        for owner, name in _targets(fragments, autograd):
            why = ("this exercise asks you to build it yourself" if fragments and _in_family(name, fragments)
                   else "this exercise asks for gradients computed by hand, without autograd")
            value = getattr(owner, name, None)
            replaced.put(owner, name, _stub(name, why, state))
            if isinstance(value, type):     # a class: refuse it under any name (an alias, ORACLE.X) too
                replaced.put(value, "__init__", _stub(name, why, state))
        _no_threads_or_processes(replaced, state)
        if not autograd:
            torch._C._set_grad_enabled(False)
            torch._C._set_fwd_grad_enabled(False)
        outermost = not _ACTIVE
        _ACTIVE.append(state)
        # The profiler records every operator the dispatcher runs in this thread, even with the
        # function and dispatch modes switched off by the learner's code.
        prof = _QuietProfiler() if outermost else contextlib.nullcontext()
        with prof, fmode, dmode:
            yield state
            _check_still_on(fmode, dmode)
        if outermost:
            _check_profile(state, prof)
    finally:
        if state in _ACTIVE:
            _ACTIVE.remove(state)
        replaced.restore()
        torch._C._set_grad_enabled(grad)
        torch._C._set_fwd_grad_enabled(fwd)
    foreign = _foreign_threads()
    if foreign:
        raise Forbidden(f"a thread was started while the test ran ({_thread_names(foreign)}): the exercise's "
                        "code must run in the calling thread only.")
    if state.refused:
        raise Forbidden(f"your code used {state.refused[0]}, which this exercise switches off "
                        "(the error was caught inside your code, but the test saw it).")


@contextlib.contextmanager
def _quiet_stderr():
    """PyTorch's C++ profiler logs a line to the process's stderr when it starts and stops; in a
    notebook that line would land in the cell's output. Send file descriptor 2 elsewhere meanwhile."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    os.dup2(null, 2)
    os.close(null)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _QuietProfiler(torch.autograd.profiler.profile):
    def __init__(self):
        super().__init__(use_kineto=False)

    def __enter__(self):
        with _quiet_stderr():
            return super().__enter__()

    def __exit__(self, *exc):
        with _quiet_stderr():
            return super().__exit__(*exc)


def _check_profile(state, prof):
    """Refuse what the profiler saw: a switched-off aten operator, or autograd's engine."""
    if state.refused:          # already refused (and reported after the block)
        return
    seen = None
    for name in sorted({e.name for e in prof.function_events}):
        op = name[len("aten::"):] if name.startswith("aten::") else None
        if op and state.fragments and _in_family(op, state.fragments):
            seen = op
        elif op and not state.autograd and _in_family(op, _AUTOGRAD_FRAGMENTS):
            seen = op
        elif not state.autograd and name.startswith("autograd::engine"):
            seen = "autograd's engine"
        if seen:
            state.refused.append(seen)
            raise Forbidden(f"your code used {seen}, which this exercise switches off (PyTorch's profiler "
                            "saw it run, although the test's guards were switched off or bypassed).")


def _check_still_on(fmode, dmode):
    from torch.overrides import _get_current_function_mode_stack
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack, _push_mode
    gone_f = fmode not in _get_current_function_mode_stack()
    gone_d = dmode not in _get_current_dispatch_mode_stack()
    if gone_f:                      # put a popped mode back, so that leaving the block can pop it
        torch._C._push_on_torch_function_stack(fmode)
    if gone_d:
        _push_mode(dmode)
    if gone_f or gone_d:
        raise Forbidden("the test's switch-off was removed while your code ran; don't change PyTorch's "
                        "function or dispatch modes in an exercise.")


# ---------------------------------------------------------------------------------------------
# Calling the learner's code

def _guarded(forbid, autograd):
    """The switch-off a call asks for (forbid: a family or families), or nothing."""
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


@contextlib.contextmanager
def substituted(namespace, **names):
    """Give names in a namespace (a notebook's globals()) other values for the block: a hidden test
    grades exercise N on its own by running it on correct versions of exercises before N."""
    missing = object()
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


class FunctionContext:
    """Stands in for the `ctx` autograd passes to a torch.autograd.Function, so that a test can call
    forward and backward directly (with autograd switched off)."""

    def __init__(self, needs_input_grad=(True,)):
        self.needs_input_grad = tuple(needs_input_grad)
        self.saved_tensors = ()
        self.materialize_grads = True

    def save_for_backward(self, *tensors):
        self.saved_tensors = tensors

    def save_for_forward(self, *tensors):
        pass

    def mark_dirty(self, *tensors):
        pass

    def mark_non_differentiable(self, *tensors):
        pass

    def set_materialize_grads(self, value):
        self.materialize_grads = bool(value)


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


def causal_dropout_oracle(ours, x, seed):
    """What the CausalSelfAttention `ours` computes in training mode after torch.manual_seed(seed),
    with p = ours.config.dropout: c_attn, split into heads, ORACLE's attention with dropout_p=p and
    is_causal=True, merge, c_proj, then dropout p. The random numbers are drawn in the same order
    as the module draws them, so the result is the same up to rounding."""
    p, h = ours.config.dropout, ours.config.n_head
    B, T, C = x.shape
    with torch.no_grad():
        torch.manual_seed(seed)
        qkv = ORACLE.linear(x, ours.c_attn.weight, ours.c_attn.bias)
        q, k, v = (t.reshape(B, T, h, C // h).transpose(1, 2) for t in qkv.split(C, dim=-1))
        y = ORACLE.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = ORACLE.linear(y.transpose(1, 2).reshape(B, T, C), ours.c_proj.weight, ours.c_proj.bias)
        return ORACLE.dropout(y, p, training=True)
