"""The channel between the grading judge and the sandboxed worker: values, handles and calls.

At grading time the learner's code runs only in the worker (tools/worker.py, in a sandbox) and the
tests only in the judge (tools/judge.py). The two talk over one socket, and what crosses it is
value-only, encoded here as JSON plus raw bytes:

    None, bool, int, float, complex, str           themselves
    list, tuple, dict, slice, Ellipsis             of values
    torch.Tensor, nn.Parameter                     dtype, shape, strides and bytes (requires_grad, grad);
                                                   the same tensor met again: a reference to it
    torch.dtype, torch.device, torch.Size          their names
    torch.Generator (CPU)                          its state (copied back after the call)
    an instance of a dataclass                     its class's name and its fields
    an exception                                   its type's name and its message
    anything else                                  a handle: a number naming an object that stays
                                                   on its own side

Nothing received is ever unpickled or executed: a handle becomes a `Remote`, a proxy whose every use
(call, attribute, item, operator) is one more request. Both ends are an `Endpoint`. While one waits
for an answer it serves the other's requests, so the worker can call back a function the judge
passed in (a test's oracle, a FunctionContext); the judge serves such requests strictly (see
`Endpoint.strict`). Tensors, lists and dicts changed in place by the callee are copied back into
the caller's. The random-number state, grad mode and default dtype travel with every request, so
that the two processes behave as one. A tensor that comes back with an autograd graph gets a bridge
node whose backward asks the other side for its inputs' gradients.
"""
from __future__ import annotations

import dataclasses
import json
import math
import operator
import socket
import struct
import sys
import time
import weakref

import torch
import torch.nn as nn

MAX_MESSAGE = 256 * 2**20        # bytes one message may carry; more is an error, never a crash
MAX_HEADER = 32 * 2**20
MAX_DEPTH = 64
MAX_ITEMS = 100_000              # items drained from one iterator
MAX_TEXT = 1_000_000             # characters of one string

DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
    torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)}
OPERATORS = {name: getattr(operator, name) for name in (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "neg", "pos", "abs", "invert",
    "lt", "le", "eq", "ne", "gt", "ge", "and_", "or_", "xor")}


_NAMES = {"__name__", "__qualname__", "__module__", "__doc__", "__self__", "__func__", "__wrapped__"}


class ChannelError(RuntimeError):
    """The other side broke the protocol, sent too much, or is gone."""


class RemoteError(Exception):
    """An exception raised on the other side whose type is not a built-in one."""


_BUILTIN_ERRORS = {c.__name__: c for c in (
    ArithmeticError, AssertionError, AttributeError, IndexError, KeyError, LookupError, MemoryError,
    NameError, NotImplementedError, OverflowError, RecursionError, RuntimeError,
    TimeoutError, TypeError, ValueError, ZeroDivisionError, UnboundLocalError, ImportError,
    ModuleNotFoundError, OSError, PermissionError, FileNotFoundError, FileExistsError,
    IsADirectoryError, NotADirectoryError, ConnectionError)}
# not KeyboardInterrupt, SystemExit, GeneratorExit or StopIteration: from the other side they would
# mean more than "an error" here (end the judge, or silently end a loop); they arrive as RemoteError
_REMOTE_ERRORS: dict[str, type] = {}


def error_type(name: str, known=None) -> type:
    """The class to raise for an exception the other side names: a built-in one, one the caller
    knows (e.g. the switch-off's Forbidden), else a RemoteError subclass of that name."""
    if known and name in known:
        return known[name]
    if name in _BUILTIN_ERRORS:
        return _BUILTIN_ERRORS[name]
    if name not in _REMOTE_ERRORS and len(_REMOTE_ERRORS) < 1000 and name.isidentifier():
        _REMOTE_ERRORS[name] = type(name, (RemoteError,), {})
    return _REMOTE_ERRORS.get(name, RemoteError)


# ------------------------------------------------------------------------------------- framing

def send_frame(sock, header: dict, buffers: list):
    head = json.dumps(header, separators=(",", ":")).encode()
    sizes = struct.pack(f"<QQ{len(buffers)}Q", len(head), len(buffers), *(len(b) for b in buffers))
    total = len(head) + sum(len(b) for b in buffers)
    if total > MAX_MESSAGE:
        raise ChannelError(f"a message of {total:,} bytes is over the channel's limit ({MAX_MESSAGE:,})")
    if total < 4 * 2**20:                      # one write: the reader wakes once
        sock.sendall(b"".join([sizes, head, *buffers]))
    else:
        sock.sendall(sizes + head)
        for b in buffers:
            sock.sendall(b)


SPIN = 0.0003        # seconds to poll for an answer before sleeping on the socket (a sleeping process
                     # takes a while to wake; most answers come within this)


