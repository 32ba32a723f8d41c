"""Shared course tooling: find the chapter notebooks and derive the three views of each one."""
from __future__ import annotations

import copy
import os
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = ROOT / "chapters"
SOLUTIONS = ROOT / "solutions"
RELEASE = ROOT / "autograder" / "release"

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
# The stub nbgrader writes in place of a solution region (ClearSolutions' default for Python).
CODE_STUB = "# YOUR CODE HERE\nraise NotImplementedError()"
# A cell with this tag is copied into the solutions package although it is no exercise
# (imports, a config dataclass, a helper later chapters need).
EXPORT_TAG = "export"


def tool_env(**extra) -> dict:
    """The environment for a subprocess: this interpreter's bin/ first on PATH (nbgrader calls
    `alembic` by name), plus any extra variables."""
    env = dict(os.environ, **extra)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def chapter_notebooks() -> list[Path]:
    """Every chapter's source notebook: chapters/<id>/<id>.ipynb, in chapter order."""
    return sorted(p for p in CHAPTERS.glob("ch*/ch*.ipynb") if p.stem == p.parent.name)


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def is_solution(cell) -> bool:
    m = nbgrader_meta(cell)
    return cell.cell_type == "code" and m.get("solution", False) and not m.get("grade", False)


def is_exported(cell) -> bool:
    return is_solution(cell) or EXPORT_TAG in cell.get("metadata", {}).get("tags", [])


def _regions(source: str, begin: str, end: str, keep_inside: bool, stub: str | None) -> str:
    """Drop the marker lines of each begin/end region; keep or replace what lies between."""
    out, inside = [], False
    for line in source.split("\n"):
        if begin in line:
            if inside:
                raise ValueError(f"nested {begin!r}")
            inside = True
            if stub is not None:
                indent = re.match(r"\s*", line).group(0)
                out += [indent + s for s in stub.split("\n")]
        elif end in line:
            if not inside:
                raise ValueError(f"{end!r} without {begin!r}")
            inside = False
        elif keep_inside or not inside:
            out.append(line)
    if inside:
        raise ValueError(f"{begin!r} without {end!r}")
    return "\n".join(out)


def reference_source(source: str) -> str:
    """A solution cell as the reference: the solution in place, the markers gone."""
    return _regions(source, BEGIN_SOLUTION, END_SOLUTION, keep_inside=True, stub=None)


def stub_source(source: str) -> str:
    """A solution cell as the learner gets it."""
    return _regions(source, BEGIN_SOLUTION, END_SOLUTION, keep_inside=False, stub=CODE_STUB)


def visible_source(source: str) -> str:
    """A test cell without its hidden tests."""
    return _regions(source, BEGIN_HIDDEN, END_HIDDEN, keep_inside=False, stub=None).rstrip()


def module_name(nb_path: Path) -> str:
    return nb_path.stem


def export_module(nb_path: Path) -> str:
    """The text of solutions/<chapter>.py, made from the notebook's exported cells."""
    nb = read(nb_path)
    rel = nb_path.relative_to(ROOT).as_posix()
    title = next((c.source.split("\n")[0].lstrip("# ") for c in nb.cells if c.cell_type == "markdown"), rel)
    parts = [
        f'"""Reference solutions for {title}.\n\n'
        f"Generated from {rel} by tools/export_solutions.py: edit the notebook, then re-run\n"
        f'`python tools/export_solutions.py`. tests/test_single_source.py fails if the two differ.\n"""'
    ]
    for cell in nb.cells:
        if is_exported(cell):
            parts.append(reference_source(cell.source).strip())
    return "\n\n\n".join(parts) + "\n"


