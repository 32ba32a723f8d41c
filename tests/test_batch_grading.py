"""The grading command on bad and hostile submissions (tools/grade.py on nbgrader, with tools/grading.py's sandbox).

Each test makes the submissions it needs from a tiny two-exercise chapter (tests/tiny_chapter.py)
and checks what is recorded for each one: status, reason, points; and that nothing a submission does
raises its score, touches another student's result, the gradebook or the course's files."""
import copy
import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import nbformat
import pytest

import course
import grading
import tiny_chapter as tiny
from conftest import make_course, nbgrader

GRADE = [sys.executable, str(course.ROOT / "tools" / "grade.py"), tiny.ID]
SANDBOXED = grading.isolation() == "bubblewrap"


def tiny_course(root: Path) -> Path:
    make_course(root, chapters=[])
    folder = root / "chapters" / tiny.ID
    folder.mkdir(parents=True)
    nbformat.write(tiny.notebook(), folder / f"{tiny.ID}.ipynb")
    out = nbgrader(root, "generate_assignment", tiny.ID, "--force")
    assert out.returncode == 0, out.stdout + out.stderr
    return root


def student_notebook(root: Path, answers=None) -> nbformat.NotebookNode:
    """The released notebook with the given answers (default: the reference answers)."""
    nb = nbformat.read(root / "autograder" / "release" / tiny.ID / f"{tiny.ID}.ipynb", as_version=4)
    answers = {gid: tiny.answer(gid) for gid in tiny.SOLUTIONS} | (answers or {})
    for cell in nb.cells:
        gid = course.nbgrader_meta(cell).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
    return nb


def put(root: Path, student: str, content):
    path = root / "autograder" / "submitted" / student / tiny.ID / f"{tiny.ID}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, nbformat.NotebookNode):
        nbformat.write(content, path)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def cells_by_id(nb):
    return {course.nbgrader_meta(c).get("grade_id"): c for c in nb.cells if course.nbgrader_meta(c)}


def grade(root: Path, *args, timeout=600):
    run = subprocess.run([*GRADE, "--course", str(root), *args], capture_output=True, text=True, timeout=timeout,
                         env=course.tool_env())
    return run


def results(root: Path) -> dict:
    return json.loads((root / "results" / f"{tiny.ID}.json").read_text())