def _read(sock, n: int, deadline, spin=0.0):
    out = bytearray()
    if spin:
        until = time.perf_counter() + spin
        while len(out) < n and time.perf_counter() < until:
            try:
                chunk = sock.recv(min(n - len(out), 1 << 20), socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                continue
            if not chunk:
                raise ChannelError("the other side closed the channel")
            out += chunk
    while len(out) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the other side did not answer in time")
            sock.settimeout(left)
        try:
            chunk = sock.recv(min(n - len(out), 1 << 20))
        except socket.timeout:
            raise TimeoutError("the other side did not answer in time") from None
        if not chunk:
            raise ChannelError("the other side closed the channel")
        out += chunk
    return out


def recv_frame(sock, deadline=None, spin=0.0):
    """One message. spin: seconds to poll before sleeping (for an answer that is about to come;
    not for a wait of unknown length, where polling would take the other side's core)."""
    head_size, n_buffers = struct.unpack("<QQ", _read(sock, 16, deadline, spin))
    if head_size > MAX_HEADER or n_buffers > MAX_ITEMS:
        raise ChannelError("a message header over the channel's limit")
    sizes = struct.unpack(f"<{n_buffers}Q", _read(sock, 8 * n_buffers, deadline)) if n_buffers else ()
    if head_size + sum(sizes) > MAX_MESSAGE:
        raise ChannelError("a message over the channel's limit")
    try:
        header = json.loads(bytes(_read(sock, head_size, deadline)))
    except (ValueError, RecursionError):
        raise ChannelError("a message that is not JSON (or nested too deeply)") from None
    if not isinstance(header, dict):
        raise ChannelError("a message that is not a JSON object")
    return header, [_read(sock, s, deadline) for s in sizes]


# ------------------------------------------------------------------------------------- proxies

class Remote:
    """An object on the other side. Every use is a request; nothing of it runs here."""

    __slots__ = ("_endpoint", "_ref", "_kind", "_cls", "__weakref__")

    def __init__(self, endpoint, ref, kind, cls=None):
        object.__setattr__(self, "_endpoint", endpoint)
        object.__setattr__(self, "_ref", ref)
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_cls", cls)

    @property
    def __class__(self):
        """PyTorch's own class for one of PyTorch's objects (a module of nn.Dropout, say), so that
        isinstance(proxy, nn.Dropout) holds as it would in one process; else Remote."""
        return self._cls or Remote

    def _ask(self, verb, *args, **kwargs):
        return self._endpoint.request(verb, self, list(args), kwargs)

    def __call__(self, *args, **kwargs):
        return self._endpoint.request("call", self, list(args), kwargs)

    @property
    def __dict__(self):
        """vars(proxy): the object's attributes over there, as values and handles."""
        return self._ask("vars")

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__") and name not in _NAMES:
            raise AttributeError(name)            # copy, pickle and friends probe these
        return self._ask("getattr", name)

    def __setattr__(self, name, value):
        self._ask("setattr", name, value)

    def __delattr__(self, name):
        self._ask("delattr", name)

    def __getitem__(self, key):
        return self._ask("getitem", key)

    def __setitem__(self, key, value):
        self._ask("setitem", key, value)

    # What the object over there says of itself (that it equals, contains or is as true as
    # anything) is a claim, not a result: the judge never asks. Its items, by value, are results.
    def __iter__(self):
        return iter(self._ask("iter"))

    def __len__(self):
        return len(self._ask("iter"))

    def __contains__(self, item):
        return any(item is v or (not isinstance(v, Remote) and _same(item, v)) for v in self._ask("iter"))

    def __bool__(self):
        raise TypeError(_CLAIM.format(what="true or false"))

    def __float__(self):
        raise TypeError(_CLAIM.format(what="a float"))

    def __int__(self):
        raise TypeError(_CLAIM.format(what="an int"))

    def __index__(self):
        raise TypeError(_CLAIM.format(what="an index"))

    def __eq__(self, other):
        return type(other) is Remote and other._endpoint is self._endpoint and other._ref == self._ref

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return self._ask("repr")

    def __str__(self):
        return self._ask("str")

    def __format__(self, spec):
        return self._ask("format", spec)

    def __hash__(self):
        return hash((id(self._endpoint), self._ref))

    def __instancecheck__(self, obj):            # isinstance(x, <a class over there>)
        return self._endpoint.request("isinstance", self, [obj], {})

    def __subclasscheck__(self, cls):
        return self._endpoint.request("issubclass", self, [cls], {})

    def __enter__(self):
        return self._ask("enter")

    def __exit__(self, *exc):
        return self._ask("exit")


_CLAIM = ("the tests cannot take the learner's object for {what}: that would be the object's own "
          "claim. Return a number, a bool or a tensor (they come back by value)")


def _same(a, b):
    try:
        return bool(a == b) if not isinstance(a, torch.Tensor) else False
    except Exception:
        return False


def _binary(name, swap=False):
    def method(self, other):
        if isinstance(other, torch.Tensor):   # the tests' tensors (an expected value) stay with the tests
            raise TypeError("an operator between the learner's object and a tensor: the tests never "
                            "send their tensors to the learner's object this way; return a tensor")
        args = [other, self] if swap else [self, other]
        return self._endpoint.request("op", None, [name, *args], {})
    return method


def _unary(name):
    def method(self):
        return self._endpoint.request("op", None, [name, self], {})
    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    _op = _name + "_" if _name in ("and", "or") else _name
    setattr(Remote, f"__{_name}__", _binary(_op))
    setattr(Remote, f"__r{_name}__", _binary(_op, swap=True))
def _ordering(self, other):
    raise TypeError(_CLAIM.format(what="smaller or larger than something"))


for _name in ("lt", "le", "gt", "ge"):
    setattr(Remote, f"__{_name}__", _ordering)
for _name in ("neg", "pos", "abs", "invert"):
    setattr(Remote, f"__{_name}__", _unary(_name))
del _name, _op


def is_remote(obj) -> bool:
    return type(obj) is Remote


# ------------------------------------------------------------------------------------- the bridge

class _Graph:
    """The other side's number for a call's outputs that carry a graph; freed with them."""

    def __init__(self, endpoint, gid):
        self.endpoint, self.gid = endpoint, gid
        weakref.finalize(self, endpoint.released_graphs.append, gid)


class _Bridge(torch.autograd.Function):
    """One node standing for the other side's graph: its backward asks the other side for the
    gradients of the inputs that were sent (and, over there, fills the .grad of its parameters)."""

    @staticmethod
    def forward(ctx, graph, anchor, n_inputs, *rest):
        ctx.graph, ctx.n_inputs = graph, n_inputs
        return tuple(o.detach() for o in rest[n_inputs:])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        got = ctx.graph.endpoint.request("backward", None, [ctx.graph.gid, list(grads)], {})
        got = (list(got) + [None] * ctx.n_inputs)[:ctx.n_inputs]
        return (None, None, None, *got, *([None] * len(grads)))


# ------------------------------------------------------------------------------------- the endpoint

def _contents(container):
    """What a list or dict holds, as a list of its objects (compared by identity)."""
    return list(container) if isinstance(container, list) else [x for kv in container.items() for x in kv]


def _changed(now, was):
    return len(now) != len(was) or any(a is not b for a, b in zip(now, was))


def _refill(old, new):
    """Give a list or dict of ours the contents the other side's copy ended with."""
    if type(old) is list and type(new) is list:
        old[:] = new
    elif isinstance(old, dict) and type(new) is dict:
        old.clear()
        old.update(new)


class _Walk:
    """What one encoding or decoding collects: raw bytes, the tensors and records in order, and
    the tensors that take part in autograd."""

    def __init__(self, buffers=None, mode="value"):
        self.buffers = [] if buffers is None else buffers
        self.mode = mode              # "args": every tensor that requires grad is an input;
        self.grads = []               # "value": only tensors with a graph are outputs
        self.tensors, self.records, self.modules = [], [], []
        self.tensor_index = {}        # id(tensor) -> its place in tensors: a tensor met again is sent as
                                      # a reference, so that a tied Parameter stays one object
        self.containers = []          # every list and dict, in the order walked (both sides agree)
        self.generators = []          # every torch.Generator, in the same order on both sides
        self.mirrors = []             # every module sent as a Mirror, parents before children


class Endpoint:
    """One end of the channel.

    namespace: the globals whose names the other side may use as targets (the worker's).
    strict: the other side may only call the functions we passed it, with values (the judge
    serves the worker so: no attributes, no methods, no objects of the tests reach the worker).
    errors: exception names -> classes to raise them as. records: classes passed by value both
    ways and copied back after a call (FunctionContext). guard: options -> a context manager put
    around every request served (the worker's switch-off and time limit)."""

    def __init__(self, sock, *, namespace=None, strict=False, errors=None, records=(), guard=None):
        self.sock, self.namespace, self.strict, self.guard = sock, namespace, strict, guard
        self.errors = dict(errors or {})
        self.records = {c.__name__: c for c in records}
        self.verbs = dict(_VERBS)
        self.exports: dict[int, list] = {}       # our objects the other side holds: id -> [obj, times sent]
        self.export_ids: dict[int, int] = {}     # id(obj) -> export id
        self.proxies = weakref.WeakValueDictionary()
        self.received: dict[int, int] = {}       # the other side's export id -> times we decoded it
        self.graphs: dict[int, tuple] = {}       # our graphs the other side may run backward on
        self.dataclasses: dict[str, type] = {}   # dataclasses known by name (the judge: the course's)
        self.options = {"forbid": [], "autograd": True, "timeout": None}
        self.deadline = None                     # monotonic time by which every answer must have come
        self.released, self.released_graphs = [], []
        self.calls, self.seconds, self.broken = 0, 0.0, None
        self.check_result = None                 # (value, options) -> None or raise, after a served request
        self.track_attributes = strict           # the judge writes back the attributes it changes
        self.tracked, self._flushing = [], False
        # sticky: an object with holds(options), hold(options) and release() that keeps the switch-off
        # of consecutive requests without tensors on between them (tools/worker.py), or None
        self.sticky = None
        self._next, self._rng, self._seedings = 1, None, None
        if strict:
            _count_seedings()

    # -------------------------------------------------------------- encoding

    def _export(self, obj):
        if self.strict and (not callable(obj) or isinstance(obj, type(math))
                            or isinstance(obj, type) and not issubclass(obj, nn.Module)):
            raise TypeError(f"the tests cannot pass a {type(obj).__name__} to the learner's code")
        hid = self.export_ids.get(id(obj))
        if hid is None:
            hid, self._next = self._next, self._next + 1
            self.exports[hid] = [obj, 0]
            self.export_ids[id(obj)] = hid
        self.exports[hid][1] += 1
        kind = "module" if isinstance(obj, nn.Module) else "callable" if callable(obj) else "object"
        out = {"t": "h", "id": hid, "kind": kind}
        cls = type(obj)
        if cls.__module__.split(".")[0] == "torch":
            out["cls"] = f"{cls.__module__}:{cls.__qualname__}"
        return out

    def encode(self, value, walk, depth=0):
        """A value -> a JSON-able tree; raw bytes go to walk.buffers."""
        if depth > MAX_DEPTH:
            raise ValueError("a value nested too deeply to pass over")
        if value is None or type(value) in (bool, int):
            return value
        if isinstance(value, str):
            if len(value) > MAX_TEXT:
                raise ValueError("a string too long to pass over")
            return str.__str__(value)
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            value = float(value)
            return value if math.isfinite(value) else {"t": "f", "v": repr(value)}
        if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
            return self.encode(value.item(), walk, depth)      # a NumPy scalar: its number
        if isinstance(value, complex):
            return {"t": "c", "v": [self.encode(value.real, walk), self.encode(value.imag, walk)]}
        if type(value) is Remote:
            if value._endpoint is not self:
                raise ValueError("a handle of another channel")
            return {"t": "r", "ref": value._ref}
        if isinstance(value, torch.Tensor):
            seen = walk.tensor_index.get(id(value))
            if seen is not None and walk.tensors[seen] is value:
                return {"t": "Tsame", "i": seen}
            return self._encode_tensor(value, walk)
        if isinstance(value, torch.Size):
            return {"t": "size", "v": [int(v) for v in value]}
        if type(value) is torch.Generator:
            if value.device.type != "cpu":
                raise ValueError("only CPU random-number generators can be passed over")
            walk.generators.append(value)
            return {"t": "gen", "state": self._encode_tensor(value.get_state(), walk, top=False)}
        if type(value) in (list, tuple):
            if type(value) is list:
                walk.containers.append(value)
            items = [self.encode(v, walk, depth + 1) for v in value]
            return items if type(value) is list else {"t": "tuple", "v": items}
        if isinstance(value, dict) and type(value).__module__ in ("builtins", "collections"):
            walk.containers.append(value)
            return {"t": "dict", "v": [[self.encode(k, walk, depth + 1), self.encode(v, walk, depth + 1)]
                                       for k, v in value.items()]}
        if isinstance(value, torch.dtype):
            return {"t": "dtype", "v": str(value).removeprefix("torch.")}
        if isinstance(value, torch.device):
            return {"t": "device", "v": str(value)}
        if type(value) is slice:
            return {"t": "slice", "v": [self.encode(x, walk, depth + 1) for x in (value.start, value.stop, value.step)]}
        if value is Ellipsis:
            return {"t": "..."}
        if isinstance(value, BaseException):
            return {"t": "exc", "type": type(value).__name__[:200], "msg": str(value)[:10_000]}
        if type(value).__name__ in self.records and type(value) is self.records[type(value).__name__]:
            walk.records.append(value)
            return {"t": "obj", "cls": type(value).__name__, "v": self._fields(value, walk, depth)}
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {"t": "dc", "name": type(value).__qualname__[:200],
                    "v": [[f.name, self.encode(getattr(value, f.name), walk, depth + 1)]
                          for f in dataclasses.fields(value)]}
        if isinstance(value, nn.Module) and self.strict:
            return self._encode_module(value, walk, depth)
        if _is_iterator(value):
            return self.encode(list(_limited(value)), walk, depth)
        return self._export(value)

    def _fields(self, record, walk, depth):
        return [[k, self.encode(v, walk, depth + 1)] for k, v in vars(record).items() if isinstance(k, str)]

    def _encode_module(self, module, walk, depth):
        """A module of the judge's, for the worker. One of PyTorch's own classes goes as a pickled
        copy (the worker unpickles what the judge sends; never the other way round). Any other
        (a test's reference module) goes as a mirror: its submodules, parameters, buffers and
        public attributes by value, and a handle to run the judge's forward on the worker's
        parameters (see Mirror)."""
        import io
        if type(module).__module__.split(".")[0] == "torch":
            buf = io.BytesIO()
            torch.save(module, buf)
            walk.buffers.append(buf.getvalue())
            walk.modules.append(module)
            index = len(walk.buffers) - 1
            # .grad is not pickled: it goes alongside, and comes back with the state (serve)
            grads = [[k, self._encode_tensor(p.grad.detach(), walk, top=False)]
                     for k, p in module.named_parameters() if p.grad is not None]
            return {"t": "module", "buf": index, "grads": grads}
        from torch.func import functional_call

        def forward(state, training, *args, **kwargs):
            module.train(bool(training))
            return functional_call(module, state, tuple(args), kwargs)

        module._course_forward = forward           # keeps the handle's target alive with the module
        walk.mirrors.append(module)
        attrs = {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training"}
        return {"t": "mirror", "name": type(module).__name__[:200], "forward": self._export(forward),
                "training": module.training,
                "params": [[k, self.encode(v, walk, depth + 1)] for k, v in module._parameters.items()],
                "buffers": [[k, self.encode(v, walk, depth + 1)] for k, v in module._buffers.items()],
                "modules": [[k, self.encode(v, walk, depth + 1)] for k, v in module._modules.items()],
                "attrs": [[k, self.encode(v, walk, depth + 1)] for k, v in attrs.items()]}

    def _encode_tensor(self, t, walk, top=True):
        if t.layout != torch.strided or t.is_nested or t.is_quantized:
            raise ValueError(f"a {t.layout} tensor cannot be passed over; use a dense one")
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in DTYPES:
            raise ValueError(f"a tensor of dtype {t.dtype} cannot be passed over")
        out = {"t": "T", "dtype": dtype, "shape": [int(s) for s in t.shape], "rg": bool(t.requires_grad),
               "param": isinstance(t, nn.Parameter)}
        if top:
            walk.tensor_index[id(t)] = len(walk.tensors)
            walk.tensors.append(t)
            if t.requires_grad and (walk.mode == "args" or t.grad_fn is not None):
                out["g"] = len(walk.grads)
                walk.grads.append(t)
        if t.device.type == "meta":
            out["device"] = "meta"
            return out
        data = t.detach()
        if type(data) is not torch.Tensor:
            data = data.as_subclass(torch.Tensor)
        data = data.cpu()
        stride = list(data.stride())
        if data.numel() == 0 or data.is_contiguous() or 0 in stride or min(stride, default=1) < 0:
            data, stride = data.contiguous(), None
        else:                                      # keep the layout: a transposed input stays one
            span = 1 + sum((s - 1) * st for s, st in zip(data.shape, stride))
            flat = torch.zeros(span, dtype=data.dtype)
            flat.as_strided(data.shape, stride).copy_(data)
            data = flat
        out["stride"] = stride
        out["buf"] = len(walk.buffers)
        walk.buffers.append(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        if top and t.is_leaf and t.grad is not None:
            out["grad"] = self._encode_tensor(t.grad, walk, top=False)
        return out

    # -------------------------------------------------------------- decoding

    def decode(self, tree, walk, depth=0):
        """A JSON tree -> a value. Never calls anything of the other side."""
        if depth > MAX_DEPTH:
            raise ChannelError("a value nested too deeply")
        if tree is None or isinstance(tree, (bool, int, float, str)):
            return tree
        if isinstance(tree, list):
            out = []
            walk.containers.append(out)
            out.extend(self.decode(v, walk, depth + 1) for v in tree)
            return out
        if not isinstance(tree, dict):
            raise ChannelError("a value of an unknown form")
        t = tree.get("t")
        if t == "tuple":
            return tuple(self.decode(v, walk, depth + 1) for v in _list(tree.get("v")))
        if t == "dict":
            out = {}
            walk.containers.append(out)
            for k, v in _list(tree.get("v")):
                key = _hashable(self.decode(k, walk, depth + 1))
                out[key] = self.decode(v, walk, depth + 1)
            return out
        if t == "T":
            return self._decode_tensor(tree, walk)
        if t == "Tsame":                           # a tensor met earlier in this message
            i = tree.get("i")
            if type(i) is not int or not 0 <= i < len(walk.tensors):
                raise ChannelError("a reference to a tensor that was not sent")
            return walk.tensors[i]
        if t == "f":
            if tree.get("v") not in ("inf", "-inf", "nan"):
                raise ChannelError("a float of an unknown form")
            return float(tree["v"])
        if t == "c":
            re_, im = (self.decode(v, walk, depth + 1) for v in _list(tree.get("v"))[:2])
            return complex(float(re_), float(im))
        if t == "size":
            size = [int(v) for v in _list(tree.get("v"))]
            if any(v < 0 for v in size):
                raise ChannelError("a negative size")
            return torch.Size(size)
        if t == "gen":
            state = tree.get("state")
            if not isinstance(state, dict) or state.get("t") != "T":
                raise ChannelError("a random-number generator's state of the wrong form")
            state = self._decode_tensor(state, walk, top=False)
            gen = torch.Generator()
            _set_generator(gen, state)
            walk.generators.append(gen)
            return gen
        if t == "dtype":
            if tree.get("v") not in DTYPES:
                raise ChannelError(f"an unknown dtype {tree.get('v')!r}")
            return DTYPES[tree["v"]]
        if t == "device":
            return torch.device(str(tree.get("v")))
        if t == "slice":
            return slice(*(self.decode(v, walk, depth + 1) for v in _list(tree.get("v"))[:3]))
        if t == "...":
            return Ellipsis
        if t == "exc":
            return error_type(str(tree.get("type")), self.errors)(str(tree.get("msg")))
        if t == "obj":
            cls = self.records.get(str(tree.get("cls")))
            if cls is None:
                raise ChannelError(f"an object of an unknown class {tree.get('cls')!r}")
            record = cls.__new__(cls)
            vars(record).update({str(k): self.decode(v, walk, depth + 1) for k, v in _list(tree.get("v"))})
            walk.records.append(record)
            return record
        if t == "dc":
            fields = {str(k): self.decode(v, walk, depth + 1) for k, v in _list(tree.get("v"))}
            cls = self._dataclass(str(tree.get("name")))
            if cls is None:
                return Fields(str(tree.get("name")), fields)
            known = {f.name for f in dataclasses.fields(cls) if f.init}
            return cls(**{k: v for k, v in fields.items() if k in known})
        if t == "module":
            if self.strict:
                raise ChannelError("a pickled module: the judge never unpickles what the worker sends")
            import io
            module = torch.load(io.BytesIO(bytes(walk.buffers[int(tree["buf"])])), weights_only=False)
            params = dict(module.named_parameters()) if isinstance(module, nn.Module) else {}
            for k, g in _list(tree.get("grads")):
                grad = self._decode_tensor(g, walk, top=False)
                p = params.get(str(k))
                if p is not None and grad.shape == p.shape and grad.dtype == p.dtype:
                    p.grad = grad
            walk.modules.append(module)
            return module
        if t == "mirror":
            if self.strict:
                raise ChannelError("a mirror module: only the judge sends those")
            return Mirror.build(self, tree, walk, depth)
        if t == "h":                               # an object over there
            hid = int(tree["id"])
            self.received[hid] = self.received.get(hid, 0) + 1
            proxy = self.proxies.get(hid)
            if proxy is None:
                proxy = Remote(self, hid, str(tree.get("kind", "object"))[:20], _torch_class(tree.get("cls")))
                self.proxies[hid] = proxy
                weakref.finalize(proxy, self._release, hid)
            return proxy
        if t == "r":                               # one of our own objects, coming back
            return self._target(tree.get("ref"))
        raise ChannelError(f"a value of unknown type {t!r}")

    def _dataclass(self, name):
        cls = self.dataclasses.get(name)
        if cls is None and self.namespace is not None:
            cls = self.namespace.get(name.split(".")[0])
        return cls if isinstance(cls, type) and dataclasses.is_dataclass(cls) else None

    def _decode_tensor(self, tree, walk, top=True):
        dtype = DTYPES.get(tree.get("dtype"))
        shape = [int(s) for s in _list(tree.get("shape"))]
        if dtype is None or any(s < 0 for s in shape) or len(shape) > 64:
            raise ChannelError("a tensor of an unknown dtype or shape")
        if tree.get("device") == "meta":
            t = torch.empty(shape, dtype=dtype, device="meta")
        else:
            raw = walk.buffers[int(tree["buf"])]
            item = torch.empty((), dtype=dtype).element_size()
            stride, n = tree.get("stride"), math.prod(shape)
            if stride is None:
                if len(raw) != n * item:
                    raise ChannelError("a tensor whose bytes do not match its shape")
                t = (torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape) if n
                     else torch.empty(shape, dtype=dtype))
            else:
                stride = [int(s) for s in _list(stride)]
                if len(stride) != len(shape) or min(stride, default=1) < 0 or n == 0:
                    raise ChannelError("a tensor whose strides do not match its shape")
                span = 1 + sum((s - 1) * st for s, st in zip(shape, stride))
                if len(raw) != span * item:
                    raise ChannelError("a tensor whose bytes do not match its strides")
                t = torch.frombuffer(raw, dtype=torch.uint8).view(dtype).as_strided(shape, stride)
        differentiable = t.is_floating_point() or t.is_complex()
        bridged = top and walk.mode == "reply" and "g" in tree and differentiable
        if tree.get("param") and not bridged:
            t = nn.Parameter(t, requires_grad=bool(tree.get("rg")) and differentiable)
        elif tree.get("rg") and differentiable and not bridged:
            t.requires_grad_(True)            # an argument that needs a gradient: a leaf here
        if top:
            walk.tensors.append(t)
            if "grad" in tree and t.requires_grad and t.is_leaf:
                grad = self._decode_tensor(tree["grad"], walk, top=False)
                if grad.shape == t.shape and grad.dtype == t.dtype:
                    t.grad = grad
            if "g" in tree and (bridged or t.requires_grad):
                walk.grads.append((int(tree["g"]), t))
        return t

    # -------------------------------------------------------------- state that travels along

    def _state(self, walk, op=None):
        state = {"grad": torch.is_grad_enabled(), "dtype": str(torch.get_default_dtype()).removeprefix("torch.")}
        if not self.strict:
            if op == "do":                   # a callback: the judge lends it to the tests' code (see serve)
                state["rng"] = self._encode_tensor(torch.get_rng_state(), walk, top=False)
            return state
        rng = torch.get_rng_state()
        # sent when the tests' stream moved or was set (a seed equal to the last one sent counts)
        if self._rng is None or _SEEDINGS[0] != self._seedings or not torch.equal(rng, self._rng):
            self._rng, self._seedings = rng, _SEEDINGS[0]
            state["rng"] = self._encode_tensor(rng, walk, top=False)
        return state

    def _take_rng(self, state, walk):
        """The other side's random-number state, where it sent one. A strict endpoint (the judge)
        never takes it: the tests' inputs come from the tests' own stream, which the learner's code
        cannot set. The worker takes the judge's whenever the judge's changed (a test seeded or
        drew), and otherwise goes on with its own: so `torch.manual_seed(3)` then two calls draw two
        fresh dropout masks, as in one process."""
        if not self.strict and self._set_rng(state, walk):
            self._rng = torch.get_rng_state()

    def _set_rng(self, state, walk):
        """Set this process's random-number state to the one in `state`, if it holds a valid one."""
        if isinstance(state, dict) and isinstance(state.get("rng"), dict):
            rng = self._decode_tensor(state["rng"], walk, top=False)
            if rng.dtype == torch.uint8 and rng.dim() == 1:
                try:
                    _set_rng_state(rng.clone())
                    return True
                except RuntimeError:
                    pass
        return False

    def _take_modes(self, state):
        if isinstance(state, dict):
            torch.set_grad_enabled(bool(state.get("grad", True)))
            dtype = DTYPES.get(state.get("dtype"))
            if dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
                torch.set_default_dtype(dtype)

    def _message(self, op, walk, **fields):
        out = {"op": op, "state": self._state(walk, op), **fields}
        if self.released:
            out["release"], self.released = self.released, []
        if self.released_graphs:
            out["release_graphs"], self.released_graphs = self.released_graphs, []
        return out

    # -------------------------------------------------------------- requests

    def request(self, verb, target, args, kwargs):
        """Ask the other side to do `verb` to `target` (a Remote, or None), and serve its requests
        until the answer comes."""
        if self.broken:
            raise ChannelError(self.broken)
        if self.tracked and not self._flushing:
            self._write_back()
        started = time.perf_counter()
        self.calls += 1
        walk = _Walk(mode="args")
        try:
            message = {"verb": verb, "target": None if target is None else self.encode(target, walk),
                       "args": self.encode(list(args), walk), "kwargs": self.encode(dict(kwargs), walk),
                       "options": dict(self.options)}
            message["plain"] = not (walk.tensors or walk.records or walk.modules or walk.generators)
            send_frame(self.sock, self._message("do", walk, **message), walk.buffers)
            reply, buffers = self._wait()
        except (OSError, ChannelError, TimeoutError, struct.error) as err:
            self.broken = f"the channel to the other side is gone ({err})"
            raise ChannelError(self.broken) from None
        finally:
            self.seconds += time.perf_counter() - started
        try:
            value, err = self._read_reply(reply, buffers, walk, verb, target, args)
        except ChannelError:
            raise
        except Exception as bad:              # a malformed answer is the other side's fault, never ours
            raise ChannelError(f"a malformed answer ({type(bad).__name__}: {str(bad)[:200]})") from None
        if err is not None:
            raise err
        return value

    def _read_reply(self, reply, buffers, walk, verb, target, args):
        back = _Walk(buffers, mode="reply")
        self._take_rng(reply.get("state"), back)
        if not self.strict:                  # where the tests' code left the worker's stream
            self._take_rng({"rng": reply.get("rng_after")}, back)
        for index, tree in _list(reply.get("mutated")):           # changed in place by the callee
            new = self.decode(tree, _Walk(buffers))
            if isinstance(index, int) and 0 <= index < len(walk.tensors) and isinstance(new, torch.Tensor):
                old = walk.tensors[index]
                if old.shape == new.shape and old.dtype == new.dtype and old.device.type != "meta":
                    with torch.no_grad():
                        old.copy_(new)
        if reply.get("n_containers") == len(walk.containers):   # lists and dicts changed in place
            for index, tree in _list(reply.get("containers")):
                if isinstance(index, int) and 0 <= index < len(walk.containers):
                    _refill(walk.containers[index], self.decode(tree, _Walk(buffers)))
        modes = _list(reply.get("modes"))
        if len(modes) == len(walk.mirrors):                     # the callee's train() / eval()
            for module, flag in zip(walk.mirrors, modes):
                module.training = bool(flag)
        pickled = [m for m in walk.modules if isinstance(m, nn.Module)]
        module_modes = _list(reply.get("module_modes"))
        if len(module_modes) == len(pickled):
            for module, flags in zip(pickled, module_modes):
                subs = list(module.modules())
                if isinstance(flags, list) and len(flags) == len(subs):
                    for sub, flag in zip(subs, flags):
                        sub.training = bool(flag)
        for index, tree in _list(reply.get("generators")):        # generators the callee drew from
            if isinstance(index, int) and 0 <= index < len(walk.generators):
                _set_generator(walk.generators[index], self.decode(tree, _Walk(buffers)))
        for index, tree in _list(reply.get("records")):           # FunctionContext and the like
            if isinstance(index, int) and 0 <= index < len(walk.records):
                fields = self.decode(tree, _Walk(buffers))
                vars(walk.records[index]).clear()
                vars(walk.records[index]).update({str(k): v for k, v in fields})
        for index, tree in _list(reply.get("modules")):           # a module of ours the callee changed
            if isinstance(index, int) and 0 <= index < len(walk.modules):
                state = self.decode(tree, _Walk(buffers))
                own = walk.modules[index].state_dict()
                with torch.no_grad():
                    for k, v in state.items() if isinstance(state, dict) else ():
                        if (k in own and isinstance(v, torch.Tensor) and v.shape == own[k].shape
                                and own[k].device.type != "meta"):
                            own[k].copy_(v)
        for index, tree in _list(reply.get("module_grads")):      # ... and the .grad of its parameters
            if isinstance(index, int) and 0 <= index < len(walk.modules):
                grads = self.decode(tree, _Walk(buffers))
                params = dict(walk.modules[index].named_parameters())
                for k, g in grads.items() if isinstance(grads, dict) else ():
                    p = params.get(k)
                    if p is None or p.device.type == "meta":
                        continue
                    if g is None:
                        p.grad = None
                    elif isinstance(g, torch.Tensor) and g.shape == p.shape and g.dtype == p.dtype:
                        p.grad = g.detach().clone()
        if "error" in reply:
            err = self.decode(reply["error"], back)
            return None, err if isinstance(err, BaseException) else ChannelError("a malformed error")
        value = self.decode(reply.get("value"), back)
        if verb == "getattr" and isinstance(value, torch.Tensor) and self.track_attributes:
            # held until the next request (a temporary, as in `m.weight.add_(1)`, lives that
            # long), then weakly (one the tests keep is still theirs to change)
            self.tracked.append((value, target, args[0], value._version))
        if isinstance(reply.get("graph"), int):
            if back.grads and torch.is_grad_enabled():
                value = self._bridge(value, back.grads, walk.grads, reply["graph"])
            else:
                self.released_graphs.append(reply["graph"])
        return value, None

    def _write_back(self):
        """A tensor read as an attribute over there (module.weight) and changed in place here
        since: change it over there too, before anything else happens there."""
        self._flushing = True
        try:
            alive = []
            for ref, target, name, version in self.tracked:
                t = ref() if isinstance(ref, weakref.ref) else ref
                if t is None:
                    continue
                if t._version != version:
                    self.request("assign", target, [name, t], {})
                    version = t._version
                alive.append((weakref.ref(t), target, name, version))
            self.tracked = alive
        finally:
            self._flushing = False

    def _bridge(self, value, outputs, inputs, gid):
        """Tensors that came back with a graph over there get one here, through _Bridge."""
        outputs = [t for _, t in sorted(outputs, key=lambda x: x[0])]
        anchor = torch.zeros((), requires_grad=True)      # so that outputs need grad even with no input
        linked = _Bridge.apply(_Graph(self, gid), anchor, len(inputs), *inputs, *outputs)
        return _replace(value, {id(o): n for o, n in zip(outputs, linked)})

    def _wait(self):
        while True:
            header, buffers = recv_frame(self.sock, self.deadline, SPIN)
            op = header.get("op")
            if op == "reply":
                return header, buffers
            if op != "do":
                raise ChannelError(f"an unexpected message {op!r}")
            self.serve(header, buffers)

    # -------------------------------------------------------------- serving

    def serve(self, header, buffers):
        """Carry out one request of the other side and answer it."""
        walk = _Walk(buffers)
        grad_mode, dtype = torch.is_grad_enabled(), torch.get_default_dtype()
        own_rng = torch.get_rng_state() if self.strict else None   # a callback never moves the tests' stream
        self._take_rng(header.get("state"), walk)
        # The judge runs a callback (a reference module's forward, a loss function of the tests) on
        # the worker's random-number state, lent for the call and sent back after it, so that its
        # dropout draws what it would draw in one process; its own stream is restored afterwards.
        lent = self.strict and self._set_rng(header.get("state"), walk)
        for entry in _list(header.get("release")):
            self._drop(entry)
        for gid in _list(header.get("release_graphs")):
            self.graphs.pop(gid, None) if isinstance(gid, int) else None
        out_walk, out = _Walk(), {}
        sticky = self.sticky
        try:
            verb = header.get("verb")
            if verb not in self.verbs and verb != "backward":
                raise ChannelError(f"an unknown request {verb!r}")
            options = header.get("options") if isinstance(header.get("options"), dict) else {}
            plain = sticky is not None and header.get("plain") is True and verb != "backward"
            if sticky is not None and not plain:
                sticky.release()
            if not (plain and sticky.holds(options)):   # a held switch-off keeps its own grad mode
                self._take_modes(header.get("state"))
            target = header.get("target")
            target = None if target is None else self.decode(target, walk)
            args = self.decode(header.get("args", []), walk)
            kwargs = self.decode(header.get("kwargs", {}), walk)
            if not isinstance(args, list) or not isinstance(kwargs, dict):
                raise ChannelError("malformed arguments")
            kwargs = {str(k): v for k, v in kwargs.items()}
            versions = [t._version for t in walk.tensors]
            contents = [_contents(c) for c in walk.containers]
            if plain:
                sticky.hold(options)
            value = self._do(verb, target, args, kwargs, options, switch=not plain)
            if plain and not _plain(value):
                sticky.release()
            if self.check_result:
                self.check_result(value, options)
            out["mutated"] = [[i, self.encode(t, _Walk(out_walk.buffers))]
                              for i, (t, v) in enumerate(zip(walk.tensors, versions)) if t._version != v]
            out["containers"] = [[i, self.encode(c, _Walk(out_walk.buffers))]
                                 for i, (c, was) in enumerate(zip(walk.containers, contents))
                                 if _changed(_contents(c), was)]
            out["n_containers"] = len(walk.containers)
            # train() and eval() on the tests' modules: each module's own flag, in the order walked
            out["modes"] = [bool(m.training) for m in walk.mirrors]
            out["module_modes"] = [[bool(sub.training) for sub in m.modules()] for m in walk.modules
                                   if isinstance(m, nn.Module)]
            out["generators"] = [[i, self._encode_tensor(g.get_state(), _Walk(out_walk.buffers), top=False)]
                                 for i, g in enumerate(walk.generators)]
            out["records"] = [[i, self.encode([[k, v] for k, v in vars(r).items()], _Walk(out_walk.buffers))]
                              for i, r in enumerate(walk.records)]
            out["modules"] = [[i, self.encode(dict(m.state_dict()), _Walk(out_walk.buffers))]
                              for i, m in enumerate(walk.modules)]
            out["module_grads"] = [[i, self.encode({k: None if p.grad is None else p.grad.detach()
                                                    for k, p in m.named_parameters()}, _Walk(out_walk.buffers))]
                                   for i, m in enumerate(walk.modules) if isinstance(m, nn.Module)]
            out["value"] = self.encode(value, out_walk)
            if out_walk.grads:
                gid, self._next = self._next, self._next + 1
                inputs = [t for _, t in sorted(walk.grads, key=lambda x: x[0])]
                self.graphs[gid] = (out_walk.grads, inputs)
                out["graph"] = gid
        except Exception as err:                   # the requester's to handle
            out_walk, out = _Walk(), {"error": {"t": "exc", "type": type(err).__name__[:200],
                                                "msg": _text(err)}}
        except BaseException as err:               # an interrupt or exit inside the learner's code
            out_walk, out = _Walk(), {"error": {"t": "exc", "type": type(err).__name__[:200],
                                                "msg": _text(err)}}
        try:
            if sticky is None or not sticky.active():   # a held switch-off keeps the grad mode it set
                torch.set_grad_enabled(grad_mode)
            torch.set_default_dtype(dtype)
            if lent:
                out["rng_after"] = self._encode_tensor(torch.get_rng_state(), out_walk, top=False)
            if own_rng is not None:
                _set_rng_state(own_rng)
            message = self._message("reply", out_walk, **out)
        except Exception as err:                   # the learner's code broke this process's torch
            out_walk = _Walk()
            message = self._message("reply", out_walk, error={"t": "exc", "type": type(err).__name__[:200],
                                                             "msg": _text(err)})
        send_frame(self.sock, message, out_walk.buffers)

    def serve_forever(self, log=None):
        """Serve the other side's requests until it closes the channel or breaks it (the worker's
        life). log: where to say why it stopped, if it was not a plain close."""
        while True:
            try:
                header, buffers = recv_frame(self.sock)
            except (ChannelError, OSError):
                return
            if header.get("op") != "do":
                return
            try:
                self.serve(header, buffers)
            except (OSError, ChannelError) as err:
                why = f"the channel failed: {err!r}"
            except BaseException as err:           # noqa: B036 - no answer could be sent: stop; the other side sees the end
                why = f"a request failed outside its answer: {err!r}"
            else:
                continue
            if log is not None:
                log.write(f"channel: {why}\n")
            return

    def _drop(self, entry):
        if isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, int) for x in entry):
            hid, times = entry
            held = self.exports.get(hid)
            if held:
                held[1] -= times
                if held[1] <= 0:
                    del self.exports[hid]
                    self.export_ids.pop(id(held[0]), None)

    def _target(self, ref):
        if isinstance(ref, int) and ref in self.exports:
            return self.exports[ref][0]
        if isinstance(ref, str) and self.namespace is not None:
            if ref not in self.namespace:
                raise NameError(f"name {ref!r} is not defined")
            return self.namespace[ref]
        raise ChannelError("a handle that is not (or no longer) valid")

    def _do(self, verb, target, args, kwargs, options, switch=True):
        if self.strict and verb not in ("call", "backward"):
            raise PermissionError(f"the learner's code may only call the functions the tests pass "
                                  f"it, not {verb} them")
        guard = self.guard(options, switch) if self.guard else None
        if verb == "backward":
            fn = self._backward
        else:
            fn = self.verbs[verb]
            args = [target, *args]
        if guard is None:
            return fn(*args, **kwargs)
        with guard:
            return fn(*args, **kwargs)

    def _backward(self, gid, grads):
        if not isinstance(gid, int) or gid not in self.graphs:
            raise RuntimeError("backward through a graph that was freed")
        outputs, inputs = self.graphs[gid]
        pairs = [(o, g) for o, g in zip(outputs, _list(grads)) if isinstance(g, torch.Tensor)]
        for t in inputs:
            t.grad = None
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs], retain_graph=True)
        return [t.grad for t in inputs]

    def _release(self, hid):
        times = self.received.pop(hid, 0)
        if times:
            self.released.append([hid, times])


