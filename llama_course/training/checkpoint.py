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
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

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


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
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
    return json.loads(state_file.read_text())


def load_checkpoint(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, *, rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """Restore model and optimizer (in place) from either format, onto any sharding; returns the trainer state.

    The RNG states are restored when the checkpoint was written by as many processes as read it.
    With `optimizer=None` only the weights are loaded (e.g. to sample from a trained model).
    """
    path = Path(path)
    trainer_state = read_trainer_state(path)
    optimizers = [optimizer] if optimizer is not None else []
    if (path / "model.safetensors").exists():
        full = StateDictOptions(full_state_dict=True)
        model_state = load_file(path / "model.safetensors")
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=True) if optimizer is not None else {}
        set_state_dict(model, optimizers, model_state_dict=model_state, optim_state_dict=optimizer_state,
                       options=full)
    elif (path / "sharded").is_dir():
        # Templates with this process's sharding; DCP fills them from whichever shards overlap them.
        model_state, optimizer_state = get_state_dict(model, optimizers)
        state = {"model": model_state}
        if optimizer is not None:
            state["optimizer"] = optimizer_state
        dcp.load(state, checkpoint_id=path / "sharded", no_dist=not torch.distributed.is_initialized())
        set_state_dict(model, optimizers, model_state_dict=state["model"],
                       optim_state_dict=state.get("optimizer", {}))
    else:
        raise FileNotFoundError(f"{str(path)!r} holds neither model.safetensors nor a sharded/ checkpoint")
    rng_file = path / f"rng_rank{rank}.pt"
    if trainer_state.get("world_size") == world_size and rng_file.exists():
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return trainer_state
