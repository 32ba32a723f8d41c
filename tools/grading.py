"""The nbgrader preprocessors behind tools/grade.py: rebuild a submission on its release notebook, then run it in a sandbox.

nbgrader's `autograde` runs two lists of preprocessors: sanitizing (restore the locked and test
cells from the gradebook) and autograding (execute, then save the grades). tools/grade.py keeps
both lists and changes two entries:

- `Normalize`, first in the sanitizing list, rebuilds the submission on the structure of the
  release notebook: cells deleted, duplicated, reordered or re-typed, and nbgrader metadata
  edited (points, grade ids, cell types), are put right before nbgrader sees them, and the
  learner's extra cells are kept where they were and marked as the learner's.
- `IsolatedExecute` replaces nbgrader's `Execute`: the notebook runs in tools/sandbox.py in a
  process of its own, in a fresh folder, without network, with the course's files hidden and
  the file system read-only where Linux namespaces allow it, under a memory limit, with a limit
  per cell and per notebook, and its whole process tree is killed at the end. Cells that never
  ran get an error, so that they earn no points.

What happened to each notebook (timed out, kernel died, tampered, notes) is left in `OUTCOMES`
for tools/grade.py to record.
"""
from __future__ import annotations

import contextlib
import copy
import fcntl
import importlib.util
import json
import os
import re
import resource
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Float, Integer, List, Unicode

SANDBOX = Path(__file__).resolve().with_name("sandbox.py")
OUTCOMES: dict[str, dict] = {}          # student -> what IsolatedExecute saw
GRACE = 30                              # seconds past the notebook's limit before the process tree is killed


# Things an honest answer has no use for, which could read or bend the tests: flagged for review.
SUSPICIOUS = re.compile(r"_getframe|f_back|f_locals|f_globals|gc\.get_objects|gc\.get_referrers|inspect\.(?:stack|currentframe)"
                        r"|settrace|setprofile|set_custom_exc|showtraceback|ctypes|__builtins__|sys\.modules"
                        r"|_disable_current_modes|DisableTorchFunction|threading")


def meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def key(cell) -> str | None:
    """How a cell is matched with the release notebook: its grade id, else its cell id."""
    return meta(cell).get("grade_id") or cell.get("id")


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


_ISOLATION: str | None = None


def isolation() -> str:
    """'namespaces' when unshare can give the sandbox its own mounts, network and processes, else 'process'."""
    global _ISOLATION
    if _ISOLATION is None:
        _ISOLATION = "process"
        if shutil.which("unshare") and shutil.which("setpriv") and os.environ.get("COURSE_SANDBOX") != "process":
            cmd = _unshare_prefix() + ["sh", "-c", "mount -t tmpfs tmpfs /mnt && ip link set lo up"]
            with contextlib.suppress(Exception):
                if subprocess.run(cmd, capture_output=True, timeout=20).returncode == 0:
                    _ISOLATION = "namespaces"
    return _ISOLATION


def _unshare_prefix() -> list[str]:
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
            "--propagation", "private", "--"]


def _limits(memory_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 2**20, 256 * 2**20))
    return apply


def _mount_script(hide_dirs, hide_files, work: Path, command: list[str]) -> str:
    q = shlex.quote
    lines = ["set -e", "ip link set lo up"]
    lines += [f"[ -d {q(str(d))} ] && mount -t tmpfs -o size=4k,mode=000 tmpfs {q(str(d))} || true" for d in hide_dirs]
    lines += [f"[ -f {q(str(f))} ] && mount --bind /dev/null {q(str(f))} || true" for f in hide_files]
    lines += [f"mount --bind {q(str(work))} {q(str(work))}",
              "mount -t tmpfs tmpfs /dev/shm",
              # everything read-only but the sandbox's own folder (and the fresh /proc, /dev/shm)
              f"findmnt -rn -o TARGET | while read -r m; do case \"$m\" in {q(str(work))}|/proc|/proc/*|/sys|/sys/*|"
              "/dev|/dev/*) ;; *) mount -o remount,bind,ro \"$m\" 2>/dev/null || true ;; esac; done",
              "mount -o remount,bind,ro / ",
              "exec setpriv --inh-caps=-all --bounding-set=-all --no-new-privs -- " + " ".join(q(c) for c in command)]
    return "\n".join(lines)


