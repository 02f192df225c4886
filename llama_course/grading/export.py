"""Carry the student's task functions out of the notebook's process, as data: one JSON file of pickles.

The notebook's kernel (or, on Colab, `grade_here`) writes the file; only a test process of the grader reads a
pickle back, right before the test that uses it. The grader itself never unpickles anything the notebook
made: a pickle can run code when it is loaded, and that code must run where the student's function runs.
Functions defined in the notebook (or in a file of the student's) travel by value with cloudpickle; a function
imported from an installed package travels by name, so it is that package's function in the test process.
"""

import base64
import json
import sys
import sysconfig
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import cloudpickle


def _installed(module_name: str) -> bool:
    """Whether a module comes from the Python installation or this package (then it travels by name)."""
    origin = getattr(sys.modules[module_name], "__file__", None)
    if origin is None:
        return False
    roots = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.add(str(Path(__file__).resolve().parents[1]))  # the llama_course package
    return any(Path(origin).resolve().is_relative_to(Path(root).resolve()) for root in roots)


def export_functions(namespace: Mapping[str, Any], names: Iterable[str]) -> dict[str, dict[str, str]]:
    """Per task name: {"pickle": base64} of the function, or {"error": why it cannot be graded}."""
    exported = {}
    for name in names:
        function = namespace.get(name)
        if not callable(function):
            exported[name] = {"error": f"no function named {name!r} is defined in the notebook"}
            continue
        module = getattr(function, "__module__", None)
        if module in sys.modules and module != "__main__" and not _installed(module):
            cloudpickle.register_pickle_by_value(sys.modules[module])  # a file of the student's, or a test's
        try:
            exported[name] = {"pickle": base64.b64encode(cloudpickle.dumps(function)).decode("ascii")}
        except Exception as error:  # an unpicklable global (an open file, a lock, ...) the function refers to
            exported[name] = {"error": f"{name} could not be handed to the grader ({type(error).__name__}: "
                                       f"{error}); keep open files, threads and locks out of its globals"}
    return exported


def write_functions(namespace: Mapping[str, Any], names: Iterable[str], path: str | Path) -> None:
    """What the grader's last cell in the notebook does: write the task functions to `path`."""
    Path(path).write_text(json.dumps(export_functions(namespace, names)))


def load_function(path: str | Path, name: str) -> Callable:
    """The task function `name` from a file written by `write_functions`; runs the student's code: only in a test
    process. Raises LookupError with the reason when the function could not be exported."""
    entry = json.loads(Path(path).read_text()).get(name)
    if not isinstance(entry, dict):
        raise LookupError(f"no function named {name!r} was handed to the grader")
    if "pickle" not in entry:
        raise LookupError(str(entry.get("error", f"{name} was not handed to the grader")))
    function = cloudpickle.loads(base64.b64decode(entry["pickle"]))
    if not callable(function):
        raise LookupError(f"{name} is a {type(function).__name__}, not a function")
    return function
