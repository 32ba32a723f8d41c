"""Grade a chapter: autograde every submission, record a reason and zero points for any that cannot run, write feedback and a grades CSV.

    python tools/grade.py ch01_tensors                   # every submission in autograder/submitted/
    python tools/grade.py ch01_tensors --student alice   # regrade one student

It works on the course in autograder/ (or on --course DIR, a folder with an nbgrader_config.py) and
is built on nbgrader: `nbgrader autograde --force`, `nbgrader generate_feedback --force` and
`nbgrader export`, whose full output goes to <course>/logs/. What it adds: a submission that is
not a readable notebook, or whose kernel dies, is recorded with zero points and a reason instead
of being dropped with empty scores, and a summary table says what happened to each student.
"""
import argparse
import contextlib
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import course  # noqa: E402

try:
    import nbformat
    from nbgrader.api import Gradebook, MissingEntry
    from nbgrader.apps.nbgraderapp import NbGraderApp
    from nbgrader.coursedir import CourseDirectory
except ImportError as err:  # pragma: no cover - a message, not a feature
    sys.exit(f"error: {err.name} is not installed in this Python. Run this inside the course's environment: "
             "`. .venv/bin/activate` (bash tools/book sets it up), or call `.venv/bin/python tools/grade.py`.")


def course_directory(course_dir: Path) -> CourseDirectory:
    """nbgrader's view of the course, as its nbgrader_config.py sets it."""
    here = os.getcwd()
    try:
        os.chdir(course_dir)
        app = NbGraderApp()
        app.load_config_file()
        return CourseDirectory(config=app.config)
    finally:
        os.chdir(here)


def nbgrader(course_dir: Path, log: Path, *args: str) -> int:
    """Run an nbgrader command in the course folder, its output appended to `log`."""
    with open(log, "a") as out:
        out.write(f"\n$ nbgrader {' '.join(args)}\n")
        out.flush()
        return subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course_dir, env=course.tool_env(),
                              stdout=out, stderr=subprocess.STDOUT).returncode


def unreadable(path: Path) -> str | None:
    """Why a submitted file is not a notebook nbgrader can grade, or None if it is one."""
    if path.stat().st_size == 0:
        return "not a valid notebook: the file is empty"
    try:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # nbformat raises several kinds; any of them means the same here
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"not a valid notebook: {first[:120]}"
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("chapter", help="the assignment id, e.g. ch01_tensors")
    ap.add_argument("--course", type=Path, default=course.ROOT / "autograder",
                    help="folder with the nbgrader_config.py (default: autograder/)")
    ap.add_argument("--student", action="append", default=[], help="grade only this student (repeatable)")
    ap.add_argument("--csv", type=Path, default=None, help="where to write the grades (default: <course>/grades.csv)")
    args = ap.parse_args(argv)

    course_dir = args.course.resolve()
    if not (course_dir / "nbgrader_config.py").exists():
        print(f"error: {course_dir} has no nbgrader_config.py; pass --course DIR", file=sys.stderr)
        return 2
    cd = course_directory(course_dir)
    source = Path(cd.format_path(cd.source_directory, ".", args.chapter))
    if not (source / f"{args.chapter}.ipynb").exists():
        known = sorted(p.parent.name for p in Path(cd.root, cd.source_directory).glob("*/*.ipynb")
                       if p.stem == p.parent.name)
        print(f"error: no chapter {args.chapter!r} (looked for {source / (args.chapter + '.ipynb')}); "
              f"the chapters are: {', '.join(known)}", file=sys.stderr)
        return 2
    submitted = Path(cd.root, cd.submitted_directory)
    files = sorted(submitted.glob(f"*/{args.chapter}/{args.chapter}.ipynb"))
    if args.student:
        files = [f for f in files if f.parent.parent.name in args.student]
        missing = set(args.student) - {f.parent.parent.name for f in files}
        if missing:
            print(f"error: no submission of {args.chapter} for {', '.join(sorted(missing))} under {submitted}",
                  file=sys.stderr)
            return 2
    if not files:
        print(f"error: no submissions of {args.chapter} under {submitted}: put each one at "
              f"{submitted}/<student>/{args.chapter}/{args.chapter}.ipynb", file=sys.stderr)
        return 2
    students = [f.parent.parent.name for f in files]

    logs = course_dir / "logs"
    logs.mkdir(exist_ok=True)
    log = logs / f"grade-{args.chapter}.log"
    log.write_text("")
    with Gradebook(cd.db_url, cd.course_id) as gb:
        try:
            gb.find_assignment(args.chapter)
            released = True
        except MissingEntry:
            released = False
    if not released:
        print(f"{args.chapter} is not in the gradebook yet: running nbgrader generate_assignment {args.chapter}")
        if nbgrader(course_dir, log, "generate_assignment", args.chapter, "--force") != 0:
            print(f"error: nbgrader generate_assignment failed; see {log}", file=sys.stderr)
            return 1

    reasons = {f.parent.parent.name: r for f in files if (r := unreadable(f))}
    only = [f"--student={s}" for s in args.student]
    print(f"autograding {len(files)} submission(s) of {args.chapter} ...", flush=True)
    nbgrader(course_dir, log, "autograde", args.chapter, "--force", *only)   # exits 1 if any failed

    summary = {}
    with Gradebook(cd.db_url, cd.course_id) as gb:
        for student in students:
            try:
                sub = gb.find_submission(args.chapter, student)
            except MissingEntry:
                gb.update_or_create_student(student)
                sub = gb.add_submission(args.chapter, student)
            grades = [g for nb in sub.notebooks for g in nb.grades]
            ran = (Path(cd.format_path(cd.autograded_directory, student, args.chapter)) /
                   f"{args.chapter}.ipynb").exists()
            if not ran or any(g.auto_score is None and g.manual_score is None for g in grades):
                for g in grades:
                    g.auto_score = 0.0
                reasons.setdefault(student, "could not be run to the end: the kernel died (os._exit, a crash, "
                                            "running out of memory) or nbgrader failed")
            gb.db.commit()
            summary[student] = (sub.score, sub.max_score)

    if nbgrader(course_dir, log, "generate_feedback", args.chapter, "--force", *only) != 0:
        print(f"note: no feedback for the submissions that could not be graded; see {log}")
    csv = (args.csv or course_dir / "grades.csv").resolve()
    if nbgrader(course_dir, log, "export", f"--to={csv}") != 0:
        print(f"error: nbgrader export failed; see {log}", file=sys.stderr)
        return 1

    width = max(len(s) for s in students)
    print(f"\n{'student':{width}}  {'score':>11}  status")
    for student in students:
        score, top = summary[student]
        status = f"0 points: {reasons[student]}" if student in reasons else "graded"
        print(f"{student:{width}}  {score:5.1f} / {top:<4g}  {status}")
    print(f"\ngrades: {csv}\nfeedback: {Path(cd.root, cd.feedback_directory)}/<student>/{args.chapter}/"
          f"\nnbgrader's full output: {log}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
