"""What a training step costs: the bytes kept alive for the backward pass, and the forward+backward time.

Autograd keeps some tensors of the forward pass until the backward pass has used them; that memory grows with
batch, sequence length and depth, and it is what memory-efficient attention and activation checkpointing
reduce (Llama 1, section 2.4). `bytes_kept_for_backward` measures it on any device, CPU included, and
deterministically, by recording two kinds of storage:
- every tensor autograd packs for the backward (`torch.autograd.graph.saved_tensors_hooks`);
- every tensor created during the forward that is still alive when it returns, which catches what
  PyTorch's selective checkpointing caches outside the autograd graph.
Each storage is counted once, whatever number of views of it are saved. A tensor subclass that wraps others
(a DTensor under tensor parallelism) counts the storages of what it wraps: the rank's own shard.

`attention_costs` and `checkpoint_costs` are the measurements of chapter 6 and of `benchmarks/attention.py`;
`interleaved_seconds` and `timing_summary` time every benchmark's alternatives in interleaved rounds.
"""

import functools
import gc
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_leaves

from llama_course.config import ModelConfig
from llama_course.layers.attention import ATTENTION_BACKENDS
from llama_course.layers.rope import rope_angles
from llama_course.model import TransformerBlock
from llama_course.training.activation_checkpointing import CHECKPOINT_MODES, apply_activation_checkpointing


@dataclass(frozen=True)
class SavedBytes:
    """Bytes of the distinct storages kept for the backward; `inputs` of them belong to the given inputs."""

    total: int
    inputs: int

    @property
    def beyond_inputs(self) -> int:
        """What the computation adds on top of its inputs (which the caller holds anyway)."""
        return self.total - self.inputs


def _plain_tensors(tensor: Tensor) -> list[Tensor]:
    """The tensors that hold `tensor`'s data: itself, or what a wrapper subclass (e.g. a DTensor) wraps."""
    if not is_traceable_wrapper_subclass(tensor):
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    inner = [getattr(tensor, name) for name in names]
    return [plain for value in inner if isinstance(value, Tensor) for plain in _plain_tensors(value)]


_COMMUNICATION_NAMESPACES = {"c10d", "_c10d_functional", "_c10d_functional_autograd"}


class _StorageRecorder(TorchDispatchMode):
    """Remembers (weakly) the storage of every tensor an operator returns or autograd packs for the backward."""

    def __init__(self) -> None:
        super().__init__()
        # storage address -> (weak reference, bytes, packed for the backward)
        self.storages: dict[int, tuple[StorageWeakRef, int, bool]] = {}

    def record(self, tensor: Tensor, *, packed: bool) -> None:
        for plain in _plain_tensors(tensor):
            storage = plain.untyped_storage()
            if storage.nbytes() == 0:
                continue
            pointer = storage.data_ptr()
            previous = self.storages.get(pointer)
            # a storage freed during the forward may hand its address to a new one: a live entry is the same one
            was_packed = previous is not None and not previous[0].expired() and previous[2]
            self.storages[pointer] = (StorageWeakRef(storage), storage.nbytes(), packed or was_packed)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.namespace in _COMMUNICATION_NAMESPACES:
            return out  # a communication thread may hold its buffers a moment longer: counted only if packed
        for leaf in tree_leaves(out):
            if isinstance(leaf, Tensor):
                self.record(leaf, packed=False)
        return out


def _storage_pointers(tensors: Iterable[Tensor]) -> set[int]:
    return {plain.untyped_storage().data_ptr() for t in tensors if isinstance(t, Tensor) for plain in _plain_tensors(t)}


def bytes_kept_for_backward(
    forward: Callable[[], object], *, inputs: Iterable[Tensor] = (), ignore: Iterable[Tensor] = ()
) -> SavedBytes:
    """Run `forward()` and count the bytes of the storages it leaves alive for the backward pass.

    The `ignore` tensors (typically the parameters, which exist whatever is saved) are not counted, nor
    the tensors `forward` returns unless autograd saved them too (the caller holds them, but only the saved
    ones must outlive the next layer). Storages of `inputs` that are kept are counted in `total` and
    reported again as `inputs`. The graph is freed before returning.
    """
    recorder = _StorageRecorder()

    def pack(tensor: Tensor) -> Tensor:
        recorder.record(tensor, packed=True)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), recorder:
        result = forward()
    gc.collect()
    returned, ignored = _storage_pointers(tree_leaves(result)), _storage_pointers(ignore)
    input_pointers = _storage_pointers(inputs)
    total = kept_inputs = 0
    for pointer, (weak_ref, nbytes, packed) in recorder.storages.items():
        if weak_ref.expired() or pointer in ignored or (pointer in returned and not packed):
            continue
        total += nbytes
        kept_inputs += nbytes if pointer in input_pointers else 0
    del result
    return SavedBytes(total=total, inputs=kept_inputs)


