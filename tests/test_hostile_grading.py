"""Hostile submissions (issue 10): no cheat raises a score, the sandbox leaks nothing to the host,
and the batch always finishes.

One scratch course of the tiny chapter (tests/tiny_chapter.py) gets every submission of
tests/hostile_submissions.py, and all of them are graded in one run of tools/grade.py with
`--workers 2 --memory 4G`. Each cheat has a wrong or blank honest part, so its fair score is
known (that of its control, the same honest part without the cheat, graded in the same run): the
cheat may score no more. Sandbox attacks run after the tests with right answers, and assert on
the host. Submissions that are not plain files must end "invalid" without stopping the batch.

The grading run is given a time limit, a stall detector and a soft address-space limit (a
symlink to /dev/zero must not take the machine's memory), and whatever a cheat leaks on the host
(a file in /dev, a SysV segment, the hostname) is put back by the fixture, whatever the result.
For the cheats that look for the reference solutions elsewhere, the fixture makes a copy of them
under /tmp (and a symlink to it) and a module in the installed `solutions` package
(solutions/_hostile_reference_<token>.py), all removed at the end.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest

import course
import hostile_submissions as hs
import tiny_chapter as tiny
from test_batch_grading import GRADE, put, results, student_notebook, tiny_course

GRADE_ARGS = ("--workers", "2", "--memory", "4G", "--cell-timeout", "20", "--timeout", "45")
RUN_LIMIT = 420          # seconds for the whole grading run
STALL_LIMIT = 50         # seconds without any progress (a result, an autograded or feedback file): hung
GRADER_MEMORY = 6 << 30  # soft RLIMIT_AS of the grader's processes (the sandbox sets its own)
ROOT_READS_ALL = os.geteuid() == 0

# family 7: submitted paths that are not a plain file; each must end "invalid" with a reason
PATHS = ["path_dev_zero", "path_symlink_other_student", "path_symlink_outside", "path_fifo", "path_device_node",
         "path_unreadable", "path_directory", "path_dangling_symlink", "path_symlink_loop"]

CHEATS = hs.cheats(SimpleNamespace(token="0", release="{}", shm_key=0, dev_path="", hostname=""))


def submission_path(root: Path, student: str) -> Path:
    return root / "autograder" / "submitted" / student / tiny.ID / f"{tiny.ID}.ipynb"


def notebook_for(root: Path, cheat) -> nbformat.NotebookNode:
    nb = student_notebook(root, cheat.answers)
    at = 1 + next((i for i, c in enumerate(nb.cells) if "from solutions.testing import" in c.source), 1)
    extra = []
    for src in cheat.first:
        src, metadata = src if isinstance(src, tuple) else (src, {})
        extra.append(nbformat.v4.new_code_cell(src, metadata=metadata))
    nb.cells[at:at] = extra
    nb.cells += [nbformat.v4.new_code_cell(src) for src in cheat.last]
    return nb


def make_paths(root: Path, ctx) -> dict:
    """The family-7 submissions; returns name -> a note (why a check may not apply here)."""
    notes = {}
    for name in PATHS:
        p = submission_path(root, name)
        p.parent.mkdir(parents=True, exist_ok=True)
    submission_path(root, "path_dev_zero").symlink_to("/dev/zero")
    submission_path(root, "path_symlink_other_student").symlink_to(submission_path(root, "reference"))
    submission_path(root, "path_symlink_outside").symlink_to(ctx.outside_notebook)
    os.mkfifo(submission_path(root, "path_fifo"))
    try:
        os.mknod(submission_path(root, "path_device_node"), stat.S_IFCHR | 0o644, os.makedev(1, 3))  # like /dev/null
    except OSError as err:
        notes["path_device_node"] = f"cannot make a device node here ({err}); a plain empty file stands in"
        submission_path(root, "path_device_node").write_bytes(b"")
    p = submission_path(root, "path_unreadable")
    nbformat.write(student_notebook(root), p)
    p.chmod(0)
    if ROOT_READS_ALL:
        notes["path_unreadable"] = "the tests run as root, who reads a chmod 000 file anyway"
    submission_path(root, "path_directory").mkdir()
    nbformat.write(student_notebook(root), submission_path(root, "path_directory") / "inside.ipynb")
    submission_path(root, "path_dangling_symlink").symlink_to(ctx.copy / "no-such-notebook.ipynb")
    submission_path(root, "path_symlink_loop").symlink_to(submission_path(root, "path_symlink_loop"))
    return notes


class HostWatch:
    """Watches the host while the batch runs: the hostname is put back the moment it changes."""

    def __init__(self):
        self.hostname = socket.gethostname()
        self.seen = []
        self.peak_shm = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(0.05):
            now = Path("/proc/sys/kernel/hostname").read_text().strip()
            if now != self.hostname:
                self.seen.append(now)
                restore_hostname(self.hostname)
            with_shm = shutil.disk_usage("/dev/shm").used
            self.peak_shm = max(self.peak_shm, with_shm)


def restore_hostname(name: str):
    try:
        Path("/proc/sys/kernel/hostname").write_text(name)
    except OSError:
        subprocess.run(["hostname", name], check=False)


def shm_segments() -> set:
    out = subprocess.run(["ipcs", "-m"], capture_output=True, text=True).stdout
    return {int(line.split()[0], 16) for line in out.splitlines() if line.startswith("0x")}


def run_grader(root: Path):
    """tools/grade.py on the whole batch, in a session of its own, with a time limit and a stall
    detector; returns (returncode or None if it was killed, stdout, stderr, seconds, why killed)."""
    def limit():
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (GRADER_MEMORY, hard))

    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    start = time.monotonic()
    proc = subprocess.Popen([*GRADE, "--course", str(root), *GRADE_ARGS], stdout=out, stderr=err,
                            env=course.tool_env(), start_new_session=True, preexec_fn=limit)

    def progress():
        files = [root / "results" / f"{tiny.ID}.json"]
        stamp = [p.stat().st_mtime for p in files if p.exists()]
        for d in (root / "autograder" / "autograded", root / "autograder" / "feedback"):
            stamp.append(sum(1 for _ in d.rglob("*")) if d.exists() else 0)
        return stamp + [out.tell(), err.tell()]

    last, changed, killed = progress(), time.monotonic(), None
    while proc.poll() is None:
        time.sleep(1)
        now = progress()
        if now != last:
            last, changed = now, time.monotonic()
        if time.monotonic() - changed > STALL_LIMIT:
            killed = f"no progress for {STALL_LIMIT} s"
        elif time.monotonic() - start > RUN_LIMIT:
            killed = f"still running after {RUN_LIMIT} s"
        if killed:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
    seconds = time.monotonic() - start
    out.seek(0), err.seek(0)
    return (None if killed else proc.returncode), out.read().decode(errors="replace"), \
        err.read().decode(errors="replace"), seconds, killed


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    started = time.monotonic()
    root = tiny_course(tmp_path_factory.mktemp("hostile"))
    token = secrets.token_hex(4)
    copy = Path(tempfile.mkdtemp(prefix="hostile-copy-", dir="/tmp"))      # another copy of the course
    link = Path("/tmp") / f"hostile-link-{token}"
    package = Path(course.SOLUTIONS) / f"_hostile_reference_{token}.py"     # in the installed package
    ctx = SimpleNamespace(token=token, copy=copy, link=link, package=package,
                          release=(root / "autograder" / "release" / tiny.ID / f"{tiny.ID}.ipynb").read_text(),
                          shm_key=0x7E570000 + int(token[:4], 16), dev_path=f"/dev/hostile-{token}",
                          hostname=f"hostile-{token}", outside_notebook=copy / "course" / f"{tiny.ID}.ipynb")
    shm_before = shm_segments()
    watch = HostWatch()
    try:
        (copy / "course" / "solutions").mkdir(parents=True)
        (copy / "course" / "solutions" / f"{tiny.ID}.py").write_text(hs.reference_module())
        nbformat.write(student_notebook(root), ctx.outside_notebook)
        link.symlink_to(copy / "course")
        package.write_text(hs.reference_module())
        cheats = hs.cheats(ctx)
        for name, answers in hs.CONTROLS.items():
            put(root, name, student_notebook(root, answers))
        for name, cheat in cheats.items():
            put(root, name, notebook_for(root, cheat))
        notes = make_paths(root, ctx)
        made = time.monotonic()
        watch.thread.start()
        rc, stdout, stderr, seconds, killed = run_grader(root)
        watch.stop.set()
        watch.thread.join()
        host = SimpleNamespace(
            dev_file=Path(ctx.dev_path).exists(),
            shm_leaked=ctx.shm_key in shm_segments() - shm_before,
            hostnames=list(watch.seen), hostname_now=socket.gethostname(), hostname=watch.hostname,
            shm_peak=watch.peak_shm, shm_host_ballast=bool(list(Path("/dev/shm").glob("hostile-ballast*"))))
        print(f"\nhostile batch: {len(cheats) + len(hs.CONTROLS) + len(PATHS)} submissions, prepared in "
              f"{made - started:.1f} s, graded in {seconds:.1f} s (rc {rc}{', killed: ' + killed if killed else ''})")
        got = results(root) if (root / "results" / f"{tiny.ID}.json").exists() else {}
        yield SimpleNamespace(root=root, ctx=ctx, cheats=cheats, notes=notes, rc=rc, stdout=stdout, stderr=stderr,
                              seconds=seconds, killed=killed, results=got, host=host)
    finally:
        watch.stop.set()
        if socket.gethostname() != watch.hostname:
            restore_hostname(watch.hostname)
        Path(ctx.dev_path).unlink(missing_ok=True)
        for ballast in Path("/dev/shm").glob("hostile-ballast*"):
            ballast.unlink(missing_ok=True)
        if ctx.shm_key in shm_segments() - shm_before:
            subprocess.run(["ipcrm", "-M", str(ctx.shm_key)], check=False)
        package.unlink(missing_ok=True)
        link.unlink(missing_ok=True)
        shutil.rmtree(copy, ignore_errors=True)
        fifo = submission_path(root, "path_fifo")
        if fifo.exists():
            fifo.unlink()


def result_of(batch, name):
    assert name in batch.results, f"{name}: no result recorded ({batch.killed or 'the run ended without it'})"
    return batch.results[name]


def feedback_page(batch, student) -> str:
    page = batch.root / "autograder" / "feedback" / student / tiny.ID / f"{tiny.ID}.html"
    return page.read_text(errors="replace") if page.exists() else ""


def printed(batch, student) -> str:
    """Everything the code cells of a student's autograded notebook printed or displayed."""
    path = batch.root / "autograder" / "autograded" / student / tiny.ID / f"{tiny.ID}.ipynb"
    if not path.exists():
        return ""
    nb = nbformat.read(path, as_version=4)
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts.append(o.get("text", "") if o.output_type == "stream" else json.dumps(o.get("data", {})))
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------------ the tests

