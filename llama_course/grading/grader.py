"""Grade task functions: hand them to a test worker (`llama_course.grading.worker`) and score its answers.

The worker is a separate process with a scrubbed environment, in a session of its own, that loads the checks
before any student code runs. Only the grader turns its answers into points: it accepts one answer per known
test, scores a passed test with that test's points from its own registry, and voids a whole task whose
function called the package's implementation of it.
"""

import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llama_course.grading.export import write_functions
from llama_course.grading.isolation import Outcome
from llama_course.grading.protection import kill_process_tree, scrubbed_environment
from llama_course.grading.registry import Exercise, find_exercise
from llama_course.grading.report import ExerciseResult, TaskResult, TestResult, format_report, validate

DEFAULT_TEST_TIMEOUT_S = 10.0
DEFAULT_CELL_TIMEOUT_S = 300.0  # each cell of a notebook graded by `llama-course grade`
DEFAULT_TIME_LIMIT_S = 1800.0  # the whole notebook
WORKER_START_TIMEOUT_S = 300.0  # importing torch and the checks on a busy machine
ANSWER_MARGIN_S = 5.0  # per test, on top of its time limit: forking, loading the function, killing


class TestWorker:
    """A running test worker for one exercise; `ready()` once its checks are loaded, then `run()` once."""

    def __init__(self, exercise: Exercise, folder: Path) -> None:
        self.exercise = exercise
        self.command = [sys.executable, "-m", "llama_course.grading.worker", exercise.module, exercise.name]
        module_folder = Path(sys.modules[exercise.module].__file__).parent  # a course's own checks, or a test's
        self.process = subprocess.Popen(
            self.command, cwd=folder, env=scrubbed_environment(module_folder), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True, text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _next_line(self, deadline: float) -> str | None:
        try:
            return self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None

    def ready(self) -> None:
        """Wait until the worker has loaded the checks; RuntimeError when it cannot."""
        line = self._next_line(time.monotonic() + WORKER_START_TIMEOUT_S)
        if line is None or json.loads(line) != {"ready": True}:
            raise RuntimeError(f"the test worker for {self.exercise.name} did not start (exit code "
                               f"{self.process.poll()}); run `python {' '.join(self.command[1:])}` to see why")

    def run(self, functions: Path, timeout_s: float) -> dict[tuple[str, int], Outcome]:
        """Every test's outcome on the functions in `functions`, keyed by (task, test index); missing when the
        worker did not answer for it in time."""
        self.process.stdin.write(json.dumps({"functions": str(functions), "timeout_s": timeout_s}) + "\n")
        self.process.stdin.flush()
        n_tests = sum(len(task.tests) for task in self.exercise.tasks.values())
        deadline = time.monotonic() + n_tests * (timeout_s + ANSWER_MARGIN_S)
        outcomes: dict[tuple[str, int], Outcome] = {}
        while (line := self._next_line(deadline)) is not None:
            key, outcome = self._answer(line)
            outcomes.setdefault(key, outcome)
        return outcomes

    def _answer(self, line: str) -> tuple[tuple[str, int], Outcome]:
        data = json.loads(line)
        task = self.exercise.tasks[data["task"]]
        if not (isinstance(data["test"], int) and 0 <= data["test"] < len(task.tests)):
            raise RuntimeError(f"the test worker answered for an unknown test: {line!r:.200}")
        return (task.function, data["test"]), Outcome(bool(data["passed"]), str(data["message"]),
                                                      data["reference"] and str(data["reference"]))

    def stop(self) -> None:
        if self.process.returncode is None:  # not reaped yet: its pid still names it
            kill_process_tree(self.process.pid)
        self.process.wait()

    def __enter__(self) -> "TestWorker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def score(exercise: Exercise, outcomes: Mapping[tuple[str, int], Outcome], notes: list[str],
          missing: str = "not graded: the test worker stopped before this test") -> ExerciseResult:
    """Points from the registry for each passed test; a task with a reference call scores 0 in every test; a
    test without an outcome fails with the message `missing`."""
    tasks = []
    for task in exercise.tasks.values():
        task_outcomes = [outcomes.get((task.function, index), Outcome(False, missing))
                         for index in range(len(task.tests))]
        voided = next((outcome for outcome in task_outcomes if outcome.reference), None)
        tasks.append(TaskResult(task.function, [
            TestResult(test.name, test.points, test.points if outcome.passed and not voided else 0,
                       voided.message if voided else outcome.message)
            for test, outcome in zip(task.tests, task_outcomes, strict=True)]))
    return validate(ExerciseResult(exercise.name, tasks, notes), exercise)


def grade_namespace(
    namespace: Mapping[str, Any], exercise: Exercise, timeout_s: float = DEFAULT_TEST_TIMEOUT_S
) -> ExerciseResult:
    """Run every test of `exercise` on the functions of that name in `namespace`, in a test worker."""
    with tempfile.TemporaryDirectory(prefix="llama-course-grade-") as folder:
        functions = Path(folder) / "functions.json"
        write_functions(namespace, exercise.tasks, functions)
        with TestWorker(exercise, Path(folder)) as worker:
            worker.ready()
            return score(exercise, worker.run(functions, timeout_s), [])


def grade_here(namespace: Mapping[str, Any], chapter: int | str, timeout_s: float = DEFAULT_TEST_TIMEOUT_S) -> None:
    """The last cell of an exercise notebook: `grade_here(globals(), chapter=2)` prints the table and the score."""
    print(format_report(grade_namespace(namespace, find_exercise(chapter), timeout_s)))
