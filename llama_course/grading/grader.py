"""Grade the task functions found in a namespace: a notebook kernel's `globals()`, or a module's `vars()`."""

from collections.abc import Callable, Mapping
from typing import Any

from llama_course.grading.isolation import Outcome, run_isolated
from llama_course.grading.registry import Exercise, find_exercise
from llama_course.grading.report import ExerciseResult, TaskResult, TestResult, format_report

DEFAULT_TEST_TIMEOUT_S = 10.0
DEFAULT_CELL_TIMEOUT_S = 300.0  # each cell of a notebook graded by `llama-course grade`


def grade_namespace(
    namespace: Mapping[str, Any], exercise: Exercise, timeout_s: float = DEFAULT_TEST_TIMEOUT_S
) -> ExerciseResult:
    """Run every test of `exercise` on the functions of that name in `namespace`, each in isolation."""
    tasks = []
    for task in exercise.tasks.values():
        function = namespace.get(task.function)
        results = []
        for test in task.tests:
            if not callable(function):
                outcome = Outcome(False, f"no function named {task.function!r} is defined in the notebook")
            else:
                outcome = run_isolated(_bind(test.check, function), timeout_s)
            results.append(TestResult(test.name, test.points, test.points if outcome.passed else 0, outcome.message))
        tasks.append(TaskResult(task.function, results))
    return ExerciseResult(exercise.name, tasks, [])


def grade_here(namespace: Mapping[str, Any], chapter: int | str, timeout_s: float = DEFAULT_TEST_TIMEOUT_S) -> None:
    """The last cell of an exercise notebook: `grade_here(globals(), chapter=2)` prints the table and the score."""
    print(format_report(grade_namespace(namespace, find_exercise(chapter), timeout_s)))


def _bind(check: Callable[[Callable], None], function: Callable) -> Callable[[], None]:
    return lambda: check(function)
