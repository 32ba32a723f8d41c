"""The judge/worker channel (solutions/channel.py) between two real endpoints.

The worker's end runs in a subprocess (`python -c WORKER_SERVER`, the loop of tools/worker.py's
main) over one end of a `socket.socketpair()`, on a namespace of small functions (WORKER_CODE);
the judge's end (strict=True, as in tools/judge.py) runs here. Each test checks one of the
channel's promises: value round trips, hostile input to the judge's decode, the strict policy,
gradients through the bridge, in-place changes, RNG / grad mode / default dtype, exceptions,
handle identity and release, and the cost of one call (printed; see `pytest -s`).

Hostile input is sent by a fake worker (a thread on a raw socket) so that every byte is ours.
"""
from __future__ import annotations

import builtins
import dataclasses
import gc
import io
import json
import math
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from solutions import channel
from solutions.channel import ChannelError, Endpoint, RemoteError, _Walk, name_ref, recv_frame, send_frame
from solutions.guard import Forbidden, FunctionContext

ROOT = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- the worker

WORKER_CODE = r'''
import builtins, dataclasses, gc, weakref
import torch, torch.nn as nn
from solutions import channel
from solutions.guard import Forbidden, FunctionContext

def echo(x):
    return x

def noop(*args, **kwargs):
    return None

def describe(x):
    return {"dtype": x.dtype, "shape": x.shape, "stride": x.stride(), "contiguous": x.is_contiguous(),
            "requires_grad": x.requires_grad, "param": isinstance(x, nn.Parameter), "leaf": x.is_leaf,
            "device": x.device, "grad": None if x.grad is None else x.grad.detach().clone()}

def square(x):
    return x * x

def init_normal(module, std):
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.normal_(0.0, std)
    return [name for name, _ in module.named_parameters()]

def set_mode(module, training):
    module.train(training)

def draw(n, generator=None):
    return torch.multinomial(torch.ones(10), n, replacement=True, generator=generator)

def cube(x):
    return x ** 3

torch.manual_seed(1)
lin = nn.Linear(3, 2)
drop = nn.Dropout(0.25)

def get_lin():
    return lin

def get_drop():
    return drop

def lin_weight():
    return lin.weight.detach().clone()

def zero_lin_grad():
    lin.zero_grad(set_to_none=True)

def inc(x):
    x.add_(1)

def append_to_each(seqs, x):
    for s in seqs:
        s.append(x)

def rebuild(d):
    d.pop("a")
    d["b"] = [d["b"], (2, 3)]

def set_seed(seed):
    torch.manual_seed(seed)


def rand(*shape):
    return torch.rand(*shape)

def grad_enabled():
    return torch.is_grad_enabled()

def default_dtype():
    return torch.get_default_dtype()

def ones():
    return torch.ones(2)

def call(fn, *args, **kwargs):
    return fn(*args, **kwargs)

def call_no_grad(fn):
    with torch.no_grad():
        return fn()

def use_callback(cb, x):
    return cb(x * 2) * 3

def _attempt(action):
    try:
        action()
        return ("ok", False, "")
    except Exception as err:
        return (type(err).__name__, isinstance(err, PermissionError), str(err))

def probe(fn):
    """What the learner's code may do with a function of the judge's."""
    return {"call": _attempt(lambda: fn(2)),
            "getattr": _attempt(lambda: fn.secret),
            "getattr_name": _attempt(lambda: fn.__name__),
            "setattr": _attempt(lambda: setattr(fn, "x", 1)),
            "vars": _attempt(lambda: vars(fn)),
            "op": _attempt(lambda: fn + 1),
            "getitem": _attempt(lambda: fn[0]),
            "repr": _attempt(lambda: repr(fn))}

def forge(ref):
    """A handle the judge never gave: a name in its namespace or an id it never sent."""
    return _attempt(lambda: channel.Remote(EP, ref, "name")())

class Oops(Exception):
    pass

def fail(kind, msg):
    cls = {"Oops": Oops, "Forbidden": Forbidden}.get(kind) or getattr(builtins, kind)
    raise cls(msg)

def exception_value():
    return ValueError("as a value")

class Thing:
    pass

thing = Thing()
made = []

def get_thing():
    return thing

def make():
    t = Thing()
    made.append(weakref.ref(t))
    return t

def made_alive():
    gc.collect()
    return [r() is not None for r in made]

def exported(hid):
    return hid in EP.exports

def ctx_forward(ctx, x):
    ctx.save_for_backward(x)
    ctx.scale = 3
    return (type(ctx) is FunctionContext, x * 3)

def bump_module(m):
    with torch.no_grad():
        m.weight.add_(1)
    return (type(m) is nn.Linear, type(m).__name__)

def grads_of(m):
    return {k: None if p.grad is None else p.grad.clone() for k, p in m.named_parameters()}

def backward_through(m, x):
    m(x).sum().backward()

def clear_grads(m):
    m.zero_grad(set_to_none=True)

def run_mirror(m, x):
    with torch.no_grad():
        m.lin.weight.zero_()
    return (type(m).__name__, m(x), sorted(n for n, _ in m.named_parameters()), m.scale)

@dataclasses.dataclass
class Cfg:
    a: int
    b: str = "x"

def make_cfg():
    return Cfg(1, "y")

def read_cfg(c):
    return (type(c) is Cfg, c.a, c.b)

def gen():
    return (i * i for i in range(4))

def opaque():
    return object()
'''

