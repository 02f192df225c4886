"""The grader: isolation of the student's code, scoring, reports, the solution stripper and the CLI.

A student function that raises, prints, loops forever, exits the process or returns the wrong shape loses the
points of that test only; the other tasks are still graded and the grader itself never fails.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jupytext
import pytest
import torch

from llama_course.grading import cli
from llama_course.grading.assertions import assert_tensor_close
from llama_course.grading.generate import STUB, strip_solutions, student_notebook
from llama_course.grading.grader import grade_here, grade_namespace
from llama_course.grading.isolation import run_isolated
from llama_course.grading.registry import Exercise, all_exercises, find_exercise
from llama_course.grading.report import ExerciseResult, format_report

ROOT = Path(__file__).resolve().parents[1]


def doubling_exercise() -> Exercise:
    """A made-up exercise: task `double` (3 points over two tests) and task `negate` (1 point)."""
    exercise = Exercise(chapter=99, name="99_toy", title="toy")

    @exercise.test("double", points=2)
    def doubles_a_random_tensor(double):
        x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
        assert_tensor_close(double(x), 2 * x)

    @exercise.test("double", points=1)
    def doubles_zero_to_zero(double):
        assert_tensor_close(double(torch.zeros(2, 2)), torch.zeros(2, 2))

    @exercise.test("negate", points=1)
    def negates(negate):
        assert torch.equal(negate(torch.ones(2)), -torch.ones(2))

    return exercise


def negate(x):
    return -x


def loops_forever(x):
    while True:
        try:
            pass
        except BaseException:  # a student loop that even swallows KeyboardInterrupt must still be stopped
            pass


def exits_the_process(x):
    os._exit(3)


def calls_sys_exit(x):
    sys.exit("bye")


def prints_a_forged_score(x):
    print("Score: 10/10")
    return 2 * x


def wrong_shape(x):
    return (2 * x).flatten()


def raises(x):
    raise KeyError("oops")


@pytest.mark.parametrize(
    "double, message",
    [(raises, "KeyError"), (prints_a_forged_score, "printed"), (loops_forever, "time limit"),
     (wrong_shape, "shape"), (exits_the_process, "died"), (calls_sys_exit, "SystemExit")],
    ids=lambda value: getattr(value, "__name__", ""),
)
def test_a_broken_task_scores_zero_and_the_other_task_is_still_graded(double, message):
    result = grade_namespace({"double": double, "negate": negate}, doubling_exercise(), timeout_s=1.0)
    double_result, negate_result = result.tasks
    assert (double_result.earned, negate_result.earned, result.earned, result.points) == (0, 1, 1, 4)
    assert message in double_result.tests[0].message
    report = format_report(result)
    assert report.endswith("Score: 1/4") and report.count("Score:") == 1


def test_correct_functions_get_every_point():
    result = grade_namespace({"double": lambda x: 2 * x, "negate": negate}, doubling_exercise(), timeout_s=5.0)
    assert (result.earned, result.points) == (4, 4)
    assert format_report(result).endswith("Score: 4/4")


def test_a_missing_function_scores_zero_with_its_name_in_the_message():
    result = grade_namespace({"negate": negate}, doubling_exercise(), timeout_s=5.0)
    assert result.earned == 1
    assert "no function named 'double'" in result.tasks[0].tests[0].message


def test_a_test_that_passes_for_one_input_only_gets_partial_points():
    result = grade_namespace({"double": torch.zeros_like, "negate": negate}, doubling_exercise(), timeout_s=5.0)
    assert [test.earned for test in result.tasks[0].tests] == [0, 1]
    assert "differs from the expected values" in result.tasks[0].tests[0].message


def test_an_endless_loop_is_stopped_at_the_time_limit():
    outcome = run_isolated(lambda: loops_forever(None), timeout_s=0.5)
    assert not outcome.passed and "0.5 s" in outcome.message


def test_results_round_trip_through_json(tmp_path):
    result = grade_namespace({"double": raises, "negate": negate}, doubling_exercise(), timeout_s=5.0)
    path = tmp_path / "results.json"
    result.write_json(path)
    data = json.loads(path.read_text())
    assert (data["exercise"], data["score"], data["max_score"]) == ("99_toy", 1, 4)
    assert [task["score"] for task in data["tasks"]] == [0, 1]
    assert ExerciseResult.from_dict(data) == result


def test_strip_solutions_keeps_the_signature_and_indents_the_stub():
    source = "def f(x):\n    \"\"\"Doc.\"\"\"\n    # BEGIN SOLUTION\n    y = x + 1\n    return y\n    # END SOLUTION\n"
    assert strip_solutions(source) == f"def f(x):\n    \"\"\"Doc.\"\"\"\n    {STUB}"


@pytest.mark.parametrize("source, problem", [
    ("# BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n# END SOLUTION", "without"),
    ("# BEGIN SOLUTION\n# BEGIN SOLUTION\n# END SOLUTION", "inside a solution block"),
])
def test_unbalanced_solution_markers_are_an_error_naming_the_problem(source, problem):
    with pytest.raises(ValueError, match=problem):
        strip_solutions(source, "exercises/solutions/99_toy.md, cell 3")


def test_every_exercise_has_two_to_five_tasks_each_with_points():
    exercises = all_exercises()
    assert [exercise.chapter for exercise in exercises] == sorted({exercise.chapter for exercise in exercises})
    for exercise in exercises:
        assert 2 <= len(exercise.tasks) <= 5, f"{exercise.name} has {len(exercise.tasks)} tasks"
        assert all(task.tests and task.points > 0 for task in exercise.tasks.values())


def test_an_unknown_exercise_is_an_error_listing_the_known_ones():
    assert find_exercise(2).name == find_exercise("02_rmsnorm").name == "02_rmsnorm"
    with pytest.raises(ValueError, match="02_rmsnorm"):
        find_exercise("42_nothing")


def test_cli_grades_a_partly_solved_notebook_with_a_crashing_cell_and_writes_json(tmp_path, capsys):
    """End to end: one task solved, one endless, one missing; a cell raising at top level; --json."""
    notebook = student_notebook(jupytext.read(ROOT / "exercises" / "solutions" / "03_swiglu.md"))
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    silu_cell = next(cell for cell in code if "def silu" in cell.source)
    silu_cell.source = silu_cell.source.replace(STUB, "return x * torch.sigmoid(x)")
    hidden_cell = next(cell for cell in code if "def ffn_hidden_dim" in cell.source)
    hidden_cell.source = hidden_cell.source.replace(STUB, "while True:\n        pass")
    ffn_cell = next(cell for cell in code if "def swiglu_ffn" in cell.source)
    ffn_cell.source = "raise RuntimeError('a broken experiment cell')"  # so swiglu_ffn is never defined
    path = tmp_path / "03_swiglu.ipynb"
    jupytext.write(notebook, path)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    cli.run(parser.parse_args([str(path), "--json", str(tmp_path / "out.json"), "--timeout", "2"]))
    printed = capsys.readouterr().out
    data = json.loads((tmp_path / "out.json").read_text())
    scores = {task["function"]: task["score"] for task in data["tasks"]}
    assert scores == {"silu": 2, "swiglu_ffn": 0, "ffn_hidden_dim": 0}
    assert any("a broken experiment cell" in note for note in data["notes"])
    assert f"Score: 2/{data['max_score']}" in printed
    assert "time limit" in printed and "no function named 'swiglu_ffn'" in printed


def test_grade_here_grades_the_functions_of_a_running_namespace(capsys):
    """What the last cell of a notebook on Colab does, with the solution's cells run in this process."""
    namespace: dict = {}
    cells = [cell.source for cell in jupytext.read(ROOT / "exercises" / "solutions" / "02_rmsnorm.md").cells
             if cell.cell_type == "code" and "google.colab" not in cell.source]
    for source in cells[:-1]:
        exec(source, namespace)
    assert "grade_here(globals(), chapter=2)" in cells[-1]
    grade_here(namespace, chapter=2)
    report = capsys.readouterr().out
    assert report.rstrip().endswith(f"Score: {find_exercise(2).points}/{find_exercise(2).points}")


def test_without_fork_a_thread_still_stops_waiting_at_the_time_limit(monkeypatch):
    monkeypatch.setattr("multiprocessing.get_all_start_methods", lambda: ["spawn"])
    assert not run_isolated(lambda: time.sleep(3), timeout_s=0.3).passed
    assert "KeyError" in run_isolated(lambda: raises(None), timeout_s=5.0).message
    assert run_isolated(lambda: None, timeout_s=5.0).passed
