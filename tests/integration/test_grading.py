"""The grader: isolation of the student's code, scoring, reports, the solution stripper and the CLI.

A student function that raises, prints, loops forever, exits the process or returns the wrong shape loses the
points of that test only; the other tasks are still graded and the grader itself never fails. Then the tricks
of a student who wants marks without the work (issue 18), each of which must fail: patching the grader from a
notebook cell, rewriting the installed checks, importing the package's function or calling the checks'
reference, reading the grader's environment, and a top-level cell that ignores Ctrl-C and loops.
"""

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import jupytext
import nbformat
import pytest
import torch
from grading_toy import BROKEN, BROKEN_TASKS, CHEATS, CHEATS_TASKS, TOY, reference_negate

from llama_course.commands import grade
from llama_course.grading.assertions import assert_equal
from llama_course.grading.checks import ex02_rmsnorm, ex13_ppo
from llama_course.grading.generate import STUB, strip_solutions, student_notebook
from llama_course.grading.grader import grade_here, grade_namespace
from llama_course.grading.isolation import run_isolated
from llama_course.grading.registry import all_exercises, find_exercise
from llama_course.grading.report import ExerciseResult, TaskResult, format_report, validate
from llama_course.grading.report import TestResult as Result  # not collected by pytest
from llama_course.grading.runner import exercise_of
from llama_course.layers.rope import apply_rope_interleaved as package_apply_rope_interleaved

ROOT = Path(__file__).resolve().parents[2]
SECRET = "LLAMA_COURSE_TEST_GRADER_SECRET"

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