WORKER_SERVER = r'''
import os, socket, sys
import torch
from solutions import channel
from solutions.guard import Forbidden, FunctionContext
torch.set_num_threads(1)
sock = socket.socket(fileno=int(sys.argv[1]))
ns = {"__name__": "__main__"}
exec(compile(sys.argv[2], "<worker namespace>", "exec"), ns)
ep = channel.Endpoint(sock, namespace=ns, records=(FunctionContext,), errors={"Forbidden": Forbidden})
ns["EP"] = ep
ep.serve_forever()
os._exit(0)
'''


@dataclasses.dataclass
class Cfg:                       # the judge's twin of the worker's dataclass
    a: int
    b: str = "x"


class Worker:
    def __init__(self):
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER_SERVER, str(theirs.fileno()), WORKER_CODE],
                                     pass_fds=(theirs.fileno(),), cwd=ROOT, env=env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        theirs.close()
        self.sock = ours
        self.ep = Endpoint(ours, strict=True, errors={"Forbidden": Forbidden}, records=(FunctionContext,))
        self.ep.dataclasses["Cfg"] = Cfg

    def alive(self):
        return self.proc.poll() is None and not self.ep.broken

    def close(self):
        self.sock.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def worker_box():
    box = {"w": Worker()}
    yield box
    box["w"].close()


@pytest.fixture
def ep(worker_box):
    """The judge's endpoint to a live worker (a fresh one if an earlier test broke the channel)."""
    if not worker_box["w"].alive():
        worker_box["w"].close()
        worker_box["w"] = Worker()
    ep = worker_box["w"].ep
    ep.deadline = time.monotonic() + 60          # a hang fails the test instead of the run
    grad, dtype = torch.is_grad_enabled(), torch.get_default_dtype()
    yield ep
    torch.set_grad_enabled(grad)
    torch.set_default_dtype(dtype)
    ep.deadline = None


@pytest.fixture
def W(ep):
    return lambda name: name_ref(ep, name)


# ----------------------------------------------------------------------------- round trips

