"""End to end: generate the student notebook, make submissions, autograde them with the course's
grading command (tools/grade.py, on nbgrader) and check the exact scores."""
import copy
import csv
import html
import importlib
import re
import subprocess
import sys
import time

import nbformat
import pytest

import course
from conftest import CHAPTER_IDS
from test_mutants import outcome, prefixes


def points(nb, prefix=""):
    return sum(course.nbgrader_meta(c).get("points", 0) for c in nb.cells
               if course.nbgrader_meta(c).get("grade") and course.nbgrader_meta(c)["grade_id"].startswith(prefix))


def submit(root, student, chapter, edit=None, replace=False):
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
    folder.mkdir(parents=True, exist_ok=replace)
    nbformat.write(nb, folder / f"{chapter}.ipynb")


def exercise_ids(chapter):
    nb = course.read(course.CHAPTERS / chapter / f"{chapter}.ipynb")
    return [course.nbgrader_meta(c)["grade_id"] for c in nb.cells if course.is_solution(c)]


def wrong(chapter, target):
    """Replace one exercise's solution by a wrong one from tests/mutants_<chapter>.py that fails both
    its visible and its hidden tests, so that exactly that exercise's points are lost."""
    ns, visible, hidden = prefixes(chapter)[target]
    mutant = next(code for code in importlib.import_module(f"mutants_{chapter}").MUTANTS[target].values()
                  if outcome(ns, code, visible, hidden) == (True, True))

    def edit(gid, src):
        return mutant if gid == target else src
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
    submit(root, "one_wrong", chapter, edit=wrong(chapter, broken))
    submit(root, "crashed", chapter, edit=kill_kernel(broken))
    garbage = root / "autograder" / "submitted" / "garbled" / chapter
    garbage.mkdir(parents=True)
    (garbage / f"{chapter}.ipynb").write_text('{"cells": [ truncated')

    csv_path = tmp_path / "grades.csv"
    grade = [sys.executable, str(course.ROOT / "tools" / "grade.py"), chapter, "--course", str(root), "--csv", str(csv_path)]
    start = time.perf_counter()
    run = subprocess.run(grade, capture_output=True, text=True, env=course.tool_env())
    elapsed = time.perf_counter() - start
    assert run.returncode == 0, run.stdout + run.stderr
    print(run.stdout)
    print(f"{chapter}: graded 5 submissions in {elapsed:.1f} s")
    lines = {line.split()[0]: line for line in run.stdout.splitlines() if line.strip()}
    assert "kernel died" in lines["crashed"] and "died in cell" in lines["crashed"] and broken in lines["crashed"]
    assert "not a valid notebook" in lines["garbled"]
    assert lines["correct"].endswith("graded") and lines["blank"].endswith("graded")

    def scores():
        with open(csv_path) as f:
            return {row["student_id"]: (float(row["score"]), float(row["max_score"]))
                    for row in csv.DictReader(f) if row["assignment"] == chapter}

    # the kernel died in the broken exercise's answer cell: the tests that ran before it keep their points
    crash_at = next(i for i, c in enumerate(source.cells) if course.nbgrader_meta(c).get("grade_id") == broken)
    before_crash = sum(course.nbgrader_meta(c).get("points", 0) for c in source.cells[:crash_at]
                       if course.nbgrader_meta(c).get("grade"))
    assert scores() == {
        "correct": (total, total),
        "blank": (0.0, total),
        "one_wrong": (total - broken_points, total),
        "crashed": (before_crash, total),
        "garbled": (0.0, total),
    }
    # every student whose notebook ran gets feedback, and it never shows the hidden tests' code
    hidden = course.secret_lines(source, solutions=False)
    assert hidden
    for student in ("correct", "blank", "one_wrong"):
        page = (root / "autograder" / "feedback" / student / chapter / f"{chapter}.html").read_text()
        page = html.unescape(re.sub(r"<[^>]+>", "", page))
        assert "BEGIN HIDDEN TESTS" not in page and not [h for h in hidden if h in page]

    if chapter != CHAPTER_IDS[0]:
        return      # the regrade below is the grader's, the same for every chapter: tested once
    # a corrected submission is regraded on the next run (here for that student alone)
    submit(root, "blank", chapter, replace=True)
    run = subprocess.run(grade + ["--student", "blank"], capture_output=True, text=True, env=course.tool_env())
    assert run.returncode == 0, run.stdout + run.stderr
    assert scores()["blank"] == (total, total) and scores()["one_wrong"] == (total - broken_points, total)


def test_grade_command_explains_bad_arguments(released):
    grade = [sys.executable, str(course.ROOT / "tools" / "grade.py")]
    for args, message in [(["ch99_nothing", "--course", str(released)], "no chapter 'ch99_nothing'"),
                          ([CHAPTER_IDS[0], "--course", str(released), "--student", "nobody"], "no submission"),
                          ([CHAPTER_IDS[0], "--course", str(released / "missing")], "has no nbgrader_config.py")]:
        run = subprocess.run(grade + args, capture_output=True, text=True, env=course.tool_env())
        assert run.returncode == 2 and message in run.stderr, run.stdout + run.stderr
        assert "Traceback" not in run.stderr
