"""Grade an exercise notebook file: run it in a fresh kernel, then test its functions in a separate worker.

1. A test worker (`llama_course.grading.worker`) starts and loads the checks; the notebook's kernel starts
   beside it, with a scrubbed environment, in a scratch folder, in a process group of its own.
2. Once the worker is ready, the notebook (`.ipynb`, or a solution's jupytext `.md`) runs top to bottom,
   errors allowed; its own `grade_here(...)` cell is skipped. A watchdog interrupts a cell that outlives
   `--cell-timeout` or the whole notebook at `--time-limit`, and kills the kernel with everything it started
   when the interrupt is ignored. The last cell hands the task functions over as pickles (`export.py`).
3. The kernel and its processes are killed, and the worker tests the functions; the grader alone scores its
   answers and writes the report. A notebook during whose run the grader's own files changed (a fingerprint
   is taken before it starts) is not graded.
"""

import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError

from llama_course.grading.grader import (
    DEFAULT_CELL_TIMEOUT_S,
    DEFAULT_TEST_TIMEOUT_S,
    DEFAULT_TIME_LIMIT_S,
    TestWorker,
    score,
)
from llama_course.grading.protection import GraderFiles, kill_process_tree, scrubbed_environment
from llama_course.grading.registry import Exercise, exercise_name_in, find_exercise
from llama_course.grading.report import ExerciseResult

GRADE_HERE_CALL = "grade_here("
INTERRUPT_GRACE_S = 5.0  # how long an interrupted cell has to stop before the kernel is killed


def exercise_of(path: Path, notebook: nbformat.NotebookNode, name: str | None = None) -> Exercise:
    """The exercise to grade: `name` if given, else the one the notebook records in its metadata (the student
    notebooks do), else the one in its file name ("Copy of 04_rope.ipynb" -> 04_rope)."""
    recorded = notebook.metadata.get("llama_course", {}).get("exercise")
    key = name or (recorded if isinstance(recorded, str) else None) or exercise_name_in(path.stem)
    if key is None:
        raise ValueError(f"{path} records no exercise and its name holds none; pass --exercise, e.g. "
                         "--exercise 02_rmsnorm")
    return find_exercise(key)


class Watchdog:
    """Interrupts a cell at its time limit, and the notebook at its own (counted from its first cell); kills the
    kernel, with everything it started, when either is still running `INTERRUPT_GRACE_S` after the interrupt."""

    def __init__(self, client: NotebookClient, cell_timeout_s: float, time_limit_s: float) -> None:
        self.client, self.cell_timeout_s, self.time_limit_s = client, cell_timeout_s, time_limit_s
        self.deadline = float("inf")  # set when the first cell starts
        self.cell: tuple[int, float] | None = None  # (index, start) of the running cell
        self.reason: str | None = None  # why the kernel was killed
        self.stopped = threading.Event()

    def cell_started(self, cell: nbformat.NotebookNode, cell_index: int, **_: object) -> None:
        now = time.monotonic()
        self.deadline = min(self.deadline, now + self.time_limit_s)
        self.cell = (cell_index, now)

    def kernel_pid(self) -> int | None:
        """The kernel's pid while it is not yet reaped (so that it cannot name another process by then)."""
        process = getattr(getattr(self.client.km, "provisioner", None), "process", None)
        return process.pid if process is not None and process.returncode is None else None

    def kill_kernel(self) -> None:
        if (pid := self.kernel_pid()) is not None:
            kill_process_tree(pid)

    def watch(self) -> None:
        interrupted: dict[object, float] = {}  # "notebook" or a cell -> when it was interrupted
        while not self.stopped.wait(0.2):
            if self.cell is None or (pid := self.kernel_pid()) is None:
                continue
            now, (index, start) = time.monotonic(), self.cell
            late = "notebook" if now > self.deadline else self.cell if now - start > self.cell_timeout_s else None
            if late is None:
                continue
            if late not in interrupted:
                interrupted[late] = now
                os.killpg(pid, signal.SIGINT)  # a KeyboardInterrupt in the running cell
            elif now - interrupted[late] > INTERRUPT_GRACE_S:
                limit = "the notebook's time limit (--time-limit)" if late == "notebook" else \
                    "its time limit (--cell-timeout)"
                self.reason = (f"cell {index + 1} ran past {limit} and did not stop when interrupted: the kernel "
                               "was stopped and the cells after it never ran")
                self.kill_kernel()
                return


def run_notebook(notebook: nbformat.NotebookNode, folder: Path, cell_timeout_s: float, time_limit_s: float,
                 before_first_cell: Callable[[], None]) -> list[str]:
    """Execute `notebook` in `folder` under the watchdog; return notes on what went wrong in it."""
    client = NotebookClient(notebook, timeout=None, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(folder)}})
    watchdog = Watchdog(client, cell_timeout_s, time_limit_s)
    client.on_notebook_start = lambda **_: before_first_cell()
    client.on_cell_execute = watchdog.cell_started
    last = notebook.cells[-1]
    client.on_cell_executed = lambda cell, **_: watchdog.kill_kernel() if cell is last else None
    thread = threading.Thread(target=watchdog.watch, daemon=True)
    thread.start()
    notes = []
    try:
        client.execute(env=scrubbed_environment(), stderr=subprocess.DEVNULL)  # the kernel's own log lines
    except DeadKernelError:
        notes.append(watchdog.reason or "the notebook's kernel died: did a cell call exit() or run out of memory?")
    finally:
        watchdog.stopped.set()
        watchdog.kill_kernel()  # and whatever the notebook started in the background
        thread.join()
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                where = "the grading cell" if cell is last else f"cell {index + 1}"
                notes.append(f"{where} raised {output['ename']}: {output['evalue']}"[:300])
    return notes


def grade_notebook(
    path: str | Path,
    test_timeout_s: float = DEFAULT_TEST_TIMEOUT_S,
    cell_timeout_s: float = DEFAULT_CELL_TIMEOUT_S,
    time_limit_s: float = DEFAULT_TIME_LIMIT_S,
    exercise_name: str | None = None,
) -> ExerciseResult:
    """Run the notebook at `path` and grade its task functions; never raises for what the notebook does."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {str(path)!r}; pass an exercise such as exercises/02_rmsnorm.ipynb")
    notebook = jupytext.read(path)
    exercise = exercise_of(path, notebook, exercise_name)
    grader_files = GraderFiles()
    with tempfile.TemporaryDirectory(prefix="llama-course-grade-") as scratch:
        functions = Path(scratch) / "functions.json"
        notebook.cells = [cell for cell in notebook.cells
                          if not (cell.cell_type == "code" and GRADE_HERE_CALL in cell.source)]
        notebook.cells.append(nbformat.v4.new_code_cell(
            "from llama_course.grading.export import write_functions as _write_functions\n"
            f"_write_functions(globals(), {list(exercise.tasks)!r}, {str(functions)!r})"))
        with TestWorker(exercise, Path(scratch)) as worker:
            notes = run_notebook(notebook, Path(scratch), cell_timeout_s, time_limit_s, worker.ready)
            changed = grader_files.changed()
            outcomes = worker.run(functions, test_timeout_s) if functions.exists() and not changed else {}
        changed = grader_files.changed()
    if changed:
        notes.append(f"the grader's files changed while it ran ({', '.join(changed)}): the notebook is not graded; "
                     "reinstall the package (or restore the files) before grading again")
        outcomes = {}
    return score(exercise, outcomes, notes, missing="not graded: see the notes")