def book_view(nb: nbformat.NotebookNode, download: str | None = None, colab: str | None = None):
    """The notebook as the book shows it.

    Each solution cell becomes the stub a learner sees, followed by the reference solution in a
    collapsed dropdown; hidden tests are cut out (a cell left empty is dropped); a box at the top
    links the student notebook.
    """
    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        if is_solution(cell):
            stub = nbformat.v4.new_code_cell(stub_source(cell.source))
            stub.metadata["tags"] = ["exercise-stub"]
            cells.append(stub)
            fence = "````"
            cells.append(nbformat.v4.new_markdown_cell(
                f"{fence}{{dropdown}} Reference solution\n:class-container: reference-solution\n\n"
                f"```python\n{reference_source(cell.source).strip()}\n```\n{fence}"
            ))
        elif cell.cell_type == "code" and BEGIN_HIDDEN in cell.source:
            cell.source = visible_source(cell.source)
            if any(l.strip() and not l.strip().startswith("#") for l in cell.source.split("\n")):
                cells.append(cell)
        else:
            cells.append(cell)
    if download:
        links = [f"{{download}}`Download the student notebook <{download}>`"]
        if colab:
            links.append(f"[open it in Colab]({colab})")
        box = (
            ":::{admonition} Work through this chapter yourself\n:class: tip\n\n"
            + " or ".join(links)
            + ". It has every exercise as a stub and the visible tests; the book shows the"
            " reference solutions folded away under each exercise.\n:::"
        )
        # after the title cell
        cells.insert(1, nbformat.v4.new_markdown_cell(box))
    nb.cells = cells
    return nb


def secret_lines(source: nbformat.NotebookNode, solutions: bool = True) -> list[str]:
    """The telling lines of the source's hidden tests (and solutions, unless solutions=False): long
    enough to mean something, and not also public (in the task text, a stub or a visible test, and
    with solutions=False in a reference solution, which the book shows)."""
    public = "\n".join(
        (reference_source(c.source) if not solutions else stub_source(c.source)) if is_solution(c)
        else visible_source(c.source) if BEGIN_HIDDEN in c.source
        else c.source for c in source.cells)
    secret = []
    for cell in source.cells:
        if solutions and is_solution(cell):
            secret += _inside(cell.source, BEGIN_SOLUTION, END_SOLUTION)
        elif BEGIN_HIDDEN in cell.source:
            secret += _inside(cell.source, BEGIN_HIDDEN, END_HIDDEN)
    lines = (line.strip() for line in secret)
    return [line for line in lines if len(line) > 8 and not line.startswith("#") and line not in public]


def leaks(nb: nbformat.NotebookNode, source: nbformat.NotebookNode) -> list[str]:
    """The markers and secret lines of the source that a derived notebook contains."""
    text = "\n".join(c.source for c in nb.cells)
    found = [m for m in (BEGIN_SOLUTION, END_SOLUTION, BEGIN_HIDDEN, END_HIDDEN) if m in text]
    return found + [line for line in secret_lines(source) if line in text]


def _inside(source: str, begin: str, end: str) -> list[str]:
    out, inside = [], False
    for line in source.split("\n"):
        if begin in line:
            inside = True
        elif end in line:
            inside = False
        elif inside:
            out.append(line)
    return out


def scratch_course(root: Path, chapters=(), db_url: str | None = None) -> Path:
    """A throw-away nbgrader course under `root` that uses the course's autograder/nbgrader_config.py,
    with its own copy of the given chapters and its own gradebook (SQLite unless db_url is given)."""
    import shutil
    root.mkdir(parents=True, exist_ok=True)
    for ch in chapters:
        shutil.copytree(CHAPTERS / ch, root / "chapters" / ch, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    db_url = db_url or "sqlite:///" + str(root / "gradebook.db")
    (root / "nbgrader_config.py").write_text(
        "c = get_config()  # noqa: F821\n"
        f"load_subconfig({str(ROOT / 'autograder' / 'nbgrader_config.py')!r})  # noqa: F821\n"
        f"c.CourseDirectory.root = {str(root)!r}\n"
        f"c.CourseDirectory.db_url = {db_url!r}\n"
    )
    return root
