"""The book builds with warnings as errors, and each chapter page shows the book view: stubs and
visible tests, reference solutions folded away, no hidden test anywhere in the HTML."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

import course
from conftest import CHAPTER_IDS


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("book")
    run = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", str(course.ROOT), "--path-output", str(out),
         "--warningiserror", "--nitpick", "--keep-going"],
        capture_output=True, text=True, env=course.tool_env(),
    )
    assert run.returncode == 0, "the book build failed or warned:\n" + run.stdout[-4000:] + run.stderr[-4000:]
    return out / "_build" / "html"


def hidden_lines(chapter):
    return course.secret_lines(course.read(course.CHAPTERS / chapter / f"{chapter}.ipynb"), solutions=False)


def _text(path):
    text = path.read_text(errors="ignore")
    for a, b in [("&quot;", '"'), ("&#39;", "'"), ("&lt;", "<"), ("&gt;", ">"), ("&amp;", "&")]:
        text = text.replace(a, b)
    return re.sub(r"<[^>]+>", "", text)


def test_no_hidden_test_anywhere_in_the_html(html):
    files = [p for p in html.rglob("*") if p.is_file() and p.suffix in {".html", ".js", ".txt", ".ipynb", ".json"}]
    assert files
    # the markers may be named in prose (the instructors' appendix), but never stand on a line of code
    markers = re.compile(r"^\s*### (BEGIN|END) (SOLUTION|HIDDEN TESTS)\s*$", re.M)
    def text(path):
        if path.suffix == ".ipynb":
            return "\n".join(c.source for c in course.read(path).cells)
        return _text(path)
    assert [p.name for p in files if markers.search(text(p))] == []
    assert not (html / "_sources").exists(), "the raw sources (with hidden tests) must not be published"
    for chapter in CHAPTER_IDS:
        lines = hidden_lines(chapter)
        assert lines
        page = _text(html / "chapters" / chapter / f"{chapter}.html")
        assert [line for line in lines if line in page] == []


@pytest.mark.parametrize("chapter", CHAPTER_IDS)
def test_chapter_page_shows_stubs_tests_and_folded_solutions(html, chapter):
    page = (html / "chapters" / chapter / f"{chapter}.html").read_text()
    nb = course.read(course.CHAPTERS / chapter / f"{chapter}.ipynb")
    n = sum(course.is_solution(c) for c in nb.cells)
    # each reference solution sits in a collapsed dropdown (a <details> element without `open`)
    folded = re.findall(r'<details class="[^"]*reference-solution[^"]*"[^>]*>', page)
    assert len(folded) == n and not any(" open" in tag for tag in folded)
    assert page.count("NotImplementedError") >= n
    visible = [c for c in nb.cells if course.nbgrader_meta(c).get("grade") and course.BEGIN_HIDDEN not in c.source]
    assert len(visible) == n and "check_tensor" in page
    # the learner's notebook is one click away, and it is the student notebook
    link = re.search(r'href="([^"]*_downloads/[^"]*/' + chapter + r'\.ipynb)"', page)
    assert link, "no download link to the student notebook"
    target = (html / "chapters" / chapter / link.group(1)).resolve()
    assert target.read_bytes() == (course.RELEASE / chapter / f"{chapter}.ipynb").read_bytes()
