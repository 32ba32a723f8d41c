"""Run one submitted notebook in a fresh kernel, with time and output limits and a tamper audit; used by tools/grading.py.

This program is started by the grader inside the sandbox it builds (its own folder, no network,
the course's files hidden, an unprivileged user where possible, a memory limit). It reads the
notebook to run, with the hidden tests restored, as JSON on stdin, and reports on the file
descriptor given by --fd, one JSON object per line:

    {"event": "kernel", "pid": 1234}              the kernel started
    {"event": "cell", "index": 7}                 cell 7 is about to run
    {"event": "done", "notebook": {...}, ...}     the executed notebook and what happened

Nothing the kernel prints can reach that descriptor: the kernel does not inherit it. The audit
runs a short piece of code after every cell and compares what the tests rely on (functions of
torch, torch.nn.functional, math, builtins and the course's modules; the names that the
notebook's own cells defined and its test cells use; exception and tracing hooks) with what it
was before the learner's code ran.
"""
import argparse
import json
import os
import re
import sys
import time

# jsonschema imports rfc3987_syntax, if installed, to check URI formats; building its grammar takes
# seconds, on every notebook. nbformat never needs it.
sys.modules.setdefault("rfc3987_syntax", None)

import nbformat  # noqa: E402
from nbclient import NotebookClient  # noqa: E402
from nbclient.exceptions import CellTimeoutError, DeadKernelError  # noqa: E402

NOT_RUN = "NotRun"

AUDIT = r'''
def __course_audit(modules, names, full):
    import sys, types, json, zlib, builtins
    r = object.__repr__                      # an address that no learner code can redefine
    _id = builtins.id
    if not r(_id).startswith("<built-in function id"):
        _id = lambda v: int(r(v).rsplit(" at 0x", 1)[-1].rstrip(">"), 16)
    def fp(v):  # the object's address (and its code's, which can be swapped in place), and its module
        return (_id(v), _id(getattr(v, "__code__", None)), _id(getattr(v, "__defaults__", None)),
                _id(getattr(v, "__kwdefaults__", None)), _id(getattr(v, "__closure__", None)),
                str(getattr(v, "__module__", "") or ""))
    def h(v):
        f = fp(v)
        return format(zlib.crc32(repr(f[:5]).encode()), "08x") + ":" + f[5]
    out, ip, group = {}, get_ipython(), {}
    scanned = {"builtins": builtins}
    for m in modules:
        if m in sys.modules:
            scanned[m] = sys.modules[m]
    for m in [m for m in sys.modules if m.startswith("solutions.")]:
        scanned[m] = sys.modules[m]
    for mname, mod in scanned.items():
        for k, v in list(vars(mod).items()):
            if mname == "builtins" and k in ("input", "raw_input"):    # the kernel rebinds these for every request
                continue
            if callable(v) or isinstance(v, types.ModuleType):
                out[f"{mname}::{k}"] = fp(v)
                group[f"{mname}::{k}"] = mname
                if isinstance(v, type) and (mname.startswith("solutions.") or mname == "torch.nn" and k in (
                        "Module", "Linear", "MultiheadAttention", "LayerNorm", "Embedding", "Dropout", "Softmax")):
                    for a, w in list(vars(v).items()):
                        if callable(w):
                            out[f"{mname}::{k}.{a}"] = fp(w)
                            group[f"{mname}::{k}.{a}"] = mname
    torch = sys.modules.get("torch")
    if torch is not None:
        for cname, cls in (("torch.Tensor", torch.Tensor), ("torch.nn.Module", torch.nn.Module)):
            for k, v in list(vars(cls).items()):
                if callable(v):
                    out[f"{cname}::{k}"] = fp(v)
                    group[f"{cname}::{k}"] = cname
    for k in names:
        if k in ip.user_ns:
            v = ip.user_ns[k]
            if isinstance(v, (types.FunctionType, type, types.ModuleType, types.SimpleNamespace,
                              types.BuiltinFunctionType, tuple)):
                out["ns." + k] = h(v)
                if isinstance(v, types.SimpleNamespace):
                    for a, w in vars(v).items():
                        out[f"ns.{k}.{a}"] = h(w)
            else:
                out["ns." + k] = "object"
    hooks = {"sys.gettrace": h(sys.gettrace()), "sys.getprofile": h(sys.getprofile()),
             "ipython.custom_exceptions": repr(ip.custom_exceptions),
             "ipython.input_transformers": str(len(ip.input_transformers_post)),
             "ipython.ast_transformers": str(len(ip.ast_transformers)),
             "builtins.__import__": h(builtins.__import__)}
    for meth in ("showtraceback", "_showtraceback", "showsyntaxerror", "run_cell", "run_ast_nodes", "run_code",
                 "set_custom_exc"):
        hooks["ipython." + meth] = h(getattr(type(ip), meth, None)) + ("+instance" if meth in vars(ip) else "")
    out.update(hooks)
    loaded = sorted(m for m in sys.modules if m.startswith("solutions."))
    # the library's functions go as one digest per module, and in full only for the modules asked for
    digests, state, members = {}, {}, {}
    for k, v in out.items():
        g = group.get(k)
        if g is None:
            state[k] = v
        else:
            members.setdefault(g, []).append((k, v))
            if full == "all" or g in full:
                state[k] = format(zlib.crc32(repr(v[:5]).encode()), "08x") + ":" + v[5]
    for g, items in members.items():
        digests[g] = format(hash(tuple(items)) & 0xFFFFFFFFFFFF, "x")
    print("%(marker)s" + json.dumps({"state": state, "digests": digests, "loaded": loaded}))
__course_audit(%(modules)r, %(names)r, %(full)r)
del __course_audit
'''