_VERBS = {
    "call": lambda target, *args, **kwargs: target(*args, **kwargs),
    "getattr": lambda target, name: getattr(target, name),
    "setattr": lambda target, name, value: setattr(target, name, value),
    "delattr": lambda target, name: delattr(target, name),
    "getitem": lambda target, key: target[key],
    "setitem": lambda target, key, value: operator.setitem(target, key, value),
    "len": lambda target: len(target),
    "iter": lambda target: list(_limited(iter(target))),
    "contains": lambda target, item: item in target,
    "bool": lambda target: bool(target),
    "float": lambda target: float(target),
    "int": lambda target: int(target),
    "index": lambda target: operator.index(target),
    "repr": lambda target: repr(target)[:MAX_TEXT],
    "str": lambda target: str(target)[:MAX_TEXT],
    "format": lambda target, spec: format(target, spec)[:MAX_TEXT],
    "isinstance": lambda target, obj: isinstance(obj, target),
    "issubclass": lambda target, cls: issubclass(cls, target),
    "enter": lambda target: target.__enter__(),
    "exit": lambda target: target.__exit__(None, None, None),
    "op": lambda target, name, *args: OPERATORS[name](*args),
    "assign": lambda target, name, value: _assign(target, name, value),
    "vars": lambda target: dict(vars(target)),
    "type": lambda target: type(target),
}


