"""The checkpoints shipped inside the package, so that a chapter never waits for an earlier one to train.

Each shipped model is a folder `llama_course/assets/<name>/` holding

- `model.safetensors`: the weights, with Meta's parameter names (float32);
- `config.json`: `model_config` (a `ModelConfig`), `tokenizer` ("toy" for the shipped toy tokenizer, or a
  file name inside the folder), and `card` (how it was trained and how it scores);
- the config file that reproduces it, e.g. `pretrain.toml` for the base model.

    from llama_course.pretrained import load_pretrained
    model, tokenizer = load_pretrained("base")

A model is exported from a training run with

    llama-course pretrained export runs/base-tiny llama_course/assets/base

which copies the run's final weights, measures the validation loss and the grammar score of samples, and
writes `config.json`.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from llama_course.config import ModelConfig
from llama_course.model import Llama
from llama_course.model_files import CONFIG_FILE, WEIGHTS_FILE, read_model_folder, write_model_config
from llama_course.tokenizer import Tokenizer

ASSETS_DIR = Path(__file__).resolve().parent / "assets"


REWARD_MODEL_PREFIX = "rm_"  # assets/rm_* hold reward models: `alignment.reward_train.load_reward_model` loads them


def shipped_models() -> list[str]:
    """Names of the language models shipped in `llama_course/assets/` (folders with a config.json and weights)."""
    return sorted(folder.name for folder in ASSETS_DIR.iterdir()
                  if (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()
                  and not folder.name.startswith(REWARD_MODEL_PREFIX))


def pretrained_dir(name: str) -> Path:
    """The folder of shipped model `name` ("base", "sft", ...); a clear error when it is not shipped."""
    if name not in shipped_models():
        raise ValueError(f"no shipped model named {name!r}; the package ships {shipped_models()}")
    return ASSETS_DIR / name


def pretrained_card(name: str = "base") -> dict[str, Any]:
    """The whole `config.json` of a shipped model: model_config, tokenizer, and its card (training, scores)."""
    return json.loads((pretrained_dir(name) / CONFIG_FILE).read_text())


def shipped_tokenizer() -> Tokenizer:
    """The tokenizer of every shipped model ("toy" in its config.json): the toy world's 1024 pieces."""
    from llama_course.toyworld import toy_tokenizer

    return toy_tokenizer()


def _tokenizer(spec: str, folder: Path) -> Tokenizer:
    if spec == "toy":
        return shipped_tokenizer()
    if not isinstance(spec, str) or Path(spec).name != spec:
        raise ValueError(f"tokenizer={spec!r} in {folder / CONFIG_FILE} must be 'toy' or a file name inside {folder}")
    return Tokenizer(folder / spec)


def load_pretrained_folder(
    folder: str | Path, *, device: str | torch.device = "cpu", attention_backend: str | None = None
) -> tuple[Llama, Tokenizer]:
    """The model of an exported folder (`model.safetensors` + `config.json`) in eval mode, and its tokenizer."""
    card, config, weights = read_model_folder(
        folder, missing=f"{str(folder)!r} needs {CONFIG_FILE} and {WEIGHTS_FILE}: export a run into it with "
        "`llama-course pretrained export RUN_DIR FOLDER`")
    if attention_backend is not None:
        config = dataclasses.replace(config, attention_backend=attention_backend)
    model = Llama(config)
    model.load_state_dict(weights, strict=True)
    return model.to(device).eval(), _tokenizer(card["tokenizer"], folder)


def load_pretrained(
    name: str = "base", *, device: str | torch.device = "cpu", attention_backend: str | None = None
) -> tuple[Llama, Tokenizer]:
    """The shipped model `name` in eval mode on `device`, and its tokenizer."""
    return load_pretrained_folder(pretrained_dir(name), device=device, attention_backend=attention_backend)


def export_pretrained(
    run_dir: str | Path, destination: str | Path, *, samples: int = 256, seed: int = 0
) -> dict[str, Any]:
    """Copy the final weights of pretraining run `run_dir` into `destination` and write its `config.json`.

    The card records the step, tokens, final validation loss, the pretraining config, and the grammar score
    of `samples` stories sampled at temperature 1 (`story_samples.sampled_grammar_score`). Returns the card.
    """
    from llama_course.measurements.story_samples import sampled_grammar_score
    from llama_course.training.checkpoint import latest_checkpoint, read_trainer_state
    from llama_course.training.metrics import read_metrics

    run_dir, destination = Path(run_dir), Path(destination)
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None or not (checkpoint / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{str(run_dir)!r} holds no single-file checkpoint (checkpoints/step_*/{WEIGHTS_FILE})")
    state = read_trainer_state(checkpoint)
    metadata = state["metadata"]
    tokenizer_path = Path(metadata["tokenizer"])
    from llama_course.toyworld.assets import TOY_TOKENIZER_PATH

    tokenizer_spec = "toy" if tokenizer_path.resolve() == TOY_TOKENIZER_PATH else tokenizer_path.name
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(checkpoint / WEIGHTS_FILE, destination / WEIGHTS_FILE)
    if tokenizer_spec != "toy":
        shutil.copyfile(tokenizer_path, destination / tokenizer_spec)
    val_losses = [record["val_loss"] for record in read_metrics(run_dir) if "val_loss" in record]
    card = {
        "model_config": metadata["model_config"],
        "tokenizer": tokenizer_spec,
        "card": {
            "steps": state["step"],
            "training_tokens": state["tokens"],
            "validation_loss": val_losses[-1] if val_losses else None,
            "pretrain_config": metadata["pretrain_config"],
        },
    }
    write_model_config(destination, **card)
    model, tokenizer = load_pretrained_folder(destination)
    score = sampled_grammar_score(model, tokenizer, samples, temperature=1.0, seed=seed)
    card["card"]["parameters"] = sum(p.numel() for p in model.parameters())
    card["card"]["grammar_score"] = {"valid_sentences": score.valid_sentences, "sentences": score.sentences,
                                     "stories": score.stories, "fraction": score.fraction,
                                     "sampling": {"temperature": 1.0, "max_new_tokens": 160, "seed": seed}}
    write_model_config(destination, **card)
    return card


def rescore_pretrained(
    folder: str | Path, temperatures: list[float], *, samples: int = 128, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Measure the grammar score of an exported folder at several sampling temperatures; stored in its card."""
    from llama_course.measurements.story_samples import grammar_by_temperature

    folder = Path(folder)
    model, tokenizer = load_pretrained_folder(folder)
    scores = {
        str(temperature): {"valid_sentences": score.valid_sentences, "sentences": score.sentences,
                           "stories": score.stories, "fraction": score.fraction, "seed": seed}
        for temperature, score in grammar_by_temperature(model, tokenizer, temperatures, samples, seed=seed).items()
    }
    card = json.loads((folder / CONFIG_FILE).read_text())
    card["card"]["grammar_by_temperature"] = scores
    write_model_config(folder, **card)
    return scores


def consolidate_sharded(checkpoint: str | Path, destination: str | Path) -> Path:
    """A sharded (FSDP) checkpoint, or a run's newest, rewritten as `model.safetensors` + `trainer_state.json`
    (`training.checkpoint.consolidate_checkpoint`); only for checkpoints you wrote (their pickles are read)."""
    from llama_course.training.checkpoint import consolidate_checkpoint, read_trainer_state, resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint)
    model = Llama(ModelConfig.from_dict(read_trainer_state(checkpoint)["metadata"].get("model_config")))
    return consolidate_checkpoint(checkpoint, model, destination)