def channel(fd):
    """The grader's pipe, which the kernel does not inherit."""
    os.set_inheritable(fd, False)
    return os.fdopen(fd, "w", buffering=1)


class LimitedClient(NotebookClient):
    """A notebook client that caps each cell's output and remembers which cells timed out."""

    max_output_bytes = 1_000_000

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.timed_out = []
        self._sizes = {}
        self._truncated = set()

    async def _async_handle_timeout(self, timeout, cell=None):
        self.timed_out.append(self._current)
        return await super()._async_handle_timeout(timeout, cell)

    def output(self, outs, msg, display_id, cell_index):
        size = len(json.dumps(msg.get("content", {}), default=str))
        total = self._sizes.get(cell_index, 0) + size
        self._sizes[cell_index] = total
        if total > self.max_output_bytes:
            if cell_index not in self._truncated:
                self._truncated.add(cell_index)
                outs.append(nbformat.v4.new_output("stream", name="stderr",
                            text=f"\n[output truncated by the grader after {self.max_output_bytes:,} bytes]\n"))
            return None
        return super().output(outs, msg, display_id, cell_index)


def not_run(cell, why):
    cell.outputs = [nbformat.v4.new_output("error", ename=NOT_RUN, evalue=why, traceback=[f"{NOT_RUN}: {why}"])]


def library_code(fingerprint):
    """Whether an audited object was defined by a library rather than by the notebook's code."""
    module = fingerprint.split(":", 1)[1] if ":" in fingerprint else ""
    return module.split(".")[0] in ("torch", "builtins", "math", "functools", "typing", "torchgen")