_set_rng_state = torch.set_rng_state       # the channel's own, never counted as the tests' seeding
_SEEDINGS = [0]                            # how often the tests' code seeded or set the generator


def _count_seedings():
    """In the judge: count torch.manual_seed and torch.set_rng_state, so that a test that seeds
    the generator to the state it had at the last request still resets the worker's stream."""
    if getattr(torch.manual_seed, "_course_counted", False):
        return

    def counted(fn):
        def wrapper(*args, **kwargs):
            _SEEDINGS[0] += 1
            return fn(*args, **kwargs)
        wrapper._course_counted = True
        wrapper.__name__, wrapper.__doc__, wrapper.__wrapped__ = fn.__name__, fn.__doc__, fn
        return wrapper

    torch.manual_seed = torch.random.manual_seed = counted(torch.random.manual_seed)
    torch.set_rng_state = torch.random.set_rng_state = counted(torch.random.set_rng_state)


class Mirror(nn.Module):
    """The worker's copy of a module the tests passed in (a reference module of theirs): its
    submodules, parameters, buffers and attributes live here, where the learner's code can read
    and change them; its forward is the judge's, run there on these parameters (by value, with
    gradients through the bridge)."""

    @classmethod
    def build(cls, endpoint, tree, walk, depth):
        mirror = cls()
        mirror.mirrored = str(tree.get("name"))
        walk.mirrors.append(mirror)
        for k, v in _list(tree.get("params")):
            mirror.register_parameter(str(k), endpoint.decode(v, walk, depth + 1))
        for k, v in _list(tree.get("buffers")):
            mirror.register_buffer(str(k), endpoint.decode(v, walk, depth + 1))
        for k, v in _list(tree.get("modules")):
            mirror.add_module(str(k), endpoint.decode(v, walk, depth + 1))
        for k, v in _list(tree.get("attrs")):
            setattr(mirror, str(k), endpoint.decode(v, walk, depth + 1))
        object.__setattr__(mirror, "_judge_forward", endpoint.decode(tree.get("forward"), walk, depth + 1))
        mirror.train(bool(tree.get("training")))
        return mirror

    def forward(self, *args, **kwargs):
        state = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        return self._judge_forward(state, self.training, *args, **kwargs)

    def extra_repr(self):
        return f"a copy of the tests' {self.mirrored}"


