"""One source, three views: the package, the student notebooks and the book all come from the
chapter notebooks, nothing drifts, and no derived view leaks a solution or a hidden test."""
import importlib

import nbformat
import pytest

import course
from judge import imports_only
from conftest import CHAPTER_IDS, CHAPTERS

NOTEBOOKS = dict(zip(CHAPTER_IDS, CHAPTERS))


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_solutions_module_matches_notebook(chapter):
    module = course.SOLUTIONS / f"{chapter}.py"
    assert module.exists(), f"{module} is missing: run `python tools/export_solutions.py`"
    assert module.read_text() == course.export_module(NOTEBOOKS[chapter]), (
        f"solutions/{chapter}.py and the notebook's solution cells have drifted apart. Edit the notebook "
        "(the single source), then run `python tools/export_solutions.py`."
    )


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_committed_student_notebook_is_current(chapter, released):
    fresh = nbformat.read(released / "autograder" / "release" / chapter / f"{chapter}.ipynb", as_version=4)
    committed = nbformat.read(course.RELEASE / chapter / f"{chapter}.ipynb", as_version=4)
    assert [(c.cell_type, c.source, c.metadata) for c in committed.cells] == \
        [(c.cell_type, c.source, c.metadata) for c in fresh.cells], (
        f"autograder/release/{chapter} is out of date: run `python tools/release.py`"
    )


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_student_notebook_leaks_nothing(chapter, released):
    source = course.read(NOTEBOOKS[chapter])
    for path in [released / "autograder" / "release" / chapter / f"{chapter}.ipynb",
                 course.RELEASE / chapter / f"{chapter}.ipynb"]:
        student = nbformat.read(path, as_version=4)
        assert course.leaks(student, source) == []
        assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code"), \
            "a student notebook must not carry the reference run's outputs"
        stubs = [c for c in student.cells if course.is_solution(c)]
        assert stubs and all(course.CODE_STUB.split("\n")[1] in c.source for c in stubs)


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_book_view_leaks_nothing_and_folds_every_solution(chapter):
    source = course.read(NOTEBOOKS[chapter])
    book = course.book_view(source, download="student.ipynb")
    text = "\n".join(c.source for c in book.cells)
    for marker in (course.BEGIN_SOLUTION, course.END_SOLUTION, course.BEGIN_HIDDEN, course.END_HIDDEN):
        assert marker not in text
    hidden = set(course.secret_lines(source, solutions=False))
    assert hidden
    # the reference solutions are meant to be in the book (folded); the hidden tests never
    assert [line for line in course.leaks(book, source) if line in hidden] == []
    n_solutions = sum(course.is_solution(c) for c in source.cells)
    assert sum("{dropdown} Reference solution" in c.source for c in book.cells) == n_solutions


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_chapter_exercises_are_well_formed(chapter):
    """At least five exercises; each solution cell is followed by a visible and a hidden test cell
    with points; grade ids are unique."""
    nb = course.read(NOTEBOOKS[chapter])
    ids = [course.nbgrader_meta(c)["grade_id"] for c in nb.cells if course.nbgrader_meta(c)]
    assert len(ids) == len(set(ids)), "grade ids must be unique"
    solutions = [i for i, c in enumerate(nb.cells) if course.is_solution(c)]
    assert len(solutions) >= 5
    for i in solutions:
        visible, hidden = nb.cells[i + 1], nb.cells[i + 2]
        for cell in (visible, hidden):
            meta = course.nbgrader_meta(cell)
            assert meta.get("grade") and meta.get("locked") and meta.get("points", 0) > 0, meta
        assert course.BEGIN_HIDDEN not in visible.source
        assert course.BEGIN_HIDDEN in hidden.source and course.visible_source(hidden.source).strip().startswith("#")


def _exercises(chapter):
    nb = course.read(NOTEBOOKS[chapter])
    return [(chapter, course.nbgrader_meta(c)["grade_id"], nb.cells[i + 1].source, nb.cells[i + 2].source)
            for i, c in enumerate(nb.cells) if course.is_solution(c)]


@pytest.mark.parametrize("chapter,grade_id,visible,hidden", [t for ch in CHAPTER_IDS for t in _exercises(ch)],
                         ids=lambda v: v if isinstance(v, str) and len(v) < 40 else "")
def test_package_passes_the_students_tests(chapter, grade_id, visible, hidden):
    """The solutions package faces every visible and hidden test the learners face."""
    testing = importlib.import_module("solutions.testing")      # what the chapter's helper cell imports
    namespace = {name: getattr(testing, name) for name in testing.__all__}
    namespace.update(vars(importlib.import_module(f"solutions.{chapter}")))
    for cell in course.read(NOTEBOOKS[chapter]).cells:          # and the chapter's cells of imports only,
        if cell.cell_type == "code" and imports_only(cell.source):   # which the grading judge runs too
            exec(compile(cell.source, f"<{chapter} imports>", "exec"), namespace)
    for kind, source in (("visible", visible), ("hidden", hidden)):
        exec(compile(course.reference_source(source), f"<{chapter}:{grade_id} {kind}>", "exec"), namespace)


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_notebook_is_committed_executed_in_order(chapter):
    nb = course.read(NOTEBOOKS[chapter])
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert None not in counts, "run the notebook top to bottom and commit it with its outputs"
    assert counts == list(range(1, len(counts) + 1)), "re-execute the notebook top to bottom (Restart & Run All)"
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, "the committed notebook has cells that raised"


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_leak_detector_sees_a_leak(chapter):
    """The detector above is not vacuous: the source notebook itself leaks everything."""
    source = course.read(NOTEBOOKS[chapter])
    found = course.leaks(source, source)
    assert course.BEGIN_SOLUTION in found and course.BEGIN_HIDDEN in found and len(found) > 10
