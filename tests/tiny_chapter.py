"""A two-exercise chapter, built in a scratch course only, on which the grading tests try bad and hostile
submissions quickly. It has the shape of a real chapter: an import cell, a read-only helper, solution
cells, visible and hidden test cells, and it uses the course's own test helpers."""
import nbformat

ID = "ch00_tiny"


def _cell(kind, source, **nbgrader):
    cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
    if nbgrader:
        meta = dict(schema_version=3, solution=False, grade=False, locked=False, task=False)
        meta.update(nbgrader)
        cell.metadata["nbgrader"] = meta
    return cell


SOLUTIONS = {
    "ex1-double": "def double(x):\n    ### BEGIN SOLUTION\n    return 2 * x\n    ### END SOLUTION\n",
    "ex2-mean": "def mean(t):\n    ### BEGIN SOLUTION\n    return t.float().mean()\n    ### END SOLUTION\n",
}
HIDDEN_MARK = "hidden-test-text-7f3a"   # appears only in the hidden tests: must never reach a learner


def notebook() -> nbformat.NotebookNode:
    cells = [
        _cell("markdown", "# 0. A tiny chapter\n\nTwo exercises."),
        _cell("code", "import torch\nfrom solutions.testing import ORACLE, call, check, check_tensor, check_untouched"),
        _cell("code", "def helper(x):\n    return x + 0", grade_id="helper", locked=True),
        _cell("markdown", "## Exercise 1\n\nReturn twice `x`."),
        _cell("code", SOLUTIONS["ex1-double"], grade_id="ex1-double", solution=True),
        _cell("code", "check(call(lambda: double(3), 'double(3)', 'return 2 * x') == 6, 'double(3)', 6, double(3), 'return 2 * x')",
              grade_id="ex1-visible", grade=True, locked=True, points=1),
        _cell("code", "# Hidden tests run here when your notebook is graded.\n### BEGIN HIDDEN TESTS\n"
                      f"# {HIDDEN_MARK}\n"
                      "for v in (0, -4, 2.5):\n    check(double(v) == 2 * v, f'double({v})', 2 * v, double(v), 'return 2 * x')\n"
                      "### END HIDDEN TESTS", grade_id="ex1-hidden", grade=True, locked=True, points=2),
        _cell("markdown", "## Exercise 2\n\nReturn the mean of a tensor, as a float tensor."),
        _cell("code", SOLUTIONS["ex2-mean"], grade_id="ex2-mean", solution=True),
        _cell("code", "check_tensor(lambda: mean(torch.tensor([1, 2, 3, 6])), torch.tensor(3.0), 'mean([1, 2, 3, 6])', "
                      "'convert to float, then .mean()')", grade_id="ex2-visible", grade=True, locked=True, points=1),
        _cell("code", "# Hidden tests run here when your notebook is graded.\n### BEGIN HIDDEN TESTS\n"
                      "g = torch.Generator().manual_seed(0)\nt = torch.randn(5, 7, generator=g)\n"
                      "check_tensor(lambda: mean(t), torch.tensor(t.tolist()).sum() / 35, 'mean of a (5, 7) tensor', 'mean over all')\n"
                      "### END HIDDEN TESTS", grade_id="ex2-hidden", grade=True, locked=True, points=2),
    ]
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata = {"kernelspec": {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"},
                   "language_info": {"name": "python"}}
    return nb


def answer(gid: str) -> str:
    """The reference answer of an exercise, without the markers."""
    return "\n".join(line for line in SOLUTIONS[gid].split("\n") if "###" not in line)


TOTAL = 6
