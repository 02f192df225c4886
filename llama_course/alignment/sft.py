"""Supervised fine-tuning (Llama 2, section 3.1): from the pretrained base model to a first assistant.

The paper's recipe: "a cosine learning rate schedule, with an initial learning rate of 2e-5, a weight decay of
0.1, a batch size of 64, and a sequence length of 4096 tokens", 2 epochs, with the loss zeroed on the user
prompt and the prompts and answers of the training set concatenated into full sequences. Scaled to the
1M-parameter toy model on a laptop (our choices, the paper's where it states one):

- cosine schedule to 10% of the peak (the trainer's), weight decay 0.1, 2 epochs, AdamW 0.9 / 0.95 (as in
  pretraining), no warm-up (the paper names none for SFT);
- peak learning rate 1e-3, a third of the base model's pretraining peak (3e-3): the paper's 2e-5 is about
  1/15 of Llama 2's pretraining peak, which moves a 1M-parameter model too little in a hundred steps;
- batch 16 blocks of 256 tokens (4,096 tokens per step; the paper's 64 x 4096 = 262,144 would be only a few
  steps for our data), blocks packed from the conversations of `sft_data`, each isolated from the others.

    llama-course sft --config llama_course/assets/sft/sft.toml --export llama_course/assets/sft --ablation

trains the shipped SFT model, measures it, and writes the files the chapter plots.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch

from llama_course.alignment.sft_data import OVERLONG_POLICIES, encode_conversations, pack_sft
from llama_course.config import PRESETS
from llama_course.config_files import build_config, read_config_file
from llama_course.model import Llama
from llama_course.model_files import write_model_folder
from llama_course.pretrained import ASSETS_DIR, shipped_tokenizer
from llama_course.tokenizer import Tokenizer
from llama_course.training.trainer import Trainer, TrainerConfig, TrainingResult

SHIPPED_SFT_DIR = ASSETS_DIR / "sft"
RESULTS_FILE = "results.json"
RANDOM_BASE = "random-tiny"  # an untrained tiny model: for tests and for a run before the base model exists


@dataclass
class SFTDataConfig:
    tasks: int = 3000  # single-turn instruction tasks
    multi_turn: int = 500  # chats of 2 to 4 tasks, no system message
    dialogues: int = 800  # dialogues under a system constraint
    safety: int = 400  # unsafe and borderline requests with their reference answers
    validation: int = 200  # held-out conversations (same mix, another seed) for the validation loss
    seed: int = 0
    task_families: list[str] | None = None  # None: every family of the toy world's tasks
    careless: float = 0.0  # share of task demonstrations with an annotator's slip (mistake or padding)
    block_size: int = 256  # tokens per packed block; longer conversations lose their last turns
    document_masking: bool = True  # conversations in a block do not attend to each other; positions restart
    answers_only: bool = True  # the paper's prompt-masked loss; False: loss on every token (the ablation)
    overlong: str = "truncate"  # "truncate" (drop whole turns from the end) or "error"

    def __post_init__(self) -> None:
        if self.block_size < 8:
            raise ValueError(f"data.block_size={self.block_size} is too small for a chat turn; use >= 64")
        if self.overlong not in OVERLONG_POLICIES:
            raise ValueError(f"data.overlong={self.overlong!r} is unknown; choose one of {OVERLONG_POLICIES}")
        if not 0.0 <= self.careless <= 1.0:
            raise ValueError(f"data.careless={self.careless!r} must be a probability in [0, 1]")
        if self.tasks + self.multi_turn + self.dialogues + self.safety < 1:
            raise ValueError("the SFT mix is empty: set data.tasks, multi_turn, dialogues or safety above 0")


def _default_trainer() -> TrainerConfig:
    return TrainerConfig(lr=1e-3, micro_batch_size=16, warmup_steps=0, steps=1, eval_every=0, eval_batches=8,
                         checkpoint_every=0, keep_checkpoints=1, log_every=5)


@dataclass
class SFTConfig:
    output_dir: str = "runs/sft-tiny"
    base: str = "base"  # a shipped model name, an exported folder, a training run, or "random-tiny"
    epochs: float = 2.0  # passes over the packed blocks; decides trainer.steps
    data: SFTDataConfig = field(default_factory=SFTDataConfig)
    trainer: TrainerConfig = field(default_factory=_default_trainer)  # `steps` is derived from `epochs`

    def __post_init__(self) -> None:
        if not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs} must be positive")

    def steps_for(self, n_blocks: int) -> int:
        """Optimizer steps of `epochs` passes over `n_blocks` blocks with the configured global batch."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        global_batch = self.trainer.micro_batch_size * self.trainer.grad_accum_steps * world_size
        return max(1, math.ceil(self.epochs * n_blocks / global_batch))

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["trainer"].pop("steps")
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SFTConfig:
        """The config of a nested table (a config file's): every key optional, unknown keys refused by name."""
        if isinstance(values.get("trainer"), dict) and "steps" in values["trainer"]:
            raise ValueError("trainer.steps is derived from epochs in SFT: set epochs instead (e.g. epochs = 0.5)")
        return build_config(cls, values)