def test_the_batch_finishes_with_a_result_for_every_submission(batch):
    expected = set(hs.CONTROLS) | set(batch.cheats) | set(PATHS)
    killed, got = batch.killed, set(batch.results)
    assert killed is None, (f"the grading run was killed: {killed}; results for {len(got)} of {len(expected)}; "
                            f"missing: {sorted(expected - got)}")
    assert got == expected, f"missing: {sorted(expected - got)}"
    errors = sorted(s for s, r in batch.results.items() if r["status"] == "error")
    rc = batch.rc
    assert rc == 0, f"exit status {rc}; status 'error' for {errors}"
    for student in expected:
        assert any(line.startswith(student + " ") for line in batch.stdout.splitlines()), student


@pytest.mark.parametrize("name", sorted(hs.CONTROLS))
def test_controls_earn_what_their_code_earns(batch, name):
    r = result_of(batch, name)
    got = (r["status"], r["score"])
    assert got == ("graded", hs.CONTROL_SCORES[name]), r["reason"]


@pytest.mark.parametrize("name", sorted(CHEATS))
def test_no_cheat_raises_a_score(batch, name):
    cheat = batch.cheats[name]
    control = result_of(batch, cheat.control)["score"]
    assert control == cheat.fair, f"the control {cheat.control} earned {control}, not {cheat.fair}"
    r = result_of(batch, name)
    status, score, cells = r["status"], r["score"], r.get("cells")
    assert status != "error", f"{name}: the grader failed: {r['reason']}"
    assert score <= cheat.fair, (f"{name} (family {cheat.family}) earned {score} of {r['max_score']}, its honest "
                                 f"part {cheat.fair}: status {status!r}, cells {cells}")


