"""The grading judge: runs one submission's tests against the learner's code, which runs in a sandboxed worker; started by tools/grading.py.

The judge is the trusted half of grading. It never runs the learner's code: every code cell of
the learner's goes to the worker (tools/worker.py, inside the sandbox of tools/jail.py) and only
its outputs come back, for the feedback. The test cells run here, in order, with the learner's
names (those the chapter's solution cells define) bound to handles of the worker's objects
(solutions/channel.py): calling one runs it in the worker on the test's inputs, sent by value, and
its result comes back by value. The course's own definition cells (imports, configs, data; cells
tagged `export`, locked, or only imports) run on both sides. The outputs of a test cell are this
process's own: what the tests printed and, if one failed, its error. So a score is earned only by
what the worker's code returned on the judge's inputs.

It reads the notebook to run (nbgrader's, hidden tests restored) as JSON on stdin, and reports on
the descriptor --fd, one JSON object per line:

    {"event": "worker", "pid": 1234}              the worker started
    {"event": "cell", "index": 7}                 cell 7 is about to run
    {"event": "done", "notebook": "...", ...}     the executed notebook and what happened
"""
import argparse
import ast
import builtins
import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.modules.setdefault("rfc3987_syntax", None)   # seconds of grammar building that nbformat never needs

import nbformat  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import jail  # noqa: E402

NOT_RUN = "NotRun"
GRACE = 10                     # seconds past a limit before the worker is killed
MAX_CELL_OUTPUT = 1_000_000    # bytes of outputs per cell, display updates included
MAX_OUTPUT = 20_000_000        # bytes of outputs of the whole notebook
OUTPUT_TYPES = {"stream", "display_data", "execute_result", "error"}


def meta(cell):
    """A cell's nbgrader metadata; {} if a submission made it anything but a dict."""
    md = cell.get("metadata")
    m = md.get("nbgrader", {}) if isinstance(md, dict) else {}
    return m if isinstance(m, dict) else {}


def is_test(cell):
    return meta(cell).get("grade") and not meta(cell).get("solution")


def defined_names(source):
    """The top-level names a solution cell defines (functions, classes, assignments)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    return names


def imports_only(source):
    """Whether a cell's code is nothing but import statements."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return bool(tree.body) and all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body)


def course_definitions(cell):
    """Whether a course cell defines what the tests use: tagged export, locked, or only imports."""
    if "export" in cell.get("metadata", {}).get("tags", []) or meta(cell).get("locked"):
        return True
    return imports_only(cell.source)


def for_worker(source):
    """A course cell as the worker runs it: the test machinery (solutions.testing, which the worker
    does not have) is not imported; its names are given stand-ins that say where the tests run."""
    if "solutions.testing" not in source:
        return source
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return source
    body, stubs = [], []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module == "solutions.testing":
            stubs += [a.asname or a.name for a in node.names]
        elif isinstance(node, ast.Import) and any(a.name == "solutions.testing" for a in node.names):
            stubs += ["solutions"]
        else:
            body.append(node)
    guard_names = {"SOFTMAX", "NORMALIZATION", "GELU", "ATTENTION", "Forbidden", "FunctionContext", "switched_off"}
    lines = [f"from solutions.guard import {n}" for n in stubs if n in guard_names]
    lines += [f"def {n}(*args, **kwargs):\n    raise RuntimeError('{n} belongs to the tests, which run in the "
              "grader, not in your notebook, at grading time')" for n in stubs if n not in guard_names]
    return "\n".join(lines + [ast.unparse(n) for n in body])


CHAPTER_IMPORT = re.compile(r"(?:from|import)\s+solutions\.(ch\d\d_\w+)")


def imported_chapters(cells, own):
    """The earlier chapters' modules that the course's cells import, and those that they import in
    turn (chapter 5's Block needs chapter 2's GELU): the worker gets those, never `own`."""
    found, todo = set(), [m.group(1) for cell in cells for m in CHAPTER_IMPORT.finditer(cell.source)]
    while todo:
        name = todo.pop()
        if name == own or name in found:
            continue
        found.add(name)
        module = Path(__file__).resolve().parent.parent / "solutions" / f"{name}.py"
        if module.is_file():
            todo += [m.group(1) for m in CHAPTER_IMPORT.finditer(module.read_text())]
    return sorted(found)