def interleaved_seconds(
    steps: Mapping[str, Callable[[], object]], *, rounds: int = 5, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall times of each of `steps`, run in interleaved rounds (a, b, c, a, b, c, ...) after `warmup` rounds.

    A disturbance of a shared machine (another process, a clock change) lasts seconds: timing one alternative
    after the other puts it on whichever ran then, interleaving spreads it over all of them. Report the median
    of the rounds and their spread (`timing_summary`), and compare alternatives by the ratio of their medians.
    """
    if rounds < 1:
        raise ValueError(f"rounds={rounds} must be at least 1")

    def timed(step: Callable[[], object]) -> float:
        start = time.perf_counter()
        step()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter() - start

    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(warmup + rounds):
        for name, step in steps.items():
            elapsed = timed(step)
            if round_index >= warmup:
                seconds[name].append(elapsed)
    return seconds


def timing_summary(seconds: Sequence[float]) -> dict[str, float | int]:
    """Median, minimum and maximum of timed rounds, and their spread: (max - min) / median."""
    median = statistics.median(seconds)
    return {"median_s": median, "min_s": min(seconds), "max_s": max(seconds),
            "spread": (max(seconds) - min(seconds)) / median, "rounds": len(seconds)}


def attention_costs(
    seq_lens: Sequence[int],
    *,
    backends: Sequence[str] = ("eager", "memory_efficient", "sdpa"),
    batch_size: int = 1,
    n_heads: int = 8,
    n_kv_heads: int = 8,
    head_dim: int = 64,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    repeats: int = 3,
) -> list[dict[str, float | int | str]]:
    """For each backend and causal sequence length T: bytes kept for backward and forward+backward seconds.

    Rows: {"backend", "seq_len", "saved_bytes", "saved_bytes_beyond_inputs", "seconds", "spread"}; the inputs
    are the q, k, v tensors (B, H, T, hd). At each T the backends are timed in `repeats` interleaved rounds;
    "seconds" is the median, "spread" (max - min) / median.
    """
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}")
    rows: list[dict[str, float | int | str]] = []
    generator = torch.Generator().manual_seed(0)
    for seq_len in seq_lens:
        q, k, v = (
            torch.randn(batch_size, heads, seq_len, head_dim, generator=generator)
            .to(device=device, dtype=dtype)
            .requires_grad_()
            for heads in (n_heads, n_kv_heads, n_kv_heads)
        )
        grad_out = torch.randn_like(q)
        forwards = {backend: _attention_forward(backend, q, k, v) for backend in backends}
        steps = {backend: functools.partial(_backward, forward, (q, k, v), grad_out)
                 for backend, forward in forwards.items()}
        seconds = interleaved_seconds(steps, rounds=repeats)
        for backend, forward in forwards.items():
            saved = bytes_kept_for_backward(forward, inputs=(q, k, v))
            timing = timing_summary(seconds[backend])
            rows.append({"backend": backend, "seq_len": seq_len, "saved_bytes": saved.total,
                         "saved_bytes_beyond_inputs": saved.beyond_inputs, "seconds": timing["median_s"],
                         "spread": timing["spread"]})
    return rows


def _attention_forward(backend: str, q: Tensor, k: Tensor, v: Tensor) -> Callable[[], Tensor]:
    attend = ATTENTION_BACKENDS[backend]
    return lambda: attend(q, k, v, offset=0, mask=None)[0]


def _backward(forward: Callable[[], Tensor], inputs: Sequence[Tensor], grad_out: Tensor) -> None:
    torch.autograd.grad(forward(), list(inputs), grad_out)


def checkpoint_costs(
    config: ModelConfig,
    *,
    seq_len: int,
    batch_size: int = 1,
    modes: Sequence[str] = CHECKPOINT_MODES,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    repeats: int = 3,
) -> list[dict[str, float | int | str]]:
    """One `TransformerBlock` of `config` per checkpoint mode: bytes kept for backward and step seconds.

    The block's input counts among the kept bytes when a mode keeps it; its parameters never do. The modes are
    timed in `repeats` interleaved rounds. Rows: {"mode", "attention_backend", "saved_bytes", "seconds" (the
    median), "spread" ((max - min) / median)}.
    """
    torch.manual_seed(0)
    block = TransformerBlock(config).to(device=device, dtype=dtype)
    x = torch.randn(batch_size, seq_len, config.dim, device=device, dtype=dtype, requires_grad=True)
    cos, sin = rope_angles(torch.arange(seq_len, device=device)[None], config.head_dim, config.rope_theta)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # (1, 1, T, hd/2)
    grad_out = torch.randn_like(x)
    parameters = list(block.parameters())

    def forward() -> Tensor:
        return block(x, cos, sin)[0]

    def step(mode: str) -> None:
        apply_activation_checkpointing(block, mode)
        _backward(forward, [x, *parameters], grad_out)

    seconds = interleaved_seconds({mode: functools.partial(step, mode) for mode in modes}, rounds=repeats)
    rows: list[dict[str, float | int | str]] = []
    for mode in modes:
        apply_activation_checkpointing(block, mode)
        saved = bytes_kept_for_backward(forward, ignore=parameters)
        timing = timing_summary(seconds[mode])
        rows.append({"mode": mode, "attention_backend": config.attention_backend, "saved_bytes": saved.total,
                     "seconds": timing["median_s"], "spread": timing["spread"]})
    apply_activation_checkpointing(block, "none")
    return rows
