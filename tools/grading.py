"""The nbgrader preprocessors behind tools/grade.py: rebuild a submission on its release notebook, then grade it as judge and sandboxed worker.

nbgrader's `autograde` runs two lists of preprocessors: sanitizing (restore the locked and test
cells from the gradebook) and autograding (execute, then save the grades). tools/grade.py keeps
both lists and changes two entries:

- `Normalize`, first in the sanitizing list, rebuilds the submission on the structure of the
  release notebook: cells deleted, duplicated, reordered or re-typed, and nbgrader metadata
  edited (points, grade ids, cell types), are put right before nbgrader sees them, and the
  learner's extra cells are kept where they were and marked as the learner's.
- `IsolatedExecute` replaces nbgrader's `Execute`: the notebook runs as two processes
  (tools/judge.py). The learner's code runs only in a worker sandboxed with bubblewrap
  (tools/worker.py in tools/jail.py: no network, none of the course's files, an unprivileged
  user, its own /dev, /proc, IPC and hostname, memory and time limits); the tests run in the
  judge, which reaches the learner's code only through a value-only channel
  (solutions/channel.py) and writes the test cells' outputs itself. So nothing the learner's
  code does can change how a test is scored, only what the learner's functions return. Cells
  that never ran get an error, so that they earn no points.

What happened to each notebook (timed out, worker died, notes) is left in `OUTCOMES` for
tools/grade.py to record.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Float, Integer, Unicode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import jail  # noqa: E402
import judge  # noqa: E402

JUDGE = Path(__file__).resolve().with_name("judge.py")
OUTCOMES: dict[str, dict] = {}          # student -> what IsolatedExecute saw
GRACE = 30                              # seconds past the notebook's limit before the process tree is killed


# Things an honest answer has no use for, which could read or bend the tests: flagged for review.
SUSPICIOUS = re.compile(r"_getframe|f_back|f_locals|f_globals|gc\.get_objects|gc\.get_referrers|inspect\.(?:stack|currentframe)"
                        r"|settrace|setprofile|set_custom_exc|showtraceback|ctypes|__builtins__|sys\.modules"
                        r"|_disable_current_modes|DisableTorchFunction|threading")


meta = judge.meta                       # a cell's nbgrader metadata ({} if a submission broke it)


def key(cell) -> str | None:
    """How a cell is matched with the release notebook: its grade id, else its cell id."""
    k = meta(cell).get("grade_id") or cell.get("id")
    return k if isinstance(k, str) else None


class Normalize(NbGraderPreprocessor):
    """Rebuild a submission on its release notebook: the course's cells from the release, the
    learner's answers by grade id, the learner's extra cells kept and marked as such."""

    release = Unicode("", help="path of the release (student) notebook").tag(config=True)

    def preprocess(self, nb, resources):
        release = nbformat.read(self.release, as_version=4)
        known = {key(c): c for c in release.cells if key(c)}
        course_code = {c.source.strip() for c in release.cells if c.cell_type == "code"}
        answers, notes, extras, anchor = {}, [], {}, None
        for cell in nb.cells:
            k = key(cell)
            if k in known:
                ref = known[k]
                if meta(ref).get("solution") and not meta(ref).get("grade"):
                    if cell.cell_type != ref.cell_type:
                        notes.append(f"{k} was turned into a {cell.cell_type} cell; it was graded as the empty stub")
                    elif k in answers:
                        notes.append(f"{k} appears twice; the first copy was graded")
                    else:
                        answers[k] = cell.source
                anchor = k
            elif cell.cell_type == "code" and cell.source.strip() and cell.source.strip() not in course_code:
                # (a course cell that lost its id, as in an old nbformat, is the course's cell: not extra)
                extra = nbformat.v4.new_code_cell(cell.source)
                extra.metadata["course_extra"] = True
                extras.setdefault(anchor, []).append(extra)
        order = [key(c) for c in nb.cells if key(c) in known]
        if order != sorted(order, key=[key(c) for c in release.cells].index):
            notes.append("cells were reordered; they ran in the course's order")
        missing = [k for k, c in known.items() if k not in {key(x) for x in nb.cells} and meta(c)]
        if missing:
            notes.append(f"restored deleted cells: {', '.join(missing)}")
        cells = [copy.deepcopy(c) for c in extras.get(None, [])]
        for ref in release.cells:
            cell = copy.deepcopy(ref)
            k = key(ref)
            if meta(ref).get("solution") and not meta(ref).get("grade") and k in answers:
                cell.source = answers[k]
            cells.append(cell)
            cells += extras.get(k, [])
        learner = "\n".join(answers.values()) + "\n".join(c.source for v in extras.values() for c in v)
        odd = sorted({m.group(0) for m in SUSPICIOUS.finditer(learner)})
        if odd:
            notes.append(f"review by hand: the code uses {', '.join(odd)}")
        n_extra = sum(len(v) for v in extras.values())
        if n_extra:
            notes.append(f"{n_extra} extra code cell(s) of the learner's ran where they were")
        nb.cells = cells
        nb.metadata = copy.deepcopy(release.metadata)
        resources.setdefault("course", {})["notes"] = notes
        student = resources.get("nbgrader", {}).get("student")
        if student:
            OUTCOMES.setdefault(student, {})["notes"] = notes
        return nb, resources


class GradebookLock:
    """One writer at a time on a SQLite gradebook, across processes (a no-op for a server database)."""

    def __init__(self, db_url: str):
        path = db_url[len("sqlite:///"):] if db_url.startswith("sqlite:///") else None
        self.path = Path(path + ".lock") if path else None
        self.fd = None

    def acquire(self):
        if self.path and self.fd is None:
            self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    @contextlib.contextmanager
    def released(self):
        held = self.fd is not None
        self.release()
        try:
            yield
        finally:
            if held:
                self.acquire()


LOCK: GradebookLock | None = None


isolation = jail.isolation              # 'bubblewrap' or 'process': what the worker gets here


def learner_names(release_path: str) -> list[str]:
    """The names the chapter's solution cells define: the tests reach the learner's code by them."""
    release = nbformat.read(release_path, as_version=4)
    return sorted({n for c in release.cells if c.cell_type == "code" and meta(c).get("solution")
                   and not meta(c).get("grade") for n in judge.defined_names(c.source)})


class IsolatedExecute(NbGraderPreprocessor):
    """Execute the notebook as judge and worker (tools/judge.py): the learner's code in a sandboxed
    worker, the tests in the judge; never trusts what the worker says."""

    cell_timeout = Float(120, help="seconds a cell may run").tag(config=True)
    timeout = Float(600, help="seconds the whole notebook may run").tag(config=True)
    memory = Integer(4 * 2**30, help="bytes of memory for the worker, its tmpfs included").tag(config=True)
    threads = Integer(1, help="threads each worker's PyTorch may use").tag(config=True)
    chapter = Unicode("").tag(config=True)
    release = Unicode("", help="path of the release (student) notebook").tag(config=True)

    def preprocess(self, nb, resources):
        student = resources.get("nbgrader", {}).get("student", "?")
        outcome = OUTCOMES.setdefault(student, {})
        trusted = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and not c.metadata.get("course_extra")
                   and not (meta(c).get("solution") and not meta(c).get("grade"))]
        prepared = copy.deepcopy(nb)
        prepared.metadata["course_grading"] = {"trusted": trusted, "names": learner_names(self.release)}
        started = time.monotonic()
        with LOCK.released() if LOCK else contextlib.nullcontext():    # other workers use the gradebook meanwhile
            events, killed = self._run(nbformat.writes(prepared))
        outcome["sandbox_seconds"] = round(time.monotonic() - started, 2)
        done = next((e for e in events if e.get("event") == "done"), None)
        last = next((e["index"] for e in reversed(events) if e.get("event") == "cell"), None)
        if done is None:                      # the judge was killed or failed: no test counts, none can pass
            outcome.update(died=None, deadline=None, timed_out=[], isolation=isolation())
            outcome["deadline" if killed else "died"] = last if last is not None else 0
            why = ("the grader stopped this notebook before its tests were done" if killed else
                   "the grader's judge failed on this notebook; no test result was kept")
            for cell in nb.cells:
                if cell.cell_type == "code" and meta(cell).get("grade"):
                    cell.outputs = [nbformat.v4.new_output("error", ename="NotRun", evalue=why,
                                                           traceback=[f"NotRun: {why}"])]
            judge_error = next((e.get("stderr", "") for e in events if e.get("event") == "judge-error"), "")
            outcome["judge_log"] = judge_error
            outcome.setdefault("notes", []).append(why)
            executed = nb
        else:
            executed = nbformat.reads(done.pop("notebook"), as_version=4)
            outcome.update({k: done[k] for k in ("died", "deadline", "timed_out", "seconds", "isolation",
                                                 "worker_start_seconds", "test_seconds", "channel") if k in done})
            outcome["notes"] = outcome.get("notes", []) + done.get("notes", [])
        executed.metadata.pop("course_grading", None)
        for cell in executed.cells:
            cell.metadata.pop("course_extra", None)
        outcome["grade_ids"] = {i: meta(c).get("grade_id") for i, c in enumerate(executed.cells) if meta(c)}
        return executed, resources

    def _run(self, notebook: str):
        read_end, write_end = os.pipe()
        os.set_inheritable(write_end, True)
        command = [sys.executable, str(JUDGE), "--fd", str(write_end), "--cell-timeout", str(self.cell_timeout),
                   "--timeout", str(self.timeout), "--chapter", self.chapter, "--memory", str(self.memory),
                   "--threads", str(self.threads)]
        env = dict(os.environ, MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS=str(self.threads),
                   MKL_NUM_THREADS=str(self.threads))
        errors = tempfile.TemporaryFile()     # the judge's own error output, for the log (a pipe could fill)
        proc = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=errors, pass_fds=(write_end,), start_new_session=True)
        os.close(write_end)
        events, buffer, deadline = [], b"", time.monotonic() + self.timeout + GRACE
        killed = False
        try:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.write(notebook.encode())
                proc.stdin.close()
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    killed = True
                    break
                ready, _, _ = select.select([read_end], [], [], min(left, 1.0))
                if ready:
                    chunk = os.read(read_end, 1 << 20)
                    if not chunk:
                        break
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        with contextlib.suppress(ValueError):
                            events.append(json.loads(line))
                    if events and events[-1].get("event") == "done":
                        break
        finally:
            os.close(read_end)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
            errors.seek(0, os.SEEK_END)
            errors.seek(max(0, errors.tell() - 20000))
            err = errors.read().decode(errors="replace")
            errors.close()
            if not any(e.get("event") == "done" for e in events):
                events.append({"event": "judge-error", "stderr": err})
        return events, killed