def plain_json(v, depth=0):
    """Whether v is plain JSON data (what an output may hold; a handle or anything else is not)."""
    if v is None or type(v) in (bool, int, float, str):
        return True
    if depth > 20:
        return False
    if type(v) is list:
        return all(plain_json(x, depth + 1) for x in v)
    if type(v) is dict:
        return all(type(k) is str and plain_json(x, depth + 1) for k, x in v.items())
    return False


def clean_outputs(outputs, budget):
    """The worker's outputs for a cell, as valid nbformat outputs within the byte budget; anything
    else is dropped. Returns (outputs, bytes used)."""
    good, used = [], 0
    for out in outputs if isinstance(outputs, list) else []:
        if not plain_json(out) or out.get("output_type") not in OUTPUT_TYPES:
            continue
        kind = out["output_type"]
        try:
            if kind == "stream":
                o = nbformat.v4.new_output("stream", name="stderr" if out.get("name") == "stderr" else "stdout",
                                           text=str(out.get("text", "")))
            elif kind == "error":
                o = nbformat.v4.new_output("error", ename=str(out.get("ename", "Error")),
                                           evalue=str(out.get("evalue", "")),
                                           traceback=[str(t) for t in out.get("traceback", [])
                                                      if isinstance(out.get("traceback"), list)][:200])
            else:
                data = {k: v if isinstance(v, (str, dict, list)) else json.dumps(v)
                        for k, v in (out.get("data") if isinstance(out.get("data"), dict) else {}).items()}
                metadata = out.get("metadata") if isinstance(out.get("metadata"), dict) else {}
                o = nbformat.v4.new_output(kind, data=data, metadata=metadata)
                if kind == "execute_result":
                    o.execution_count = None
            size = len(json.dumps(o))
        except (TypeError, ValueError):
            continue
        if used + size > budget:
            good.append(nbformat.v4.new_output("stream", name="stderr",
                                               text=f"\n[output truncated by the grader after {budget:,} bytes]\n"))
            break
        good.append(o)
        used += size
    return good, used


class Worker:
    """The sandboxed worker process and the judge's end of the channel to it."""

    def __init__(self, chapter, chapters, memory, threads):
        from solutions import channel, testing
        self.channel = channel
        self.lib = Path(tempfile.mkdtemp(prefix="course-worker-lib-"))
        package = self.lib / "solutions"
        package.mkdir()
        source = Path(testing.__file__).parent
        for name in ["__init__", "guard", "channel", *chapters]:
            if (source / f"{name}.py").exists():
                shutil.copy2(source / f"{name}.py", package / f"{name}.py")
        shutil.copy2(HERE / "worker.py", self.lib / "worker.py")
        ours, theirs = socket.socketpair()
        self.sock = ours
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1",
               "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "MPLBACKEND": "module://matplotlib_inline.backend_inline", "NBGRADER_EXECUTION": "autograde"}
        for var in ("COURSE_DATA", "TIKTOKEN_CACHE_DIR"):
            if var in os.environ:
                env[var] = os.environ[var]
        fd = theirs.fileno()
        self.how = jail.isolation()
        if self.how == "bubblewrap":
            env.update(HOME=jail.WORK, TMPDIR="/tmp", MPLCONFIGDIR="/tmp", PYTHONPATH="/course/lib",
                       XDG_CACHE_HOME="/tmp", IPYTHONDIR="/tmp/.ipython")
            binds = {str(self.lib): "/course/lib"}
            for var in ("COURSE_DATA", "TIKTOKEN_CACHE_DIR"):
                if var in os.environ and Path(os.environ[var]).is_dir():
                    binds[os.environ[var]] = os.environ[var]
            argv, preexec = jail.command([sys.executable, "/course/lib/worker.py", "--fd", str(fd)], binds=binds,
                                         env=env, memory=memory, pass_fds=(fd,), cgroups=("pids",))
            self.home = None
        else:
            self.home = Path(tempfile.mkdtemp(prefix="course-worker-"))
            env.update(HOME=str(self.home), TMPDIR=str(self.home), MPLCONFIGDIR=str(self.home),
                       PYTHONPATH=str(self.lib), XDG_CACHE_HOME=str(self.home), IPYTHONDIR=str(self.home / ".ipython"))
            argv = [sys.executable, str(self.lib / "worker.py"), "--fd", str(fd)]
            preexec = jail.limits(memory)
        self.proc = subprocess.Popen(argv, env=env, cwd=self.home or "/", stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, pass_fds=(fd,),
                                     stderr=open(os.environ["COURSE_WORKER_LOG"], "ab")  # for debugging the grader
                                     if os.environ.get("COURSE_WORKER_LOG") else subprocess.DEVNULL,
                                     start_new_session=True, preexec_fn=preexec)
        theirs.close()
        self.endpoint = channel.Endpoint(ours, strict=True, errors={"Forbidden": testing.Forbidden},
                                         records=(testing.FunctionContext,))

    def ask(self, verb, *args, limit):
        """One request of the judge's own (run a cell, substitute, ...), within `limit` seconds."""
        self.endpoint.deadline = time.monotonic() + limit + GRACE
        self.endpoint.options = {"forbid": [], "autograd": True, "timeout": None}
        return self.endpoint.request(verb, None, list(args), {})

    def alive(self):
        return self.proc.poll() is None and not self.endpoint.broken

    def close(self):
        with contextlib.suppress(OSError):
            self.sock.close()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        if self.how == "bubblewrap":
            jail.cleanup()                     # the worker's pids cgroup (threads and processes), if it had one
        shutil.rmtree(self.lib, ignore_errors=True)
        if self.home:
            shutil.rmtree(self.home, ignore_errors=True)