def test_no_submission_is_marked_tampered(batch):
    """The judge scores what the learner's code returns; there is no tamper audit to trip."""
    tampered = {s: r["reason"] for s, r in batch.results.items() if r["status"] == "tampered"}
    assert not tampered, tampered


@pytest.mark.parametrize("name", PATHS)
def test_a_path_that_is_not_a_plain_file_is_invalid(batch, name):
    if name in batch.notes and name == "path_unreadable":
        pytest.skip(batch.notes[name])
    r = result_of(batch, name)
    status, reason, score = r["status"], r["reason"], r["score"]
    assert status == "invalid" and reason, f"{name}: {status} ({score} points): {reason}"
    assert score == 0


def test_the_hidden_tests_never_reach_a_learner(batch):
    """Not in any feedback page, nor in what a learner's own cells printed (copy_proc_parent_memory
    looks for them in the memory of the other processes it can see)."""
    leaked = [f"{s}: feedback page" for s in batch.results
              if tiny.HIDDEN_MARK in feedback_page(batch, s)]
    leaked += [f"{s}: its graded notebook" for s in batch.cheats if tiny.HIDDEN_MARK in printed(batch, s)]
    assert not leaked, leaked


def test_sandbox_no_file_in_the_hosts_dev(batch):
    assert "DEV FILE" in printed(batch, "sandbox_dev_file"), "the attack did not run"
    created = batch.host.dev_file
    assert not created, f"{batch.ctx.dev_path} was created on the host (removed since)"


