"""The exercise tests cannot be fooled: every wrong or forbidden solution in tests/mutants_<chapter>.py
fails the exercise's visible or hidden tests, while the reference solution passes them."""
import contextlib
import importlib
import io
import threading

import matplotlib
import pytest
import torch
import torch.nn.functional as F

import course
from conftest import CHAPTER_IDS

matplotlib.use("Agg")


def _code(source):
    return "\n".join(line for line in source.split("\n") if not line.lstrip().startswith("%"))


@contextlib.contextmanager
def restored(*owners):
    """Undo whatever a mutant reassigns on these modules and classes."""
    saved = [(o, dict(vars(o))) for o in owners]
    try:
        yield
    finally:
        for owner, before in saved:
            for name, value in before.items():
                if vars(owner).get(name, None) is not value:
                    setattr(owner, name, value)


def prefixes(chapter):
    """For each exercise, the namespace as it stands just before its solution cell, and the
    sources of its visible and hidden test cells."""
    nb = course.read(course.CHAPTERS / chapter / f"{chapter}.ipynb")
    ns, out = {"__name__": "__main__"}, {}
    with contextlib.redirect_stdout(io.StringIO()):
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            if course.is_solution(cell):
                gid = course.nbgrader_meta(cell)["grade_id"]
                out[gid] = (dict(ns), nb.cells[i + 1].source, nb.cells[i + 2].source)
            if not course.nbgrader_meta(cell).get("grade"):
                exec(compile(_code(course.reference_source(cell.source)), f"<{chapter} cell {i}>", "exec"), ns)
    return out


@pytest.fixture(scope="module", params=CHAPTER_IDS)
def chapter(request):
    module = importlib.import_module(f"mutants_{request.param}")
    return request.param, module.MUTANTS, prefixes(request.param)


def outcome(ns, solution, visible, hidden):
    """Run a solution, then its visible and hidden test cells, as nbgrader does (a failing cell does
    not stop the next); return (visible failed, hidden failed)."""
    ns = dict(ns)
    failed = []
    threads = set(threading.enumerate())
    with restored(torch, F, torch.Tensor, torch.special, torch.nn), contextlib.redirect_stdout(io.StringIO()):
        try:
            exec(compile(solution, "<solution>", "exec"), ns)
        except Exception:
            pass
        for src in (visible, course.reference_source(hidden)):
            try:
                exec(compile(src, "<test>", "exec"), ns)
                failed.append(False)
            except Exception:
                failed.append(True)
    for t in set(threading.enumerate()) - threads:      # a mutant's worker thread must not outlive it
        t.join(timeout=10)
        assert not t.is_alive(), f"a solution left a thread running: {t.name}"
    return tuple(failed)


def reference(chapter, grade_id):
    nb = course.read(course.CHAPTERS / chapter / f"{chapter}.ipynb")
    return next(course.reference_source(c.source) for c in nb.cells if course.nbgrader_meta(c).get("grade_id") == grade_id)


def test_every_exercise_has_mutants(chapter):
    name, mutants, exercises = chapter
    assert set(mutants) == set(exercises), f"tests/mutants_{name}.py must list wrong solutions for every exercise"
    assert all(len(m) >= 3 for m in mutants.values())


def test_mutants_fail_and_reference_passes(chapter):
    name, mutants, exercises = chapter
    survivors = []
    for gid, (ns, visible, hidden) in exercises.items():
        assert outcome(ns, reference(name, gid), visible, hidden) == (False, False), f"the reference of {gid} fails"
        for label, mutant in mutants[gid].items():
            if outcome(ns, mutant, visible, hidden) == (False, False):
                survivors.append(f"{gid}: {label}")
    assert survivors == [], f"wrong solutions that pass every test: {survivors}"


def test_correct_variants_pass(chapter):
    """Correct solutions written another way (an optional CORRECT dict in tests/mutants_<chapter>.py,
    grade id -> {label: source}) pass the visible and hidden tests like the reference."""
    name, _, exercises = chapter
    correct = getattr(importlib.import_module(f"mutants_{name}"), "CORRECT", {})
    assert set(correct) <= set(exercises), f"CORRECT in tests/mutants_{name}.py names unknown exercises"
    failing = []
    for gid, variants in correct.items():
        ns, visible, hidden = exercises[gid]
        for label, source in variants.items():
            result = outcome(ns, source, visible, hidden)
            if result != (False, False):
                failing.append(f"{gid}: {label} (visible failed: {result[0]}, hidden failed: {result[1]})")
    assert failing == [], f"correct solutions that fail the tests: {failing}"
