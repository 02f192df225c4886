"""Grade an exercise notebook file: execute it in a fresh kernel, then grade the functions it defined there.

The notebook (`.ipynb`, or the jupytext `.md` of a solution) runs top to bottom with nbclient, errors allowed,
each cell under a time limit, in the notebook's folder. Its own `grade_here(...)` cell is skipped; instead a
last cell grades the kernel's globals (see `llama_course.grading.grader`) and writes the results to a JSON
file that this process reads back, so nothing the notebook prints can be mistaken for a result.
"""

import json
import os
import subprocess
import tempfile
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

import llama_course
from llama_course.grading.grader import DEFAULT_CELL_TIMEOUT_S, DEFAULT_TEST_TIMEOUT_S
from llama_course.grading.registry import Exercise, find_exercise
from llama_course.grading.report import ExerciseResult, TaskResult, TestResult

GRADE_HERE_CALL = "grade_here("


def exercise_of(path: Path) -> Exercise:
    """The exercise a notebook belongs to, from its file name: `02_rmsnorm.ipynb` -> exercise "02_rmsnorm"."""
    try:
        return find_exercise(path.stem)
    except ValueError as error:
        raise ValueError(f"{path}: {error}; an exercise notebook keeps its name, e.g. exercises/02_rmsnorm.ipynb"
                         ) from None


def grade_notebook(
    path: str | Path,
    test_timeout_s: float = DEFAULT_TEST_TIMEOUT_S,
    cell_timeout_s: float = DEFAULT_CELL_TIMEOUT_S,
) -> ExerciseResult:
    """Execute the notebook at `path` and grade its task functions; never raises for what the notebook does."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {str(path)!r}; pass an exercise such as exercises/02_rmsnorm.ipynb")
    exercise = exercise_of(path)
    notebook = jupytext.read(path)
    notebook.cells = [cell for cell in notebook.cells
                      if not (cell.cell_type == "code" and GRADE_HERE_CALL in cell.source)]
    with tempfile.TemporaryDirectory(prefix="llama-course-grade-") as scratch:
        results_path = Path(scratch) / "results.json"
        grading_cell = nbformat.v4.new_code_cell(
            "from llama_course.grading.grader import grade_namespace as _grade_namespace\n"
            "from llama_course.grading.registry import find_exercise as _find_exercise\n"
            f"_grade_namespace(globals(), _find_exercise({exercise.name!r}), {test_timeout_s!r})"
            f".write_json({str(results_path)!r})"
        )
        notebook.cells.append(grading_cell)
        grading_timeout = int(sum(len(task.tests) for task in exercise.tasks.values()) * (test_timeout_s + 5) + 60)
        client = NotebookClient(
            notebook,
            timeout=int(cell_timeout_s),
            timeout_func=lambda cell: grading_timeout if cell is grading_cell else int(cell_timeout_s),
            kernel_name="python3",
            allow_errors=True,
            interrupt_on_timeout=True,
            resources={"metadata": {"path": str(path.resolve().parent)}},
        )
        notes = []
        try:
            client.execute(env=_kernel_environment(), stderr=subprocess.DEVNULL)  # the kernel's own log lines
        except DeadKernelError as error:
            notes.append(f"the notebook's kernel died ({error}); did a cell call exit() or run out of memory?")
        notes += _cell_errors(notebook, grading_cell)
        if not results_path.exists():
            return _nothing_graded(exercise, notes or ["the grading cell did not finish"])
        result = ExerciseResult.from_dict(json.loads(results_path.read_text()))
    return ExerciseResult(result.exercise, result.tasks, notes)


def _kernel_environment() -> dict[str, str]:
    """The grader's environment, with the folder holding this `llama_course` first on the kernel's path."""
    env = dict(os.environ)
    package_root = str(Path(llama_course.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    return env


def _cell_errors(notebook: nbformat.NotebookNode, grading_cell: nbformat.NotebookNode) -> list[str]:
    notes = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                where = "the grading cell" if cell is grading_cell else f"cell {index + 1}"
                notes.append(f"{where} raised {output['ename']}: {output['evalue']}"[:300])
    return notes


def _nothing_graded(exercise: Exercise, notes: list[str]) -> ExerciseResult:
    tasks = [TaskResult(task.function, [TestResult(test.name, test.points, 0, "not graded: see the notes")
                                        for test in task.tests]) for task in exercise.tasks.values()]
    return ExerciseResult(exercise.name, tasks, notes)
