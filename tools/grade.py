"""Grade a chapter's submissions on nbgrader: isolated, in parallel, a result for every one, then feedback and a grades CSV.

    python tools/grade.py ch01_tensors                            # autograder/submitted/<student>/ch01_tensors/
    python tools/grade.py ch01_tensors --submissions folder/      # a folder of <student>.ipynb files
    python tools/grade.py ch01_tensors --submissions export.zip   # a zip of such a folder (an LMS export)
    python tools/grade.py ch01_tensors --resume                   # skip submissions already graded
    python tools/grade.py ch01_tensors --student alice            # regrade one student

It works on the course in autograder/ (or --course DIR, a folder with an nbgrader_config.py) and
on its gradebook (SQLite, or the server that NBGRADER_DB_URL names, e.g. PostgreSQL, so that
several machines can grade one course: give each one a --shard). Each submission is autograded
by nbgrader's own pipeline with two changes (tools/grading.py): it is first rebuilt on the
release notebook, and it runs as two processes: the learner's code in a sandboxed worker, the
tests in a judge that only ever sees what the learner's code returns (tools/judge.py). Every
submission ends with a status and a reason, recorded in <course>/results/<chapter>.json:

    graded       the tests ran; the points are what they earned
    invalid      not a notebook (empty, truncated, not UTF-8, not JSON, not nbformat 4), or not a
                 file one can grade (a symbolic link, a FIFO, a device, a folder, unreadable): 0 points
    timed out    a cell, or the whole notebook, ran past its limit; the tests that ran count
    kernel died  the worker running the learner's code crashed or exited; the tests before count
    error        the grader itself failed on this submission: 0 points; see its log
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import hashlib
import html
import json
import multiprocessing
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.modules.setdefault("rfc3987_syntax", None)   # seconds of grammar building that nbformat never needs (see judge.py)
import course  # noqa: E402

try:
    import nbformat
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.api import Gradebook, MissingEntry
    from nbgrader.apps.api import NbGraderAPI
    from nbgrader.apps.nbgraderapp import NbGraderApp
    from nbgrader.coursedir import CourseDirectory
    from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearOutput, DeduplicateIds,
                                        IgnorePattern, LimitOutput, OverwriteCells, OverwriteKernelspec,
                                        SaveAutoGrades)

    import grading
except ImportError as err:  # pragma: no cover - a message, not a feature
    sys.exit(f"error: {err.name} is not installed in this Python. Run this inside the course's environment: "
             "`. .venv/bin/activate` (bash tools/book sets it up), or call `.venv/bin/python tools/grade.py`.")

STUDENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")


class UsageError(Exception):
    """Bad arguments or input: exit 2 with the message."""


@contextlib.contextmanager
def inside(folder: Path):
    """Run a block in `folder` (nbgrader reads nbgrader_config.py and resolves paths from the working folder)."""
    here = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(here)


def load_config(course_dir: Path):
    """nbgrader's configuration of the course, as its nbgrader_config.py sets it."""
    with inside(course_dir):
        app = NbGraderApp()
        app.load_config_file()
        return app.config


MAX_NOTEBOOK = 50 * 2**20


def not_a_file(path: Path) -> str | None:
    """Why a submission's path is not a file one can read and grade, or None. Never opens
    anything but a regular file (a FIFO would block, /dev/zero never ends)."""
    try:
        st = os.lstat(path)
    except OSError as err:
        return f"not a valid notebook: the file cannot be read ({err.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "not a valid notebook: a symbolic link, not a file; submit the notebook itself"
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        return f"not a valid notebook: {kind}, not a file; submit the notebook itself"
    if st.st_size > MAX_NOTEBOOK:
        return f"not a valid notebook: {st.st_size:,} bytes; a notebook over 50 MB is not graded (clear its outputs)"
    try:
        with open(path, "rb", opener=lambda p, f: os.open(p, f | os.O_NOFOLLOW | os.O_NONBLOCK)):
            pass
    except OSError as err:
        return f"not a valid notebook: the file cannot be read ({err.strerror})"
    return None


def sha256(path: Path) -> str:
    return "" if not_a_file(path) else hashlib.sha256(path.read_bytes()).hexdigest()


