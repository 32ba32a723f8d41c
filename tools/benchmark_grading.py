"""Time plain `nbgrader autograde` against tools/grade.py on N generated submissions of one chapter, and check they agree.

    python tools/benchmark_grading.py ch01_tensors -n 8            # workers: one per core
    python tools/benchmark_grading.py ch01_tensors -n 8 --workers 2

It builds two scratch courses with the same submissions (a third fully answered, a third left
blank, a third with every exercise but one answered), grades one with nbgrader as shipped
(sequential, in one process) and the other with tools/grade.py (feedback off, as nbgrader's
autograde writes none), and prints both times, their ratio and the grader's overhead: the extra
core-seconds it spends per notebook. The goal: at least 2x faster on 2 cores, at most 3 s of
overhead per notebook. It exits 1 if the two gradebooks disagree on any score.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import course  # noqa: E402
import nbformat  # noqa: E402
from nbgrader.api import Gradebook  # noqa: E402


def submissions(root: Path, chapter: str, n: int):
    source = course.read(course.CHAPTERS / chapter / f"{chapter}.ipynb")
    answers = {course.nbgrader_meta(c)["grade_id"]: course.reference_source(c.source)
               for c in source.cells if course.is_solution(c)}
    release = nbformat.read(root / "autograder" / "release" / chapter / f"{chapter}.ipynb", as_version=4)
    for i in range(n):
        nb = nbformat.from_dict(release)
        skip = list(answers)[i % len(answers)]
        for cell in nb.cells:
            gid = course.nbgrader_meta(cell).get("grade_id")
            if gid in answers and (i % 3 == 0 or (i % 3 == 2 and gid != skip)):
                cell.source = answers[gid]
        path = root / "autograder" / "submitted" / f"student{i:03d}" / chapter / f"{chapter}.ipynb"
        path.parent.mkdir(parents=True)
        nbformat.write(nb, path)


def scores(root: Path, chapter: str) -> dict:
    with Gradebook(f"sqlite:///{root / 'gradebook.db'}", "gpt-from-scratch") as gb:
        return {s.student.id: s.score for s in gb.assignment_submissions(chapter)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("chapter")
    ap.add_argument("-n", type=int, default=8, help="number of submissions (default 8)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    if not (course.CHAPTERS / args.chapter / f"{args.chapter}.ipynb").exists():
        print(f"error: no chapter {args.chapter!r}", file=sys.stderr)
        return 2
    env = course.tool_env()
    with tempfile.TemporaryDirectory(prefix="grading-benchmark-") as tmp:
        plain = course.scratch_course(Path(tmp) / "plain", [args.chapter])
        run = subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", args.chapter, "--force"],
                             cwd=plain, env=env, capture_output=True, text=True)
        if run.returncode:
            print(run.stdout + run.stderr, file=sys.stderr)
            return 1
        submissions(plain, args.chapter, args.n)
        ours = Path(tmp) / "ours"
        shutil.copytree(plain, ours)
        course.scratch_course(ours, db_url=f"sqlite:///{ours / 'gradebook.db'}")

        start = time.monotonic()
        subprocess.run([sys.executable, "-m", "nbgrader", "autograde", args.chapter, "--force"], cwd=plain, env=env,
                       capture_output=True, text=True)
        t_plain = time.monotonic() - start
        start = time.monotonic()
        run = subprocess.run([sys.executable, str(Path(__file__).with_name("grade.py")), args.chapter, "--course",
                              str(ours), "--workers", str(args.workers), "--no-feedback"], env=env,
                             capture_output=True, text=True)
        t_ours = time.monotonic() - start
        if run.returncode:
            print(run.stdout + run.stderr, file=sys.stderr)
            return 1
        a, b = scores(plain, args.chapter), scores(ours, args.chapter)
    n = args.n
    print(f"{args.chapter}: {n} submissions, {os.cpu_count()} cores")
    print(f"  nbgrader autograde (sequential)  {t_plain:7.1f} s   {t_plain / n:5.2f} s per notebook")
    print(f"  tools/grade.py ({args.workers} workers)       {t_ours:7.1f} s   {t_ours / n:5.2f} s per notebook")
    print(f"  ratio {t_plain / t_ours:.2f}x (goal: at least 2x on 2 cores)")
    print(f"  overhead {(t_ours * args.workers - t_plain) / n:+.2f} core-seconds per notebook (goal: at most 3 s)")
    if a != b:
        print(f"  the gradebooks disagree: nbgrader {a}, tools/grade.py {b}", file=sys.stderr)
        return 1
    print(f"  scores agree for all {n} submissions: {sorted(set(a.values()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
