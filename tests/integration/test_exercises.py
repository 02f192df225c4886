"""The exercise notebooks: generated from the solutions, full marks for every solution, zero for every stub.

For each exercise the solution notebook (`exercises/solutions/NN_name.md`) and the untouched student notebook
(`exercises/NN_name.ipynb`) are graded exactly as `llama-course grade` grades them: executed in a fresh kernel,
then tested in the grader's test worker, where every task's reference is watched for (so a solution that
called the package would score 0). The two run side by side (kernel and worker starts dominate the time).
"""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jupytext
import pytest

from llama_course.grading.generate import BEGIN_SOLUTION, STUB, out_of_sync
from llama_course.grading.registry import all_exercises
from llama_course.grading.report import format_report
from llama_course.grading.runner import grade_notebook

ROOT = Path(__file__).resolve().parents[2]
EXERCISES = ROOT / "exercises"
SOLUTIONS = EXERCISES / "solutions"
EXERCISE_NAMES = [exercise.name for exercise in all_exercises()]


def code_cells(path: Path) -> list[str]:
    return [cell.source for cell in jupytext.read(path).cells if cell.cell_type == "code"]


def test_student_notebooks_are_generated_from_the_current_solutions():
    problems = out_of_sync(SOLUTIONS, EXERCISES)
    assert not problems, "\n".join(problems) + "\nregenerate with `python -m llama_course.grading.generate`"


def test_every_graded_exercise_has_a_solution_and_every_solution_is_graded():
    solutions = sorted(path.stem for path in SOLUTIONS.glob("[0-9][0-9]_*.md"))
    assert solutions == EXERCISE_NAMES


@pytest.mark.parametrize("name", EXERCISE_NAMES)
def test_exercise_belongs_to_an_existing_chapter_and_starts_with_its_colab_install_cell(name):
    chapter = ROOT / "chapters" / f"{name}.md"
    assert chapter.exists(), f"exercise {name} has no chapter {chapter}"
    assert code_cells(EXERCISES / f"{name}.ipynb")[0] == code_cells(chapter)[0]


@pytest.mark.parametrize("name", EXERCISE_NAMES)
def test_each_task_is_a_stub_raising_not_implemented_error_in_the_student_notebook(name):
    exercise = next(exercise for exercise in all_exercises() if exercise.name == name)
    cells = code_cells(EXERCISES / f"{name}.ipynb")
    assert not any(BEGIN_SOLUTION in cell for cell in cells)
    for function in exercise.tasks:
        definition = [cell for cell in cells if f"def {function}(" in cell]
        assert len(definition) == 1 and STUB in definition[0], f"{name}: task {function} needs one stubbed definition"
    assert f"grade_here(globals(), chapter={exercise.chapter})" in cells[-1]
    for suffix in (".ipynb", ".md"):  # so that a renamed copy is graded as this exercise
        assert jupytext.read(EXERCISES / f"{name}{suffix}").metadata["llama_course"] == {"exercise": name}


@pytest.mark.parametrize("name", EXERCISE_NAMES)
def test_grader_gives_full_marks_to_the_solution_and_zero_to_the_untouched_notebook(name):
    with ThreadPoolExecutor(max_workers=2) as pool:
        solution, student = pool.map(grade_notebook, [SOLUTIONS / f"{name}.md", EXERCISES / f"{name}.ipynb"])
    assert solution.points > 0 and solution.earned == solution.points and not solution.notes, format_report(solution)
    assert student.points == solution.points and student.earned == 0 and not student.notes, format_report(student)
    messages = {test.message for task in student.tasks for test in task.tests}
    assert messages == {"not implemented yet: the function still raises NotImplementedError"}