class IsolatedExecute(NbGraderPreprocessor):
    """Execute the notebook in tools/sandbox.py, isolated, with limits; never trusts what runs there."""

    cell_timeout = Float(120, help="seconds a cell may run").tag(config=True)
    timeout = Float(600, help="seconds the whole notebook may run").tag(config=True)
    memory = Integer(4 * 2**30, help="bytes of address space for the kernel").tag(config=True)
    threads = Integer(1, help="threads each kernel's PyTorch may use").tag(config=True)
    chapter = Unicode("").tag(config=True)
    hide = List(Unicode(), help="folders the notebook must not see").tag(config=True)
    hide_files = List(Unicode(), help="files the notebook must not see").tag(config=True)

    def preprocess(self, nb, resources):
        student = resources.get("nbgrader", {}).get("student", "?")
        outcome = OUTCOMES.setdefault(student, {})
        trusted = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and not c.metadata.get("course_extra")
                   and not (meta(c).get("solution") and not meta(c).get("grade"))]
        names = sorted({n for c in nb.cells if meta(c).get("grade") for n in re.findall(r"[A-Za-z_]\w*", c.source)})
        prepared = copy.deepcopy(nb)
        prepared.metadata["course_grading"] = {"trusted": trusted, "names": names}
        started = time.monotonic()
        with LOCK.released() if LOCK else contextlib.nullcontext():    # other workers use the gradebook meanwhile
            events, how, killed = self._run(nbformat.writes(prepared))
        outcome["sandbox_seconds"] = round(time.monotonic() - started, 2)
        outcome["isolation"] = how
        done = next((e for e in events if e.get("event") == "done"), None)
        last = next((e["index"] for e in reversed(events) if e.get("event") == "cell"), None)
        if done is None:                      # the sandbox was killed or crashed: grade what is known to have run
            outcome.update(died=None, deadline=None, timed_out=[], tampered=[])
            outcome["deadline" if killed else "died"] = last if last is not None else 0
            stop = last if last is not None else 0
            for j, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    if j >= stop:
                        cell.outputs = [nbformat.v4.new_output("error", ename="NotRun",
                                        evalue="the notebook was stopped before this cell finished",
                                        traceback=["NotRun: the notebook was stopped before this cell finished"])]
            executed = nb
        else:
            executed = nbformat.reads(done.pop("notebook"), as_version=4)
            outcome.update({k: done[k] for k in ("died", "deadline", "timed_out", "tampered", "seconds",
                                                 "kernel_start_seconds", "audit_seconds")})
        executed.metadata.pop("course_grading", None)
        for cell in executed.cells:
            cell.metadata.pop("course_extra", None)
        outcome["grade_ids"] = {i: meta(c).get("grade_id") for i, c in enumerate(executed.cells) if meta(c)}
        return executed, resources

    def _run(self, notebook: str):
        work = Path(tempfile.mkdtemp(prefix="course-grade-"))
        for sub in (".ipython", ".jupyter", ".runtime", ".mpl", ".cache"):
            (work / sub).mkdir()
        env = {"PATH": os.path.dirname(sys.executable) + ":/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(work), "TMPDIR": str(work),
               "IPYTHONDIR": str(work / ".ipython"), "JUPYTER_CONFIG_DIR": str(work / ".jupyter"),
               "JUPYTER_RUNTIME_DIR": str(work / ".runtime"), "MPLCONFIGDIR": str(work / ".mpl"),
               "XDG_CACHE_HOME": str(work / ".cache"), "MPLBACKEND": "Agg", "LANG": "C.UTF-8",
               "NBGRADER_EXECUTION": "autograde", "PYTHONDONTWRITEBYTECODE": "1",
               "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        for var in ("COURSE_DATA", "TIKTOKEN_CACHE_DIR"):
            if var in os.environ:
                env[var] = os.environ[var]
        read_end, write_end = os.pipe()
        os.set_inheritable(write_end, True)
        command = [sys.executable, str(SANDBOX), "--fd", str(write_end), "--cell-timeout", str(self.cell_timeout),
                   "--timeout", str(self.timeout), "--chapter", self.chapter]
        how = isolation()
        if how == "namespaces":
            command = _unshare_prefix() + ["sh", "-c", _mount_script(self.hide, self.hide_files, work,
                                                                      ["env", "-i", *[f"{k}={v}" for k, v in env.items()],
                                                                       *command])]
        proc = subprocess.Popen(command, cwd=work, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, pass_fds=(write_end,), start_new_session=True,
                                preexec_fn=_limits(self.memory))
        os.close(write_end)
        events, buffer, deadline = [], b"", time.monotonic() + self.timeout + GRACE
        kernel_pid, killed = None, False
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
                            if events[-1].get("event") == "kernel":
                                kernel_pid = events[-1].get("pid")
                    if events and events[-1].get("event") == "done":
                        break                     # no need to wait for the kernel to shut down: it is killed below
        finally:
            os.close(read_end)
            for pgid in (proc.pid, kernel_pid if how == "process" else None):
                if pgid:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(timeout=10)
            shutil.rmtree(work, ignore_errors=True)
        return events, how, killed


def solutions_module(chapter: str) -> Path | None:
    """The file of solutions/<chapter>.py as the kernel would import it."""
    spec = importlib.util.find_spec("solutions")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / f"{chapter}.py"
    return path if path.exists() else None
