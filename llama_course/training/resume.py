"""Resuming a run safely: what a resumed run may change, and one run at a time per output directory.

A run resumes from the newest checkpoint of its output directory. Its settings fall in two groups:

- settings that may change: the number of steps, the learning rate and the rest of the optimizer and
  schedule, logging, evaluation, checkpointing, the device and the parallelism. They take effect at once
  (the optimizer and the schedule are rebuilt from the new values) and the resume reports each change,
  so that "resume with a lower learning rate" after a NaN really lowers it;
- settings that define the run and may not: the model's shape, the tokenizer, the data and its block size,
  the global batch (in sequences) and the data seed. A resume that differs in any of them is refused with
  the list of differences, unless the user says `force_resume=True` (`--force-resume`).

`RunLock` keeps a second run out of an output directory that a run is training in (two runs writing the same
checkpoints and metrics would corrupt each other).
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Metadata keys (given by the caller of `Trainer`) that define the run, and model config fields that do not
# change the model's shape or function.
FIXED_METADATA = ("model_config", "data", "tokenizer")
MODEL_FIELDS_THAT_MAY_CHANGE = ("attention_backend", "max_seq_len")
# TrainerConfig fields not reported as changes: they do not change the training, or the identity reports them.
UNREPORTED_SETTINGS = ("progress", "resume", "force_resume", "seed")


def run_identity(global_batch_size: int, seed: int, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What a resumed run may not change (stored in every checkpoint as `trainer_state["identity"]`)."""
    identity: dict[str, Any] = {"global_batch_size": global_batch_size, "seed": seed}
    for key in FIXED_METADATA:
        if key in metadata:
            identity[key] = metadata[key]
    if isinstance(identity.get("model_config"), dict):
        identity["model_config"] = {name: value for name, value in identity["model_config"].items()
                                    if name not in MODEL_FIELDS_THAT_MAY_CHANGE}
    return identity


def _flatten(values: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(values, Mapping):
        return {prefix: values}
    flat: dict[str, Any] = {}
    for key, value in values.items():
        flat |= _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return flat


def differences(saved: Mapping[str, Any], current: Mapping[str, Any], skip: tuple[str, ...] = ()) -> list[str]:
    """`name: old -> new` for every (dotted) key whose value differs between two nested dicts."""
    old, new = _flatten(saved), _flatten(current)

    def shown(values: dict[str, Any], name: str) -> str:
        return repr(values[name]) if name in values else "(unset)"

    return [f"{name}: {shown(old, name)} -> {shown(new, name)}" for name in sorted(old.keys() | new.keys())
            if name.split(".")[0] not in skip and shown(old, name) != shown(new, name)]


def check_resume(checkpoint: Path, state: Mapping[str, Any], identity: Mapping[str, Any], settings: Mapping[str, Any],
                 *, force: bool) -> list[str]:
    """Apply the resume policy (module docstring) to the trainer state of `checkpoint`.

    Raises a ValueError listing the differences in what defines the run (unless `force`), or when the run is
    asked to end before the checkpoint's step. Returns the changed settings, to report (forced differences too).
    """
    step, steps = state["step"], settings["steps"]
    if steps < step:
        raise ValueError(f"steps={steps} is below the step {step} of the checkpoint {checkpoint} this run resumes: "
                         f"pass steps >= {step} (--steps) to continue it, or a new output directory to start over")
    fixed = differences(state.get("identity", identity), identity)
    if fixed and not force:
        raise ValueError(f"cannot resume from {checkpoint}: what defines the run differs from the checkpoint's "
                         f"({'; '.join(fixed)}). Use a new output directory for a new run, or pass --force-resume "
                         "(force_resume=True) to continue this one anyway")
    changed = differences(state.get("config", settings), settings, skip=UNREPORTED_SETTINGS)
    return [*changed, *(f"{difference} (forced)" for difference in fixed)]


class RunLock:
    """An exclusive lock (`flock`) on `directory/.lock` while a run trains there; the OS frees it if the run dies."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / ".lock"
        self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> str | None:
        """Take the lock; returns None on success, else who holds it (as written in the lock file)."""
        if self._file is not None:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = self.path.open("a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            owner = file.read().strip() or "another process"
            file.close()
            return owner
        file.truncate(0)
        file.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        file.flush()
        self._file = file
        return None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the file releases the flock
            self._file = None