class AlwaysClose(torch.Tensor):
    """A tensor subclass whose comparisons always say True: it must not fool the assertions."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        result = super().__torch_function__(func, types, args, kwargs or {})
        return torch.ones_like(result, dtype=torch.bool) if func in (torch.Tensor.__le__, torch.le) else result


def returns_a_fooling_subclass(x):
    return torch.zeros_like(x).as_subclass(AlwaysClose)


BROKEN_DOUBLES = {raises: "KeyError", prints_a_forged_score: "printed", loops_forever: "time limit",
                  wrong_shape: "shape", exits_the_process: "died", calls_sys_exit: "SystemExit",
                  returns_a_fooling_subclass: "expected a torch.Tensor, got AlwaysClose"}


def test_each_broken_task_scores_zero_with_its_reason_and_the_others_are_still_graded():
    assert [function.__name__ for function in BROKEN_DOUBLES] == BROKEN_TASKS
    namespace = {function.__name__: function for function in BROKEN_DOUBLES} | {"negate": negate}
    result = grade_namespace(namespace, BROKEN, timeout_s=2.0)
    messages = {task.function: task.tests[0].message for task in result.tasks}
    for function, reason in BROKEN_DOUBLES.items():
        assert reason in messages[function.__name__], messages[function.__name__]
    assert (result.earned, result.points) == (1, len(BROKEN_DOUBLES) + 1)
    report = format_report(result)
    assert report.endswith(f"Score: 1/{result.points}") and report.count("Score:") == 1


def test_correct_functions_get_every_point_and_a_partial_answer_only_some():
    result = grade_namespace({"double": lambda x: 2 * x, "negate": negate}, TOY, timeout_s=5.0)
    assert (result.earned, result.points) == (4, 4)
    assert format_report(result).endswith("Score: 4/4")
    partial = grade_namespace({"double": torch.zeros_like}, TOY, timeout_s=5.0)
    assert [test.earned for test in partial.tasks[0].tests] == [0, 1]
    assert partial.tasks[0].tests[0].message.startswith("expected ")
    assert "no function named 'negate'" in partial.tasks[1].tests[0].message


def test_a_function_that_calls_the_reference_scores_zero_for_its_task_however_it_reaches_it():
    namespace = {"the_reference_itself": reference_negate, "a_call": lambda x: reference_negate(x),
                 "a_copy_of_its_code": types.FunctionType(reference_negate.__code__.replace(), {}),
                 "a_partial": functools.partial(reference_negate)}
    assert list(namespace) == CHEATS_TASKS
    result = grade_namespace(namespace, CHEATS, timeout_s=5.0)
    assert result.earned == 0
    for task in result.tasks:
        assert "calls the grader's own `reference_negate`" in task.tests[0].message, task


def test_calling_the_checks_own_reference_scores_zero_with_a_message_saying_why():
    namespace = {"rms_norm": lambda x, weight, eps: ex02_rmsnorm.reference_rms_norm(x, weight, eps),
                 "pre_norm_block": lambda *args: None}
    result = grade_namespace(namespace, find_exercise(2), timeout_s=10.0)
    rms_norm = result.tasks[0]
    assert rms_norm.earned == 0 and rms_norm.points == 7
    assert all("the grader's own `reference_rms_norm`" in test.message for test in rms_norm.tests)


def test_an_endless_loop_is_stopped_at_the_time_limit():
    outcome = run_isolated(lambda: loops_forever(None), timeout_s=0.5)
    assert not outcome.passed and "0.5 s" in outcome.message


def test_without_fork_a_thread_still_stops_waiting_at_the_time_limit(monkeypatch):
    monkeypatch.setattr("multiprocessing.get_all_start_methods", lambda: ["spawn"])
    release = threading.Event()
    assert not run_isolated(release.wait, timeout_s=0.3).passed
    release.set()  # the thread ends (and gives sys.stdout back) before this test does
    time.sleep(0.2)
    assert "KeyError" in run_isolated(lambda: raises(None), timeout_s=5.0).message
    assert run_isolated(lambda: None, timeout_s=5.0).passed


def test_results_round_trip_through_json_and_are_validated(tmp_path):
    result = ExerciseResult("99_toy", [
        TaskResult("double", [Result("doubles a random tensor", 2, 0, "KeyError"),
                              Result("doubles zero to zero", 1, 0, "KeyError")]),
        TaskResult("negate", [Result("negates", 1, 1, "")])], [])
    path = tmp_path / "results.json"
    validate(result, TOY).write_json(path)
    data = json.loads(path.read_text())
    assert (data["exercise"], data["score"], data["max_score"]) == ("99_toy", 1, 4)
    assert ExerciseResult.from_dict(data) == result

    def with_negate(earned) -> ExerciseResult:
        return ExerciseResult("99_toy", [result.tasks[0], TaskResult("negate", [Result("negates", 1, earned, "")])],
                              [])

    inflated, fractional = with_negate(7000), with_negate(1.0)
    extra = ExerciseResult("99_toy", [*result.tasks, TaskResult("bonus", [Result("free", 5, 5, "")])], [])
    for bad in (inflated, extra, fractional):
        with pytest.raises(RuntimeError):
            validate(bad, TOY)


def test_failure_messages_show_expected_and_got_before_the_inputs():
    def gae_off_by_one(rewards, values, mask, gamma, lam):
        advantages, returns = ex13_ppo.reference_advantages(rewards, values, mask, gamma, lam)
        return advantages + 1, returns

    with pytest.raises(AssertionError) as error:
        ex13_ppo.advantages_and_returns_match_the_reference(gae_off_by_one)
    message = str(error.value)
    assert message.startswith("expected ") and ", got " in message[:60] and "rewards [" in message
    with pytest.raises(AssertionError, match=r"^expected \[1, 2\], got \[1, 3\]: the list"):
        assert_equal(torch.tensor([1, 3]), [1, 2], what="the list")


def test_the_episode_end_check_fails_a_gae_that_ignores_the_mask():
    def gae_masking_only_its_output(rewards, values, mask, gamma, lam):
        advantages, following = torch.zeros_like(values), torch.zeros_like(values[:, 0])
        for t in reversed(range(values.shape[1])):
            next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(following)
            following = rewards[:, t] + gamma * next_value - values[:, t] + gamma * lam * following
            advantages[:, t] = following
        mask = mask.to(values.dtype)
        return advantages * mask, (advantages + values) * mask

    with pytest.raises(AssertionError, match="expected 1.5, got 3.6672"):
        ex13_ppo.the_episode_ends_at_each_responses_last_token(gae_masking_only_its_output)
    ex13_ppo.the_episode_ends_at_each_responses_last_token(ex13_ppo.reference_advantages)


def test_the_k3_task_accepts_the_expm1_form_only():
    def k3_with_exp(logprobs, ref_logprobs):
        log_ratio = ref_logprobs - logprobs
        return torch.exp(log_ratio) - 1 - log_ratio

    with pytest.raises(AssertionError, match="use torch.expm1"):
        ex13_ppo.k3_keeps_its_precision_in_float32_when_the_policies_are_close(k3_with_exp)
    ex13_ppo.k3_keeps_its_precision_in_float32_when_the_policies_are_close(ex13_ppo.reference_k3)


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


def test_every_exercise_has_two_to_five_tasks_each_with_points_and_a_named_reference():
    exercises = all_exercises()
    assert [exercise.chapter for exercise in exercises] == sorted({exercise.chapter for exercise in exercises})
    for exercise in exercises:
        assert 2 <= len(exercise.tasks) <= 5, f"{exercise.name} has {len(exercise.tasks)} tasks"
        for task in exercise.tasks.values():
            assert task.tests and task.points > 0
            assert task.references, f"{exercise.name}: task {task.function} names no reference implementation"


def test_an_unknown_exercise_is_an_error_listing_the_known_ones():
    assert find_exercise(2).name == find_exercise("02_rmsnorm").name == "02_rmsnorm"
    with pytest.raises(ValueError, match="02_rmsnorm"):
        find_exercise("42_nothing")


def test_a_renamed_notebook_is_graded_as_the_exercise_it_records_or_its_name_holds():
    recorded = nbformat.v4.new_notebook(metadata={"llama_course": {"exercise": "04_rope"}})
    assert exercise_of(Path("Copy of my homework.ipynb"), recorded).name == "04_rope"
    assert exercise_of(Path("Copy of 04_rope (1).ipynb"), nbformat.v4.new_notebook()).name == "04_rope"
    assert exercise_of(Path("Copy of 04_rope.ipynb"), recorded, "02_rmsnorm").name == "02_rmsnorm"
    with pytest.raises(ValueError, match="--exercise"):
        exercise_of(Path("homework.ipynb"), nbformat.v4.new_notebook())


def student_cells(name: str) -> tuple[nbformat.NotebookNode, list[nbformat.NotebookNode]]:
    notebook = student_notebook(jupytext.read(ROOT / "exercises" / "solutions" / f"{name}.md"), f"{name}.md")
    return notebook, [cell for cell in notebook.cells if cell.cell_type == "code"]


def defining(cells: list[nbformat.NotebookNode], function: str) -> nbformat.NotebookNode:
    return next(cell for cell in cells if f"def {function}(" in cell.source)


def run_cli(arguments: list[str], capsys) -> tuple[str, dict]:
    parser = argparse.ArgumentParser()
    grade.add_arguments(parser)
    json_path = Path(arguments[0]).with_suffix(".json")
    grade.run(parser.parse_args([*arguments, "--json", str(json_path)]))
    return capsys.readouterr().out, json.loads(json_path.read_text())


def test_cli_grades_a_partly_solved_notebook_with_a_crashing_cell_and_writes_json(tmp_path, capsys):
    """End to end: one task solved, one endless, one missing; a cell raising at top level; --json."""
    notebook, code = student_cells("03_swiglu")
    defining(code, "silu").source = defining(code, "silu").source.replace(STUB, "return x * torch.sigmoid(x)")
    hidden_cell = defining(code, "ffn_hidden_dim")
    hidden_cell.source = hidden_cell.source.replace(STUB, "while True:\n        pass")
    defining(code, "swiglu_ffn").source = "raise RuntimeError('a broken experiment cell')"  # never defined
    path = tmp_path / "03_swiglu.ipynb"
    jupytext.write(notebook, path)
    printed, data = run_cli([str(path), "--timeout", "2"], capsys)
    scores = {task["function"]: task["score"] for task in data["tasks"]}
    assert scores == {"silu": 2, "swiglu_ffn": 0, "ffn_hidden_dim": 0, "worse_than_baseline": 0}
    assert any("a broken experiment cell" in note for note in data["notes"])
    assert f"Score: 2/{data['max_score']}" in printed
    assert "time limit" in printed and "no function named 'swiglu_ffn'" in printed


def test_a_renamed_notebook_that_patches_the_grader_imports_the_answer_and_reads_the_environment_gets_zero(
        tmp_path, capsys, monkeypatch):
    """The tricks of issue 18 on chapter 4 (17 points), in a notebook renamed as Colab downloads name it."""
    monkeypatch.setenv(SECRET, "grader-only")
    notebook, code = student_cells("04_rope")
    code[1].source += (
        "\nimport os\n"
        "import llama_course.grading.grader as grader\n"
        "import llama_course.grading.isolation as isolation\n"
        "from llama_course.grading.report import ExerciseResult\n"
        "isolation.outcome_of = lambda test: isolation.Outcome(True)  # every test passes, here\n"
        "ExerciseResult.to_dict = lambda self: {'score': 7000, 'max_score': 15}\n"
        "grader.score = lambda *args, **kwargs: None\n"
        f"if {SECRET!r} in os.environ:\n"
        "    raise RuntimeError('the kernel sees the grader secret')\n"
    )
    defining(code, "rope_angles").source = "from llama_course.layers.rope import rope_angles"
    defining(code, "apply_rope_interleaved").source = (
        "import types\nimport llama_course.layers.rope as rope\n"
        "apply_rope_interleaved = types.FunctionType(rope.apply_rope_interleaved.__code__, rope.__dict__)")
    defining(code, "apply_rope_rotate_half").source = (
        "def apply_rope_rotate_half(x, cos, sin):\n"
        "    from llama_course.grading.checks.ex04_rope import apply_rope_rotate_half as reference\n"
        "    return reference(x, cos, sin)")
    defining(code, "permute_meta_to_hf").source = (
        "def permute_meta_to_hf(weight, n_heads):\n"
        f"    raise RuntimeError('secret: ' + os.environ.get({SECRET!r}, 'not visible'))")
    path = tmp_path / "Copy of my homework.ipynb"
    jupytext.write(notebook, path)
    printed, data = run_cli([str(path)], capsys)
    assert (data["exercise"], data["score"], data["max_score"]) == ("04_rope", 0, 17)
    assert printed.rstrip().endswith("Score: 0/17")
    messages = {task["function"]: task["tests"][0]["message"] for task in data["tasks"]}
    assert "calls `llama_course.layers.rope.rope_angles`" in messages["rope_angles"]
    assert "calls `llama_course.layers.rope.apply_rope_interleaved`" in messages["apply_rope_interleaved"]
    assert "calls `llama_course.layers.rope.apply_rope_rotate_half`" in messages["apply_rope_rotate_half"]
    assert "secret: not visible" in messages["permute_meta_to_hf"]
    assert not any("grader secret" in note for note in data["notes"]), data["notes"]
    assert package_apply_rope_interleaved.__module__ == "llama_course.layers.rope"


def test_a_notebook_that_rewrites_the_installed_checks_is_not_graded(tmp_path):
    """In a copy of the package, so that the real checks are never touched while other tests read them."""
    package = tmp_path / "installed"
    shutil.copytree(ROOT / "llama_course", package / "llama_course",
                    ignore=shutil.ignore_patterns("__pycache__", "assets"))
    notebook = jupytext.read(ROOT / "exercises" / "solutions" / "02_rmsnorm.md")
    notebook.cells.insert(2, nbformat.v4.new_code_cell(
        "import pathlib\nimport llama_course.grading.checks.ex02_rmsnorm as checks\n"
        "source = pathlib.Path(checks.__file__)\n"
        "source.write_text(source.read_text().replace('assert_tensor_close(', 'print('))\n"
        "(source.parent / 'ex00_planted.py').write_text('raise SystemExit')\n"))
    path = tmp_path / "02_rmsnorm.ipynb"
    jupytext.write(notebook, path)
    env = {"PATH": os.environ["PATH"], "OMP_NUM_THREADS": "1", "PYTHONPATH": str(package)}
    printed = subprocess.run([sys.executable, "-m", "llama_course.cli", "grade", str(path)], env=env,
                             capture_output=True, text=True, timeout=600, cwd=tmp_path).stdout
    note = next(line for line in printed.splitlines() if line.startswith("note: the grader's files changed"))
    assert "llama_course/grading/checks/ex02_rmsnorm.py" in note and "ex00_planted.py" in note, printed
    assert "not graded" in note and printed.rstrip().endswith("Score: 0/13"), printed


def test_a_top_level_cell_that_ignores_ctrl_c_and_loops_is_stopped_at_the_time_limit(tmp_path, capsys):
    notebook, code = student_cells("02_rmsnorm")
    code[1].source += "\nimport signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass\n"
    path = tmp_path / "02_rmsnorm.ipynb"
    jupytext.write(notebook, path)
    start = time.monotonic()
    printed, data = run_cli([str(path), "--time-limit", "3"], capsys)
    assert time.monotonic() - start < 120
    assert data["score"] == 0 and any("did not stop when interrupted" in note for note in data["notes"]), data["notes"]


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