def digest(*paths: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


# ------------------------------------------------------------------ the submissions

WRONG_DOUBLE = "def double(x):\n    return 3 * x\n"
SECRET_READER = """
import glob, os
found = []
for path in [{source!r}, {gradebook!r}, {other!r}] + glob.glob({course!r} + '/**/*.ipynb', recursive=True):
    try:
        found.append(open(path, errors='replace').read())
    except Exception as err:
        found.append(type(err).__name__)
print('READ:', ' | '.join(f[:200] for f in found))
""" + tiny.answer("ex1-double")
WRITER = """
import os
for path in [{gradebook!r}, {source!r}, {other!r}, '/tmp/escaped-from-the-sandbox']:
    try:
        with open(path, 'a') as f:
            f.write('tampered')
        print('WROTE', path)
    except Exception as err:
        print('could not write', path, type(err).__name__)
""" + tiny.answer("ex1-double")


def make_submissions(root: Path) -> dict:
    """name -> (expected status, expected points or None, a phrase the reason must contain)."""
    expect = {}
    source = str(root / "chapters" / tiny.ID / f"{tiny.ID}.ipynb")
    gradebook = str(root / "gradebook.db")
    other = str(root / "autograder" / "submitted" / "correct" / tiny.ID / f"{tiny.ID}.ipynb")

    put(root, "correct", student_notebook(root)); expect["correct"] = ("graded", 6, "")
    put(root, "wrong", student_notebook(root, {"ex1-double": WRONG_DOUBLE})); expect["wrong"] = ("graded", 3, "")
    # files that are not notebooks
    put(root, "empty", b""); expect["empty"] = ("invalid", 0, "empty")
    text = nbformat.writes(student_notebook(root))
    put(root, "truncated", text[: len(text) // 2]); expect["truncated"] = ("invalid", 0, "cut short")
    put(root, "latin1", text.replace("Two exercises", "Deux exercices à faire").encode("latin-1", "replace"))
    expect["latin1"] = ("invalid", 0, "not UTF-8")
    put(root, "not_a_notebook", '{"name": "alice", "answer": 42}'); expect["not_a_notebook"] = ("invalid", 0, "no cells")
    raw = json.loads(text)
    raw["nbformat"] = 5
    put(root, "nbformat5", json.dumps(raw)); expect["nbformat5"] = ("invalid", 0, "nbformat 5")
    put(root, "nbformat3", nbformat.writes(nbformat.convert(student_notebook(root), 3)))
    expect["nbformat3"] = ("graded", 6, "")
    # cells deleted, duplicated, reordered, re-typed; locked cells and metadata edited
    nb = student_notebook(root)
    nb.cells = [c for c in nb.cells if course.nbgrader_meta(c).get("grade_id") not in ("ex1-visible", "ex2-hidden")]
    put(root, "deleted", nb); expect["deleted"] = ("graded", 6, "")
    nb = student_notebook(root)
    i = next(i for i, c in enumerate(nb.cells) if course.nbgrader_meta(c).get("grade_id") == "ex1-double")
    dup = copy.deepcopy(nb.cells[i])
    dup.source, dup.id = WRONG_DOUBLE, "duplicate1"
    nb.cells.insert(i + 1, dup)
    put(root, "duplicated", nb); expect["duplicated"] = ("graded", 6, "")
    nb = student_notebook(root)
    nb.cells = nb.cells[:3] + nb.cells[7:] + nb.cells[3:7]                     # exercise 2 before exercise 1
    put(root, "reordered", nb); expect["reordered"] = ("graded", 6, "")
    nb = student_notebook(root)
    c = cells_by_id(nb)["ex1-double"]
    c.cell_type = "markdown"
    c.pop("outputs", None), c.pop("execution_count", None)
    put(root, "retyped", nb); expect["retyped"] = ("graded", 3, "")
    nb = student_notebook(root, {"ex1-double": WRONG_DOUBLE})
    cells_by_id(nb)["ex1-visible"].source = "pass"
    cells_by_id(nb)["ex1-hidden"].source = "pass"
    put(root, "edited_tests", nb); expect["edited_tests"] = ("graded", 3, "")
    nb = student_notebook(root, {"ex1-double": WRONG_DOUBLE})
    cells_by_id(nb)["ex1-hidden"].metadata["nbgrader"]["points"] = 100
    cells_by_id(nb)["ex1-visible"].metadata["nbgrader"]["grade_id"] = "ex9-free-points"
    cells_by_id(nb)["ex2-mean"].metadata["nbgrader"].update(grade=True, points=50)
    put(root, "metadata", nb); expect["metadata"] = ("graded", 3, "")
    nb = student_notebook(root, {"ex1-double": "def double(x):\n    return times_two(x)\n"})
    nb.cells.insert(4, nbformat.v4.new_code_cell("def times_two(x):\n    return x + x\n"))
    put(root, "extra_cell", nb); expect["extra_cell"] = ("graded", 6, "")
    # code that crashes, hangs, floods or exits
    put(root, "os_exit", student_notebook(root, {"ex2-mean": "import os\nos._exit(1)\n"}))
    expect["os_exit"] = ("kernel died", 3, "ex2-mean")
    put(root, "segfault", student_notebook(root, {"ex2-mean": "import ctypes\nctypes.string_at(0)\n"}))
    expect["segfault"] = ("kernel died", 3, "ex2-mean")
    put(root, "infinite_loop", student_notebook(root, {"ex2-mean": "while True:\n    pass\n" + tiny.answer("ex2-mean")}))
    expect["infinite_loop"] = ("timed out", 3, "ex2-mean")
    sleepy = student_notebook(root, {"ex1-double": "import time\ntime.sleep(9)\n" + tiny.answer("ex1-double"),
                                     "ex2-mean": "import time\ntime.sleep(9)\n" + tiny.answer("ex2-mean")})
    sleepy.cells.insert(3, nbformat.v4.new_code_cell("import time\ntime.sleep(9)"))
    put(root, "too_slow", sleepy); expect["too_slow"] = ("timed out", None, "time limit")
    put(root, "memory_bomb", student_notebook(root, {"ex1-double": tiny.answer("ex1-double") +
                                                     "\nballast = bytearray(8 * 2**30)\n"}))
    expect["memory_bomb"] = ("graded", 6, "")
    put(root, "flood", student_notebook(root, {"ex1-double": tiny.answer("ex1-double") +
                                               "\nfor _ in range(200_000):\n    print('x' * 100)\n"}))
    expect["flood"] = ("graded", 6, "")
    put(root, "sys_exit", student_notebook(root, {"ex1-double": tiny.answer("ex1-double") + "\nimport sys\nsys.exit(3)\n"}))
    expect["sys_exit"] = ("graded", 6, "")
    put(root, "keyboard_interrupt", student_notebook(root, {"ex2-mean": tiny.answer("ex2-mean") + "\nraise KeyboardInterrupt\n"}))
    expect["keyboard_interrupt"] = ("graded", 6, "")
    # code that tries to change the tests: they run in the judge, out of its reach, so it earns what
    # its answers earn (fake_check: both wrong; fake_isclose: double right; swallow_errors: mean right)
    put(root, "fake_check", student_notebook(root, {
        "ex1-double": WRONG_DOUBLE + "check = check_tensor = call = lambda *args, **kwargs: None\n",
        "ex2-mean": "def mean(t):\n    return t.sum()\n"}))
    expect["fake_check"] = ("graded", 0, "")
    put(root, "fake_isclose", student_notebook(root, {
        "ex2-mean": "def mean(t):\n    return t.sum()\n"
                    "torch.isclose = lambda a, b, **kw: torch.ones(torch.broadcast_shapes(a.shape, b.shape), dtype=torch.bool)\n"}))
    expect["fake_isclose"] = ("graded", 3, "")
    put(root, "swallow_errors", student_notebook(root, {
        "ex1-double": WRONG_DOUBLE + "get_ipython().set_custom_exc((AssertionError,), lambda *args, **kwargs: None)\n"}))
    expect["swallow_errors"] = ("graded", 3, "")
    put(root, "reader", student_notebook(root, {"ex1-double": SECRET_READER.format(
        source=source, gradebook=gradebook, other=other, course=str(root))}))
    expect["reader"] = ("graded", 6, "")
    put(root, "writer", student_notebook(root, {"ex1-double": WRITER.format(gradebook=gradebook, source=source, other=other)}))
    expect["writer"] = ("graded", 6, "")
    return expect


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tiny_course(tmp_path_factory.mktemp("batch"))
    expect = make_submissions(root)
    protected = digest(root / "chapters" / tiny.ID / f"{tiny.ID}.ipynb",
                       root / "autograder" / "release" / tiny.ID / f"{tiny.ID}.ipynb",
                       root / "autograder" / "submitted" / "correct" / tiny.ID / f"{tiny.ID}.ipynb")
    start = time.monotonic()
    run = grade(root, "--workers", "2", "--cell-timeout", "10", "--timeout", "25", "--memory", "2G")
    print(run.stdout, f"\n{len(expect)} submissions graded in {time.monotonic() - start:.1f} s")
    assert run.returncode == 0, run.stdout + run.stderr
    return root, expect, run, protected


def test_every_submission_gets_the_result_its_code_earns(graded):
    root, expect, run, _ = graded
    got = results(root)
    assert set(got) == set(expect)
    wrong = []
    for student, (status, points, phrase) in expect.items():
        r = got[student]
        if r["status"] != status or (points is not None and r["score"] != points) or phrase not in r["reason"] + " ".join(r["notes"]):
            wrong.append(f"{student}: expected {status}, {points}, {phrase!r}; got {r['status']}, {r['score']}, {r['reason']!r}")
        assert r["max_score"] == tiny.TOTAL, f"{student}: max score {r['max_score']}"
    assert not wrong, "\n".join(wrong)
    for student in expect:                         # one line per student in the summary table
        assert any(line.startswith(student + " ") for line in run.stdout.splitlines())


def test_notes_say_what_was_put_right(graded):
    root, _, _, _ = graded
    got = results(root)
    assert any("restored deleted cells" in n for n in got["deleted"]["notes"])
    assert any("appears twice" in n for n in got["duplicated"]["notes"])
    assert any("reordered" in n for n in got["reordered"]["notes"])
    assert any("markdown" in n for n in got["retyped"]["notes"])
    assert any("extra code cell" in n for n in got["extra_cell"]["notes"])
    assert not any("extra" in n for n in got["nbformat3"]["notes"])      # its cells lost their ids, not their place


def test_the_gradebook_agrees_and_the_csv_has_a_column_per_exercise(graded):
    root, expect, _, _ = graded
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", "gpt-from-scratch") as gb:
        scores = {s: gb.find_submission(tiny.ID, s).score for s in expect}
    assert scores == {s: r["score"] for s, r in results(root).items()}
    with open(root / f"grades-{tiny.ID}.csv") as f:
        rows = {row["student_id"]: row for row in csv.DictReader(f)}
    assert rows["wrong"]["ex1-double"] == "0.0" and rows["wrong"]["ex2-mean"] == "3.0"
    assert rows["empty"]["status"] == "invalid" and "empty" in rows["empty"]["reason"]


def test_feedback_for_everyone_and_never_the_hidden_tests(graded):
    root, expect, _, _ = graded
    for student in expect:
        page = root / "autograder" / "feedback" / student / tiny.ID / f"{tiny.ID}.html"
        assert page.exists(), student
        assert tiny.HIDDEN_MARK not in page.read_text(), student


def test_output_flood_is_cut(graded):
    root, _, _, _ = graded
    nb = nbformat.read(root / "autograder" / "autograded" / "flood" / tiny.ID / f"{tiny.ID}.ipynb", as_version=4)
    assert len(nbformat.writes(nb)) < 3_000_000


@pytest.mark.skipif(not SANDBOXED, reason="bubblewrap cannot run here, so the worker is a separate process "
                                          "only and cannot be kept from the course's files")
def test_a_submission_can_read_and_write_nothing_of_the_course(graded):
    root, _, _, protected = graded
    nb = nbformat.read(root / "autograder" / "autograded" / "reader" / tiny.ID / f"{tiny.ID}.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "READ:" in printed
    assert tiny.HIDDEN_MARK not in printed and "BEGIN HIDDEN" not in printed and "SQLite" not in printed
    nb = nbformat.read(root / "autograder" / "autograded" / "writer" / tiny.ID / f"{tiny.ID}.ipynb", as_version=4)
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    # the course's files are not there at all; /tmp is the sandbox's own (a small tmpfs), gone with it
    assert printed.count("could not write") == 3 and "WROTE /tmp/escaped-from-the-sandbox" in printed
    assert digest(*protected) == protected
    assert not Path("/tmp/escaped-from-the-sandbox").exists()


def test_rerun_gives_the_same_grades_and_resume_skips_them(graded):
    root, expect, _, _ = graded
    before = results(root)
    some = ["correct", "wrong", "deleted", "os_exit", "fake_check", "empty"]
    run = grade(root, *[f"--student={s}" for s in some])
    assert run.returncode == 0, run.stdout + run.stderr
    after = results(root)
    for s in some:
        assert (after[s]["status"], after[s]["score"]) == (before[s]["status"], before[s]["score"]), s
    run = grade(root, "--resume")
    assert run.returncode == 0 and "already graded and unchanged" in run.stdout and "grading 0 submission" in run.stdout
    put(root, "wrong", student_notebook(root))                    # a corrected resubmission is regraded
    run = grade(root, "--resume")
    assert "grading 1 submission" in run.stdout and results(root)["wrong"]["score"] == 6


def test_layouts_folder_and_zip(tmp_path):
    root = tiny_course(tmp_path / "course")
    folder = tmp_path / "lms"
    folder.mkdir()
    nbformat.write(student_notebook(root), folder / "ann.ipynb")
    nbformat.write(student_notebook(root, {"ex2-mean": "def mean(t):\n    return t.sum()\n"}), folder / "ben.ipynb")
    run = grade(root, "--submissions", str(folder))
    assert run.returncode == 0, run.stdout + run.stderr
    assert {s: r["score"] for s, r in results(root).items()} == {"ann": 6, "ben": 3}
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("submissions/cai.ipynb", nbformat.writes(student_notebook(root)))
        z.writestr("__MACOSX/submissions/._cai.ipynb", b"\x00\x05junk")
        z.writestr("submissions/readme.txt", "not a notebook")
    run = grade(root, "--submissions", str(archive))
    assert run.returncode == 0, run.stdout + run.stderr
    assert results(root)["cai"]["score"] == 6 and "imported 1 submission" in run.stdout
    for bad, message in [(tmp_path / "missing.zip", "no such file"), (tmp_path / "course" / "nbgrader_config.py", "not a zip")]:
        run = grade(root, "--submissions", str(bad))
        assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_an_interrupted_run_keeps_what_it_graded(tmp_path):
    root = tiny_course(tmp_path / "course")
    for s in ("a1", "a2", "a3", "a4"):
        put(root, s, student_notebook(root))
    proc = subprocess.Popen([*GRADE, "--course", str(root), "--workers", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=course.tool_env(), start_new_session=True)
    path = root / "results" / f"{tiny.ID}.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (path.exists() and json.loads(path.read_text())):
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    done = results(root)
    assert 1 <= len(done) < 4 and all(r["score"] == 6 for r in done.values()), out + err
    run = grade(root, "--resume")
    assert run.returncode == 0, run.stdout + run.stderr
    assert {s: r["score"] for s, r in results(root).items()} == {s: 6 for s in ("a1", "a2", "a3", "a4")}
