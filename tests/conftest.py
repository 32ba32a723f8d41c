"""Shared test setup: offline data, the chapter list, and helpers to run nbgrader on a scratch course."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import course

SHARED_DATA = course.ROOT.parent / "shared" / "data"

# Point the course at the offline copies of its data when they exist (CI and our machines
# have no network). tiktoken reads TIKTOKEN_CACHE_DIR; the corpora are read from COURSE_DATA.
if SHARED_DATA.is_dir():
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED_DATA / "tiktoken"))
    os.environ.setdefault("COURSE_DATA", str(SHARED_DATA / "corpora"))

CHAPTERS = course.chapter_notebooks()
CHAPTER_IDS = [p.stem for p in CHAPTERS]


def make_course(root: Path, chapters=CHAPTER_IDS) -> Path:
    """A scratch nbgrader course under `root` that uses the real autograder/nbgrader_config.py,
    with its own copy of the chapters and its own gradebook."""
    return course.scratch_course(root, chapters)


def nbgrader(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=root, env=course.tool_env(),
                          capture_output=True, text=True)


@pytest.fixture(scope="session")
def released(tmp_path_factory) -> Path:
    """A scratch course in which `nbgrader generate_assignment` has run for every chapter."""
    root = make_course(tmp_path_factory.mktemp("course"))
    for ch in CHAPTER_IDS:
        out = nbgrader(root, "generate_assignment", ch, "--force")
        assert out.returncode == 0, out.stdout + out.stderr
    return root
