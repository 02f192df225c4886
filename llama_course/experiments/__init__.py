"""The measured runs behind the chapters' numbers and plots: one module per experiment, each with a command that
regenerates its shipped results file and a function that loads it."""

import json
from pathlib import Path
from typing import Any


def load_results_file(path: str | Path, command: str) -> dict[str, Any]:
    """A results JSON written by an experiment's `command`; a missing file is an error that names the command."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no results at {str(path)!r}: run `{command}`")
    return json.loads(path.read_text())
