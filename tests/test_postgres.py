"""Grading on several machines at once, sharing one PostgreSQL gradebook (nbgrader's db_url), against a
real server that the test starts (Debian's postgresql; .ci/run installs it)."""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pytest

import course
import tiny_chapter as tiny
from test_batch_grading import GRADE, put, student_notebook


def pg_bin(name: str) -> str | None:
    return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


@pytest.fixture(scope="module")
def postgres():
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("no PostgreSQL server on this machine (Debian: apt-get install postgresql); .ci/run installs it")
    base = Path(tempfile.mkdtemp(prefix="course-pg-"))
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    as_user = []
    if os.geteuid() == 0:                        # PostgreSQL refuses to run as root
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(base, 0o755)
        shutil.chown(base, "postgres"), shutil.chown(sock, "postgres")
    run = lambda *cmd: subprocess.run([*as_user, *cmd], capture_output=True, text=True, cwd=base)  # noqa: E731
    out = run(initdb, "-D", str(data), "-U", "grader", "--auth=trust", "-E", "UTF8")
    assert out.returncode == 0, out.stdout + out.stderr
    out = run(pg_ctl, "-D", str(data), "-w", "-l", str(base / "server.log"), "-o",
              f"-k {sock} -c listen_addresses='' -p 54329", "start")
    assert out.returncode == 0, out.stdout + out.stderr + (base / "server.log").read_text()
    try:
        out = run(pg_bin("createdb") or "createdb", "-h", str(sock), "-p", "54329", "-U", "grader", "gradebook")
        assert out.returncode == 0, out.stdout + out.stderr
        yield f"postgresql+psycopg://grader@/gradebook?host={sock}&port=54329"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def machine(root: Path, db_url: str) -> Path:
    """A course folder as one grading machine has it, with the shared gradebook."""
    return course.scratch_course(root, db_url=db_url)


def test_two_machines_share_a_postgresql_gradebook(postgres, tmp_path):
    first = machine(tmp_path / "first", postgres)
    folder = first / "chapters" / tiny.ID
    folder.mkdir(parents=True)
    nbformat.write(tiny.notebook(), folder / f"{tiny.ID}.ipynb")
    out = subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", tiny.ID, "--force"], cwd=first,
                         capture_output=True, text=True, env=course.tool_env())
    assert out.returncode == 0, out.stdout + out.stderr
    expected = {}
    for i in range(6):
        wrong = i % 3 == 0
        put(first, f"s{i}", student_notebook(first, {"ex2-mean": "def mean(t):\n    return t.sum()\n"} if wrong else None))
        expected[f"s{i}"] = 3.0 if wrong else 6.0
    second = tmp_path / "second"
    shutil.copytree(first, second)
    machine(second, postgres)
    start = time.monotonic()
    runs = [subprocess.Popen([*GRADE, "--course", str(root), "--shard", f"{k}/2", "--workers", "2"], text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=course.tool_env())
            for k, root in ((1, first), (2, second))]
    outs = [p.communicate(timeout=600) for p in runs]
    print(f"two machines graded 6 submissions in {time.monotonic() - start:.1f} s")
    for p, (out, err) in zip(runs, outs):
        assert p.returncode == 0, out + err
    from nbgrader.api import Gradebook
    with Gradebook(postgres, "gpt-from-scratch") as gb:
        got = {s.student.id: s.score for s in gb.assignment_submissions(tiny.ID)}
    assert got == expected
    # each machine graded its own half, and recorded it in its own results file
    import json
    halves = [set(json.loads((root / "results" / f"{tiny.ID}.json").read_text())) for root in (first, second)]
    assert halves == [{"s0", "s2", "s4"}, {"s1", "s3", "s5"}]
