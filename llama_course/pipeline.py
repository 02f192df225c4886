"""A resumable chain of steps, each writing one folder of a run: the runner behind `llama-course reproduce`.

A `Step` is a name, a function that writes the step's outputs under the run's folder `DIR` and returns its headline
numbers, the steps whose outputs it reads (`needs`), and optionally the recipe it follows. `run_steps` runs the
steps in order, and a second call on the same `DIR` resumes where the first stopped:

- a step writes into `DIR/.partial/<step>/` (`Pipeline.partial`), renames that folder into place when it is complete
  (`Pipeline.publish`: atomic), and only then writes its marker `DIR/steps/<step>.json` (its headline numbers), so a
  step killed half-way leaves nothing where a reader looks and is redone by the next call;
- a rerun skips every marked step, unless a step it reads from has finished since (e.g. a pending step that has now
  run, or a step redone by deleting its marker): then it reruns too, on the new outputs;
- a step whose recipe changed since it ran stops the run with an error rather than mix two recipes;
- a step that cannot run yet raises `StepPending`: reported, not marked done, retried by the next call;
- a folder is resumed only with the settings it was started with (`DIR/steps/pipeline.json`).

Resuming inside a step is the step's own business (a trainer resumes from its checkpoints, by convention under
`DIR/runs/<step>`, which a step redone by hand deletes). The steps, their sizes and the report written from the
statuses `run_steps` returns belong to the caller (the course's: `llama_course/commands/reproduce.py`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

PARTIAL_DIR = ".partial"
MARKERS_DIR = "steps"
SETTINGS_FILE = "pipeline.json"


class StepPending(Exception):
    """A step that cannot run yet (its command does not exist): reported, not marked done, retried next time."""


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[Pipeline], dict[str, Any]]  # writes the step's outputs; returns its headline numbers
    needs: tuple[str, ...] = ()  # steps whose outputs it reads
    recipe: Callable[[], Any] | None = None  # the shipped recipe it follows: a changed one must not be resumed


class Pipeline:
    """The output folder of one run: where each step writes, publishes and marks its work.

    `sizes` are the knobs the steps read (shrunk for a smoke run); `settings` are what the folder must be resumed
    with (e.g. `{"smoke": True}`).
    """

    def __init__(self, out: str | Path, sizes: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
        self.out = Path(out)
        self.sizes = sizes
        self.settings = dict(settings)

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def partial(self, name: str) -> Path:
        """A fresh, empty `DIR/.partial/<name>/` for a step to write into."""
        folder = self.path(PARTIAL_DIR, name)
        if folder.exists():
            shutil.rmtree(folder)  # left by an interrupted attempt
        folder.mkdir(parents=True)
        return folder

    def publish(self, name: str) -> Path:
        """Move the complete `DIR/.partial/<name>/` to `DIR/<name>/` (a rename: atomic)."""
        target = self.path(name)
        if target.exists():
            shutil.rmtree(target)  # published by an attempt interrupted before its marker
        os.replace(self.path(PARTIAL_DIR, name), target)
        return target

    def marker(self, name: str) -> Path:
        return self.path(MARKERS_DIR, f"{name}.json")

    def read_marker(self, name: str) -> dict[str, Any] | None:
        path = self.marker(name)
        return json.loads(path.read_text()) if path.is_file() else None

    def command(self, module: ModuleType, argv: Sequence[str]) -> None:
        """Run in this process the `llama-course` subcommand that `module` implements (its `add_arguments` and
        `run`) on the flags `argv`; an error in it stops the step."""
        parser = argparse.ArgumentParser(prog=module.__name__)
        module.add_arguments(parser)
        argv = [str(arg) for arg in argv]
        try:
            args = parser.parse_args(argv)
        except SystemExit as exit:  # argparse refuses the arguments (and has said why)
            raise RuntimeError(f"{module.__name__} refused the flags {' '.join(argv)} (status {exit.code})") from None
        module.run(args)


def write_json_atomic(path: Path, value: Any) -> None:
    """Write `value` as JSON to `path` through a rename, so that a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(temporary, path)


def _check_settings(pipeline: Pipeline) -> None:
    path = pipeline.path(MARKERS_DIR, SETTINGS_FILE)
    settings = pipeline.settings
    if path.is_file() and json.loads(path.read_text()) != settings:
        raise ValueError(f"{pipeline.out} holds a run with {path.read_text().strip()}, not {settings}: resume it with "
                         "the same flags, or give another --out")
    write_json_atomic(path, settings)


def _fingerprint(step: Step) -> str | None:
    recipe = None if step.recipe is None else json.dumps(step.recipe(), sort_keys=True)
    return None if recipe is None else hashlib.sha256(recipe.encode()).hexdigest()


def _finished(pipeline: Pipeline, names: Sequence[str]) -> dict[str, float]:
    """When each of the marked steps among `names` finished."""
    return {name: marker["finished"] for name in names if (marker := pipeline.read_marker(name)) is not None}


def _is_done(pipeline: Pipeline, step: Step) -> bool:
    """Marked done, with the same recipe, and after the very outputs its needs have now (a need done or redone
    since makes it stale)."""
    marker = pipeline.read_marker(step.name)
    if marker is None:
        return False
    if marker.get("recipe_sha256") != _fingerprint(step):
        raise ValueError(f"the package's recipe for step {step.name!r} changed since it ran in {pipeline.out}: give a "
                         f"fresh --out, or delete {pipeline.marker(step.name)} and {pipeline.path('runs', step.name)}* "
                         "to redo it (the steps that read it then rerun too)")
    return _finished(pipeline, step.needs) == marker["needs_done"]


def run_steps(pipeline: Pipeline, steps: Sequence[Step]) -> dict[str, dict[str, Any]]:
    """Run every step not done yet, in order; returns each step's status (its marker, or why it is pending).

    A pending step (`StepPending`) is reported and skipped; any other error stops the run with the steps before
    it marked done, so that the same call resumes.
    """
    pipeline.out.mkdir(parents=True, exist_ok=True)
    _check_settings(pipeline)
    statuses: dict[str, dict[str, Any]] = {}
    for index, step in enumerate(steps, start=1):
        prefix = f"[{index}/{len(steps)}] {step.name}"
        if _is_done(pipeline, step):
            print(f"{prefix}: done before, skipped ({pipeline.marker(step.name)})", flush=True)
            statuses[step.name] = pipeline.read_marker(step.name)
            continue
        print(f"{prefix}: running", flush=True)
        needs_done, recipe = _finished(pipeline, step.needs), _fingerprint(step)
        started = time.perf_counter()
        try:
            summary = step.run(pipeline)
        except StepPending as pending:
            print(f"{prefix}: pending: {pending}", flush=True)
            statuses[step.name] = {"status": "pending", "reason": str(pending)}
            continue
        marker = {"status": "done", "seconds": round(time.perf_counter() - started, 1), "finished": time.time(),
                  "needs_done": needs_done, "recipe_sha256": recipe, "summary": summary}
        write_json_atomic(pipeline.marker(step.name), marker)
        statuses[step.name] = marker
        print(f"{prefix}: done in {marker['seconds']:.0f} s", flush=True)
    return statuses