def same_value(a, b):
    """Equal, of the same types all the way down (nan equals nan, -0.0 is not 0.0)."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b)), (a, b)
    elif isinstance(a, complex):
        same_value(a.real, b.real)
        same_value(a.imag, b.imag)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same_value(x, y)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            same_value(a[k], b[k])
    elif isinstance(a, slice):
        same_value((a.start, a.stop, a.step), (b.start, b.stop, b.step))
    elif isinstance(a, torch.Tensor):
        same_tensor(a, b)
    else:
        assert a == b, (a, b)


def same_tensor(a, b, strides=True):
    assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
    if strides:
        assert a.stride() == b.stride()
    if a.device.type != "meta":
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=0, equal_nan=True)


VALUES = {
    "none": None, "true": True, "false": False, "zero": 0, "negative": -7, "big int": 2**100,
    "float": 1.5, "negative zero": -0.0, "nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"),
    "tiny": 5e-324, "complex": complex(1.5, -2), "complex nan inf": complex(float("nan"), float("inf")),
    "empty str": "", "unicode": "h\u00e9llo \u2603 \n\t \"q\" \\ \U0001f600",
    "nested list": [1, [2, [3, [4, []]]]], "tuple": (1, (2.5, "x"), ()), "empty tuple": (),
    "dict": {"a": 1, 2: "b", (1, 2): [3, {"c": None}], None: (True,)},
    "size": torch.Size([2, 3]), "empty size": torch.Size([]),
    "dtypes": [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
               torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool],
    "devices": [torch.device("cpu"), torch.device("meta"), torch.device("cuda:1")],
    "slices": [slice(1, None, -2), slice(None), slice(-3, 4)], "ellipsis": Ellipsis,
    "mixed": {"k": (slice(None, 2), Ellipsis, torch.Size([1]), [float("nan"), complex(0, 1)])},
}


@pytest.mark.parametrize("name", VALUES)
def test_value_round_trip(W, name):
    value = VALUES[name]
    back = W("echo")(value)
    same_value(value, back)
    if value is Ellipsis:
        assert back is Ellipsis


def _tensors():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g)
    return {
        "bool": torch.tensor([[True, False], [False, True]]),
        "uint8": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "int8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "int16": torch.tensor([-3, 30000], dtype=torch.int16),
        "int32": torch.tensor([1, -2**31], dtype=torch.int32),
        "int64": torch.tensor([2**62, -1]),
        "float16": torch.tensor([1.5, -0.0, float("inf"), float("nan")], dtype=torch.float16),
        "bfloat16": torch.tensor([1.5, -3.0, float("nan")], dtype=torch.bfloat16),
        "float32": x,
        "float64": x.double() / 3,
        "complex64": torch.complex(x, -x),
        "complex128": torch.complex(x.double(), x.double() * 2),
        "0-d": torch.tensor(3.25),
        "0-d int": torch.tensor(7),
        "empty": torch.empty(0, 3),
        "empty 1-d": torch.empty(0, dtype=torch.int64),
        "meta": torch.empty(2, 5, device="meta"),
        "transposed": x.t(),
        "transposed complex": torch.complex(x, x).t(),
        "sliced": torch.arange(20.)[2:17:3],
        "permuted 3-d": torch.arange(24.).reshape(2, 3, 4).permute(2, 0, 1),
    }


TENSORS = _tensors()


@pytest.mark.parametrize("name", TENSORS)
def test_tensor_round_trip(W, name):
    t = TENSORS[name]
    seen = W("describe")(t)
    assert seen["dtype"] == t.dtype and seen["shape"] == t.shape and seen["device"] == t.device
    assert tuple(seen["stride"]) == t.stride(), "the worker sees the judge's strides"
    assert seen["contiguous"] == t.is_contiguous()
    back = W("echo")(t)
    same_tensor(t, back)
    assert back.is_contiguous() == t.is_contiguous()
    if t.device.type != "meta" and t.numel():
        assert back.untyped_storage().data_ptr() != t.untyped_storage().data_ptr(), "by value, not shared"


def test_transposed_stays_non_contiguous(W):
    x = torch.arange(6.).reshape(2, 3).t()
    seen = W("describe")(x)
    assert seen["stride"] == (1, 3) and seen["contiguous"] is False
    back = W("echo")(x)
    assert back.stride() == (1, 3) and not back.is_contiguous()


def test_expanded_tensor(W):
    x = torch.tensor([1.0, 2.0]).expand(3, 2)
    assert x.stride() == (0, 1)
    seen = W("describe")(x)
    back = W("echo")(x)
    same_tensor(x, back, strides=False)
    # by design (channel._encode_tensor) a stride-0 tensor is sent materialised
    print(f"\nexpanded (3, 2) stride {x.stride()}: the worker sees stride {seen['stride']}, "
          f"comes back with {back.stride()}")


def test_parameter_and_grad_round_trip(W):
    p = nn.Parameter(torch.randn(2, 3))
    p.grad = torch.full((2, 3), 0.5)
    seen = W("describe")(p)
    assert seen["param"] and seen["requires_grad"] and seen["leaf"]
    same_tensor(seen["grad"], p.grad)
    back = W("echo")(p)
    assert isinstance(back, nn.Parameter) and back.requires_grad
    same_tensor(back, p)
    same_tensor(back.grad, p.grad)
    plain = torch.randn(2, requires_grad=True)
    seen = W("describe")(plain)
    assert seen["requires_grad"] and not seen["param"]
    frozen = nn.Parameter(torch.randn(2), requires_grad=False)
    seen = W("describe")(frozen)
    assert seen["param"] and not seen["requires_grad"]


def test_dataclass_exception_iterator_and_handle_values(W, ep):
    cfg = W("make_cfg")()
    assert type(cfg) is Cfg and cfg == Cfg(1, "y")
    assert W("read_cfg")(Cfg(5, "z")) == (True, 5, "z")
    del ep.dataclasses["Cfg"]
    try:
        fields = W("make_cfg")()
        assert type(fields) is channel.Fields and fields.a == 1 and fields.b == "y"
        with pytest.raises(AttributeError):
            fields.a = 2
    finally:
        ep.dataclasses["Cfg"] = Cfg
    err = W("exception_value")()
    assert type(err) is ValueError and str(err) == "as a value"
    assert W("gen")() == [0, 1, 4, 9]
    assert channel.is_remote(W("opaque")())


# ----------------------------------------------------------------------------- hostile input

class Evil:
    """Unpickling this creates a file: the proof that something was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _judge_against(peer):
    """A strict judge endpoint whose other end is `peer(sock)`, run in a thread; returns
    (endpoint, join)."""
    ours, theirs = socket.socketpair()
    ep = Endpoint(ours, strict=True, errors={"Forbidden": Forbidden}, records=(FunctionContext,))
    ep.deadline = time.monotonic() + 10

    def run():
        try:
            peer(theirs)
        except OSError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join():
        thread.join(10)
        assert not thread.is_alive()
        ours.close()
        theirs.close()
    return ep, join


def _ask_hostile(reply=None, buffers=(), raw=None, close=True, deadline=10.0):
    """One call of the judge's, answered by a fake worker with `reply` (a header) and `buffers`,
    or with the raw bytes `raw`. Returns what the call raised (or returned)."""
    def peer(sock):
        recv_frame(sock, time.monotonic() + 10)
        if raw is not None:
            sock.sendall(raw)
        elif reply is not None:
            send_frame(sock, reply, list(buffers))
        if close:
            sock.shutdown(socket.SHUT_WR)
        else:
            time.sleep(deadline + 1)

    ep, join = _judge_against(peer)
    ep.deadline = time.monotonic() + deadline
    started = time.monotonic()
    try:
        return ep.request("call", name_ref(ep, "f"), [1], {})
    except BaseException as err:                 # noqa: B036 - what came out is what is checked
        return err
    finally:
        assert time.monotonic() - started < deadline + 5
        join()


def _frame(header: bytes, buffers=()):
    sizes = struct.pack(f"<QQ{len(buffers)}Q", len(header), len(buffers), *map(len, buffers))
    return sizes + header + b"".join(buffers)


def _reply(value):
    return {"op": "reply", "value": value}


def _tensor(shape, dtype="float32", **extra):
    return {"t": "T", "dtype": dtype, "shape": shape, "rg": False, "param": False, "buf": 0, **extra}


