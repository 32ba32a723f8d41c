"""Switch-off: families of PyTorch operations refused while one call of the learner's code runs.

Part of the course's test machinery (solutions/testing.py re-exports everything here). It lives on
its own because it runs in two places: in the learner's own kernel around each call the visible
tests make, and, at grading time, in the sandboxed worker around each call the judge makes
(tools/worker.py); the worker sees this module but not the tests or their oracles.
"""
from __future__ import annotations

import _thread
import contextlib
import importlib
import os
import subprocess
import sys
import threading
import types

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["SOFTMAX", "NORMALIZATION", "GELU", "ATTENTION", "EMBEDDING", "LOOKUP", "Forbidden", "FunctionContext", "switched_off"]

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
EMBEDDING = ("embedding",)
# every way of reading rows of a tensor by position: indexing, gathering, selecting, splitting
LOOKUP = ("embedding", "index", "gather", "take", "select", "unbind", "split", "chunk", "narrow", "slice",
          "unfold")

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
    # PyTorch's Python references and decompositions: they compute an operation (gelu, layer_norm)
    # out of elementwise ones, so neither mode sees the operation's own name
    for name in ("torch._refs", "torch._refs.nn.functional", "torch._refs.special", "torch._decomp.decompositions"):
        with contextlib.suppress(ImportError):
            spaces.append(importlib.import_module(name))
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


_PY_SPACES = ("torch._refs", "torch._decomp")       # pure-Python implementations: see _code_stub


def _code_stub(fn, name):
    """A code object that refuses `name`, with as many free variables as fn's own: swapped into a
    Python function of PyTorch's references for the block, it also refuses a reference to that
    function that the learner's code took before the block began."""
    cells = [f"_c{i}" for i in range(len(fn.__code__.co_freevars))]
    src = ["def _outer():", *[f"    {c} = None" for c in cells], "    def _refused(*args, **kwargs):"]
    if cells:
        src.append("        (" + ", ".join(cells) + ",)")
    src += ["        import solutions.guard", f"        solutions.guard._refuse_now({name!r})", "    return _refused"]
    ns = {}
    exec("\n".join(src), ns)
    return ns["_outer"]().__code__


_DECOMPOSITIONS = {}


def _decompositions(fragments):
    """The Python decompositions of PyTorch's operators of the families (torch._decomp's table)."""
    if fragments not in _DECOMPOSITIONS:
        found = []
        with contextlib.suppress(Exception):
            from torch._decomp import decomposition_table
            for op, fn in decomposition_table.items():
                op_name = str(getattr(op, "__name__", op)).split(".")[0]
                if _in_family(op_name, fragments):
                    found.append((op_name, fn))
        _DECOMPOSITIONS[fragments] = found
    return _DECOMPOSITIONS[fragments]


def _refuse_now(name):
    state = _ACTIVE[-1] if _ACTIVE else None
    if state is None:
        raise _refusal(name)
    state.refuse(name, "this exercise asks you to build it yourself")


class _Replaced:
    """Replace attributes for the duration of a block, and put every one of them back afterwards."""

    def __init__(self):
        self.saved = []
        self.codes = {}          # id(function) -> (function, its own code)

    def put_code(self, fn, name):
        """Swap the code of fn, and of every function it wraps (__wrapped__), for a refusal."""
        for _ in range(16):
            if not isinstance(fn, types.FunctionType):
                return
            if id(fn) not in self.codes:
                with contextlib.suppress(ValueError, TypeError):
                    code = fn.__code__
                    fn.__code__ = _code_stub(fn, name)
                    self.codes[id(fn)] = (fn, code)
            fn = getattr(fn, "__wrapped__", None)

    def put(self, owner, name, value):
        try:
            had = name in vars(owner)
            old = vars(owner)[name] if had else None
            setattr(owner, name, value)
        except (AttributeError, TypeError):
            return
        self.saved.append((owner, name, had, old))

    def restore(self):
        for fn, code in self.codes.values():
            fn.__code__ = code
        self.codes.clear()
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
            own_init = vars(value).get("__init__") if isinstance(value, type) else None
            replaced.put(owner, name, _stub(name, why, state))
            if isinstance(value, type):     # a class: refuse it under any name (an alias, ORACLE.X) too
                replaced.put(value, "__init__", _stub(name, why, state))
            # Python code of PyTorch's that computes a family's operation, also when the learner's
            # code took a reference to it before the call: a reference (torch._refs), a class's
            # own __init__
            if fragments and _in_family(name, fragments):
                if getattr(owner, "__name__", "").startswith(_PY_SPACES):
                    replaced.put_code(value, name)
                replaced.put_code(own_init, name)
        for op_name, fn in _decompositions(fragments):          # ... and a decomposition (torch._decomp)
            replaced.put_code(fn, op_name)
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
# A stand-in for autograd's ctx (the grading channel passes it by value: tools/worker.py has it too)

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
