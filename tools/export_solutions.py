"""Write solutions/<chapter>.py from each chapter notebook's solution and `export` cells.

    python tools/export_solutions.py                 # every chapter
    python tools/export_solutions.py ch01_tensors    # one chapter
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import course  # noqa: E402

if __name__ == "__main__":
    wanted = set(sys.argv[1:])
    for nb in course.chapter_notebooks():
        if wanted and nb.stem not in wanted:
            continue
        target = course.SOLUTIONS / f"{course.module_name(nb)}.py"
        target.write_text(course.export_module(nb))
        print(f"wrote {target.relative_to(course.ROOT)}")
