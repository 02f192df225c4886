"""Training: one loop (`Trainer`) composed of swappable parts, shared by pretraining, SFT and reward models.

- `optim`: AdamW with the decay / no-decay split; `schedule`: warm-up + cosine to 10%;
- `batches`: resumable, rank-sharded global batches; `trainer`: the loop and the pluggable loss;
- `checkpoint`: atomic safetensors / Distributed Checkpoint save and exact resume;
- `distributed`: torchrun, DDP and FSDP2 applied from outside the model; `metrics`: JSONL and plots;
- `parallel`: tensor and sequence parallelism, and (data, tensor) meshes with FSDP2 over the data dimension;
- `mfu`: training FLOPs per token and model FLOPs utilisation; `pretrain`: configs, data and the CLI.
"""

from llama_course.training.batches import ShardedBatches, TensorBlocks
from llama_course.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from llama_course.training.distributed import init_distributed, parallelize, pick_device
from llama_course.training.metrics import plot_metrics, read_metrics
from llama_course.training.mfu import measure_matmul_flops, model_flops_utilization, training_flops_per_token
from llama_course.training.optim import AdamWConfig, build_optimizer, split_decay_parameters
from llama_course.training.schedule import build_scheduler, warmup_cosine_factor
from llama_course.training.trainer import (
    LossSum,
    NonFiniteLossError,
    Trainer,
    TrainerConfig,
    TrainingResult,
    causal_lm_loss,
)

__all__ = [
    "AdamWConfig",
    "LossSum",
    "NonFiniteLossError",
    "ShardedBatches",
    "TensorBlocks",
    "Trainer",
    "TrainerConfig",
    "TrainingResult",
    "build_optimizer",
    "build_scheduler",
    "causal_lm_loss",
    "init_distributed",
    "latest_checkpoint",
    "load_checkpoint",
    "measure_matmul_flops",
    "model_flops_utilization",
    "parallelize",
    "pick_device",
    "plot_metrics",
    "read_metrics",
    "save_checkpoint",
    "split_decay_parameters",
    "training_flops_per_token",
    "warmup_cosine_factor",
]