def test_hostile_reply_is_read_as_a_value(tmp_path):
    """Control: the fake worker's well-formed answer comes through."""
    got = _ask_hostile(_reply({"t": "tuple", "v": [1, {"t": "f", "v": "nan"}]}))
    assert got[0] == 1 and math.isnan(got[1])


HOSTILE_FRAMES = {
    "header claims a huge size": struct.pack("<QQ", channel.MAX_HEADER + 1, 0),
    "header claims 2**64-1 bytes and buffers": struct.pack("<QQ", 2**64 - 1, 2**64 - 1),
    "too many buffers": struct.pack("<QQ", 2, channel.MAX_ITEMS + 1),
    "a buffer claims a huge size": struct.pack("<QQQ", 2, 1, channel.MAX_MESSAGE) + b"{}",
    "buffers sum over the limit": struct.pack("<QQQQ", 2, 2, channel.MAX_MESSAGE // 2, channel.MAX_MESSAGE // 2 + 1),
    "truncated size prefix": b"\x05\x00\x00",
    "truncated sizes": struct.pack("<QQ", 2, 3) + b"\x00" * 5,
    "truncated header": struct.pack("<QQ", 100, 0) + b'{"op": "re',
    "truncated buffer": _frame(json.dumps(_reply(_tensor([4]))).encode(), [b"\x00" * 16])[:-8],
    "not JSON": _frame(b"\xff\xfe not json"),
    "JSON but not an object": _frame(b"[1, 2]"),
    "an unexpected op": _frame(b'{"op": "hello"}'),
}


@pytest.mark.parametrize("name", HOSTILE_FRAMES)
def test_hostile_frame(name):
    started = time.monotonic()
    got = _ask_hostile(raw=HOSTILE_FRAMES[name])
    assert type(got) is ChannelError, got
    assert time.monotonic() - started < 5, "refused at once, nothing huge allocated or waited for"


def test_short_deadline_gives_timeout():
    got = _ask_hostile(raw=struct.pack("<QQ", 100, 0) + b"{", close=False, deadline=0.3)
    assert isinstance(got, ChannelError) and "in time" in str(got)
    a, b = socket.socketpair()
    try:
        b.sendall(struct.pack("<QQ", 10, 0) + b"{}")
        with pytest.raises(TimeoutError):
            recv_frame(a, time.monotonic() + 0.2)
    finally:
        a.close()
        b.close()


HOSTILE_VALUES = {
    "bytes do not match the shape": (_tensor([2, 2]), [b"\x00" * 12]),
    "too many bytes for the shape": (_tensor([2]), [b"\x00" * 12]),
    "bytes do not match the strides": (_tensor([2, 2], stride=[1, 5]), [b"\x00" * 16]),
    "strides of the wrong length": (_tensor([2, 2], stride=[1]), [b"\x00" * 16]),
    "negative stride": (_tensor([2, 2], stride=[-1, 2]), [b"\x00" * 16]),
    "strides on an empty tensor": (_tensor([0, 2], stride=[2, 1]), [b""]),
    "huge strides": (_tensor([2, 2], stride=[2**62, 1]), [b"\x00" * 16]),
    "huge shape": (_tensor([2**40, 2**40]), [b"\x00" * 16]),
    "unknown tensor dtype": (_tensor([1], dtype="float128"), [b"\x00" * 16]),
    "object tensor dtype": (_tensor([1], dtype="object"), [b"\x00" * 8]),
    "unknown dtype value": ({"t": "dtype", "v": "qint8"}, []),
    "negative shape": (_tensor([-1, 4]), [b"\x00" * 16]),
    "negative shape on meta": ({"t": "T", "dtype": "float32", "shape": [-2], "device": "meta"}, []),
    "too many dimensions": (_tensor([1] * 65), [b"\x00" * 4]),
    "nested deeper than MAX_DEPTH (lists)": (
        json.loads("[" * (channel.MAX_DEPTH + 5) + "]" * (channel.MAX_DEPTH + 5)), []),
    "nested deeper than MAX_DEPTH (tuples)": (
        json.loads('{"t": "tuple", "v": [' * (channel.MAX_DEPTH + 5) + "]}" * (channel.MAX_DEPTH + 5)), []),
    "a mirror sent to the judge": ({"t": "mirror", "name": "M", "forward": {"t": "h", "id": 1}}, []),
    "an invalid handle id": ({"t": "r", "ref": 987654}, []),
    "a name as a handle": ({"t": "r", "ref": "os"}, []),
    "a list as a handle": ({"t": "r", "ref": [1]}, []),
    "a record of an unknown class": ({"t": "obj", "cls": "Popen", "v": []}, []),
    "a float of an unknown form": ({"t": "f", "v": "1e999999"}, []),
    "a value of an unknown type": ({"t": "eval", "v": "__import__('os')"}, []),
}


@pytest.mark.parametrize("name", HOSTILE_VALUES)
def test_hostile_value(name):
    tree, buffers = HOSTILE_VALUES[name]
    got = _ask_hostile(_reply(tree), buffers)
    assert type(got) is ChannelError, got
    # the same tree, decoded straight by a strict endpoint, and as a mutated tensor or a record
    ep = Endpoint(None, strict=True)
    with pytest.raises(ChannelError):
        ep.decode(tree, _Walk([bytearray(b) for b in buffers], mode="reply"))


def test_pickled_module_sent_to_the_judge_is_never_unpickled(tmp_path):
    control = tmp_path / "control-created"
    buf = io.BytesIO()
    torch.save(Evil(control), buf)
    payload = buf.getvalue()
    # control: a lenient (worker-side) endpoint does unpickle it, so the payload works
    lenient = Endpoint(None)
    made = lenient.decode({"t": "module", "buf": 0}, _Walk([bytearray(payload)]))
    made.close()
    assert control.exists()

    target = tmp_path / "judge-created"
    buf = io.BytesIO()
    torch.save(Evil(target), buf)
    payload = buf.getvalue()
    for tree in ({"t": "module", "buf": 0}, [1, {"t": "dict", "v": [["m", {"t": "module", "buf": 0}]]}]):
        got = _ask_hostile(_reply(tree), [payload])
        assert type(got) is ChannelError, got
        assert not target.exists()
    # nor as the state of a module of the judge's (the "modules" copy-back), nor as a mutated tensor
    got = _ask_hostile({"op": "reply", "value": None, "modules": [[0, {"t": "module", "buf": 0}]],
                        "mutated": [[0, {"t": "module", "buf": 0}]]}, [payload])
    assert isinstance(got, ChannelError) or got is None, got
    assert not target.exists()
    with pytest.raises(ChannelError):
        Endpoint(None, strict=True).decode({"t": "module", "buf": 0}, _Walk([bytearray(payload)]))
    assert not target.exists()


def test_hostile_worker_request_to_the_judge(tmp_path):
    """Requests the fake worker makes of the judge while it waits: refused, answered with an error,
    and the judge's call still gets its answer."""
    target = tmp_path / "created"
    buf = io.BytesIO()
    torch.save(Evil(target), buf)
    answers = []

    def peer(sock):
        recv_frame(sock, time.monotonic() + 10)
        for verb, target_tree, args, buffers in [
                ("getattr", {"t": "r", "ref": 1}, ["__globals__"], []),
                ("call", {"t": "r", "ref": "open"}, [], []),
                ("call", {"t": "r", "ref": 1}, [{"t": "module", "buf": 0}], [buf.getvalue()]),
                ("call", {"t": "r", "ref": 1}, [{"t": "mirror"}], []),
                ("run_cell", None, ["import os"], []),
                ("backward", None, [12345, []], [])]:
            send_frame(sock, {"op": "do", "verb": verb, "target": target_tree, "args": args,
                        "kwargs": {"t": "dict", "v": []}},
                       buffers)
            header, _ = recv_frame(sock, time.monotonic() + 10)
            answers.append(header.get("error"))
        send_frame(sock, _reply(42), [])

    ep, join = _judge_against(peer)
    calls = []
    try:
        assert ep.request("call", name_ref(ep, "f"), [lambda *a: calls.append(a)], {}) == 42
    finally:
        join()
    assert not calls and not target.exists()
    assert [a and a["type"] for a in answers] == ["PermissionError", "ChannelError", "ChannelError",
                                                  "ChannelError", "ChannelError", "RuntimeError"]


# Malformed fields inside otherwise well-formed nodes: the decode raises whatever Python raised
# on the way (ValueError, KeyError, TypeError, IndexError, RuntimeError, RecursionError), not
# ChannelError. In tools/judge.py only ChannelError is caught around worker.ask (run_cell,
# hello): any other exception from a hostile worker's reply ends the judge with a traceback.
MALFORMED = {
    "a handle id that is not a number": ({"t": "h", "id": "x"}, []),
    "a handle without an id": ({"t": "h"}, []),
    "a tensor without buf": ({"t": "T", "dtype": "float32", "shape": [1]}, [b"\x00" * 4]),
    "a tensor buf out of range": (_tensor([1], buf=7), [b"\x00" * 4]),
    "a tensor dtype that is a list": (_tensor([1], dtype=["float32"]), [b"\x00" * 4]),
    "a dtype value that is a list": ({"t": "dtype", "v": ["float32"]}, []),
    "a shape entry that is a string": (_tensor(["a"]), [b"\x00" * 4]),
    "an empty tensor with a huge dimension": (_tensor([0, 2**70]), [b""]),
    "a huge meta tensor": ({"t": "T", "dtype": "float32", "shape": [2**62, 2**62], "device": "meta"}, []),
    "a device that does not exist": ({"t": "device", "v": "bogus"}, []),
    "a complex with one part": ({"t": "c", "v": [1]}, []),
    "a dict entry that is not a pair": ({"t": "dict", "v": [[1]]}, []),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_field_raises_channel_error(name):
    tree, buffers = MALFORMED[name]
    got = _ask_hostile(_reply(tree), buffers)
    assert type(got) is ChannelError, f"{type(got).__name__}: {got}"


def test_malformed_field_does_not_execute_or_crash():
    """Whatever the type of the error, nothing runs and this process lives on."""
    for tree, buffers in MALFORMED.values():
        got = _ask_hostile(_reply(tree), buffers)
        assert isinstance(got, Exception) and not isinstance(got, (SystemExit, KeyboardInterrupt)), got


def test_json_nested_beyond_the_recursion_limit():
    n = 200_000
    got = _ask_hostile(raw=_frame(b'{"op": "reply", "value": ' + b"[" * n + b"]" * n + b"}"))
    assert type(got) is ChannelError, f"{type(got).__name__}"


def test_hostile_error_reply():
    got = _ask_hostile({"op": "reply", "error": {"t": "exc", "type": "__import__('os')", "msg": "m"}})
    assert isinstance(got, RemoteError) and str(got) == "m"
    got = _ask_hostile({"op": "reply", "error": 5})
    assert type(got) is ChannelError


# ----------------------------------------------------------------------------- strict policy

def test_worker_may_only_call_judge_functions(W):
    def oracle(x):
        return x * 10

    oracle.secret = "the answer"
    got = W("probe")(oracle)
    assert got["call"] == ("ok", False, "")
    for what in ("getattr", "getattr_name", "setattr", "vars", "op", "getitem", "repr"):
        name, _, msg = got[what]
        assert name == "PermissionError", (what, got[what])
        assert "may only call" in msg
    assert not hasattr(oracle, "x")
    assert W("call")(oracle, 4) == 40


def test_refusal_is_a_real_permission_error(W):
    got = W("probe")(lambda x: x)
    assert got["getattr"][1] is True, got["getattr"]


def test_worker_cannot_forge_judge_handles(W):
    for ref in ("open", "__builtins__", 10**9):
        name, _, msg = W("forge")(ref)
        assert name != "ok" and "not" in msg, (ref, name, msg)


@pytest.mark.parametrize("value", [math, os, int, type, object(), Path("/")],
                         ids=["module math", "module os", "class int", "class type", "object", "Path"])
def test_judge_refuses_to_pass(W, ep, value):
    with pytest.raises(TypeError, match="cannot pass"):
        W("echo")(value)
    assert not ep.broken
    assert W("echo")(3) == 3


# ----------------------------------------------------------------------------- gradients

def test_backward_through_the_bridge(W):
    x = torch.randn(5, requires_grad=True)
    y = W("square")(x)
    assert y.requires_grad and y.grad_fn is not None
    y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * x.detach())


def test_remote_linear_weight_grad(W):
    W("zero_lin_grad")()
    lin = W("lin")
    x = torch.randn(4, 3)
    y = lin(x)
    assert y.shape == (4, 2) and y.requires_grad
    torch.testing.assert_close(y, x @ W("lin_weight")().t() + lin.bias.detach())
    y.sum().backward()
    torch.testing.assert_close(lin.weight.grad, x.sum(0).expand(2, 3))
    torch.testing.assert_close(lin.bias.grad, torch.full((2,), 4.0))
    W("zero_lin_grad")()


def test_autograd_grad(W):
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(W("cube")(x).sum(), x)
    torch.testing.assert_close(g, 3 * x.detach() ** 2)
    assert x.grad is None


def test_gradient_through_a_judge_callback(W):
    x = torch.randn(3, requires_grad=True)
    calls = []

    def cb(t):
        calls.append(t.requires_grad)
        return t ** 2

    y = W("use_callback")(cb, x)                 # 3 * (2x)^2 = 12 x^2
    torch.testing.assert_close(y, 12 * x.detach() ** 2)
    y.sum().backward()
    torch.testing.assert_close(x.grad, 24 * x.detach())
    assert calls == [True]


def test_no_graph_under_no_grad(W):
    x = torch.randn(3, requires_grad=True)
    with torch.no_grad():
        y = W("square")(x)
    assert not y.requires_grad


# ----------------------------------------------------------------------------- in place

def test_worker_in_place_change_is_copied_back(W):
    x = torch.zeros(3)
    assert W("inc")(x) is None
    assert torch.equal(x, torch.ones(3))
    t = torch.zeros(2, 3).t()
    W("inc")(t)
    assert torch.equal(t, torch.ones(3, 2)) and t.stride() == (1, 3)
    nested = {"a": [torch.zeros(2)]}
    W("inc")(nested["a"][0])
    assert torch.equal(nested["a"][0], torch.ones(2))


def test_worker_in_place_change_of_a_list_or_dict_is_copied_back(W):
    # a learner's function that edits the lists it was given (seqs[b].extend(...)) must be seen
    # by the tests that check their inputs are left unchanged
    inner, other = [1, 2], [3]
    seqs = [inner, other, (4, 5)]
    W("append_to_each")([inner, other], 9)
    assert inner == [1, 2, 9] and other == [3, 9] and seqs[0] is inner
    t = torch.zeros(2)
    d = {"a": 1, "b": t}
    W("rebuild")(d)
    assert list(d) == ["b"] and d["b"][1] == (2, 3) and torch.equal(d["b"][0], t)
    same = [1, [2, 3], {"k": [4]}]
    assert W("echo")(same) == same and same == [1, [2, 3], {"k": [4]}]


def test_a_generator_goes_by_value_and_its_state_comes_back(W):
    # a learner's sampling loop draws from the tests' torch.Generator: the draws and the state
    # the generator is left in must be those of one process
    g, twin = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for n in (3, 1, 4):
        assert torch.equal(W("draw")(n, generator=g), draw_here(n, twin))
    assert torch.equal(g.get_state(), twin.get_state())
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=twin))