def unreadable(path: Path) -> str | None:
    """Why a submitted file is not a notebook nbgrader can grade, or None if it is one."""
    why = not_a_file(path)
    if why:
        return why
    data = path.read_bytes()
    if not data.strip():
        return "not a valid notebook: the file is empty"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        return f"not a valid notebook: the file is not UTF-8 text (byte {err.start})"
    try:
        raw = json.loads(text)
    except ValueError as err:
        return f"not a valid notebook: not JSON, or cut short ({err.msg} at line {err.lineno})"
    if not isinstance(raw, dict) or "cells" not in raw and "worksheets" not in raw:
        return "not a valid notebook: JSON, but not a notebook (no cells)"
    if raw.get("nbformat") not in (3, 4):
        return f"not a valid notebook: nbformat {raw.get('nbformat')!r}; save it with Jupyter as nbformat 4"
    try:
        nb = nbformat.reads(text, as_version=4)
        nbformat.validate(nb)
    except Exception as err:  # nbformat raises several kinds; any of them means the same here
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"not a valid notebook: {first[:120]}"
    return None


def submitted_students(submitted: Path, chapter: str) -> list[str]:
    """The students with a submission of the chapter: every <student>/<chapter>/<chapter>.ipynb,
    also one that is a broken or looping symbolic link (glob skips those; they get a result too)."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(submitted):
            if (entry.is_dir() or entry.is_symlink()) and os.path.lexists(Path(entry.path, chapter, f"{chapter}.ipynb")):
                found.append(entry.name)
    return sorted(found)


def import_submissions(source: Path, chapter: str, submitted: Path) -> list[str]:
    """Copy a folder of <student>.ipynb files, or a zip of one, into nbgrader's submitted/ layout.
    Returns the students imported. Nothing already there is lost: a changed file replaces the old
    one, which is kept as <chapter>.ipynb.previous."""
    if not source.exists():
        raise UsageError(f"--submissions {source}: no such file or folder")
    files: dict[str, bytes] = {}

    def add(name: str, data: bytes):
        stem = Path(name).stem
        if not STUDENT_ID.match(stem):
            raise UsageError(f"--submissions: {name!r} does not name a student; name each file <student id>.ipynb "
                             "(letters, digits, '.', '_', '-', '@')")
        if stem in files:
            raise UsageError(f"--submissions: two files for student {stem!r}")
        files[stem] = data

    if source.is_dir():
        for path in sorted(source.rglob("*.ipynb")):
            if ".ipynb_checkpoints" not in path.parts:
                why = not_a_file(path)
                if why:
                    print(f"skipped {path}: {why.removeprefix('not a valid notebook: ')}", file=sys.stderr)
                    continue
                add(path.name, path.read_bytes())
    else:
        try:
            with zipfile.ZipFile(source) as z:
                for info in z.infolist():
                    name = info.filename.replace("\\", "/")
                    if info.is_dir() or not name.endswith(".ipynb") or "__MACOSX" in name or ".ipynb_checkpoints" in name:
                        continue
                    if info.file_size > 50 * 2**20:
                        raise UsageError(f"--submissions: {name} is {info.file_size:,} bytes; a notebook over 50 MB "
                                         "is not graded")
                    add(name.rsplit("/", 1)[-1], z.read(info))
        except zipfile.BadZipFile:
            raise UsageError(f"--submissions {source}: not a zip file (or a damaged one); give a zip or a folder "
                             "of <student>.ipynb files") from None
    if not files:
        raise UsageError(f"--submissions {source}: no .ipynb files in it")
    for student, data in files.items():
        target = submitted / student / chapter / f"{chapter}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and target.read_bytes() != data:
            shutil.copy2(target, target.with_name(f"{chapter}.ipynb.previous"))
        if not target.exists() or target.read_bytes() != data:
            target.write_bytes(data)
    return sorted(files)


# ---------------------------------------------------------------- the worker side (one process per core)

W: dict = {}


def init_worker(course_dir: str, chapter: str, settings: dict):
    config = load_config(Path(course_dir))
    config.Autograde.sanitize_preprocessors = [grading.Normalize, ClearOutput, DeduplicateIds, OverwriteKernelspec,
                                               OverwriteCells, CheckCellMetadata]
    config.Autograde.autograde_preprocessors = [grading.IsolatedExecute, IgnorePattern, ClearMetadataPreprocessor,
                                                LimitOutput, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
    for name, value in settings["execute"].items():
        setattr(config.IsolatedExecute, name, value)
    config.Normalize.release = settings["release"]
    with inside(Path(course_dir)):
        api = NbGraderAPI(config=config)
    W.update(api=api, cd=api.coursedir, chapter=chapter, course_dir=Path(course_dir), logs=Path(settings["logs"]),
             feedback=settings["feedback"])
    grading.LOCK = grading.GradebookLock(api.coursedir.db_url)


@contextlib.contextmanager
def locked():
    grading.LOCK.acquire()
    try:
        yield
    finally:
        grading.LOCK.release()


def record_zero(student: str, reason: str):
    """A submission that cannot be graded still gets a row: every grade 0."""
    chapter = W["chapter"]
    with locked(), Gradebook(W["cd"].db_url, W["cd"].course_id) as gb:
        gb.update_or_create_student(student)
        try:
            sub = gb.find_submission(chapter, student)
        except MissingEntry:
            sub = gb.add_submission(chapter, student)
        for nb in sub.notebooks:
            for g in nb.grades:
                g.auto_score, g.needs_manual_grade = 0.0, False
        gb.db.commit()


def notice(student: str, reason: str):
    """Feedback for a submission that did not run: why, and what to do."""
    chapter = W["chapter"]
    page = Path(W["cd"].format_path(W["cd"].feedback_directory, student, chapter)) / f"{chapter}.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{chapter}</title></head><body>"
                    f"<h1>{html.escape(chapter)}: not graded</h1><p>{html.escape(reason)}</p>"
                    "<p>Open the notebook in Jupyter, check that it runs from top to bottom "
                    "(Kernel &rarr; Restart &amp; Run All), save it and submit it again.</p></body></html>")


def grade_one(student: str) -> dict:
    chapter, cd = W["chapter"], W["cd"]
    start = time.monotonic()
    path = Path(cd.format_path(cd.submitted_directory, student, chapter)) / f"{chapter}.ipynb"
    result = {"student": student, "sha256": sha256(path), "notes": [], "isolation": grading.isolation()}
    log = W["logs"] / f"{student}.log"
    linked = [p for p in (path.parent.parent, path.parent) if p.is_symlink()]
    reason = (f"not a valid notebook: {linked[0].name}/ is a symbolic link, not a folder of the course; "
              "submit the notebook itself" if linked else unreadable(path))
    if reason:
        record_zero(student, reason)
        notice(student, reason)
        result.update(status="invalid", reason=reason)
    else:
        grading.OUTCOMES.clear()
        with locked():
            run = W["api"].autograde(chapter, student, force=True, create=True)
        outcome = grading.OUTCOMES.get(student, {})
        log.write_text(run.get("log", "") + (run.get("error") or "") +
                       (f"\n--- the judge's error output ---\n{outcome['judge_log']}" if outcome.get("judge_log") else ""))
        result["notes"] = outcome.get("notes", [])
        result["timing"] = {k: outcome[k] for k in ("sandbox_seconds", "seconds", "worker_start_seconds",
                                                    "test_seconds", "channel") if k in outcome}
        cells = outcome.get("grade_ids", {})

        def where(i):
            return f"cell {i}" + (f" ({cells[i]})" if cells.get(i) else "")

        if not run["success"] or "died" not in outcome:
            reason = f"the grader failed on this submission; see {log}"
            record_zero(student, reason)
            notice(student, reason)
            result.update(status="error", reason=reason)
        else:
            if outcome["died"] is not None:
                result.update(status="kernel died", reason=f"the worker running the learner's code died in "
                                                           f"{where(outcome['died'])}; the tests after it did not run")
            elif outcome["deadline"] is not None:
                result.update(status="timed out", reason=f"the notebook ran past its time limit in "
                                                         f"{where(outcome['deadline'])}; the tests after it did not run")
            elif outcome["timed_out"]:
                result.update(status="timed out", reason="interrupted after the time limit for a cell: " +
                              ", ".join(where(i) for i in outcome["timed_out"]))
            else:
                result.update(status="graded", reason="")
    with locked(), Gradebook(cd.db_url, cd.course_id) as gb:
        sub = gb.find_submission(chapter, student)
        result["score"], result["max_score"] = float(sub.score), float(sub.max_score)
        result["cells"] = {g.name: float(g.score) for nb in sub.notebooks for g in nb.grades}
    result["seconds"] = round(time.monotonic() - start, 2)
    return result


def feedback_one(student: str) -> str | None:
    """nbgrader's feedback page for one graded student (the gradebook is only read here)."""
    run = W["api"].generate_feedback(W["chapter"], student, force=True)
    return None if run["success"] else (run.get("error") or run.get("log", ""))[-2000:]


