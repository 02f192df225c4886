"""Pretraining a Llama on a text corpus (Llama 1 section 2.1-2.2): configuration, data, and `run_pretraining`.

A run is described by a `PretrainConfig` (model, data, trainer), written as a TOML or JSON file and/or
command-line flags. The same command runs on a laptop and, under `torchrun --nproc_per_node 8`, on 8 GPUs:

    llama-course pretrain --config tiny.toml --set trainer.steps=2000
    torchrun --nproc_per_node 8 -m llama_course.cli pretrain --config big.toml --set trainer.parallelism=fsdp
    torchrun --nproc_per_node 8 -m llama_course.cli pretrain --config big.toml --tensor-parallel 8   # TP + SP

A config file (every key optional; the defaults are below):

    output_dir = "runs/pretrain-tiny"
    [model]                      # a preset, then any ModelConfig field overriding it
    preset = "tiny"
    [data]
    corpus = "toy-stories"       # a `load_corpus` name: toy-stories (offline) or tinystories (Hub)
    [trainer]                    # any TrainerConfig field
    steps = 1000
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from llama_course.config import PRESETS, ModelConfig
from llama_course.config_files import build_config
from llama_course.config_files import load_config as load_config_file
from llama_course.model import Llama
from llama_course.model_files import load_model_weights
from llama_course.training.checkpoint import (
    is_sharded,
    read_trainer_state,
    resolve_checkpoint,
    untrusted_sharded_message,
)
from llama_course.training.trainer import Trainer, TrainerConfig, TrainingResult

if TYPE_CHECKING:
    import datasets

    from llama_course.tokenizer import Tokenizer


@dataclass
class DataConfig:
    corpus: str = "toy-stories"  # name for llama_course.toyworld.load_corpus
    documents: int = 20_000  # training documents
    validation_documents: int = 500  # held-out documents, drawn after the training ones
    seed: int = 0  # corpus generation seed (toy corpora)
    tokenizer: str = "toy"  # "toy" (the shipped toy tokenizer) or the path of a SentencePiece tokenizer.model
    block_size: int = 256  # tokens per training sequence
    document_masking: bool = True  # attention and RoPE positions restart at each packed document

    def __post_init__(self) -> None:
        for name in ("documents", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"data.{name}={getattr(self, name)} must be a positive integer")
        if self.validation_documents < 0:
            raise ValueError(f"data.validation_documents={self.validation_documents} must be >= 0")


@dataclass
class PretrainConfig:
    output_dir: str = "runs/pretrain"
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})  # preset + ModelConfig overrides
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(lr=1e-3, warmup_steps=50, steps=1000))

    def __post_init__(self) -> None:
        self.model_config(vocab_size=1)  # a bad preset or model field fails here, before any data is built

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The preset with the overrides applied; the vocabulary always matches the tokenizer's."""
        overrides = dict(self.model)
        preset = overrides.pop("preset", "tiny")
        if preset not in PRESETS:
            raise ValueError(f"model.preset={preset!r} is unknown; choose one of {sorted(PRESETS)}")
        values = PRESETS[preset].to_dict() | overrides | {"vocab_size": vocab_size}
        values["max_seq_len"] = max(values["max_seq_len"], self.data.block_size)
        return ModelConfig.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainConfig:
        """The config of a nested table (a config file's): every key optional, unknown keys refused by name."""
        return build_config(cls, values)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Read a TOML (`.toml`) or JSON file, then apply `section.key=value` overrides (values parsed as TOML)."""
    return load_config_file(PretrainConfig, path, overrides=overrides)


def resume_fixed_data(config: DataConfig) -> dict[str, Any]:
    """The data settings a resumed run may not change (`training/resume.py`); the held-out part may."""
    return {key: value for key, value in dataclasses.asdict(config).items() if key != "validation_documents"}


def run_pretraining(config: PretrainConfig, data: tuple[Tokenizer, datasets.Dataset, datasets.Dataset | None]
                    ) -> TrainingResult:
    """Build a seeded model and train it on `data` (the tokenizer, the packed training blocks and the validation
    blocks or None: `experiments.toyworld_data.pretraining_data` builds the toy world's from `config.data`),
    resuming from `output_dir` if it holds a checkpoint."""
    tokenizer, train, validation = data
    model_config = config.model_config(tokenizer.vocab_size)
    torch.manual_seed(config.trainer.seed)
    model = Llama(model_config)
    columns = ["input_ids", "labels"] + (["document_ids"] if config.data.document_masking else [])
    output_dir = Path(config.output_dir)
    trainer = Trainer(model, train, config.trainer, output_dir, eval_data=validation, columns=columns,
                      metadata={"model_config": model_config.to_dict(), "pretrain_config": config.to_dict(),
                                "tokenizer": str(tokenizer.model_path), "data": resume_fixed_data(config.data)})
    if trainer.context.is_main:
        print(f"model {model_config} ({sum(p.numel() for p in model.parameters()):,} parameters), "
              f"{len(train):,} training blocks of {config.data.block_size} tokens, "
              f"{trainer.context.world_size} process(es), {trainer.parallelism}, tensor parallel "
              f"{config.trainer.tensor_parallel}, device {trainer.context.device}")
    result = trainer.fit()
    if trainer.context.is_main:
        from llama_course.training.metrics import plot_metrics

        plot_metrics(output_dir, output_dir / "metrics.png")
    return result


def load_trained_model(path: str | Path, device: str | torch.device = "cpu") -> Llama:
    """The `Llama` of a checkpoint directory, or of the newest checkpoint of a run directory.

    Only the single-file format is read (a sharded one can run code: `checkpoint.untrusted_sharded_message`),
    and its weights are checked against the recorded config before the model is built.
    """
    checkpoint = resolve_checkpoint(path)
    metadata = read_trainer_state(checkpoint)["metadata"]
    if "model_config" not in metadata:
        raise ValueError(f"{str(checkpoint)!r} records no model_config: build the model yourself and load it with "
                         "training.checkpoint.load_checkpoint")
    model_config = ModelConfig.from_dict(metadata["model_config"])
    if is_sharded(checkpoint):
        raise ValueError(untrusted_sharded_message(checkpoint))
    weights = load_model_weights(checkpoint / "model.safetensors", model_config)
    model = Llama(model_config)
    model.load_state_dict(weights, strict=True)
    return model.to(device).eval()
