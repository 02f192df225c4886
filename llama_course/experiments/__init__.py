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


def cached_json(path: Path, key: dict[str, Any], compute: Any) -> dict[str, Any]:
    """`compute()`'s JSON, written to `path`; read back instead when `path` holds it for the same `key` (the
    settings it depends on): what lets an experiment resume where it stopped."""
    key = json.loads(json.dumps(key))
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored["config"] == key:
            return stored["value"]
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"config": key, "value": value}) + "\n")
    return value
