"""Checkpoints that survive a kill and resume a run exactly, on one process or many.

A checkpoint is a directory `checkpoints/step_00000100/` holding

- the model and optimizer state, in one of two formats:
  - full (one process, or DDP): `model.safetensors` (the weights, loadable by anyone) and `optimizer.pt`
    (AdamW's moments and step counts, keyed by parameter name), written by rank 0;
  - sharded (FSDP2): `sharded/`, a PyTorch Distributed Checkpoint written by all ranks in parallel, each its
    own shards. DCP records every shard's place in the full tensor, so it reloads on any number of
    processes, one included;
- `trainer_state.json`: step, tokens, the data position, the learning-rate scheduler, and caller metadata;
- `rng_rank{r}.pt`: each process's random-number generator states.

Atomicity: everything is written into a hidden `.tmp-step_...` directory which is renamed into place only when
complete. A rename is atomic, so a kill at any moment leaves either the old set of checkpoints or the new
one, never half a checkpoint; `latest_checkpoint` ignores leftover temporary directories.

Trust: the full format is read with safetensors and `torch.load(weights_only=True)` only, so a downloaded
checkpoint cannot run code. Distributed Checkpoint's `.metadata` (and its non-tensor items) are plain
pickles, which can: a sharded checkpoint is read only with `trusted=True`, which a training run passes when it
resumes from its own output directory. `consolidate_checkpoint` turns one into a safe single-file checkpoint.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from llama_course.model_files import load_tensor_file, read_json, read_safetensors_header
from llama_course.training.distributed import barrier

CHECKPOINTS_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR / f"step_{step:08d}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary directories of interrupted saves are skipped)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [path for path in root.iterdir() if _STEP_DIR.match(path.name) and path.is_dir()]
    return sorted(found, key=lambda path: path.name)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def resolve_checkpoint(path: str | Path) -> Path:
    """`path` itself when it is a checkpoint directory, else the newest checkpoint of the run directory `path`."""
    path = Path(path)
    checkpoint = path if (path / "trainer_state.json").exists() else latest_checkpoint(path)
    if checkpoint is None:
        raise FileNotFoundError(f"{str(path)!r} is neither a checkpoint nor a run directory with checkpoints")
    return checkpoint


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: Any, path: Path) -> None:
    if not isinstance(state, dict) or not isinstance(state.get("torch"), torch.Tensor) or "python" not in state:
        raise ValueError(f"{path} is not a random-number-generator state written by save_checkpoint")
    torch.set_rng_state(state["torch"])
    try:
        random.setstate(tuple(state["python"]))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path} holds an invalid Python random state ({error})") from None
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    *,
    sharded: bool = False,
    rank: int = 0,
    keep: int | None = None,
) -> Path:
    """Write the checkpoint of `step` atomically (see the module docstring); every rank must call it.

    `model` is the unwrapped model (FSDP2-sharded or plain). `trainer_state` must be JSON-serialisable.
    `keep`: how many of the newest checkpoints to keep (None: all).
    """
    final = checkpoint_dir(output_dir, step)
    temporary = final.with_name(f".tmp-{final.name}")
    if rank == 0:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    barrier()
    options = StateDictOptions(full_state_dict=not sharded, cpu_offload=not sharded)
    model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
    if sharded:
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=temporary / "sharded")
    elif rank == 0:
        save_file({name: tensor.contiguous() for name, tensor in model_state.items()}, temporary / "model.safetensors")
        torch.save(optimizer_state, temporary / "optimizer.pt")
    torch.save(_rng_state(), temporary / f"rng_rank{rank}.pt")
    if rank == 0:
        (temporary / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    barrier()
    if rank == 0:
        if final.exists():  # the same step saved again (e.g. SIGTERM right after a periodic save)
            shutil.rmtree(final)
        temporary.rename(final)
        if keep is not None:
            for old in list_checkpoints(output_dir)[:-keep]:
                shutil.rmtree(old)
    barrier()
    return final


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    state_file = Path(path) / "trainer_state.json"
    if not state_file.exists():
        raise FileNotFoundError(f"{str(path)!r} is not a checkpoint directory (it has no trainer_state.json)")
    state = read_json(state_file)
    for key, kind in (("step", int), ("tokens", int), ("data", dict), ("metadata", dict)):
        if not isinstance(state.get(key), kind):
            raise ValueError(f"{state_file} has {key}={state.get(key)!r}; it must be a {kind.__name__}: the file is "
                             "damaged or was not written by save_checkpoint")
    return state


def is_sharded(path: str | Path) -> bool:
    """Whether a checkpoint directory holds the sharded (Distributed Checkpoint) format."""
    return not (Path(path) / "model.safetensors").exists() and (Path(path) / "sharded").is_dir()


def untrusted_sharded_message(path: str | Path) -> str:
    return (f"{str(path)!r} is a sharded (Distributed Checkpoint) checkpoint: its .metadata is a pickle that can run "
            "code, so it is only read to resume the training run that wrote it. If you wrote it yourself, make a "
            f"single-file copy that is safe to share and load: llama-course pretrained consolidate {path} "
            "DESTINATION --trust-pickle")


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, *, rank: int = 0,
    world_size: int = 1, trusted: bool = False,
) -> dict[str, Any]:
    """Restore model and optimizer (in place) from either format, onto any sharding; returns the trainer state.

    The RNG states are restored when the checkpoint was written by as many processes as read it.
    With `optimizer=None` only the weights are loaded (e.g. to sample from a trained model).
    `trusted=True` allows the sharded format, whose pickles can run code (see the module docstring).
    """
    path = Path(path)
    trainer_state = read_trainer_state(path)
    optimizers = [optimizer] if optimizer is not None else []
    if (path / "model.safetensors").exists():
        full = StateDictOptions(full_state_dict=True)
        read_safetensors_header(path / "model.safetensors")  # a clear error for a truncated or garbage file
        model_state = load_file(path / "model.safetensors")
        optimizer_state = load_tensor_file(path / "optimizer.pt") if optimizer is not None else {}
        set_state_dict(model, optimizers, model_state_dict=model_state, optim_state_dict=optimizer_state,
                       options=full)
    elif (path / "sharded").is_dir():
        if not trusted:
            raise ValueError(untrusted_sharded_message(path))
        # Templates with this process's sharding; DCP fills them from whichever shards overlap them.
        model_state, optimizer_state = get_state_dict(model, optimizers)
        state = {"model": model_state}
        if optimizer is not None:
            state["optimizer"] = optimizer_state
        single_process = not torch.distributed.is_initialized()
        with warnings.catch_warnings():
            # torch warns "assuming the intent is to load in a single process" even when no_dist=True says so
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(state, checkpoint_id=path / "sharded", no_dist=single_process)
        set_state_dict(model, optimizers, model_state_dict=state["model"],
                       optim_state_dict=state.get("optimizer", {}))
    else:
        raise FileNotFoundError(f"{str(path)!r} holds neither model.safetensors nor a sharded/ checkpoint")
    rng_file = path / f"rng_rank{rank}.pt"
    if trainer_state.get("world_size") == world_size and rng_file.exists():
        _set_rng_state(load_tensor_file(rng_file), rng_file)
    return trainer_state


def consolidate_checkpoint(source: str | Path, model: nn.Module, destination: str | Path) -> Path:
    """Rewrite a sharded checkpoint as a single-file one that is safe to share: `model.safetensors` and
    `trainer_state.json` (no optimizer or RNG states: for sampling and fine-tuning, not for resuming).

    `model` is an unsharded model of the checkpoint's architecture. Reading `source` unpickles its metadata:
    call this only for checkpoints you wrote. The destination is written atomically and must not exist.
    """
    source, destination = Path(source), Path(destination)
    if destination.exists():
        raise FileExistsError(f"{str(destination)!r} already exists; choose a new destination folder")
    trainer_state = read_trainer_state(source)
    load_checkpoint(source, model, None, trusted=True)
    temporary = destination.with_name(f".tmp-{destination.name}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    save_file({name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()},
              temporary / "model.safetensors")
    (temporary / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
    temporary.rename(destination)
    return destination
