"""The checkpoints shipped inside the package, so that a chapter never waits for an earlier one to train.

Each shipped model is a folder `llama_course/assets/<name>/` holding

- `model.safetensors`: the weights, with Meta's parameter names (float32);
- `config.json`: `model_config` (a `ModelConfig`), `tokenizer` ("toy" for the shipped toy tokenizer, or a
  file name inside the folder), and `card` (how it was trained and how it scores);
- the config file that reproduces it, e.g. `pretrain.toml` for the base model.

    from llama_course.pretrained import load_pretrained
    model, tokenizer = load_pretrained("base")

A model is exported from a training run with

    python -m llama_course.pretrained export runs/base-tiny llama_course/assets/base

which copies the run's final weights, measures the validation loss and the grammar score of samples, and
writes `config.json`.
"""

from __future__ import annotations

import argparse
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


def _tokenizer(spec: str, folder: Path) -> Tokenizer:
    from llama_course.toyworld import toy_tokenizer

    if spec == "toy":
        return toy_tokenizer()
    if not isinstance(spec, str) or Path(spec).name != spec:
        raise ValueError(f"tokenizer={spec!r} in {folder / CONFIG_FILE} must be 'toy' or a file name inside {folder}")
    return Tokenizer(folder / spec)


def load_pretrained_folder(
    folder: str | Path, *, device: str | torch.device = "cpu", attention_backend: str | None = None
) -> tuple[Llama, Tokenizer]:
    """The model of an exported folder (`model.safetensors` + `config.json`) in eval mode, and its tokenizer."""
    card, config, weights = read_model_folder(
        folder, missing=f"{str(folder)!r} needs {CONFIG_FILE} and {WEIGHTS_FILE}: export a run into it with "
        "`python -m llama_course.pretrained export RUN_DIR FOLDER`")
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from llama_course.arguments import bounded_number

    commands = parser.add_subparsers(dest="action", required=True)
    consolidate = commands.add_parser(
        "consolidate", help="rewrite a sharded (FSDP) checkpoint as one safetensors file that is safe to share")
    consolidate.add_argument("checkpoint", type=Path, help="a sharded checkpoint directory, or a run directory")
    consolidate.add_argument("destination", type=Path, help="a new folder (model.safetensors + trainer_state.json)")
    consolidate.add_argument("--trust-pickle", action="store_true",
                             help="confirm that you wrote the checkpoint: its .metadata is a pickle that can run code")
    export = commands.add_parser("export", help="copy a pretraining run's final weights into a shipped folder")
    export.add_argument("run_dir", type=Path, help="the pretraining run's output directory")
    export.add_argument("destination", type=Path, help="e.g. llama_course/assets/base")
    export.add_argument("--samples", type=bounded_number(int, 1), default=256,
                        help="stories sampled for the grammar score")
    export.add_argument("--seed", type=int, default=0, help="sampling seed")
    rescore = commands.add_parser("rescore", help="grammar score of an exported folder at several temperatures")
    rescore.add_argument("folder", type=Path, help="e.g. llama_course/assets/base")
    rescore.add_argument("--temperatures", type=bounded_number(float, 0), nargs="+", default=[1.0, 0.8, 0.6])
    rescore.add_argument("--samples", type=bounded_number(int, 1), default=128, help="stories sampled per temperature")
    rescore.add_argument("--seed", type=int, default=0, help="sampling seed")


def run(args: argparse.Namespace) -> None:
    if args.action == "consolidate":
        if not args.trust_pickle:
            raise ValueError(f"reading {str(args.checkpoint)!r} unpickles its Distributed Checkpoint metadata, which "
                             "can run code: pass --trust-pickle if you wrote it yourself")
        print(f"wrote {consolidate_sharded(args.checkpoint, args.destination)}: model.safetensors and "
              "trainer_state.json, loadable with --checkpoint / load_trained_model")
        return
    if args.action == "rescore":
        for temperature, score in rescore_pretrained(args.folder, args.temperatures, samples=args.samples,
                                                     seed=args.seed).items():
            print(f"temperature {temperature}: grammar score {score['fraction']:.3f} "
                  f"({score['valid_sentences']}/{score['sentences']} sentences of {score['stories']} stories)")
        return
    card = export_pretrained(args.run_dir, args.destination, samples=args.samples, seed=args.seed)["card"]
    score = card["grammar_score"]
    print(f"exported step {card['steps']} ({card['training_tokens']:,} tokens) to {args.destination}: "
          f"validation loss {card['validation_loss']}, grammar score {score['fraction']:.3f} "
          f"({score['valid_sentences']}/{score['sentences']} sentences of {score['stories']} samples)")


if __name__ == "__main__":
    main_parser = argparse.ArgumentParser(prog="python -m llama_course.pretrained", description=__doc__.split("\n")[0])
    add_arguments(main_parser)
    run(main_parser.parse_args())
