"""End to end: generate the student notebook, make submissions, autograde them with the course's
grading command (tools/grade.py, on nbgrader) and check the exact scores."""
import copy
import csv
import subprocess
import sys
import time

import nbformat
import pytest

import course
from conftest import CHAPTER_IDS


def points(nb, prefix=""):
    return sum(course.nbgrader_meta(c).get("points", 0) for c in nb.cells
               if course.nbgrader_meta(c).get("grade") and course.nbgrader_meta(c)["grade_id"].startswith(prefix))


def submit(root, student, chapter, edit=None):
    """Write a submission made from the student notebook: every stub replaced by the reference
    solution, then passed through `edit(grade_id, source)` if given."""
    source = course.read(course.CHAPTERS / chapter / f"{chapter}.ipynb")
    reference = {course.nbgrader_meta(c)["grade_id"]: course.reference_source(c.source)
                 for c in source.cells if course.is_solution(c)}
    nb = copy.deepcopy(nbformat.read(root / "autograder" / "release" / chapter / f"{chapter}.ipynb", as_version=4))
    for cell in nb.cells:
        if course.is_solution(cell) and edit is not False:
            gid = course.nbgrader_meta(cell)["grade_id"]
            cell.source = reference[gid] if edit is None else edit(gid, reference[gid])
    folder = root / "autograder" / "submitted" / student / chapter
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / f"{chapter}.ipynb")


def exercise_ids(chapter):
    nb = course.read(course.CHAPTERS / chapter / f"{chapter}.ipynb")
    return [course.nbgrader_meta(c)["grade_id"] for c in nb.cells if course.is_solution(c)]


def wrong(target):
    """Break one exercise: its function returns a tensor of the wrong values (or None)."""
    def edit(gid, src):
        if gid != target:
            return src
        return src + "\n\n_right = {name}\n{name} = lambda *a, **k: _right(*a, **k) * 2 + 1\n".format(
            name=src.split("def ", 1)[1].split("(", 1)[0])
    return edit


def kill_kernel(target):
    def edit(gid, src):
        return src + "\n\nimport os\nos._exit(1)\n" if gid == target else src
    return edit


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_autograde_exact_scores(chapter, released, tmp_path):
    root = released
    source = course.read(course.CHAPTERS / chapter / f"{chapter}.ipynb")
    total = points(source)
    exercises = exercise_ids(chapter)
    broken = exercises[len(exercises) // 2]                 # an exercise in the middle
    broken_points = points(source, broken.split("-")[0] + "-")
    assert 0 < broken_points < total

    submit(root, "correct", chapter)
    submit(root, "blank", chapter, edit=False)               # the stubs left in place
    submit(root, "one_wrong", chapter, edit=wrong(broken))
    submit(root, "crashed", chapter, edit=kill_kernel(broken))

    csv_path = tmp_path / "grades.csv"
    start = time.perf_counter()
    run = subprocess.run([sys.executable, str(course.ROOT / "tools" / "grade.py"), chapter, "--course", str(root),
                          "--csv", str(csv_path)], capture_output=True, text=True, env=course.tool_env())
    elapsed = time.perf_counter() - start
    assert run.returncode == 0, run.stdout + run.stderr
    assert "crashed: not gradable" in run.stdout
    print(f"{chapter}: graded 4 submissions in {elapsed:.1f} s")

    with open(csv_path) as f:
        scores = {row["student_id"]: (float(row["score"]), float(row["max_score"]))
                  for row in csv.DictReader(f) if row["assignment"] == chapter}
    assert scores == {
        "correct": (total, total),
        "blank": (0.0, total),
        "one_wrong": (total - broken_points, total),
        "crashed": (0.0, total),
    }
    # the students whose notebooks ran get feedback; the crashed one has none to give
    for student in ("correct", "blank", "one_wrong"):
        assert (root / "autograder" / "feedback" / student / chapter / f"{chapter}.html").exists()
