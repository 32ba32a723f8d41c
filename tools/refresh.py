"""After editing a chapter notebook: re-execute it, then regenerate its solutions module and student notebook.

    python tools/refresh.py                 # every chapter
    python tools/refresh.py ch01_tensors    # one chapter
"""
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import course  # noqa: E402
import nbformat  # noqa: E402

if __name__ == "__main__":
    wanted = set(sys.argv[1:])
    notebooks = [nb for nb in course.chapter_notebooks() if not wanted or nb.stem in wanted]
    if wanted - {nb.stem for nb in notebooks}:
        sys.exit(f"no such chapter: {sorted(wanted - {nb.stem for nb in notebooks})}")
    for nb in notebooks:
        print(f"executing {nb.relative_to(course.ROOT)}")
        subprocess.run(
            [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute", "--inplace",
             # no per-cell timestamps: they would change the committed file on every run
             "--ExecutePreprocessor.record_timing=False", "--ExecutePreprocessor.timeout=600", str(nb)],
            cwd=nb.parent, check=True, env=course.tool_env(),
        )
        executed = course.read(nb)
        for cell in executed.cells:
            cell.metadata.pop("execution", None)
        nbformat.write(executed, nb)
    for script in ("export_solutions.py", "release.py"):
        subprocess.run([sys.executable, str(Path(__file__).parent / script), *[nb.stem for nb in notebooks]],
                       check=True, env=course.tool_env())
