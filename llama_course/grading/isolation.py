"""Run one graded test so that nothing the student's code does can crash or hang the test worker.

Where the platform can fork (Linux, macOS, Colab), each test runs in a forked child process in its own process
group: its stdout and stderr are captured, and the group (with every process the test started) is killed when
it exceeds the time limit, which interrupts any loop, Python or native, and when it ends. An `exit()`, a
segfault or running out of memory ends only the child. Elsewhere (Windows) the test runs in a daemon thread:
an endless loop still costs the test and the worker moves on, but the thread is not killed.

A test that prints to stdout fails, as the book page "How grading works" announces: graded functions return
their answer; prints belong in the experiment cells.
"""

import contextlib
import io
import json
import multiprocessing
import os
import sys
import threading
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass

from llama_course.grading.protection import kill_process_tree

MESSAGE_LIMIT = 600


@dataclass(frozen=True)
class Outcome:
    """What happened to one test: passed, or failed with a message; `reference` names the package's (or the
    checks') implementation that the student's function called, which voids the whole task."""

    passed: bool
    message: str = ""
    reference: str | None = None


class TestVoided(Exception):
    """Raised by a test to fail with exactly this message (and, when it names one, the reference used)."""

    def __init__(self, message: str, reference: str | None = None) -> None:
        super().__init__(message)
        self.reference = reference


def run_isolated(test: Callable[[], None], timeout_s: float) -> Outcome:
    """Run `test()` with a time limit and captured output; return its outcome, whatever `test` does."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s} must be positive")
    if "fork" in multiprocessing.get_all_start_methods():
        return _run_in_forked_child(test, timeout_s)
    return _run_in_thread(test, timeout_s)


def outcome_of(test: Callable[[], None]) -> Outcome:
    """Call `test` here, capturing stdout; the outcome says why it failed, in one short message."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):
            test()
    except TestVoided as error:
        return Outcome(False, _clip(str(error)), error.reference)
    except NotImplementedError:
        return Outcome(False, "not implemented yet: the function still raises NotImplementedError")
    except AssertionError as error:
        return Outcome(False, _clip(str(error) or "assertion failed"))
    except BaseException as error:  # the student's code may raise anything, SystemExit and KeyboardInterrupt too
        where = traceback.extract_tb(error.__traceback__)[-1]
        return Outcome(False, _clip(f"{type(error).__name__}: {error} (line {where.lineno} of {where.name})"))
    if printed.getvalue():
        # The printed text is not echoed: it must not be able to forge a line of the report.
        return Outcome(False, f"the function printed {len(printed.getvalue())} characters to stdout; graded "
                              "functions must not print (remove the print calls)")
    return Outcome(True)


def _run_in_forked_child(test: Callable[[], None], timeout_s: float) -> Outcome:
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(test, sender), daemon=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python 3.12 warns when forking a threaded process
        child.start()
    sender.close()
    finished, outcome = False, None
    try:
        finished = receiver.poll(timeout_s)  # True once the child sent its outcome, or died (end of file)
        if finished:
            outcome = _outcome_from_json(receiver.recv_bytes(maxlength=64 * MESSAGE_LIMIT))
    except (EOFError, OSError, ValueError):
        pass  # the child died before sending its outcome, or sent something that is not one
    finally:
        receiver.close()
        kill_process_tree(child.pid)  # with whatever the test started in the background
        child.join()
    if outcome is not None:
        return outcome
    if not finished:
        return Outcome(False, f"took longer than the time limit of {timeout_s:g} s (an endless loop?)")
    return Outcome(False, f"the test process died (exit code {child.exitcode}): did the function call exit() "
                          "or run out of memory?")


def _child_main(test: Callable[[], None], sender) -> None:
    os.setpgid(0, 0)  # a group of its own: killing it stops every process the test started
    # Native code (and ipykernel's fd capture) writes to the file descriptors: point them at /dev/null.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
    try:
        import torch

        torch.set_num_threads(1)  # a forked OpenMP pool is not safe to reuse; the tests are tiny
    except ImportError:
        pass
    # JSON, never a pickle: the student's code ran in this process, and unpickling its bytes could run code.
    sender.send_bytes(json.dumps(asdict(outcome_of(test))).encode())
    sender.close()
    os._exit(0)  # skip the parent's atexit handlers and finalisers (kernel sockets, ...)


def _outcome_from_json(data: bytes) -> Outcome:
    fields = json.loads(data)
    passed, message, reference = fields["passed"], fields["message"], fields["reference"]
    if not (isinstance(passed, bool) and isinstance(message, str) and isinstance(reference, str | None)):
        raise ValueError(f"not an outcome: {fields!r:.200}")
    return Outcome(passed, _clip(message), reference)


def _run_in_thread(test: Callable[[], None], timeout_s: float) -> Outcome:
    result: list[Outcome] = []
    thread = threading.Thread(target=lambda: result.append(outcome_of(test)), daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive() or not result:
        return Outcome(False, f"took longer than the time limit of {timeout_s:g} s (an endless loop?)")
    return result[0]


def _clip(message: str) -> str:
    return message if len(message) <= MESSAGE_LIMIT else message[:MESSAGE_LIMIT] + " [...]"
