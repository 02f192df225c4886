"""Deterministic, resumable, rank-sharded batches of packed training blocks.

The training stream is an endless sequence of epochs; epoch e visits every block once in the order of
`torch.randperm(n, generator=seed + e)`. The stream position (how many blocks the run has consumed) is the
whole data state of a checkpoint, so a resumed run reads exactly the blocks an uninterrupted one would, with
any number of processes.

One optimizer step consumes a global batch of `micro_batch_size * grad_accum_steps * world_size` blocks,
laid out as (grad_accum_steps, world_size, micro_batch_size): rank r's m-th micro-batch is row [m, r]. So
each rank reads only its own rows, and the global batch is the same set of blocks whether it is split over
processes, over accumulation steps, or neither: the property the distributed tests rely on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import torch

Batch = dict[str, torch.Tensor]


class BlockSource(Protocol):
    """Anything with a length that returns a dict of column lists/tensors for a list of row indices.

    A `datasets.Dataset` (e.g. from `llama_course.data.pack_dataset`) is one; so is `TensorBlocks`.
    """

    def __len__(self) -> int: ...

    def __getitem__(self, indices: list[int]) -> Mapping[str, Sequence]: ...


class TensorBlocks:
    """An in-memory `BlockSource` over equal-length tensors (rows = blocks), for tests and small runs."""

    def __init__(self, **columns: torch.Tensor) -> None:
        lengths = {name: len(column) for name, column in columns.items()}
        if not columns or len(set(lengths.values())) != 1:
            raise ValueError(f"TensorBlocks needs at least one column and equal row counts, got {lengths}")
        self.columns = columns

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def __getitem__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.tensor(indices, dtype=torch.long)
        return {name: column[index] for name, column in self.columns.items()}


def _to_tensor(values: Sequence) -> torch.Tensor:
    return values.long() if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=torch.long)


class ShardedBatches:
    """The global batches of a training run, read shard by shard (see the module docstring)."""

    def __init__(
        self,
        source: BlockSource,
        micro_batch_size: int,
        grad_accum_steps: int = 1,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        columns: Sequence[str] | None = None,
    ) -> None:
        for name, value in (("micro_batch_size", micro_batch_size), ("grad_accum_steps", grad_accum_steps)):
            if value < 1:
                raise ValueError(f"{name}={value} must be a positive integer")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        if len(source) == 0:
            raise ValueError("the training data has no blocks: use more text or a smaller block size")
        self.source = source
        self.micro_batch_size = micro_batch_size
        self.grad_accum_steps = grad_accum_steps
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.columns = columns
        self.position = 0  # blocks of the stream consumed so far, by all ranks together
        self._permutation: tuple[int, torch.Tensor] | None = None

    @property
    def global_batch_size(self) -> int:
        return self.micro_batch_size * self.grad_accum_steps * self.world_size

    def _stream_indices(self, start: int, count: int) -> list[int]:
        """Row indices of stream positions [start, start + count), crossing epoch boundaries as needed."""
        n = len(self.source)
        indices: list[int] = []
        while count > 0:
            epoch, offset = divmod(start, n)
            if self._permutation is None or self._permutation[0] != epoch:
                generator = torch.Generator().manual_seed(self.seed + epoch)
                self._permutation = (epoch, torch.randperm(n, generator=generator))
            take = min(count, n - offset)
            indices.extend(self._permutation[1][offset : offset + take].tolist())
            start, count = start + take, count - take
        return indices

    def next_step(self) -> list[Batch]:
        """This rank's `grad_accum_steps` micro-batches of the next optimizer step; advances the position."""
        step_indices = self._stream_indices(self.position, self.global_batch_size)
        self.position += self.global_batch_size
        micro_batches = []
        for micro_step in range(self.grad_accum_steps):
            first = (micro_step * self.world_size + self.rank) * self.micro_batch_size
            rows = self.source[step_indices[first : first + self.micro_batch_size]]
            names = self.columns if self.columns is not None else list(rows.keys())
            micro_batches.append({name: _to_tensor(rows[name]) for name in names})
        return micro_batches

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.position = int(state["position"])
        self.seed = int(state["seed"])


def evaluation_batches(
    source: BlockSource, batch_size: int, max_batches: int | None, *, rank: int = 0, world_size: int = 1,
    columns: Sequence[str] | None = None,
) -> list[Batch]:
    """Fixed evaluation batches (in order, no shuffling): the first `max_batches * batch_size * world_size`
    blocks, this rank's share of each."""
    n_batches = len(source) // (batch_size * world_size)
    if max_batches is not None:
        n_batches = min(n_batches, max_batches)
    batches = []
    for b in range(n_batches):
        first = (b * world_size + rank) * batch_size
        rows = source[list(range(first, first + batch_size))]
        names = columns if columns is not None else list(rows.keys())
        batches.append({name: _to_tensor(rows[name]) for name in names})
    return batches
