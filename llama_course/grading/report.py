"""Grading results: per test, per task and per exercise; printed as a table or written as JSON for an LMS."""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from llama_course.grading.registry import Exercise


@dataclass(frozen=True)
class TestResult:
    name: str
    points: int
    earned: int
    message: str


@dataclass(frozen=True)
class TaskResult:
    function: str
    tests: list[TestResult]

    @property
    def earned(self) -> int:
        return sum(test.earned for test in self.tests)

    @property
    def points(self) -> int:
        return sum(test.points for test in self.tests)


@dataclass(frozen=True)
class ExerciseResult:
    exercise: str
    tasks: list[TaskResult]
    notes: list[str]  # problems outside the tasks, e.g. a notebook cell that failed

    @property
    def earned(self) -> int:
        return sum(task.earned for task in self.tasks)

    @property
    def points(self) -> int:
        return sum(task.points for task in self.tasks)

    def to_dict(self) -> dict:
        """The JSON document: `score`, `max_score`, and per task its score and each test's outcome."""
        return {
            "exercise": self.exercise,
            "score": self.earned,
            "max_score": self.points,
            "tasks": [{"function": task.function, "score": task.earned, "max_score": task.points,
                       "tests": [asdict(test) for test in task.tests]} for task in self.tasks],
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "ExerciseResult":
        tasks = [TaskResult(task["function"], [TestResult(**test) for test in task["tests"]])
                 for task in data["tasks"]]
        return cls(data["exercise"], tasks, list(data["notes"]))

    def write_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def validate(result: ExerciseResult, exercise: Exercise) -> ExerciseResult:
    """`result` unchanged when it has exactly `exercise`'s tasks and tests, each earning 0 or its points as an
    int; a RuntimeError (a grader bug, never the student's doing) otherwise."""
    expected = [(task.function, [(test.name, test.points) for test in task.tests]) for task in exercise.tasks.values()]
    got = [(task.function, [(test.name, test.points) for test in task.tests]) for task in result.tasks]
    if result.exercise != exercise.name or got != expected:
        raise RuntimeError(f"the results of {result.exercise} do not list the tasks and tests of {exercise.name}")
    for task in result.tasks:
        for test in task.tests:
            if type(test.earned) is not int or test.earned not in (0, test.points):
                raise RuntimeError(f"{task.function}: test {test.name!r} earned {test.earned!r} of {test.points}")
    if not 0 <= result.earned <= result.points == exercise.points:
        raise RuntimeError(f"score {result.earned}/{result.points} of {exercise.name} is out of range")
    return result


def format_report(result: ExerciseResult) -> str:
    """One row per task with its points, the failed tests and why under it, then `Score: X/Y`."""
    width = max([len(task.function) for task in result.tasks] + [4])
    lines = [f"Exercise {result.exercise}", f"{'task':<{width}}  points", f"{'-' * width}  ------"]
    for task in result.tasks:
        lines.append(f"{task.function:<{width}}  {task.earned:>2}/{task.points:<2}")
        for test in task.tests:
            if test.earned < test.points:
                lines.append(f"{'':<{width}}    FAILED {test.name} ({test.points} pt): {test.message}")
    lines += [f"note: {note}" for note in result.notes]
    lines.append(f"Score: {result.earned}/{result.points}")
    return "\n".join(lines)