class Watch:
    """Compares the audits. Library functions and hooks must never change. A name that the test
    cells use and the course's cells defined must not change, unless a course cell assigns it."""

    def __init__(self, state, own_module, report):
        self.library = {k: v for k, v in state.items() if not k.startswith("ns.")}
        self.names, self.protected, self.own, self.report = dict(state), {}, own_module, report
        self.reported = set()

    def _flag(self, what):
        what = what.replace("::", ".")
        if what not in self.reported:
            self.reported.add(what)
            self.report.append(what)

    def _library(self, state, where):
        for k, v in state.items():
            if k.startswith("ns."):
                continue
            if k not in self.library:
                self.library[k] = v               # a module imported since: new functions, not changed ones
            elif self.library[k] != v:
                if library_code(v):               # the library replaced its own function (lazy set-up)
                    self.library[k] = v
                else:
                    self._flag(f"{where} changed {k}")

    def after_course(self, audit, sources, i):
        if audit is None:
            return self._flag(f"before cell {i}: the grader's audit got no answer from the kernel")
        state = audit["state"]
        self._library(state, "the code the tests ran")
        text = "\n".join(sources)
        for k, v in state.items():
            if k.startswith("ns.") and self.names.get(k) != v:
                name = k[3:].split(".")[0]
                if re.search(rf"\b{re.escape(name)}\b", text):
                    self.protected[k] = v         # assigned by the course's own cells
                elif k in self.protected:
                    self._flag(f"the code the tests ran changed {k[3:]}")
        self.names = dict(state)

    def after_learner(self, audit, i):
        if audit is None:
            return self._flag(f"cell {i}: the grader's audit got no answer from the kernel")
        state = audit["state"]
        self._library(state, f"cell {i}")
        for k, v in self.protected.items():
            if state.get(k) != v:
                self._flag(f"cell {i} changed {k[3:]}, which the tests use")
        if self.own in audit["loaded"]:
            self._flag(f"cell {i} imported {self.own}, the reference solutions")
        self.names = dict(state)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fd", type=int, required=True, help="where to write the events")
    ap.add_argument("--cell-timeout", type=float, required=True)
    ap.add_argument("--timeout", type=float, required=True, help="for the whole notebook")
    ap.add_argument("--chapter", required=True)
    ap.add_argument("--modules", default="torch,torch.nn.functional,torch.nn,math")
    args = ap.parse_args()
    out = channel(args.fd)
    started = time.monotonic()
    nb = nbformat.reads(sys.stdin.read(), as_version=4)
    sys.stdin.close()
    spec = nb.metadata.pop("course_grading", {})
    trusted = set(spec.get("trusted", []))          # indices of cells that come from the course, not the learner
    names = spec.get("names", [])                   # names the test cells use
    modules = args.modules.split(",")
    marker = f"@@audit-{os.urandom(8).hex()}@@"
    client = LimitedClient(nb, timeout=int(args.cell_timeout), interrupt_on_timeout=True, allow_errors=True,
                           kernel_name="python3", record_timing=False, resources={"metadata": {"path": os.getcwd()}},
                           extra_arguments=["--HistoryManager.hist_file=:memory:"])
    client._current = None
    result = {"event": "done", "timed_out": [], "died": None, "deadline": None, "tampered": []}

    n_cells = len(nb.cells)
    nb.cells.append(nbformat.v4.new_code_cell(""))   # the slot the audit runs in (nbclient stores what it runs)
    slot = n_cells

    audit_time = [0.0]

    def audit(index):
        t0 = time.monotonic()
        try:
            return _audit(index)
        finally:
            audit_time[0] += time.monotonic() - t0

    library, digests = {}, {}          # kept here, out of the kernel's reach

    def _audit(index):
        answer = _ask(index, "all" if not digests else [])
        if answer is None:
            return None
        changed = [g for g, d in answer["digests"].items() if digests.get(g) != d]
        if changed and digests:
            detail = _ask(index, changed)
            if detail is None:
                return None
            answer["state"].update({k: v for k, v in detail["state"].items() if "::" in k})
        for g in changed:                  # a changed module: forget its old entries, take the new ones
            for k in [k for k in library if k.startswith(g + "::")]:
                del library[k]
        library.update({k: v for k, v in answer["state"].items() if "::" in k})
        digests.update(answer["digests"])
        answer["state"].update(library)
        return answer

    def _ask(index, full):
        cell = nbformat.v4.new_code_cell(AUDIT % {"marker": marker, "modules": modules, "names": names, "full": full})
        client._current = ("audit", index)
        client._sizes.pop(slot, None)
        client.execute_cell(cell, slot, store_history=False)
        for o in cell.outputs:
            if o.output_type == "stream":
                for line in o.text.splitlines():
                    if line.startswith(marker):
                        return json.loads(line[len(marker):])
        return None

    with client.setup_kernel():
        out.write(json.dumps({"event": "kernel", "pid": client.km.provisioner.pid if client.km.provisioner else None}) + "\n")
        result["kernel_start_seconds"] = round(time.monotonic() - started, 2)
        first = audit(0)
        if first is None:
            raise SystemExit("the audit did not answer before any notebook code ran")
        watch = Watch(first["state"], f"solutions.{args.chapter}", result["tampered"])
        pending = []                     # sources of the course's cells run since the last audit
        i = 0
        try:
            for i, cell in enumerate(nb.cells[:n_cells]):
                if cell.cell_type != "code":
                    continue
                left = args.timeout - (time.monotonic() - started)
                if left <= 1:
                    result["deadline"] = i
                    break
                learner = i not in trusted
                if learner and pending:  # what the course's cells defined since the last audit is the reference
                    watch.after_course(audit(i), pending, i)
                    pending = []
                client.timeout = int(max(1, min(args.cell_timeout, left)))
                out.write(json.dumps({"event": "cell", "index": i}) + "\n")
                client._current = i
                client.execute_cell(cell, i)
                if client.timed_out and client.timed_out[-1] == i and left < args.cell_timeout:
                    result["deadline"] = i
                if learner:
                    watch.after_learner(audit(i), i)
                else:
                    pending.append(cell.source)
            if pending:
                watch.after_course(audit(i), pending, i)
        except DeadKernelError:
            result["died"] = i
        except CellTimeoutError:
            result["deadline"] = i
        stop = result["died"] if result["died"] is not None else result["deadline"]
        if stop is not None:
            why = ("the kernel died while an earlier cell ran" if result["died"] is not None
                   else "the notebook reached its time limit before this cell")
            for j, cell in enumerate(nb.cells[:n_cells]):
                if cell.cell_type == "code" and j > stop:
                    not_run(cell, why)
            if result["died"] is not None:
                nb.cells[stop].outputs.append(nbformat.v4.new_output(
                    "error", ename="DeadKernelError", evalue="the kernel died while this cell ran",
                    traceback=["DeadKernelError: the kernel died while this cell ran"]))
            else:
                nb.cells[stop].outputs.append(nbformat.v4.new_output(
                    "error", ename="TimeoutError", evalue="the notebook's time limit was reached in this cell",
                    traceback=["TimeoutError: the notebook's time limit was reached in this cell"]))
        del nb.cells[slot:]
        result["timed_out"] = sorted({t for t in client.timed_out if isinstance(t, int)})
        for cell in nb.cells:
            if cell.cell_type == "code":
                for o in cell.outputs:   # the audit marker never belongs in the graded notebook
                    if o.output_type == "stream" and marker in o.get("text", ""):
                        o.text = re.sub(rf"{re.escape(marker)}.*\n?", "", o.text)
        result["notebook"] = nbformat.writes(nb)
        result["seconds"] = round(time.monotonic() - started, 3)
        result["audit_seconds"] = round(audit_time[0], 3)
        out.write(json.dumps(result) + "\n")
        out.close()        # the grader now ends the kernel and everything else in the sandbox


if __name__ == "__main__":
    main()
