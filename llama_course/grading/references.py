"""Catch a task function that calls the package's (or the checks') implementation of the same task.

Each task names its references (`Exercise.references`); every function and class that a checks module
defines, tests excepted, counts as a reference of every task of that exercise. While the student's function
runs, a trace function sees every Python frame that starts, in this thread and in threads started from it,
and records the first one whose code is a reference's. Code is matched by its qualified name, first line,
bytecode and names, not by identity or file (a function pickled by value loses its file name), so an alias,
a `functools.partial`, a subclass, a copy made with `types.FunctionType(f.__code__, ...)`, `code.replace()` or
a pickle is caught as well as a direct call or import. A
function that switches the tracing off is caught too (the trace function must still be in place when it
returns). Copying the reference's source text into the notebook is not detectable this way, nor meant to be.
"""

import functools
import sys
import threading
from collections.abc import Callable, Iterator
from types import CodeType, ModuleType
from typing import Any

from llama_course.grading.registry import Exercise

CodeKey = tuple[str, int, bytes, tuple[str, ...], tuple[str, ...]]
TURNED_OFF = "the grader's call tracing (the function switched it off)"


def code_key(code: CodeType) -> CodeKey:
    return code.co_qualname, code.co_firstlineno, code.co_code, code.co_names, code.co_varnames


def _nested_code(code: CodeType) -> Iterator[CodeType]:
    yield code
    for constant in code.co_consts:
        if isinstance(constant, CodeType):
            yield from _nested_code(constant)


def code_objects(implementation: Any) -> Iterator[CodeType]:
    """Every code object of a function (its lambdas and nested functions included) or of a class's methods."""
    if isinstance(implementation, type):
        for value in vars(implementation).values():
            if isinstance(value, staticmethod | classmethod):
                value = value.__func__
            if isinstance(value, property):
                for accessor in filter(None, (value.fget, value.fset)):
                    yield from code_objects(accessor)
            elif callable(value) and hasattr(value, "__code__"):
                yield from code_objects(value)
        return
    while isinstance(implementation, functools.partial) or hasattr(implementation, "__wrapped__"):
        implementation = getattr(implementation, "__wrapped__", None) or implementation.func
    code = getattr(implementation, "__code__", None)
    if code is None:
        raise TypeError(f"{implementation!r} is neither a Python function nor a class: it cannot be a reference")
    yield from _nested_code(code)


def _label(implementation: Any, checks_module: ModuleType) -> str:
    name = getattr(implementation, "__qualname__", repr(implementation))
    module = getattr(implementation, "__module__", "")
    if module == checks_module.__name__:
        return f"the grader's own `{name}` (from its checks)"
    return f"`{module}.{name}`"


def forbidden_code(exercise: Exercise, checks_module: ModuleType) -> dict[str, dict[CodeKey, str]]:
    """Per task: the code keys of its references and of the checks' helpers, each with a label for messages."""
    tests = {test.check for task in exercise.tasks.values() for test in task.tests}
    helpers = [value for value in vars(checks_module).values()
               if getattr(value, "__module__", None) == checks_module.__name__ and value not in tests
               and (isinstance(value, type) or callable(value))]
    forbidden = {}
    for name, task in exercise.tasks.items():
        keys: dict[CodeKey, str] = {}
        for implementation in [*task.references, *helpers]:
            label = _label(implementation, checks_module)
            keys.update({code_key(code): label for code in code_objects(implementation)})
        forbidden[name] = keys
    return forbidden


class ReferenceGuard:
    """Calls a student's function while recording the first reference implementation it runs (`self.used`)."""

    def __init__(self, forbidden: dict[CodeKey, str]) -> None:
        self.forbidden = forbidden
        self.used: str | None = None
        self._tracer = self._trace

    def _trace(self, frame: Any, event: str, arg: Any) -> None:
        if self.used is None:
            self.used = self.forbidden.get(code_key(frame.f_code))
        return None  # no line events: only the start of each frame is looked at

    def wrap(self, function: Callable) -> Callable:
        @functools.wraps(function)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            outer = sys.gettrace()
            sys.settrace(self._tracer)
            threading.settrace(self._tracer)
            try:
                return function(*args, **kwargs)
            finally:
                if sys.gettrace() != self._tracer and self.used is None:
                    self.used = TURNED_OFF
                threading.settrace(None)
                sys.settrace(outer)

        return guarded
