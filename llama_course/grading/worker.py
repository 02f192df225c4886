"""The test worker: the process that runs an exercise's tests, started by the grader before any student code runs.

    python -m llama_course.grading.worker MODULE EXERCISE   # llama_course.grading.checks.ex02_rmsnorm 02_rmsnorm

It loads the exercise's checks (and the package they compare with) first, says `{"ready": true}` on stdout,
then reads one request line on stdin, `{"functions": PATH, "timeout_s": S}`, and answers one JSON line per
test: `{"task", "test" (its index), "passed", "message", "reference"}`. Each test runs in a forked child
(`isolation.run_isolated`) that alone unpickles the student's function and calls it through a
`ReferenceGuard`; the worker never runs student code itself. The grader scores the answers.
"""

import importlib
import json
import sys
from dataclasses import asdict
from functools import partial

from llama_course.grading.export import load_function
from llama_course.grading.isolation import TestVoided, run_isolated
from llama_course.grading.protection import make_undumpable
from llama_course.grading.references import CodeKey, ReferenceGuard, forbidden_code
from llama_course.grading.registry import Exercise, TestFunction


def run_test(functions: str, name: str, check: TestFunction, forbidden: dict[CodeKey, str]) -> None:
    """One test, in its child process: load the student's `name`, run `check` on it, void it on a reference call."""
    try:
        function = load_function(functions, name)
    except LookupError as error:
        raise TestVoided(str(error)) from None
    guard = ReferenceGuard(forbidden)
    try:
        check(guard.wrap(function))
    finally:
        if guard.used:
            raise TestVoided(f"{name} calls {guard.used}, an implementation of this very task: write it yourself "
                             "(the whole task scores 0)", guard.used)


def main(argv: list[str]) -> None:
    make_undumpable()
    checks_module = importlib.import_module(argv[0])
    exercise = next(value for value in vars(checks_module).values()
                    if isinstance(value, Exercise) and value.name == argv[1])
    forbidden = forbidden_code(exercise, checks_module)
    print(json.dumps({"ready": True}), flush=True)
    request = json.loads(sys.stdin.readline())
    for task in exercise.tasks.values():
        for index, test in enumerate(task.tests):
            test_here = partial(run_test, request["functions"], task.function, test.check, forbidden[task.function])
            outcome = run_isolated(test_here, float(request["timeout_s"]))
            print(json.dumps({"task": task.function, "test": index, **asdict(outcome)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
