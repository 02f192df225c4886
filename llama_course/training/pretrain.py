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
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from llama_course.config import PRESETS, ModelConfig
from llama_course.model import Llama
from llama_course.model_files import load_model_weights
from llama_course.training.checkpoint import (
    is_sharded,
    read_trainer_state,
    resolve_checkpoint,
    untrusted_sharded_message,
)
from llama_course.training.trainer import Trainer, TrainerConfig, TrainingResult


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
        known = {"output_dir", "model", "data", "trainer"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown pretraining config keys {unknown}; the sections are {sorted(known)}")
        model = values.get("model", {"preset": "tiny"})
        if not isinstance(model, dict):
            raise ValueError(f"[model] must be a table of keys (a preset and ModelConfig fields), got {model!r}")
        return cls(
            output_dir=str(values.get("output_dir", cls.output_dir)),
            model=dict(model),
            data=build_section(DataConfig, values.get("data", {}), "data"),
            trainer=build_section(TrainerConfig, values.get("trainer", {}), "trainer",
                                  defaults={"lr": 1e-3, "warmup_steps": 50}),
        )


def build_section(cls: type, values: dict[str, Any], section: str, defaults: dict[str, Any] | None = None) -> Any:
    """The config dataclass `cls` from one [section] of a config file (over `defaults`), rejecting unknown keys
    by name and values whose type is not the field default's (an int where a float is expected is fine)."""
    if not isinstance(values, dict):
        raise ValueError(f"[{section}] must be a table of keys, got {values!r}")
    values = (defaults or {}) | values
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown keys {unknown} in [{section}]; the known keys are {sorted(fields)}")
    for name, value in values.items():
        default = fields[name].default
        if default is dataclasses.MISSING or default is None:
            continue
        kind = type(default)
        fits = isinstance(value, int | float) and not isinstance(value, bool) if kind is float else (
            isinstance(value, kind) and (kind is bool or not isinstance(value, bool)))
        if not fits:
            raise ValueError(f"{section}.{name}={value!r} must be of type {kind.__name__} (default {default!r})")
    return cls(**values)


def read_config_values(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The values of a TOML (`.toml`) or JSON file, with `section.key=value` overrides applied (values parsed as
    TOML, a bare word as a string); any run's config dataclass is then built from them."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no config file at {str(path)!r}")
        text = path.read_text()
        try:
            values = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except ValueError as error:  # JSONDecodeError, TOMLDecodeError
            raise ValueError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: {error}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} must hold a table of settings, not a {type(values).__name__}")
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key:
            raise ValueError(f"override {override!r} must look like section.key=value, e.g. trainer.lr=3e-4")
        *sections, name = key.strip().split(".")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()  # a bare word: a string
        table = values
        for section in sections:
            table = table.setdefault(section, {})
        table[name] = value
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Read a TOML (`.toml`) or JSON file, then apply `section.key=value` overrides (values parsed as TOML)."""
    return PretrainConfig.from_dict(read_config_values(path, overrides))


def _load_tokenizer(spec: str):
    from llama_course.tokenizer import Tokenizer
    from llama_course.toyworld import toy_tokenizer

    return toy_tokenizer() if spec == "toy" else Tokenizer(spec)


def build_datasets(config: DataConfig):
    """Tokenized, packed training and validation blocks (`datasets.Dataset`s with input_ids, labels, document_ids)."""
    from llama_course.data import pack_dataset, tokenize_dataset
    from llama_course.toyworld import load_corpus

    tokenizer = _load_tokenizer(config.tokenizer)
    corpus = load_corpus(config.corpus, n=config.documents + config.validation_documents, seed=config.seed)
    wanted = config.documents + config.validation_documents
    if len(corpus) < wanted:
        raise ValueError(f"corpus {config.corpus!r} has {len(corpus)} documents, fewer than "
                         f"data.documents + data.validation_documents = {wanted}")
    # Blocks never straddle the split: pack each part separately.
    train = pack_dataset(tokenize_dataset(corpus.select(range(config.documents)), tokenizer), config.block_size)
    validation = None
    if config.validation_documents:
        held_out = corpus.select(range(config.documents, len(corpus)))
        validation = pack_dataset(tokenize_dataset(held_out, tokenizer), config.block_size)
    return tokenizer, train, validation


def resume_fixed_data(config: DataConfig) -> dict[str, Any]:
    """The data settings a resumed run may not change (`training/resume.py`); the held-out part may."""
    return {key: value for key, value in dataclasses.asdict(config).items() if key != "validation_documents"}


def run_pretraining(config: PretrainConfig) -> TrainingResult:
    """Build the data and a seeded model, then train (resuming from `output_dir` if it holds a checkpoint)."""
    tokenizer, train, validation = build_datasets(config.data)
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
