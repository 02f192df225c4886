"""Exercises, their graded tasks and the tests that grade them, CS336 style.

An exercise notebook asks the student to write a few functions (the tasks). Each task is graded by short tests
named after the behaviour they pin down; a test receives the student's function, compares it with the
package's reference on random inputs or checks a property, and raises (usually `AssertionError`) on failure.

    exercise = Exercise(chapter=2, name="02_rmsnorm", title="RMSNorm and pre-normalisation")

    @exercise.test("rms_norm", points=2)
    def matches_the_reference_in_float64(rms_norm): ...

    exercise.references("rms_norm", RMSNorm)  # a student function that calls RMSNorm scores zero on the task

The tests of chapter NN live in `llama_course.grading.checks.exNN_name`, a module that defines `EXERCISE`.
"""

import importlib
import pkgutil
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from llama_course.grading import checks

TestFunction = Callable[[Callable], None]


@dataclass(frozen=True)
class GradedTest:
    """One behaviour of one task, worth `points`; `check(student_function)` raises when it is not met."""

    name: str
    points: int
    check: TestFunction


@dataclass
class Task:
    """A function the student writes, graded by its tests."""

    function: str
    tests: list[GradedTest] = field(default_factory=list)
    references: list[object] = field(default_factory=list)  # the package's functions and classes doing the same

    @property
    def points(self) -> int:
        return sum(test.points for test in self.tests)


@dataclass
class Exercise:
    """The graded tasks of one chapter's exercise notebook `exercises/{name}.ipynb`."""

    chapter: int
    name: str
    title: str
    tasks: dict[str, Task] = field(default_factory=dict)
    module: str = ""  # the module that defines the exercise, which the test worker imports (default: the caller)

    def __post_init__(self) -> None:
        self.module = self.module or sys._getframe(2).f_globals["__name__"]  # 2: the caller of __init__

    @property
    def points(self) -> int:
        return sum(task.points for task in self.tasks.values())

    def test(self, function: str, points: int) -> Callable[[TestFunction], TestFunction]:
        """Register the decorated function as a test of the task `function`; its name names the behaviour."""
        if points <= 0:
            raise ValueError(f"points={points} must be positive")

        def register(check: TestFunction) -> TestFunction:
            task = self.tasks.setdefault(function, Task(function))
            task.tests.append(GradedTest(check.__name__.replace("_", " "), points, check))
            return check

        return register

    def references(self, function: str, *implementations: object) -> None:
        """Name the package's implementations of task `function` (functions, classes): calling one scores zero."""
        if function not in self.tasks:
            raise ValueError(f"task {function!r} of {self.name} has no test yet; register its tests first")
        self.tasks[function].references.extend(implementations)


def exercise_modules() -> list[str]:
    """Names of the modules under `llama_course.grading.checks`, one per exercise, in chapter order."""
    return sorted(info.name for info in pkgutil.iter_modules(checks.__path__) if info.name.startswith("ex"))


def all_exercises() -> list[Exercise]:
    """Every gradable exercise, in chapter order."""
    return [importlib.import_module(f"{checks.__name__}.{module}").EXERCISE for module in exercise_modules()]


def exercise_name_in(text: str) -> str | None:
    """The exercise name ("04_rope") inside a file name such as "Copy of 04_rope (1)", or None."""
    found = [module[2:] for module in exercise_modules()
             if re.search(rf"(?<![0-9]){module[2:]}(?![a-z0-9])", text.lower())]
    return found[0] if found else None


def find_exercise(key: int | str) -> Exercise:
    """The exercise of chapter `key` (2), of name `key` ("02_rmsnorm"), or of a notebook path's stem."""
    exercises = all_exercises()
    for exercise in exercises:
        if key in (exercise.chapter, exercise.name, f"{exercise.chapter:02d}"):
            return exercise
    known = ", ".join(f"{exercise.chapter} ({exercise.name})" for exercise in exercises)
    raise ValueError(f"no graded exercise {key!r}; the exercises are: {known}")
