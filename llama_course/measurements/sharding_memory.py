"""What each rank stores under DDP and under FSDP2: parameter, gradient and optimizer-state bytes, measured.

Training with AdamW in float32 keeps, per parameter, 4 bytes of weight, 4 of gradient and 8 of optimizer
state (the two moments `exp_avg` and `exp_avg_sq`): 16 bytes. DDP replicates all of it on every rank;
FSDP2 (ZeRO-3, Rajbhandari et al. 2020) gives each of N ranks a 1/N shard of every tensor, and gathers a
block's full weights only for the moment its forward or backward runs. This module measures what a rank
actually holds after one optimizer step, by summing the bytes of the tensors it owns (for a sharded
parameter, `DTensor.to_local()`: the rank's own shard).

Run it under torchrun; every rank writes `rank{r}.json` into the output folder:

    torchrun --nproc_per_node 2 -m llama_course.measurements.sharding_memory --output runs/memory
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import nn

from llama_course.config import PRESETS
from llama_course.model import Llama
from llama_course.training.distributed import init_distributed, parallelize, shutdown_distributed
from llama_course.training.optim import AdamWConfig, build_optimizer

BYTES_PER_PARAMETER = {"parameters": 4, "gradients": 4, "optimizer_states": 8}  # float32 + AdamW


def _local_bytes(tensor: torch.Tensor) -> int:
    """Bytes this rank stores for `tensor`: its own shard when it is a DTensor."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def rank_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of parameters, gradients and AdamW moments held by this rank (step counters excluded)."""
    parameters = list(model.parameters())
    optimizer_bytes = sum(
        _local_bytes(value)
        for state in optimizer.state.values()
        for name, value in state.items()
        if name != "step" and isinstance(value, torch.Tensor)
    )
    return {
        "parameters": sum(_local_bytes(p) for p in parameters),
        "gradients": sum(_local_bytes(p.grad) for p in parameters if p.grad is not None),
        "optimizer_states": optimizer_bytes,
    }


def expected_rank_bytes(n_parameters: int, world_size: int, parallelism: str) -> dict[str, float]:
    """The textbook numbers: 4 / 4 / 8 bytes per parameter, divided by the world size under FSDP."""
    if parallelism not in ("ddp", "fsdp"):
        raise ValueError(f"parallelism={parallelism!r} must be 'ddp' or 'fsdp'")
    share = 1 / world_size if parallelism == "fsdp" else 1.0
    return {kind: n_parameters * size * share for kind, size in BYTES_PER_PARAMETER.items()}


def measure(parallelism: str, preset: str, seed: int = 0) -> dict[str, int]:
    """Build the preset, wrap it, take one AdamW step on random tokens, and count this rank's bytes."""
    context = init_distributed("cpu")
    torch.manual_seed(seed)
    model = Llama(PRESETS[preset])
    wrapped = parallelize(model, context, parallelism)
    optimizer = build_optimizer(model, AdamWConfig(lr=1e-3))
    tokens = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(context.rank))
    wrapped(tokens, targets=tokens).loss.backward()
    optimizer.step()
    return rank_state_bytes(model, optimizer)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Measure per-rank training-state bytes under DDP and FSDP2.")
    parser.add_argument("--output", type=Path, required=True, help="folder for rank{r}.json")
    parser.add_argument("--preset", default="small", help="model preset (default: small)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # two ranks share a 2-core laptop
    context = init_distributed("cpu")
    report = {"rank": context.rank, "world_size": context.world_size, "preset": args.preset,
              "parameters_total": sum(p.numel() for p in Llama(PRESETS[args.preset]).parameters())}
    for parallelism in ("ddp", "fsdp"):
        report[parallelism] = measure(parallelism, args.preset)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"rank{context.rank}.json").write_text(json.dumps(report, indent=1))
    shutdown_distributed()


def read_reports(folder: str | Path) -> list[dict]:
    """The `rank{r}.json` reports of a run, in rank order."""
    paths = sorted(Path(folder).glob("rank*.json"), key=lambda path: int(path.stem.removeprefix("rank")))
    if not paths:
        raise FileNotFoundError(f"no rank*.json in {str(folder)!r}: launch the measurement with torchrun first")
    return [json.loads(path.read_text()) for path in paths]


if __name__ == "__main__":
    main()
