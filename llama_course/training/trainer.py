"""One training loop for pretraining, supervised fine-tuning and reward models (Llama 1 and 2, section 2.2).

The loop composes separate components, as torchtitan does: `parallelize` (DDP / FSDP2) or `parallelize_2d`
(tensor + sequence parallelism, FSDP2 over the data dimension of a mesh), `build_optimizer` (AdamW with the
decay split), `build_scheduler` (warm-up + cosine), `ShardedBatches` (resumable data), `save_checkpoint` /
`load_checkpoint`, and `MetricsLog`. What is trained is pluggable: a loss function

    loss_fn(model, batch) -> LossSum(total, count)

returns the SUM of the per-item losses of a micro-batch and the number of items (target tokens for a
language model, pairs for a reward model). The trainer divides the gradient by the count of the whole global
batch (all micro-batches on all ranks), so every target token weighs the same however the batch is split:
averaging per-micro-batch means would weigh a token of a short (heavily masked) micro-batch more, and would
make gradient accumulation and data parallelism disagree with plain large-batch training.

One optimizer step: forward + backward of each micro-batch (bf16 autocast on CUDA), then rescale the
gradients, clip their global norm to 1.0, AdamW step, schedule step. The trainer reads nothing back from the
device during a step: its loss, gradient norm and token count stay there until `read_steps` copies those of
every step since the last read in one transfer, at the steps that need them (logging, evaluation, a checkpoint,
a stop), so the host queues the next step's work while a GPU still computes this one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.tensor.parallel import loss_parallel
from tqdm.auto import tqdm

from llama_course.model import IGNORE_INDEX
from llama_course.training.activation_checkpointing import CHECKPOINT_MODES, apply_activation_checkpointing
from llama_course.training.batches import Batch, BlockSource, ShardedBatches, evaluation_batches
from llama_course.training.checkpoint import latest_checkpoint, load_checkpoint, read_trainer_state, save_checkpoint
from llama_course.training.distributed import (
    all_reduce_sum,
    gradient_sync,
    init_distributed,
    parallelize,
    pick_device,
    resolve_parallelism,
    transformer_blocks,
)
from llama_course.training.metrics import MetricsLog
from llama_course.training.optim import AdamWConfig, build_optimizer
from llama_course.training.parallel import DATA, build_mesh, data_parallelism, parallelize_2d
from llama_course.training.resume import RunLock, check_resume, run_identity
from llama_course.training.schedule import build_scheduler

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
AUTOCAST_MODES = ("auto", "bf16", "off")


class LossSum(NamedTuple):
    total: torch.Tensor  # scalar: the summed loss of the micro-batch's items
    count: torch.Tensor  # scalar: how many items were summed


LossFunction = Callable[[nn.Module, Batch], LossSum]


def causal_lm_loss(model: nn.Module, batch: Batch) -> LossSum:
    """Summed next-token cross-entropy over labels != IGNORE_INDEX (`labels` already aligned with positions).

    `document_ids`, when the batch has them, keep attention and RoPE positions inside each packed document.
    The model computes the loss with its output projection, chunk by chunk (`linear_cross_entropy`), in
    float32 even under bf16 autocast.
    """
    labels = batch["labels"]
    total = model(batch["input_ids"], targets=labels, document_ids=batch.get("document_ids"),
                  loss_reduction="sum").loss
    return LossSum(total, (labels != IGNORE_INDEX).sum())


def vocab_parallel_lm_loss(model: nn.Module, batch: Batch) -> LossSum:
    """`causal_lm_loss` for a tensor-parallel model, whose logits are vocabulary shards (`training/parallel.py`).

    The cross-entropy runs on the shards under `loss_parallel()` (the caller's context, for backward too): the
    log-softmax all-reduces a max and a sum of exponentials over the ranks, never gathering (B, T, vocab) logits.
    """
    labels = batch["labels"]
    logits = model(batch["input_ids"], document_ids=batch.get("document_ids")).logits  # DTensor, Shard(-1)
    total = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return LossSum(total.to_local(), (labels != IGNORE_INDEX).sum())  # the same sum on every rank of the group


class NonFiniteLossError(RuntimeError):
    """The loss or gradient norm became NaN or infinite; the run stopped without saving."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM stopped the run after a step, and it saved a checkpoint: rerun to resume."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at step {step}; saved {checkpoint}: run the "
                         "same command (the same output directory) to resume")
        self.signum, self.step, self.checkpoint = signum, step, checkpoint


