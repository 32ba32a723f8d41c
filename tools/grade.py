"""Grade a chapter: autograde every submission, record zero for any nbgrader had to drop, write feedback and grades CSV.

Run it from anywhere; it works on the course in autograder/ (or on --course DIR, a folder holding
an nbgrader_config.py):

    python tools/grade.py ch01_tensors

Plain `nbgrader autograde` drops a submission whose kernel dies (os._exit, a segfault) and leaves
its scores empty; here such a submission is recorded with zero points and named in the summary,
and the other submissions are graded as usual.
"""
import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import course  # noqa: E402


def nbgrader(course_dir: Path, *args: str) -> int:
    cmd = [sys.executable, "-m", "nbgrader", *args, "--log-level=WARN"]
    return subprocess.run(cmd, cwd=course_dir, env=course.tool_env()).returncode


def db_url(course_dir: Path) -> str:
    """The gradebook URL that the course's nbgrader_config.py sets."""
    out = subprocess.run(
        [sys.executable, "-c",
         "from nbgrader.apps.nbgraderapp import NbGraderApp\n"
         "from nbgrader.coursedir import CourseDirectory\n"
         "app = NbGraderApp(); app.load_config_file()\n"
         "print(CourseDirectory(config=app.config).db_url)"],
        cwd=course_dir, env=course.tool_env(), capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def record_dropped(url: str, assignment: str) -> list[str]:
    """Give zero to every submission nbgrader could not autograde; return their student ids."""
    from nbgrader.api import Gradebook

    dropped = []
    with Gradebook(url) as gb:
        for sub in gb.assignment_submissions(assignment):
            grades = [g for nb in sub.notebooks for g in nb.grades]
            if any(g.auto_score is None and g.manual_score is None for g in grades):
                for g in grades:
                    if g.auto_score is None:
                        g.auto_score = 0.0
                dropped.append(sub.student.id)
        gb.db.commit()
    return dropped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("chapter", help="the assignment id, e.g. ch01_tensors")
    ap.add_argument("--course", type=Path, default=course.ROOT / "autograder",
                    help="folder with the nbgrader_config.py (default: autograder/)")
    ap.add_argument("--csv", type=Path, default=None, help="where to write the grades (default: <course>/grades.csv)")
    args = ap.parse_args(argv)
    course_dir = args.course.resolve()
    if not (course_dir / "nbgrader_config.py").exists():
        print(f"error: {course_dir} has no nbgrader_config.py; pass --course DIR", file=sys.stderr)
        return 2

    # nbgrader exits 1 when any submission failed; those are handled just below.
    nbgrader(course_dir, "autograde", args.chapter)
    dropped = record_dropped(db_url(course_dir), args.chapter)
    for student in dropped:
        print(f"{student}: not gradable (the kernel died or the notebook could not run): recorded as 0 points")
    if nbgrader(course_dir, "generate_feedback", args.chapter, "--force") != 0:
        print("warning: nbgrader generate_feedback reported errors", file=sys.stderr)
    csv = (args.csv or course_dir / "grades.csv").resolve()
    if nbgrader(course_dir, "export", f"--to={csv}") != 0:
        print("error: nbgrader export failed", file=sys.stderr)
        return 1
    print(f"grades written to {csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
