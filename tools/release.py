"""Generate the student notebooks (autograder/release/) from the chapters with nbgrader."""
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import course  # noqa: E402

if __name__ == "__main__":
    for nb in course.chapter_notebooks():
        subprocess.run(
            [sys.executable, "-m", "nbgrader", "generate_assignment", nb.stem, "--force",
             "--log-level=WARN"],
            cwd=course.ROOT / "autograder", check=True, env=course.tool_env(),
        )
        print(f"released {(course.RELEASE / nb.stem / nb.name).relative_to(course.ROOT)}")