@dataclass
class TrainerConfig:
    """Everything the loop needs; defaults are Llama's recipe (AdamW 0.9 / 0.95, eps 1e-5, wd 0.1, clip 1.0)."""

    steps: int = 1000  # optimizer steps of the whole run (the cosine ends here)
    micro_batch_size: int = 8  # sequences per process per forward pass
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4  # peak learning rate
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-5
    weight_decay: float = 0.1
    warmup_steps: int = 100
    final_lr_ratio: float = 0.1  # the cosine ends at 10% of the peak
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    eval_every: int = 100  # steps between evaluations (0: only at the end)
    eval_batches: int = 20  # evaluation batches of micro_batch_size sequences per process
    checkpoint_every: int = 200  # steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    log_every: int = 10  # steps between metrics lines
    seed: int = 0  # data order (the model's initialisation is seeded by whoever builds it)
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    dtype: str = "float32"  # parameter dtype: float32, or float64 for exactness tests
    autocast: str = "auto"  # auto (bf16 on CUDA only), bf16, off
    activation_checkpointing: str = "none"  # none, selective (Llama 1's hand-written backward), selective-policy,
    # or full: applied to the model's blocks before DDP / FSDP
    compile: bool = False  # torch.compile each transformer block
    parallelism: str = "auto"  # auto (ddp when launched by torchrun), none, ddp, fsdp
    tensor_parallel: int = 1  # ranks splitting every weight matrix (TP); data-parallel degree = world size / this
    sequence_parallel: bool = True  # with tensor_parallel > 1: the norms and residual stream split along the sequence
    progress: bool = True  # tqdm progress bar on the main process
    resume: bool = True  # continue from the newest checkpoint in the output directory
    force_resume: bool = False  # resume even if the model, data, batch or seed differ (`training/resume.py`)
    collective_timeout: float = 600.0  # seconds a rank waits in a collective for the others before failing

    def __post_init__(self) -> None:
        for name in ("steps", "micro_batch_size", "grad_accum_steps", "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "eval_batches"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} exceeds steps={self.steps}")
        if not self.grad_clip >= 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be >= 0 (0 disables clipping)")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is unknown; choose one of {tuple(DTYPES)}")
        if self.activation_checkpointing not in CHECKPOINT_MODES:
            raise ValueError(f"activation_checkpointing={self.activation_checkpointing!r} is unknown; "
                             f"choose one of {CHECKPOINT_MODES}")
        if self.autocast not in AUTOCAST_MODES:
            raise ValueError(f"autocast={self.autocast!r} is unknown; choose one of {AUTOCAST_MODES}")
        if not isinstance(self.tensor_parallel, int) or self.tensor_parallel < 1:
            raise ValueError(f"tensor_parallel={self.tensor_parallel!r} must be a positive integer")
        if self.tensor_parallel > 1 and (self.activation_checkpointing != "none" or self.compile):
            raise ValueError(f"tensor_parallel={self.tensor_parallel} is not combined with activation_checkpointing="
                             f"{self.activation_checkpointing!r} or compile={self.compile} yet; turn those off")
        pick_device(self.device)  # an unknown or unavailable device fails here, before any work
        if not self.collective_timeout > 0 or self.collective_timeout == math.inf:
            raise ValueError(f"collective_timeout={self.collective_timeout} must be a positive number of seconds")
        self.adamw()  # validates lr, betas, eps, weight decay

    def adamw(self) -> AdamWConfig:
        return AdamWConfig(self.lr, self.beta1, self.beta2, self.eps, self.weight_decay)


@dataclass
class TrainingResult:
    step: int  # optimizer steps completed by the run so far
    losses: list[float] = field(default_factory=list)  # training loss of every step done by this call
    val_loss: float | None = None  # last evaluation
    checkpoint: Path | None = None