def load_sft_config(path: str | Path | None = None) -> SFTConfig:
    """The SFT config of a TOML file (every key optional), or the defaults."""
    return SFTConfig() if path is None else SFTConfig.from_dict(read_config_file(path))


def load_base_model(base: str, max_seq_len: int = 256) -> tuple[Llama, Tokenizer]:
    """The model SFT starts from, on the CPU, and its tokenizer.

    `base` is the name of a folder under `llama_course/assets/` (e.g. "base"), the path of an exported folder
    (`config.json` + `model.safetensors`), a training run or checkpoint directory, or "random-tiny" (the tiny
    preset, seeded with 0, untrained).
    """
    from llama_course.pretrained import load_pretrained_folder

    if base == RANDOM_BASE:
        torch.manual_seed(0)
        tokenizer = shipped_tokenizer()
        config = dataclasses.replace(PRESETS["tiny"], vocab_size=tokenizer.vocab_size,
                                     max_seq_len=max(PRESETS["tiny"].max_seq_len, max_seq_len))
        return Llama(config), tokenizer
    folder = ASSETS_DIR / base if "/" not in base and (ASSETS_DIR / base).is_dir() else Path(base)
    if (folder / "config.json").is_file():
        return load_pretrained_folder(folder)
    if folder.is_dir():
        from llama_course.training.pretrain import load_trained_model

        return load_trained_model(folder), shipped_tokenizer()
    shipped = sorted(p.name for p in ASSETS_DIR.iterdir() if (p / "config.json").is_file())
    raise FileNotFoundError(f"base={base!r} is neither a shipped model ({shipped}), an exported folder, a training "
                            f"run, nor {RANDOM_BASE!r}; the base model ships once `llama-course pretrain` has run")


def build_sft_blocks(config: SFTDataConfig, tokenizer: Tokenizer, train: datasets.Dataset,
                     held_out: datasets.Dataset) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Packed training blocks of the conversations `train` and answer-masked validation blocks of `held_out`
    (rows of `messages`), as `config` says (block size, overlong policy, answer-only loss)."""
    encode = {"max_tokens": config.block_size, "overlong": config.overlong}
    train_blocks = pack_sft(encode_conversations(tokenizer, train, answers_only=config.answers_only, **encode),
                            config.block_size)
    # The validation loss is always on answer tokens, so both sides of the ablation are measured alike.
    validation_blocks = pack_sft(encode_conversations(tokenizer, held_out, **encode), config.block_size)
    return train_blocks, validation_blocks


def run_sft(config: SFTConfig, train: datasets.Dataset, held_out: datasets.Dataset
            ) -> tuple[TrainingResult, Llama, Tokenizer]:
    """Fine-tune `config.base` on the conversations `train`, with the validation loss on `held_out` (rows of
    `messages`; the toy world's mix is `experiments.toyworld_data.sft_data(config.data)`); returns the result,
    the trained model and tokenizer.

    Resumes from `output_dir` when it holds a checkpoint. The model is returned in eval mode on the CPU.
    """
    model, tokenizer = load_base_model(config.base, config.data.block_size)
    if model.config.max_seq_len < config.data.block_size:
        raise ValueError(f"data.block_size={config.data.block_size} exceeds the base model's context of "
                         f"{model.config.max_seq_len} tokens")
    train_blocks, validation_blocks = build_sft_blocks(config.data, tokenizer, train, held_out)
    trainer_config = dataclasses.replace(config.trainer, steps=config.steps_for(len(train_blocks)))
    columns = ["input_ids", "labels"] + (["document_ids"] if config.data.document_masking else [])
    trainer = Trainer(model, train_blocks, trainer_config, config.output_dir, eval_data=validation_blocks,
                      columns=columns, metadata={"model_config": model.config.to_dict(), "sft_config": config.to_dict(),
                                                 "tokenizer": str(tokenizer.model_path)})
    if trainer.context.is_main:
        print(f"SFT from {config.base!r}: {len(train_blocks):,} blocks of {config.data.block_size} tokens, "
              f"{config.epochs} epochs = {trainer_config.steps} steps of {config.trainer.micro_batch_size} blocks, "
              f"peak lr {config.trainer.lr}, answers_only={config.data.answers_only}, "
              f"document_masking={config.data.document_masking}")
    result = trainer.fit()
    return result, trainer.raw_model.cpu().eval(), tokenizer


def export_model(model: Llama, destination: str | Path, card: dict[str, Any]) -> None:
    """Write `model` as a model folder with the toy tokenizer (`model_files.write_model_folder`)."""
    write_model_folder(model, destination, card)


def load_sft_results(folder: str | Path = SHIPPED_SFT_DIR) -> dict[str, Any]:
    """The measurements written by `llama-course sft --export FOLDER --ablation` (the chapter plots them)."""
    path = Path(folder) / RESULTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {RESULTS_FILE} in {str(folder)!r}: run `llama-course sft --config "
                                f"llama_course/assets/sft/sft.toml --export {folder} --ablation`")
    return json.loads(path.read_text())