def test_sandbox_no_sysv_shared_memory_left_on_the_host(batch):
    assert "SYSV SHM" in printed(batch, "sandbox_sysv_shm"), "the attack did not run"
    leaked = batch.host.shm_leaked
    assert not leaked, f"a SysV segment with key {batch.ctx.shm_key:#x} was left on the host (removed since)"


def test_sandbox_cannot_set_the_hosts_hostname(batch):
    assert "HOSTNAME" in printed(batch, "sandbox_hostname"), "the attack did not run"
    seen = batch.host.hostnames
    assert not seen, f"the host's hostname became {seen} (put back at once)"
    now, before = batch.host.hostname_now, batch.host.hostname
    assert now == before


def test_sandbox_dev_shm_counts_against_the_memory_limit(batch):
    out = printed(batch, "sandbox_shm_hold")
    assert "SHM " in out, "the attack did not run"
    status = result_of(batch, "sandbox_shm_hold")["status"]
    assert status != "error"
    held = max((int(line.split()[2]) for line in out.splitlines() if line.startswith("SHM HELD")), default=0)
    assert held < 4 << 30, f"the kernel held {held / 2**30:.1f} GiB in /dev/shm under --memory 4G"
    on_host = batch.host.shm_host_ballast
    assert not on_host, "the ballast landed in the host's /dev/shm"


def test_sandbox_display_updates_are_capped(batch):
    path = batch.root / "autograder" / "autograded" / "sandbox_display_flood" / tiny.ID / f"{tiny.ID}.ipynb"
    status = result_of(batch, "sandbox_display_flood")["status"]
    assert status != "error"
    assert path.exists()
    size = path.stat().st_size
    assert size < 3_000_000, f"the graded notebook is {size:,} bytes (40 display outputs updated to 200 kB)"