class Trainer:
    """Trains `model` on `train_data` with `loss_fn`, writing checkpoints and metrics to `output_dir`.

    Build the model (seeded) on the CPU and hand it over: the trainer moves it to the device and dtype,
    applies DDP or FSDP2, builds AdamW and the schedule, and resumes from the newest checkpoint if any.
    `metadata` (JSON) is stored in every checkpoint, e.g. the model configuration.
    """

    def __init__(
        self,
        model: nn.Module,
        train_data: BlockSource,
        config: TrainerConfig,
        output_dir: str | Path,
        *,
        loss_fn: LossFunction = causal_lm_loss,
        eval_data: BlockSource | None = None,
        columns: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.output_dir = Path(output_dir)
        self.loss_fn = loss_fn
        self.metadata = metadata or {}
        self.context = init_distributed(config.device, timeout=config.collective_timeout)
        # Tensor parallelism: a (data, tensor) mesh; the data-parallel strategy spans its data dimension only.
        self.mesh = (build_mesh(self.context.device.type, self.context.world_size, config.tensor_parallel)
                     if config.tensor_parallel > 1 else None)
        if self.mesh is None:
            self.parallelism = resolve_parallelism(config.parallelism, self.context)
            self.data_rank, self.data_size = self.context.rank, self.context.world_size
        else:
            self.parallelism = data_parallelism(config.parallelism, self.mesh)
            self.data_rank, self.data_size = self.mesh[DATA].get_local_rank(), self.mesh[DATA].size()
            if loss_fn is not causal_lm_loss:
                raise ValueError(f"tensor_parallel={config.tensor_parallel} supports the causal language-model loss "
                                 f"only, not {getattr(loss_fn, '__name__', loss_fn)}; use tensor_parallel=1")
            self.loss_fn = vocab_parallel_lm_loss
        on_cuda = self.context.device.type == "cuda"
        if config.autocast == "bf16" and not on_cuda:
            raise ValueError(f"autocast='bf16' needs a CUDA device, got {self.context.device}; use autocast='off'")
        use_bf16 = on_cuda and config.autocast != "off"
        # FSDP2 casts parameters to bf16 itself (its mixed-precision policy); DDP and one process use autocast.
        self.autocast = use_bf16 and self.parallelism != "fsdp"

        self.raw_model = model.to(device=self.context.device, dtype=DTYPES[config.dtype])
        if config.activation_checkpointing != "none":
            apply_activation_checkpointing(self.raw_model, config.activation_checkpointing)  # before sharding
        if config.compile:
            for block in transformer_blocks(self.raw_model):
                block.compile()
        if self.mesh is None:
            self.model = parallelize(self.raw_model, self.context, self.parallelism, mixed_precision=use_bf16)
        else:
            self.model = parallelize_2d(self.raw_model, self.mesh, sequence_parallel=config.sequence_parallel,
                                        mixed_precision=use_bf16 and self.parallelism == "fsdp")
        self.optimizer = build_optimizer(self.raw_model, config.adamw())
        self.scheduler = build_scheduler(self.optimizer, config.warmup_steps, config.steps, config.final_lr_ratio)
        self.batches = ShardedBatches(
            train_data, config.micro_batch_size, config.grad_accum_steps,
            rank=self.data_rank, world_size=self.data_size, seed=config.seed, columns=columns,
        )
        self.eval_batches = (
            evaluation_batches(eval_data, config.micro_batch_size, config.eval_batches, rank=self.data_rank,
                               world_size=self.data_size, columns=columns)
            if eval_data is not None and config.eval_batches > 0 else []
        )
        self.metrics = MetricsLog(self.output_dir, enabled=self.context.is_main)
        self.step = 0
        self.tokens = 0
        self._stop_signal: int | None = None  # set by the SIGINT / SIGTERM handler of this process, at any moment
        self._stop_requested = False  # agreed by all ranks at the end of a step: then save and stop
        self._unread: list[torch.Tensor] = []  # per step: (mean loss, gradient norm, tokens, stop flag), on device
        self._lock = RunLock(self.output_dir)
        self._hold_lock()
        try:
            checkpoint = latest_checkpoint(self.output_dir) if config.resume else None
            if checkpoint is not None:
                self.resume_from(checkpoint)
            elif self.context.is_main and (self.output_dir / "metrics.jsonl").exists():
                self.metrics.truncate_after(0)
        except BaseException:
            self._lock.release()
            raise

    # ----- checkpoints -------------------------------------------------------------------------------------
    def trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "tokens": self.tokens,
            "data": self.batches.state_dict(),
            "identity": run_identity(self.batches.global_batch_size, self.config.seed, self.metadata),
            "world_size": self.context.world_size,
            "parallelism": self.parallelism,
            "tensor_parallel": self.config.tensor_parallel,
            "config": dataclasses.asdict(self.config),
            "metadata": self.metadata,
        }

    def save(self) -> Path:
        return save_checkpoint(
            self.output_dir, self.step, self.raw_model, self.optimizer, self.trainer_state(),
            sharded=self.parallelism == "fsdp" or self.mesh is not None, rank=self.context.rank,
            keep=self.config.keep_checkpoints,
        )

    def resume_from(self, path: str | Path) -> None:
        """Continue from checkpoint `path` under the resume policy (`training/resume.py`): the model, data and
        batch must be the checkpoint's; the optimizer and schedule take this run's settings, reported."""
        path = Path(path)
        changes = check_resume(path, read_trainer_state(path), self.trainer_state()["identity"],
                               dataclasses.asdict(self.config), force=self.config.force_resume)
        settings = [{key: value for key, value in group.items() if key != "params"}
                    for group in self.optimizer.param_groups]
        state = load_checkpoint(path, self.raw_model, self.optimizer, rank=self.context.rank,
                                world_size=self.context.world_size, trusted=True)  # the run's own output
        for group, fresh in zip(self.optimizer.param_groups, settings, strict=True):
            group.update(fresh)  # this run's learning rate, betas, eps, weight decay and implementation
        # AdamW's step counters sit on the parameters' device for the fused kernel, on the CPU otherwise: loading
        # the state again under this run's implementation puts them where it needs them.
        self.optimizer.load_state_dict(self.optimizer.state_dict())
        self.step, self.tokens = state["step"], state["tokens"]
        self.batches.load_state_dict(state["data"])
        self.scheduler = build_scheduler(self.optimizer, self.config.warmup_steps, self.config.steps,
                                         self.config.final_lr_ratio, step=self.step)
        self.metrics.truncate_after(self.step)
        if self.context.is_main:
            print(f"resuming from {path} at step {self.step}"
                  + (f"; changed since then: {', '.join(changes)}" if changes else ""))

    def _hold_lock(self) -> None:
        """Take the output directory's `RunLock` (the main process does; every rank learns the outcome)."""
        owner = self._lock.acquire() if self.context.is_main else None
        refused = all_reduce_sum(torch.tensor([float(owner is not None)], device=self.context.device))
        if refused.item() > 0:
            raise ValueError(f"{self.output_dir} is in use by another training run ({owner or 'see rank 0'}): wait "
                             "for it to finish, or choose another output directory")

    # ----- one step ----------------------------------------------------------------------------------------
    def _to_device(self, batch: Batch) -> Batch:
        return {name: tensor.to(self.context.device, non_blocking=True) for name, tensor in batch.items()}

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()

    def _loss_parallel(self) -> contextlib.AbstractContextManager:
        """Cross-entropy on vocabulary shards (forward and backward) when the model is tensor-parallel."""
        return loss_parallel() if self.mesh is not None else contextlib.nullcontext()

    def train_step(self) -> None:
        """One optimizer step over the next global batch; `read_steps` returns its loss and gradient norm."""
        micro_batches = self.batches.next_step()
        # (summed loss, items, input tokens, stop requested), reduced over ranks in a single all-reduce
        stats = torch.zeros(4, dtype=torch.float64, device=self.context.device)
        for index, batch in enumerate(micro_batches):
            batch = self._to_device(batch)
            with (gradient_sync(self.model, enabled=index == len(micro_batches) - 1), self._autocast(),
                  self._loss_parallel()):
                loss = self.loss_fn(self.model, batch)
                loss.total.backward()
            stats[0] += loss.total.detach().double()
            stats[1] += loss.count
            stats[2] += batch["input_ids"].numel() if "input_ids" in batch else 0
        stats[3] = float(self._stop_signal is not None)  # a signal arriving after this is seen at the next step
        stats = all_reduce_sum(stats)
        stats[:3] /= self.config.tensor_parallel  # the ranks of a tensor-parallel group share one batch
        count = stats[1].clamp(min=1.0)
        # DDP and FSDP average gradients over data ranks; undo that and divide by the global item count instead.
        scale = self.data_size / count
        parameters = [p for p in self.raw_model.parameters() if p.grad is not None]
        with torch.no_grad():
            for parameter in parameters:
                parameter.grad.mul_(scale)
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        self._unread.append(torch.stack([stats[0] / count, grad_norm.double(), stats[2], stats[3]]))

    def read_steps(self) -> list[tuple[float, float]]:
        """(mean loss, gradient norm before clipping) of each step since the last read, in one device-to-host copy.

        Also counts their tokens, learns whether the ranks agreed to stop, and raises `NonFiniteLossError` naming
        the first step whose loss or gradient norm was NaN or infinite. The loop reads before it logs, evaluates
        or saves, so no checkpoint holds the weights of a step after a non-finite one.
        """
        if not self._unread:
            return []
        rows = torch.stack(self._unread).tolist()
        self._unread = []
        first_step = self.step - len(rows) + 1
        for offset, (mean_loss, grad_norm, _, _) in enumerate(rows):
            if not (math.isfinite(mean_loss) and math.isfinite(grad_norm)):
                last = latest_checkpoint(self.output_dir)
                raise NonFiniteLossError(
                    f"step {first_step + offset}: loss={mean_loss}, gradient norm={grad_norm} is not finite; the "
                    f"run stopped without saving. The last good checkpoint is {str(last) if last else 'none'}: "
                    "resume from it with a lower learning rate, more warm-up, or autocast='off'"
                )
        self.tokens += int(sum(row[2] for row in rows))
        self._stop_requested = rows[-1][3] > 0
        return [(mean_loss, grad_norm) for mean_loss, grad_norm, _, _ in rows]

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss per item over the fixed evaluation batches (all ranks together); None without eval data."""
        if not self.eval_batches:
            return None
        self.model.eval()
        stats = torch.zeros(2, dtype=torch.float64, device=self.context.device)
        for batch in self.eval_batches:
            with self._autocast(), self._loss_parallel():
                loss = self.loss_fn(self.model, self._to_device(batch))
            stats[0] += loss.total.double()
            stats[1] += loss.count
        self.model.train()
        stats = all_reduce_sum(stats) / self.config.tensor_parallel
        return stats[0].item() / max(stats[1].item(), 1.0)

    # ----- the loop ----------------------------------------------------------------------------------------
    def _request_stop(self, signum: int, frame: Any) -> None:
        if self._stop_signal is None and self.context.is_main:
            os.write(2, f"\n{signal.Signals(signum).name}: saving a checkpoint after this step, then stopping\n"
                        .encode())
        self._stop_signal = signum

    def fit(self, until_step: int | None = None) -> TrainingResult:
        """Train until `config.steps`. Resumed runs continue exactly.

        SIGINT (Ctrl-C, also as forwarded by torchrun) and SIGTERM stop the run after the current step: it
        saves a checkpoint and raises `TrainingInterrupted`, which names it. `until_step` stops (and saves)
        earlier, to split a run into pieces; the schedule still ends at `steps`.
        """
        config = self.config
        stop_at = config.steps if until_step is None else min(until_step, config.steps)
        result = TrainingResult(step=self.step)
        self._hold_lock()
        in_main_thread = threading.current_thread() is threading.main_thread()
        signals = (signal.SIGINT, signal.SIGTERM) if in_main_thread else ()
        previous_handlers = {signum: signal.signal(signum, self._request_stop) for signum in signals}
        self.model.train()
        progress = tqdm(total=config.steps, initial=self.step, disable=not (config.progress and self.context.is_main),
                        desc="training", unit="step", dynamic_ncols=True)
        started, start_tokens = time.perf_counter(), self.tokens
        try:
            while self.step < stop_at:
                lr = self.optimizer.param_groups[0]["lr"]
                self.train_step()
                progress.update(1)
                last_step = self.step == stop_at
                logging = self.step % config.log_every == 0 or last_step
                evaluating = (config.eval_every and self.step % config.eval_every == 0) or self.step == config.steps
                periodic = config.checkpoint_every and self.step % config.checkpoint_every == 0
                # Ranks agree on a stop through the step's all-reduce, so several ranks read it every step.
                if not (logging or evaluating or periodic or self._stop_signal is not None
                        or self.context.is_distributed):
                    continue
                steps = self.read_steps()
                result.losses.extend(loss for loss, _ in steps)
                loss, grad_norm = steps[-1]
                progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                if logging or self._stop_requested:
                    elapsed = time.perf_counter() - started
                    self.metrics.log({"step": self.step, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                                      "tokens": self.tokens,
                                      "tokens_per_second": (self.tokens - start_tokens) / max(elapsed, 1e-9)})
                if evaluating:
                    result.val_loss = self.evaluate()
                    if result.val_loss is not None:
                        self.metrics.log({"step": self.step, "val_loss": result.val_loss, "tokens": self.tokens})
                if periodic or last_step or self._stop_requested:
                    result.checkpoint = self.save()
                if self._stop_requested and not last_step:
                    # A rank that did not receive the signal itself (another rank did) reports SIGTERM.
                    raise TrainingInterrupted(self._stop_signal or signal.SIGTERM, self.step, result.checkpoint)
        finally:
            progress.close()
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self._stop_signal = None
            if self.context.is_main:
                self._lock.release()
        result.step = self.step
        return result