class _Tree(nn.Module):
    """A module of the tests' (not one of PyTorch's classes): it goes to the worker as a Mirror."""

    def __init__(self, leaf=False):
        super().__init__()
        if leaf:
            return
        self.inner = _Tree(leaf=True)
        self.inner.w = nn.Parameter(torch.zeros(4, 3))
        self.lin = nn.Linear(3, 2)                     # one of PyTorch's: it goes pickled
        self.out = _Tree(leaf=True)
        self.out.w = self.inner.w                      # tied: one Parameter under two names


def test_a_mirror_changed_in_place_by_the_worker_is_as_in_one_process(W):
    # the learner's init_gpt2_ on a module of the tests: the draws come from the tests' seed, in
    # named_parameters() order (the tied one once), and land in the tests' module
    here, there = _Tree(), _Tree()
    torch.manual_seed(3)
    names = W("init_normal")(there, 0.5)
    torch.manual_seed(3)
    want = init_normal_here(here, 0.5)
    assert names == want
    for (k, a), (_, b) in zip(here.named_parameters(), there.named_parameters()):
        assert torch.equal(a, b), k
    assert there.out.w is there.inner.w


def init_normal_here(module, std):
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.normal_(0.0, std)
    return [name for name, _ in module.named_parameters()]


def test_train_and_eval_in_the_worker_reach_the_tests_modules(W):
    tree = _Tree()
    W("set_mode")(tree, False)
    assert not tree.training and not tree.inner.training and not tree.lin.training
    W("set_mode")(tree, True)
    assert tree.training and tree.lin.training


