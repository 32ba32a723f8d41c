# nbgrader configuration of the course. Run every nbgrader command from this folder
# (cd autograder). The chapters are the assignments' source; everything nbgrader writes
# (release, submitted, autograded, feedback, the gradebook) stays under autograder/.
import os
from pathlib import Path

c = get_config()  # noqa: F821

here = Path(__file__).resolve().parent
c.CourseDirectory.course_id = "gpt-from-scratch"
c.CourseDirectory.root = str(here.parent)
c.CourseDirectory.source_directory = "chapters"
c.CourseDirectory.release_directory = "autograder/release"
c.CourseDirectory.submitted_directory = "autograder/submitted"
c.CourseDirectory.autograded_directory = "autograder/autograded"
c.CourseDirectory.feedback_directory = "autograder/feedback"
# Only the notebook itself is an assignment file; nothing else in a chapter folder ships.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "_build"]
# SQLite by default; set NBGRADER_DB_URL (e.g. postgresql://...) to share one gradebook.
c.CourseDirectory.db_url = os.environ.get(
    "NBGRADER_DB_URL", f"sqlite:///{here / 'gradebook.db'}"
)
# A cell may run at most this long when autograding (the chapters' demos shrink under
# NBGRADER_EXECUTION, which nbgrader sets while grading).
c.Execute.timeout = 120
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# Feedback goes to students: it shows each hidden-test cell's points and failure message, never
# its code (nbgrader's default feedback would print the hidden tests in full).
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import GetGrades, NbGraderPreprocessor  # noqa: E402


class HideHiddenTests(NbGraderPreprocessor):
    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and "BEGIN HIDDEN TESTS" in cell.source:
            cell.source = "# Hidden tests ran here; their code is not shown."
            for output in cell.get("outputs", []):
                if output.output_type == "error":
                    output.traceback = [f"{output.ename}: {output.evalue}"]
        return cell, resources


c.GenerateFeedback.preprocessors = [GetGrades, CSSHTMLHeaderPreprocessor, HideHiddenTests]