def _assign(target, name, value):
    """Write the other side's new values into the tensor attribute, in place (a parameter stays the
    same object, so whatever shares it sees the change, as in one process)."""
    old = getattr(target, name)
    with torch.no_grad():
        if isinstance(old, torch.Tensor) and old.shape == value.shape:
            old.copy_(value)
        else:
            setattr(target, name, value)


def _set_generator(gen, state):
    """Give a CPU generator the state the other side sent, if it is one (same size, bytes)."""
    own = gen.get_state()
    if not (isinstance(state, torch.Tensor) and state.dtype == torch.uint8 and state.shape == own.shape):
        raise ChannelError("a random-number generator's state of the wrong form")
    gen.set_state(state.contiguous())


def _torch_class(path):
    """'torch.nn.modules.dropout:Dropout' -> that class, if that module is loaded here (no import,
    nothing but attribute lookups on PyTorch's own modules)."""
    if not isinstance(path, str) or ":" not in path:
        return None
    module, qualname = path.split(":", 1)
    obj = sys.modules.get(module) if module.split(".")[0] == "torch" else None
    for part in qualname.split("."):
        obj = getattr(obj, part, None) if obj is not None and part.isidentifier() else None
    # only modules (isinstance(proxy, nn.Dropout)): a proxy that passed for a tensor would be
    # compared, added to and indexed like one, with the tests' values sent to the learner's code
    return obj if isinstance(obj, type) and issubclass(obj, nn.Module) and obj.__module__.split(".")[0] == "torch" \
        else None