def draw_here(n, generator):
    return torch.multinomial(torch.ones(10), n, replacement=True, generator=generator)


def test_judge_in_place_change_of_an_attribute_is_written_back(W):
    lin = W("lin")
    before = W("lin_weight")()
    with torch.no_grad():
        lin.weight.add_(1)
    torch.testing.assert_close(W("lin_weight")(), before + 1)
    with torch.no_grad():
        lin.weight.sub_(1)
    torch.testing.assert_close(W("lin_weight")(), before)


def test_records_are_copied_back(W):
    ctx = FunctionContext()
    x = torch.randn(3)
    real, y = W("ctx_forward")(ctx, x)
    assert real is True
    torch.testing.assert_close(y, 3 * x)
    assert type(ctx) is FunctionContext and ctx.scale == 3
    assert type(ctx.saved_tensors) is tuple and len(ctx.saved_tensors) == 1
    torch.testing.assert_close(ctx.saved_tensors[0], x)


def test_torch_module_goes_as_a_pickled_copy_and_state_comes_back(W):
    m = nn.Linear(2, 2)
    w, before = m.weight, m.weight.detach().clone()
    assert W("bump_module")(m) == (True, "Linear")
    assert m.weight is w
    torch.testing.assert_close(m.weight.detach(), before + 1)