def run_tests(source, namespace, index, worker, limit, testing):
    """A test cell, here: its outputs (what it printed; its error, if it failed)."""
    buffer = io.StringIO()
    worker.endpoint.deadline = time.monotonic() + limit + GRACE
    worker.endpoint.options = {"forbid": [], "autograd": True, "timeout": limit}
    error = None
    try:
        code = compile(source, f"<test cell {index}>", "exec")
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            exec(code, namespace)
    except Exception as err:               # a failed test: its message is the learner's feedback
        error = err
    except BaseException as err:           # noqa: B036 - an exit or interrupt raised by a test is a failure too
        error = RuntimeError(f"{type(err).__name__}: {err}")
    if worker.alive():                          # end the switch-off the cell's last calls held on
        try:
            worker.ask("settle", limit=GRACE)
        except Exception as err:                # what it saw fails this cell (not the next one)
            error = err if error is None else error
    outputs = []
    if buffer.getvalue():
        outputs.append(nbformat.v4.new_output("stream", name="stdout", text=buffer.getvalue()))
    if error is not None:
        name = type(error).__name__
        outputs.append(nbformat.v4.new_output("error", ename=name, evalue=str(error),
                                              traceback=[f"{name}: {error}"]))
    return outputs


def not_run(cell, why):
    cell.outputs = [nbformat.v4.new_output("error", ename=NOT_RUN, evalue=why, traceback=[f"{NOT_RUN}: {why}"])]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fd", type=int, required=True, help="where to write the events")
    ap.add_argument("--cell-timeout", type=float, required=True)
    ap.add_argument("--timeout", type=float, required=True, help="for the whole notebook")
    ap.add_argument("--chapter", required=True)
    ap.add_argument("--memory", type=int, default=4 * 2**30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.set_inheritable(args.fd, False)
    events = os.fdopen(args.fd, "w", buffering=1)
    started = time.monotonic()
    nb = nbformat.reads(sys.stdin.read(), as_version=4)
    spec = nb.metadata.pop("course_grading", {})
    trusted = set(spec.get("trusted", []))
    learner_names = list(dict.fromkeys(spec.get("names", [])))

    import torch
    from solutions import channel, testing
    torch.set_num_threads(args.threads)

    code_cells = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    chapters = imported_chapters([nb.cells[i] for i in code_cells if i in trusted], args.chapter)
    worker = Worker(args.chapter, chapters, args.memory, args.threads)
    events.write(json.dumps({"event": "worker", "pid": worker.proc.pid, "isolation": worker.how}) + "\n")
    result = {"event": "done", "timed_out": [], "died": None, "deadline": None, "notes": [], "isolation": worker.how}
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    for name in learner_names:
        namespace[name] = channel.name_ref(worker.endpoint, name)
    testing.judging(worker.endpoint)
    total_output, test_seconds = 0, 0.0
    stop, i = None, (code_cells[0] if code_cells else 0)
    try:
        hello = worker.ask("hello", limit=60)
        result["worker_start_seconds"] = round(time.monotonic() - started, 2)
        result["worker_python"] = hello.get("python") if isinstance(hello, dict) else None
        for i in code_cells:
            cell = nb.cells[i]
            left = args.timeout - (time.monotonic() - started)
            if left <= 1:
                result["deadline"] = stop = i
                break
            limit = max(1.0, min(args.cell_timeout, left))
            events.write(json.dumps({"event": "cell", "index": i}) + "\n")
            if i in trusted and is_test(cell):
                t0 = time.monotonic()
                cell.outputs = run_tests(cell.source, namespace, i, worker, limit, testing)
                test_seconds += time.monotonic() - t0
                cell.execution_count = None
            else:
                source = cell.source if i not in trusted else for_worker(cell.source)
                answer = worker.ask("run_cell", source, limit, MAX_CELL_OUTPUT, limit=limit)
                outputs, used = clean_outputs(answer.get("outputs") if isinstance(answer, dict) else [],
                                              min(MAX_CELL_OUTPUT, max(0, MAX_OUTPUT - total_output)))
                total_output += used
                cell.outputs = outputs
                if isinstance(answer, dict) and answer.get("timed_out") is True:
                    result["timed_out"].append(i)
                if i in trusted and course_definitions(cell):
                    try:
                        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                            exec(compile(cell.source, f"<course cell {i}>", "exec"), namespace)
                    except Exception as err:   # the course's own cell: a bug of ours, reported
                        result["notes"].append(f"the judge could not run course cell {i}: {type(err).__name__}: {err}")
                    for value in list(namespace.values()):
                        if isinstance(value, type) and dataclasses.is_dataclass(value):
                            worker.endpoint.dataclasses[value.__qualname__] = value
                    for name in learner_names:   # a course cell must not hide the learner's names
                        namespace[name] = channel.name_ref(worker.endpoint, name)
            if not worker.alive():
                stop = i
                if worker.proc.poll() is None and "time" in str(worker.endpoint.broken or ""):
                    result["deadline"] = i
                else:
                    result["died"] = i
                break
    except channel.ChannelError as err:       # the worker went away while the judge asked it something
        stop = i
        if "in time" in str(err):
            result["deadline"] = i
        else:
            result["died"] = i
    except BaseException as err:              # noqa: B036 - whatever the worker's answer did, the judge reports
        stop = i
        result["died"] = i
        result["notes"].append(f"the worker's answer in cell {i} was unusable ({type(err).__name__}); "
                               "the notebook was stopped there")
    finally:
        testing.judging(None)
        worker.close()
    if stop is not None:
        why = ("the notebook reached its time limit before this cell" if result["deadline"] is not None
               else "the learner's code stopped the worker in an earlier cell")
        for j in code_cells:
            if j > stop:
                not_run(nb.cells[j], why)
        what = ("TimeoutError", "the notebook's time limit was reached in this cell") if result["deadline"] is not None \
            else ("DeadKernelError", "the worker running your code died while this cell ran")
        nb.cells[stop].outputs.append(nbformat.v4.new_output("error", ename=what[0], evalue=what[1],
                                                             traceback=[f"{what[0]}: {what[1]}"]))
    result["notebook"] = nbformat.writes(nb)
    result["seconds"] = round(time.monotonic() - started, 3)
    result["test_seconds"] = round(test_seconds, 3)
    result["channel"] = {"requests": worker.endpoint.calls, "seconds": round(worker.endpoint.seconds, 3)}
    events.write(json.dumps(result) + "\n")
    events.close()


if __name__ == "__main__":
    main()