def _tensors_in(value, out=None, depth=0):
    """The tensors in nested lists, tuples and dicts."""
    out = [] if out is None else out
    if isinstance(value, torch.Tensor):
        out.append(value)
    elif isinstance(value, (list, tuple)) and depth < MAX_DEPTH:
        for v in value:
            _tensors_in(v, out, depth + 1)
    elif isinstance(value, dict) and depth < MAX_DEPTH:
        for v in value.values():
            _tensors_in(v, out, depth + 1)
    return out


def _plain(value, depth=0):
    """Whether encoding the value touches no tensor (numbers, strings, handles, containers of these)."""
    if value is None or type(value) in (bool, int, float, str, complex) or type(value) is Remote:
        return True
    if type(value) in (list, tuple) and depth < 4 and len(value) <= 64:
        return all(_plain(v, depth + 1) for v in value)
    if type(value) is dict and depth < 4 and len(value) <= 64:
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return not (isinstance(value, (torch.Tensor, list, tuple, dict, BaseException)) or _is_iterator(value)
                or dataclasses.is_dataclass(value))


def _text(err):
    try:
        return str(err)[:10_000]
    except Exception:
        return f"<{type(err).__name__} whose message cannot be shown>"


def _list(x):
    return x if isinstance(x, list) else []


def _limited(iterator):
    for n, item in enumerate(iterator):
        if n >= MAX_ITEMS:
            raise ValueError("an iterator too long to pass over")
        yield item


def _is_iterator(value):
    return hasattr(type(value), "__next__") and hasattr(type(value), "__iter__") and not isinstance(value, nn.Module)


def _hashable(key):
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    if isinstance(key, dict):
        return tuple(sorted(key.items()))
    return key


def _replace(tree, swap):
    if isinstance(tree, torch.Tensor):
        return swap.get(id(tree), tree)
    if type(tree) is list:
        return [_replace(v, swap) for v in tree]
    if type(tree) is tuple:
        return tuple(_replace(v, swap) for v in tree)
    if type(tree) is dict:
        return {k: _replace(v, swap) for k, v in tree.items()}
    return tree


class Fields:
    """An instance of a dataclass this side does not know: its fields, read-only."""

    def __init__(self, name, fields):
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_fields", dict(fields))

    def __getattr__(self, name):
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError(f"{self._name} is read-only here")

    def __repr__(self):
        return f"{self._name}({', '.join(f'{k}={v!r}' for k, v in self._fields.items())})"


def name_ref(endpoint, name):
    """A Remote for a name in the other side's namespace, looked up at each use (so that a
    learner's later cell that redefines it counts, as it does in the notebook)."""
    return Remote(endpoint, name, "name")