def test_torch_module_grads_go_and_come_back(W):
    """.grad is not pickled with a module: it travels beside it, both ways, as in one process."""
    m = nn.Linear(3, 2)
    m.weight.grad = torch.full((2, 3), 7.0)
    got = W("grads_of")(m)
    assert torch.equal(got["weight"], torch.full((2, 3), 7.0)) and got["bias"] is None
    x = torch.randn(4, 3)
    W("backward_through")(m, x)                     # the learner's backward accumulates into .grad
    torch.testing.assert_close(m.weight.grad, 7.0 + x.sum(0).expand(2, 3))
    torch.testing.assert_close(m.bias.grad, torch.full((2,), 4.0))
    W("clear_grads")(m)
    assert m.weight.grad is None and m.bias.grad is None


class Reference(nn.Module):
    calls = 0

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.scale = 2.0

    def forward(self, x):
        Reference.calls += 1
        return self.lin(x) * self.scale


def test_other_judge_module_goes_as_a_mirror(W):
    ref = Reference()
    bias = ref.lin.bias.detach().clone()
    x = torch.randn(3, 2)
    calls = Reference.calls
    name, out, params, scale = W("run_mirror")(ref, x)
    assert name == "Mirror"
    assert Reference.calls == calls + 1, "the forward ran in the judge"
    torch.testing.assert_close(out, (bias * 2).expand(3, 2))   # on the worker's (zeroed) weight
    assert params == ["lin.bias", "lin.weight"] and scale == 2.0
    assert torch.equal(ref.lin.weight.detach(), torch.zeros(2, 2)), "the nested nn.Linear's state came back"


# ----------------------------------------------------------------------------- state that travels

def test_rng_the_worker_draws_from_the_tests_stream_but_never_sets_it(W):
    torch.manual_seed(0)
    there = W("rand")(5)                  # the worker starts from the tests' state ...
    there2 = W("rand")(3)                 # ... and goes on with its own while the tests draw nothing
    here = torch.rand(5)                  # the tests' stream is their own: the worker's draws never move it
    torch.manual_seed(0)
    expected = torch.rand(5), torch.rand(3)
    assert torch.equal(there, expected[0]) and torch.equal(there2, expected[1])
    torch.manual_seed(0)
    assert torch.equal(here, torch.rand(5))
    torch.manual_seed(1)                  # a new seed here is the worker's next state
    assert torch.equal(W("rand")(2), torch.rand(2, generator=torch.Generator().manual_seed(1)))


