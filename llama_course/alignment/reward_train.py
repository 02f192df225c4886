"""Training, measuring and shipping the reward models (Llama 2, section 3.2.2, "Training Details").

The paper's recipe: one epoch ("training longer can lead to over-fitting"), the same AdamW settings as
pretraining (0.9 / 0.95, eps 1e-5, weight decay 0.1, clipping 1.0), a cosine schedule down to 10% of the
peak, warm-up over 3% of the steps with at least 5, and 512 pairs per batch. Scaled to the 1M-parameter
model on a laptop (our choices): 16 pairs per step and a peak learning rate of 5e-4 (the paper's 1e-5 is
1/30 of its pretraining peak; with one epoch of about a hundred steps our model would barely move).

`llama-course train-rm` (`commands.train_rm`) trains the two shipped RMs with these functions.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch

from llama_course.alignment.reward import (
    HEADS,
    MARGINS,
    RewardModel,
    calibrate,
    margin_table,
    preference_loss,
    score_responses,
)
from llama_course.alignment.reward_data import encode_preferences
from llama_course.config import ModelConfig
from llama_course.model import Llama
from llama_course.model_files import CONFIG_FILE, read_model_folder, write_model_folder
from llama_course.paper import STRENGTHS
from llama_course.pretrained import ASSETS_DIR
from llama_course.tokenizer import Tokenizer
from llama_course.training.trainer import Trainer, TrainerConfig

SHIPPED_RMS = {"helpfulness": ASSETS_DIR / "rm_helpfulness", "safety": ASSETS_DIR / "rm_safety"}
MARGIN_STUDY_FILE = "margins.json"


def default_base() -> str:
    """"sft" when the SFT model is shipped (the paper's starting point), else "base"."""
    return "sft" if (ASSETS_DIR / "sft" / "model.safetensors").is_file() else "base"


@dataclass
class RewardConfig:
    criterion: str = "helpfulness"  # "helpfulness" or "safety": which annotator labels the pairs
    margin: str = "small"  # Table 27: "none", "small" or "large"
    head: str = "scalar"  # "scalar" (the paper's) or "likelihood" (the answer's log-probability: reward.RewardModel)
    base: str = "auto"  # "auto" (sft if shipped, else base), a shipped model name, a folder, or random-tiny
    pairs: int = 1500  # pairs over the toy world's graded candidate answers (experiments.toyworld_data)
    sampled_pairs: int = 1000  # prompts whose two answers are sampled from the base model at two temperatures
    helpfulness_mix: float = 0.1  # safety RM only: share of helpfulness pairs in its training data (Llama 2: 90/10)
    temperatures: list[float] = field(default_factory=lambda: [0.6, 1.0])
    held_out: int = 600  # held-out toy-world pairs (another seed) for accuracy by strength
    noise_scale: float = 1.0  # annotator noise (0: perfect annotators)
    max_tokens: int = 256
    epochs: float = 1.0  # the paper trains one epoch
    batch_size: int = 16  # pairs per optimizer step
    lr: float = 5e-4
    seed: int = 0
    device: str = "cpu"
    output_dir: str = "runs/rm"

    def __post_init__(self) -> None:
        if self.criterion not in ("helpfulness", "safety"):
            raise ValueError(f"criterion={self.criterion!r} is unknown; choose 'helpfulness' or 'safety'")
        margin_table(self.margin)
        if self.head not in HEADS:
            raise ValueError(f"head={self.head!r} is unknown; choose one of {HEADS}")
        for name in ("pairs", "held_out", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if not 0.0 <= self.helpfulness_mix < 1.0:
            raise ValueError(f"helpfulness_mix={self.helpfulness_mix} must be in [0, 1): the share of helpfulness "
                             "pairs mixed into the safety RM's data")
        if self.sampled_pairs < 0 or not self.epochs > 0:
            raise ValueError(f"sampled_pairs={self.sampled_pairs} must be >= 0 and epochs={self.epochs} positive")

    def resolved_base(self) -> str:
        return default_base() if self.base == "auto" else self.base

    def trainer_config(self, n_pairs: int) -> TrainerConfig:
        """One epoch of `n_pairs` (times `epochs`); warm-up 3% of the steps, at least 5 (Llama 2, 3.2.2)."""
        steps = max(1, math.ceil(self.epochs * n_pairs / self.batch_size))
        return TrainerConfig(steps=steps, micro_batch_size=self.batch_size, lr=self.lr,
                             warmup_steps=min(steps, max(5, math.ceil(0.03 * steps))), eval_every=0,
                             eval_batches=0, checkpoint_every=0, keep_checkpoints=1, log_every=5, seed=self.seed,
                             device=self.device, autocast="off", progress=False, resume=False)


def train_reward_model(config: RewardConfig, data: tuple[datasets.Dataset, datasets.Dataset],
                       start: RewardModel | None = None) -> tuple[RewardModel, Tokenizer, dict[str, Any]]:
    """Train an RM from `config.base` with the margin ranking loss on `data` = (training pairs, held-out pairs),
    rows of `reward_data.PREFERENCE_FIELDS` (e.g. `experiments.toyworld_data.reward_data(config)`); returns it
    (eval, CPU), its tokenizer and its card (data, schedule, final loss, held-out accuracy by strength).
    `start` continues training that RM (e.g. the previous round's) instead of a new head on `config.base`.
    """
    from llama_course.alignment.sft import load_base_model
    from llama_course.pretrained import shipped_tokenizer

    torch.manual_seed(config.seed)
    if start is not None:
        model, tokenizer = start, shipped_tokenizer()
    else:
        backbone, tokenizer = load_base_model(config.resolved_base(), config.max_tokens)
        model = RewardModel(backbone, tokenizer.eos_id, config.head)
    train, held_out = data
    if model.head == "likelihood" and start is None:  # standardised on (up to) 256 training pairs
        rows = train.select(range(min(256, len(train))))
        calibrate(model, tokenizer, rows["prompt"], rows["chosen"], rows["rejected"])
    trainer_config = config.trainer_config(len(train))
    trainer = Trainer(model, encode_preferences(tokenizer, train, config.max_tokens), trainer_config,
                      config.output_dir, loss_fn=preference_loss(config.margin),
                      metadata={"model_config": model.config.to_dict(), "reward_config": dataclasses.asdict(config)})
    result = trainer.fit()
    model = trainer.raw_model.cpu().eval()
    card = {"reward_config": dataclasses.asdict(config) | {"base": config.resolved_base()},
            "training_pairs": len(train), "steps": trainer_config.steps, "warmup_steps": trainer_config.warmup_steps,
            "final_loss": sum(result.losses[-10:]) / max(1, len(result.losses[-10:])),
            "held_out": evaluate_preferences(model, tokenizer, held_out)}
    return model, tokenizer, card


def evaluate_preferences(model: RewardModel, tokenizer: Tokenizer, rows: datasets.Dataset) -> dict[str, Any]:
    """Held-out accuracy (the RM scores the annotator's chosen answer higher), overall and by strength
    (Llama 2, Table 28), with each pair's raw scores for plots."""
    chosen = score_responses(model, tokenizer, rows["prompt"], rows["chosen"])
    rejected = score_responses(model, tokenizer, rows["prompt"], rows["rejected"])
    correct = (chosen > rejected).tolist()
    by_strength = {}
    for strength in STRENGTHS:
        picked = [ok for ok, s in zip(correct, rows["strength"], strict=True) if s == strength]
        by_strength[strength] = {"accuracy": sum(picked) / len(picked) if picked else None, "pairs": len(picked)}
    return {"accuracy": sum(correct) / len(correct), "by_strength": by_strength,
            "score_chosen": [round(v, 4) for v in chosen.tolist()],
            "score_rejected": [round(v, 4) for v in rejected.tolist()]}


def save_reward_model(model: RewardModel, folder: str | Path, card: dict[str, Any]) -> None:
    """Write `model.safetensors` (the backbone with its (1, dim) head) and `config.json` into `folder`."""
    write_model_folder(model.backbone, folder, card, eos_id=model.eos_id, head=model.head, offset=model.offset,
                       scale=model.scale)


def load_reward_model(name: str | Path = "helpfulness") -> tuple[RewardModel, Tokenizer]:
    """A shipped RM ("helpfulness" or "safety") or a folder written by `save_reward_model`, in eval mode."""
    from llama_course.pretrained import shipped_tokenizer

    folder = SHIPPED_RMS.get(str(name), Path(name))

    def head_rows(config: dict[str, Any], model_config: ModelConfig) -> int:
        eos_id, head = config.get("eos_id"), config.get("head", "scalar")  # older folders: a scalar head
        if not isinstance(eos_id, int) or not 0 <= eos_id < model_config.vocab_size:
            raise ValueError(f"{folder / CONFIG_FILE} has eos_id={eos_id!r}: it must be a token id below "
                             f"vocab_size={model_config.vocab_size}")
        if head not in HEADS:
            raise ValueError(f"{folder / CONFIG_FILE} has head={head!r}: it must be one of {HEADS}")
        return 1 if head == "scalar" else model_config.vocab_size

    config, model_config, weights = read_model_folder(
        folder, output_rows=head_rows, missing=f"no reward model at {str(folder)!r}; the shipped ones are "
        f"{list(SHIPPED_RMS)}, trained by `llama-course train-rm --criterion C --export FOLDER`")
    model = RewardModel(Llama(model_config), config["eos_id"], config.get("head", "scalar"))
    model.offset, model.scale = config.get("offset", 0.0), config.get("scale", 1.0)
    if not (isinstance(model.offset, float | int) and isinstance(model.scale, float | int) and model.scale > 0
            and math.isfinite(model.offset) and math.isfinite(model.scale)):
        raise ValueError(f"{folder / CONFIG_FILE} has offset={model.offset!r}, scale={model.scale!r}: they must be "
                         "finite numbers and the scale positive")
    model.backbone.load_state_dict(weights, strict=True)
    return model.eval(), shipped_tokenizer()


def reward_card(name: str | Path = "helpfulness") -> dict[str, Any]:
    """The `card` of a shipped RM's config.json: its training config and held-out accuracy."""
    folder = SHIPPED_RMS.get(str(name), Path(name))
    return json.loads((folder / "config.json").read_text())["card"]


def margin_study(config: RewardConfig, data: tuple[datasets.Dataset, datasets.Dataset],
                 export: str | Path | None = None) -> dict[str, Any]:
    """Train one RM per margin table on the same pairs `data` (as `train_reward_model`'s) and measure each (the
    Table 28 experiment).

    Exports the RM of `config.margin` to `export` and writes `margins.json` beside it: per margin, the
    held-out accuracy by strength and the held-out raw scores.
    """
    study: dict[str, Any] = {"criterion": config.criterion, "base": config.resolved_base(), "margins": {}}
    for margin in MARGINS:
        run = dataclasses.replace(config, margin=margin, output_dir=f"{config.output_dir}-{margin}")
        model, _, card = train_reward_model(run, data)
        study["margins"][margin] = card["held_out"] | {"final_loss": card["final_loss"]}
        if export is not None and margin == config.margin:
            save_reward_model(model, export, {k: v for k, v in card.items() if k != "held_out"}
                              | {"held_out": held_out_summary(card["held_out"])})
    if export is not None:
        (Path(export) / MARGIN_STUDY_FILE).write_text(json.dumps(study) + "\n")
    return study


def held_out_summary(held_out: dict[str, Any]) -> dict[str, Any]:
    return {"accuracy": held_out["accuracy"], "by_strength": held_out["by_strength"]}


def load_margin_study(folder: str | Path = SHIPPED_RMS["helpfulness"]) -> dict[str, Any]:
    """The margin study written by `llama-course train-rm --margin-study --export FOLDER`."""
    path = Path(folder) / MARGIN_STUDY_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {MARGIN_STUDY_FILE} in {str(folder)!r}: run `llama-course train-rm "
                                f"--criterion helpfulness --margin-study --export {folder}`")
    return json.loads(path.read_text())