# ---------------------------------------------------------------- the parent side

def exercise_columns(source_nb: Path) -> dict[str, str]:
    """'ex3-weights' -> 'ex3-': each exercise's column and the prefix of its grade cells."""
    nb = course.read(source_nb)
    return {course.nbgrader_meta(c)["grade_id"]: course.nbgrader_meta(c)["grade_id"].split("-")[0] + "-"
            for c in nb.cells if course.is_solution(c)}


def write_csv(path: Path, chapter: str, results: dict, columns: dict[str, str]):
    fields = ["assignment", "student_id", "status", "reason", "score", "max_score", *columns]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for student in sorted(results):
            r = results[student]
            row = {"assignment": chapter, "student_id": student, "status": r["status"], "reason": r["reason"],
                   "score": r["score"], "max_score": r["max_score"]}
            for col, prefix in columns.items():
                row[col] = sum(v for k, v in r.get("cells", {}).items() if k.startswith(prefix))
            w.writerow(row)
    os.replace(tmp, path)


def save_results(path: Path, results: dict):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True))
    os.replace(tmp, path)


def progress(done: int, total: int, last: str):
    width = 30
    bar = "#" * (width * done // total) + "." * (width - width * done // total)
    end = "\n" if done == total or not sys.stderr.isatty() else ""
    print(f"\r[{bar}] {done}/{total}  {last[:60]:60}", end=end, file=sys.stderr, flush=True)


def parse_memory(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMG]?)B?", text.strip(), re.I)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r}: give a size such as 4G or 512M")
    return int(float(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2).upper()])


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise argparse.ArgumentTypeError(f"{text!r}: give K/N with 1 <= K <= N, e.g. 1/3")
    return int(m.group(1)), int(m.group(2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("chapter", help="the assignment id, e.g. ch01_tensors")
    ap.add_argument("--course", type=Path, default=course.ROOT / "autograder",
                    help="folder with the nbgrader_config.py (default: autograder/)")
    ap.add_argument("--submissions", type=Path, help="a folder of <student>.ipynb files, or a zip of one, to import first")
    ap.add_argument("--student", action="append", default=[], help="grade only this student (repeatable)")
    ap.add_argument("--resume", action="store_true", help="skip submissions already graded and unchanged since")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="notebooks graded at once (default: cores)")
    ap.add_argument("--shard", type=parse_shard, help="K/N: grade only every N-th student, starting at the K-th "
                                                       "(to share a course's grading between N machines)")
    ap.add_argument("--cell-timeout", type=float, default=120, help="seconds a cell may run (default 120)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds a whole notebook may run (default 600)")
    ap.add_argument("--memory", type=parse_memory, default=parse_memory("4G"), help="memory per notebook (default 4G)")
    ap.add_argument("--csv", type=Path, default=None, help="where to write the grades (default: <course>/grades-<chapter>.csv)")
    ap.add_argument("--no-feedback", dest="feedback", action="store_false", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        return run(args)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args) -> int:
    course_dir = args.course.resolve()
    if not (course_dir / "nbgrader_config.py").exists():
        raise UsageError(f"{course_dir} has no nbgrader_config.py; pass --course DIR")
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    config = load_config(course_dir)
    with inside(course_dir):
        cd = CourseDirectory(config=config)
    chapter = args.chapter
    source = Path(cd.format_path(cd.source_directory, ".", chapter)) / f"{chapter}.ipynb"
    if not source.exists():
        known = sorted(p.parent.name for p in Path(cd.root, cd.source_directory).glob("*/*.ipynb")
                       if p.stem == p.parent.name)
        raise UsageError(f"no chapter {chapter!r} (looked for {source}); the chapters are: {', '.join(known)}")
    submitted = Path(cd.root, cd.submitted_directory)
    if args.submissions:
        imported = import_submissions(args.submissions.resolve(), chapter, submitted)
        print(f"imported {len(imported)} submission(s) from {args.submissions}")
        if not args.student:
            args.student = imported
    students = submitted_students(submitted, chapter)
    if args.student:
        missing = set(args.student) - set(students)
        if missing:
            raise UsageError(f"no submission of {chapter} for {', '.join(sorted(missing))} under {submitted}")
        students = sorted(set(args.student))
    if not students:
        raise UsageError(f"no submissions of {chapter} under {submitted}: put each one at "
                         f"{submitted}/<student>/{chapter}/{chapter}.ipynb, or pass --submissions")
    if args.shard:
        k, n = args.shard
        students = students[k - 1::n]

    logs = course_dir / "logs" / chapter
    logs.mkdir(parents=True, exist_ok=True)
    results_dir = course_dir / "results"
    results_dir.mkdir(exist_ok=True)
    results_path = results_dir / f"{chapter}.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}

    with Gradebook(cd.db_url, cd.course_id) as gb:
        try:
            gb.find_assignment(chapter)
            released = True
        except MissingEntry:
            released = False
    release = Path(cd.format_path(cd.release_directory, ".", chapter)) / f"{chapter}.ipynb"
    if not released or not release.exists():
        print(f"{chapter} is not in the gradebook yet: running nbgrader generate_assignment {chapter}")
        log = logs / "generate_assignment.log"
        with open(log, "w") as out:
            rc = subprocess.run([sys.executable, "-m", "nbgrader", "generate_assignment", chapter, "--force"],
                                cwd=course_dir, env=course.tool_env(), stdout=out, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            print(f"error: nbgrader generate_assignment failed; see {log}", file=sys.stderr)
            return 1

    todo = students
    if args.resume:
        todo = [s for s in students if not (
            s in results and results[s]["status"] != "error" and
            results[s]["sha256"] == sha256(Path(cd.format_path(cd.submitted_directory, s, chapter)) / f"{chapter}.ipynb"))]
        if len(todo) < len(students):
            print(f"--resume: {len(students) - len(todo)} submission(s) already graded and unchanged; skipping them")

    settings = {"release": str(release), "logs": str(logs), "feedback": args.feedback,
                "execute": {"cell_timeout": args.cell_timeout, "timeout": args.timeout, "memory": args.memory,
                            "chapter": chapter, "threads": 1 if args.workers > 1 else 2, "release": str(release)}}
    workers = min(args.workers, len(todo)) or 1
    how = grading.isolation()
    print(f"grading {len(todo)} submission(s) of {chapter} with {workers} worker(s); sandbox: "
          f"{'bubblewrap' if how == 'bubblewrap' else 'separate processes only (bubblewrap unavailable: ' + str(grading.jail.available()) + ')'}",
          flush=True)
    start = time.monotonic()
    failures = 0
    if todo:
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=init_worker,
                                                    initargs=(str(course_dir), chapter, settings)) as pool:
            futures = {pool.submit(grade_one, s): s for s in todo}
            for n, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                student = futures[fut]
                try:
                    r = fut.result()
                except Exception as err:  # a worker died: that submission still gets a row, and a zero
                    failures += 1
                    r = {"student": student, "status": "error", "reason": f"the grader failed: {err!r}",
                         "score": 0.0, "max_score": 0.0, "cells": {}, "notes": [], "sha256": ""}
                results[student] = r
                save_results(results_path, results)           # nothing graded is lost if the run stops here
                progress(n, len(todo), f"{student}: {r['status']}")
            ran = [s for s in todo if results[s]["status"] not in ("invalid", "error")]
            if args.feedback and ran:
                print(f"writing feedback for {len(ran)} student(s) ...", file=sys.stderr, flush=True)
                for student, error in zip(ran, pool.map(feedback_one, ran)):
                    if error:
                        results[student]["notes"].append("no feedback: nbgrader generate_feedback failed")
                        (logs / f"{student}.log").open("a").write("\n" + error)
                save_results(results_path, results)
    elapsed = time.monotonic() - start

    csv_path = (args.csv or course_dir / f"grades-{chapter}.csv").resolve()
    write_csv(csv_path, chapter, {s: results[s] for s in results}, exercise_columns(source))
    width = max(len(s) for s in students)
    print(f"\n{'student':{width}}  {'score':>11}  status")
    for student in students:
        r = results[student]
        status = r["status"] + (f": {r['reason']}" if r["reason"] and r["status"] != "graded" else "")
        print(f"{student:{width}}  {r['score']:5.1f} / {r['max_score']:<4g}  {status}")
    if todo:
        print(f"\ngraded {len(todo)} in {elapsed:.1f} s ({elapsed / len(todo):.1f} s per notebook with {workers} "
              f"worker(s))")
    print(f"grades: {csv_path}\nresults: {results_path}\n"
          f"feedback: {Path(cd.root, cd.feedback_directory)}/<student>/{chapter}/\nlogs: {logs}/")
    return 1 if failures or any(results[s]["status"] == "error" for s in students) else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    print("\ninterrupted: what was graded is kept; run again with --resume to finish", file=sys.stderr)
    sys.exit(130)
