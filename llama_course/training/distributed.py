"""Scaling out with PyTorch's own stack: `torchrun`, DDP, and FSDP2, applied from outside the model.

As in torchtitan, `Llama` knows nothing of parallelism. `init_distributed` reads the environment that
`torchrun --nproc_per_node N` sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and joins the
process group (NCCL on CUDA, gloo on CPU); `parallelize` then wraps the finished model:

- "ddp": every rank holds the whole model; gradients are averaged with an all-reduce after backward.
- "fsdp": FSDP2 `fully_shard` on every transformer block, then on the root. Each rank stores 1/N of every
  parameter, gradient and optimizer state (ZeRO-3); a block's parameters are all-gathered just before its
  forward and backward and freed after. On GPU a mixed-precision policy computes in bf16 and reduces
  gradients in fp32, while the sharded master weights and AdamW states stay fp32.

The data is sharded by the trainer (`batches.py`): each rank reads only its own rows of every global batch.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

PARALLELISMS = ("auto", "none", "ddp", "fsdp")


def pick_device(requested: str | None = None) -> torch.device:
    """`requested` ("cuda", "cuda:1", "mps", "cpu") or, when None / "auto", the best available: cuda, mps, cpu."""
    if requested not in (None, "auto"):
        try:
            device = torch.device(requested)
        except (RuntimeError, TypeError):
            raise ValueError(f"device={requested!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={requested!r} was asked for but CUDA is not available; use --device cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device={requested!r} was asked for but MPS is not available; use --device cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among `world_size` processes and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None, *, timeout: float = 600.0) -> DistributedContext:
    """Join the process group described by torchrun's environment variables; a plain single process otherwise.

    Under torchrun each process takes the GPU of its LOCAL_RANK. Calling it again reuses the group.
    `timeout`: seconds a collective waits for every rank before it fails (gloo's own default is 30 minutes,
    during which a stalled rank would hang the others).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    chosen = pick_device(device)
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world_size > 1 and not dist.is_initialized():
        if chosen.type == "mps":
            raise ValueError("multi-process training on MPS is not supported by PyTorch; use --device cpu")
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo", device_id=(
            chosen if chosen.type == "cuda" else None), timeout=datetime.timedelta(seconds=timeout))
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def resolve_parallelism(parallelism: str, context: DistributedContext) -> str:
    """The strategy to use: "auto" means "none" for one process and "ddp" for several."""
    if parallelism not in PARALLELISMS:
        raise ValueError(f"parallelism={parallelism!r} is unknown; choose one of {PARALLELISMS}")
    if parallelism == "auto":
        return "ddp" if context.is_distributed else "none"
    if parallelism == "ddp" and not context.is_distributed:
        return "none"  # DDP over one process is plain training
    return parallelism


def transformer_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's list of transformer blocks (`layers` in ours and in transformers' `LlamaModel`)."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == "layers" and isinstance(module, nn.ModuleList):
            return module
    raise ValueError(f"{type(model).__name__} has no nn.ModuleList named 'layers' to shard block by block")


def parallelize(
    model: nn.Module, context: DistributedContext, parallelism: str, *, mixed_precision: bool = False
) -> nn.Module:
    """Apply DDP or FSDP2 to `model` (already on `context.device`); returns the module to train.

    For "fsdp" the model is sharded in place (`fully_shard` turns parameters into DTensor shards) and returned
    as is; for "ddp" a `DistributedDataParallel` wrapper is returned. `mixed_precision` (GPU) makes FSDP
    compute in bf16 and reduce gradients in fp32; DDP gets bf16 compute from the trainer's autocast instead.
    """
    parallelism = resolve_parallelism(parallelism, context)
    if parallelism == "none":
        return model
    if not dist.is_initialized():
        raise ValueError(f"parallelism={parallelism!r} needs a process group: launch with torchrun")
    if parallelism == "ddp":
        device_ids = [context.device] if context.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    broadcast_parameters(model)
    return apply_fsdp(model, mixed_precision=mixed_precision)


def apply_fsdp(model: nn.Module, *, mesh: DeviceMesh | None = None, mixed_precision: bool = False) -> nn.Module:
    """FSDP2 `fully_shard` on every transformer block, then on the root, over `mesh` (default: all ranks).

    The ranks must already hold the same weights. `mixed_precision` computes in bf16 and reduces in fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if mixed_precision
        else MixedPrecisionPolicy()
    )
    blocks = transformer_blocks(model)
    for index, block in enumerate(blocks):
        # The last block's parameters are needed again at once by backward: keep them gathered.
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=index < len(blocks) - 1)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all ranks (in place; the identity on a single process)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def broadcast_parameters(model: nn.Module, src: int = 0) -> None:
    """Copy rank `src`'s parameters and buffers to every rank (FSDP2 shards each rank's own initial values)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        with torch.no_grad():
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor, src)


@contextmanager
def gradient_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce / reduce-scatter on all but the last micro-batch of accumulation."""
    if enabled:
        yield
    elif isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
    elif hasattr(model, "set_requires_gradient_sync"):  # an FSDP2-sharded module
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield
