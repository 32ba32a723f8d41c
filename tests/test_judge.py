"""tools/judge.py driven directly (no nbgrader): what one exercise's answer does is graded there only."""
import json
import os
import re
import subprocess
import sys

import nbformat

import course
from judge import defined_names, imported_chapters, meta

JUDGE = course.ROOT / "tools" / "judge.py"


def judge(nb, chapter, timeout=300):
    """Run the judge on a notebook as nbgrader would hand it over (hidden tests in place); returns
    the 'done' event, with the executed notebook."""
    nb = nbformat.reads(nbformat.writes(nb), as_version=4)      # a copy
    trusted = [i for i, c in enumerate(nb.cells)
               if c.cell_type == "code" and not (meta(c).get("solution") and not meta(c).get("grade"))]
    names = [n for c in nb.cells if meta(c).get("solution") and not meta(c).get("grade") for n in defined_names(c.source)]
    for c in nb.cells:
        if c.cell_type == "code":
            c.source = re.sub(r"^\s*### (BEGIN|END) (SOLUTION|HIDDEN TESTS)\s*$", "", c.source, flags=re.M)
    nb.metadata["course_grading"] = {"trusted": trusted, "names": names}
    r, w = os.pipe()
    proc = subprocess.Popen([sys.executable, str(JUDGE), "--fd", str(w), "--cell-timeout", "60", "--timeout", "300",
                             "--chapter", chapter], stdin=subprocess.PIPE, pass_fds=(w,), env=course.tool_env())
    os.close(w)
    proc.stdin.write(nbformat.writes(nb).encode())
    proc.stdin.close()
    data = b""
    while chunk := os.read(r, 1 << 20):
        data += chunk
    os.close(r)
    proc.wait(timeout=timeout)
    done = [json.loads(line) for line in data.decode().splitlines() if line.strip()][-1]
    done["notebook"] = nbformat.reads(done["notebook"], as_version=4)
    return done


def failed(done):
    return sorted(meta(c)["grade_id"] for c in done["notebook"].cells
                  if meta(c).get("grade") and any(o.output_type == "error" for o in c.outputs))


def test_a_refused_operation_fails_its_own_exercise_only():
    """softmax built on torch.softmax, with the refusal caught inside the answer: the switch-off
    (held in the worker across the cell's calls) reports it in that exercise's cells, and every
    other exercise, before and after, still earns its points."""
    chapter = "ch01_tensors"
    nb = course.read(course.CHAPTERS / chapter / f"{chapter}.ipynb")
    for cell in nb.cells:
        if meta(cell).get("grade_id") == "ex4-softmax":
            cell.source = ("def softmax(x, dim=-1):\n    try:\n        return torch.softmax(x, dim)\n"
                           "    except Exception:\n        return (x - x.amax(dim, keepdim=True)).exp() / "
                           "(x - x.amax(dim, keepdim=True)).exp().sum(dim, keepdim=True)\n")
    done = judge(nb, chapter)
    assert done["died"] is None and done["deadline"] is None, done
    assert failed(done) == ["ex4-hidden", "ex4-visible"]
    message = next(o.evalue for c in done["notebook"].cells if meta(c).get("grade_id") == "ex4-visible"
                   for o in c.outputs if o.output_type == "error")
    assert "softmax" in message


def test_a_refusal_seen_by_a_held_switch_off_fails_its_own_exercise_only():
    """Value.tanh first tries torch's autograd (refused: the exercise switches autograd off) and
    hides the refusal. Value's requests carry no tensors, so the worker holds one switch-off across
    them; what it saw must fail exercise 5's cells, and nothing after them."""
    chapter = "ch02_autograd"
    nb = course.read(course.CHAPTERS / chapter / f"{chapter}.ipynb")
    for cell in nb.cells:
        if meta(cell).get("grade_id") == "ex5-value":
            old = 'out = Value(math.tanh(self.data), (self,), "tanh")'
            assert old in cell.source
            cell.source = cell.source.replace(old, (
                "try:\n            torch.tensor(self.data, requires_grad=True).tanh().backward()\n"
                "        except Exception:\n            pass\n        " + old))
    done = judge(nb, chapter)
    assert done["died"] is None and done["deadline"] is None, done
    assert failed(done) == ["ex5-hidden", "ex5-visible"]


def test_the_worker_gets_what_the_imported_chapters_import():
    # chapter 7's cells import chapter 5's Block, which needs chapter 2's GELU: the worker must get
    # chapter 2 too; it never gets the chapter being graded
    cells = [nbformat.v4.new_code_cell("from solutions.ch05_block import Block\nimport solutions.ch07_gpt")]
    got = imported_chapters(cells, "ch07_gpt")
    assert {"ch01_tensors", "ch02_autograd", "ch04_multihead", "ch05_block"} <= set(got)
    assert "ch07_gpt" not in got and got == sorted(got)
