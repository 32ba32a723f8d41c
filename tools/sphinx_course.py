"""Sphinx extension: render each chapter notebook as the book view (stubs shown, solutions folded, hidden tests removed)."""
import json
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import course  # noqa: E402


def _links(app, docname):
    nb_path = Path(app.srcdir) / (docname + ".ipynb")
    student = course.RELEASE / nb_path.stem / nb_path.name
    if not student.exists():
        raise FileNotFoundError(
            f"{student.relative_to(course.ROOT)} is missing: run `python tools/release.py` "
            "(or tools/book, which does) to generate the student notebooks first."
        )
    depth = len(Path(docname).parts) - 1
    download = "/".join([".."] * depth + [student.relative_to(course.ROOT).as_posix()])
    repo = app.config.course_repository.rstrip("/")
    colab = None
    if repo.startswith("https://github.com/"):
        slug = repo[len("https://github.com/"):]
        colab = (f"https://colab.research.google.com/github/{slug}/blob/"
                 f"{app.config.course_branch}/{student.relative_to(course.ROOT).as_posix()}")
    return download, colab


def source_read(app, docname, source):
    path = Path(app.srcdir) / (docname + ".ipynb")
    if not (path.exists() and path.resolve() in {p.resolve() for p in course.chapter_notebooks()}):
        return
    nb = nbformat.reads(source[0], as_version=4)
    download, colab = _links(app, docname)
    source[0] = json.dumps(course.book_view(nb, download, colab))


def setup(app):
    app.add_config_value("course_repository", "", "env")
    app.add_config_value("course_branch", "main", "env")
    app.connect("source-read", source_read)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
