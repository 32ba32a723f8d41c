"""Generate the student notebooks (autograder/release/) from the chapters with nbgrader.

    python tools/release.py                 # every chapter
    python tools/release.py ch01_tensors    # one chapter

Each run records the assignments in a throw-away gradebook, so that several chapters can be
released at once and the course's own gradebook is never touched by a release.
"""
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import course  # noqa: E402

if __name__ == "__main__":
    wanted = set(sys.argv[1:])
    for nb in course.chapter_notebooks():
        if wanted and nb.stem not in wanted:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "nbgrader", "generate_assignment", nb.stem, "--force",
                 "--log-level=WARN"],
                cwd=course.ROOT / "autograder", check=True,
                env=course.tool_env(NBGRADER_DB_URL=f"sqlite:///{tmp}/gradebook.db"),
            )
        print(f"released {(course.RELEASE / nb.stem / nb.name).relative_to(course.ROOT)}")