def test_rng_a_learner_cannot_choose_the_tests_inputs(W):
    torch.manual_seed(0)
    W("rand")(1)
    W("set_seed")(12345)                  # the learner's code reseeds its own generator ...
    got = torch.rand(4)                   # ... the tests' next input does not follow it
    torch.manual_seed(0)
    assert torch.equal(got, torch.rand(4))


def test_rng_a_callback_draws_from_the_workers_stream(W):
    """The tests' code that the learner's code calls (a reference module's forward, a loss) draws
    what it would draw in one process, and the worker goes on from there; the tests' own stream
    does not move."""
    torch.manual_seed(0)
    first = W("call")(lambda: torch.rand(3))
    second = W("rand")(2)
    here = torch.rand(4)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(first, torch.rand(3, generator=g)) and torch.equal(second, torch.rand(2, generator=g))
    assert torch.equal(here, torch.rand(4, generator=torch.Generator().manual_seed(0)))
    drop = nn.Dropout(0.5)
    torch.manual_seed(7)
    got = W("call")(lambda x: drop(x), torch.ones(64))      # a judge's function, as it would in one process
    torch.manual_seed(7)
    assert torch.equal(got, drop(torch.ones(64)))


def test_rng_the_same_seed_twice_resets_the_worker_twice(W):
    for _ in range(2):                    # the second seed equals the state sent with the first
        torch.manual_seed(5)
        a = W("rand")(3)
        torch.manual_seed(5)
        b = W("rand")(3)
        assert torch.equal(a, b) and torch.equal(a, torch.rand(3, generator=torch.Generator().manual_seed(5)))


def test_grad_mode_and_default_dtype_travel(W):
    assert W("grad_enabled")() is True
    with torch.no_grad():
        assert W("grad_enabled")() is False
    assert torch.is_grad_enabled()
    torch.set_default_dtype(torch.float64)
    try:
        assert W("default_dtype")() == torch.float64
        assert W("ones")().dtype == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
    assert W("default_dtype")() == torch.float32


def test_callback_sees_the_workers_grad_mode(W):
    assert W("call_no_grad")(lambda: torch.is_grad_enabled()) is False
    assert torch.is_grad_enabled()
    assert W("call")(lambda: torch.is_grad_enabled()) is True


# ----------------------------------------------------------------------------- exceptions

@pytest.mark.parametrize("kind", ["ValueError", "TypeError", "KeyError", "IndexError", "ZeroDivisionError",
                                  "AttributeError", "RuntimeError", "NotImplementedError", "AssertionError",
                                  "NameError", "OverflowError", "ImportError", "TimeoutError"])
def test_builtin_exception_keeps_type_and_message(W, kind):
    cls = getattr(builtins, kind)
    with pytest.raises(cls) as info:
        W("fail")(kind, "the message \u2603")
    assert type(info.value) is cls
    assert "the message \u2603" in str(info.value)


def test_unknown_exception_becomes_remote_error(W):
    with pytest.raises(RemoteError) as info:
        W("fail")("Oops", "custom")
    assert type(info.value).__name__ == "Oops" and str(info.value) == "custom"
    with pytest.raises(channel.error_type("Oops")):
        W("fail")("Oops", "again")


def test_forbidden_maps_to_guard_forbidden(W):
    with pytest.raises(Forbidden, match="switched off"):
        W("fail")("Forbidden", "softmax is switched off")


def test_name_not_defined(W):
    with pytest.raises(NameError):
        W("no_such_name")()


# ----------------------------------------------------------------------------- identity

def test_same_object_same_remote(W):
    a = W("get_thing")()
    b = W("get_thing")()
    assert a is b and channel.is_remote(a)
    assert isinstance(a, W("Thing"))
    assert not isinstance(a, nn.Linear)
    assert W("echo")(a) is a


def test_torch_class_of_proxies(W):
    lin = W("get_lin")()
    assert type(lin) is channel.Remote and lin.__class__ is nn.Linear
    assert isinstance(lin, nn.Linear) and isinstance(lin, nn.Module)
    assert isinstance(W("get_drop")(), nn.Dropout)
    assert not isinstance(W("get_thing")(), nn.Module)


def test_released_handles_free_the_workers_exports(W):
    h = W("make")()
    hid = h._ref
    assert W("exported")(hid) and W("made_alive")()[-1]
    del h
    gc.collect()
    assert W("exported")(hid) is False             # the release went with this request
    assert W("made_alive")()[-1] is False


# ----------------------------------------------------------------------------- cost

def test_cost_of_a_call(W):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        noop = W("noop")
        t = torch.randn(64, 64)
        results = {}
        for label, arg in (("int", 1), ("(64, 64) float32 tensor", t)):
            for _ in range(20):
                noop(arg)
            times = []
            for _ in range(200):
                start = time.perf_counter()
                noop(arg)
                times.append(time.perf_counter() - start)
            results[label] = statistics.median(times)
        print("\nchannel: median no-op call " + ", ".join(f"with an {k} argument {v * 1e6:.0f} us"
                                                         for k, v in results.items()))
        assert all(v < 0.05 for v in results.values()), results
    finally:
        torch.set_num_threads(threads)
