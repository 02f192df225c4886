"""Llama 1's thesis at laptop scale: for a fixed inference budget, a smaller model trained longer wins.

Llama 1 (section 1) argues against choosing a model size by training compute alone (Hoffmann et al.'s
compute-optimal rule): "the preferred model is not the fastest to train but the fastest at inference", and
"the performance of a 7B model continues to improve even after 1T tokens". This module trains a grid of
model sizes x token budgets on the toy stories with the pretraining recipe, every run its own cosine
schedule ending at its budget (as Chinchilla's runs do), and records per run:

- `training_flops` = `training_flops_per_token(config, block_size) * tokens` (6N + attention, see `mfu.py`);
- `inference_flops_per_token` = a third of the training FLOPs per token: one forward pass instead of a
  forward and a backward (2N + attention); what every generated token costs once the model is deployed;
- `val_loss` on held-out stories, and the `grammar_score` of sampled stories (`story_samples.py`).

One command regenerates the shipped table (`llama_course/assets/scaling_results.json`):

    llama-course scaling                       # the full grid: 2.5 minutes on one H200 GPU
    llama-course scaling --budgets 65536 131072 --models d32 d64 --output runs/scaling.json

A run already in the output file is skipped, so an interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch

from llama_course.config import PRESETS, ModelConfig, count_parameters
from llama_course.model import Llama
from llama_course.pretrained import ASSETS_DIR
from llama_course.training.mfu import training_flops_per_token

SHIPPED_RESULTS = ASSETS_DIR / "scaling_results.json"
_TOY = {"vocab_size": 1024, "multiple_of": 32, "max_seq_len": 512}
SCALING_MODELS: dict[str, ModelConfig] = {
    "d32": ModelConfig(dim=32, n_layers=2, n_heads=2, n_kv_heads=1, **_TOY),
    "d64": ModelConfig(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, **_TOY),
    "d128": PRESETS["tiny"],
    "d256": PRESETS["small"],
}
DEFAULT_BUDGETS = tuple(65_536 * 2**k for k in range(5))  # 65k ... 1M tokens
BLOCK_SIZE = 256
MICRO_BATCH = 8  # sequences per step: 2048 tokens per step at every size and budget
TOKENS_PER_STEP = MICRO_BATCH * BLOCK_SIZE
MIN_STEPS = 10


@dataclasses.dataclass(frozen=True)
class ScalingSettings:
    """What every run of the grid shares: the base model's recipe (assets/base/pretrain.toml)."""

    lr: float = 3e-3
    warmup_fraction: float = 0.1  # of each run's steps, at least 5 steps
    eval_batches: int = 16  # validation: 16 x 8 sequences of 256 tokens, the same for every run
    grammar_samples: int = 64  # stories sampled at temperature 1 per run (0: skip the grammar score)
    seed: int = 0
    device: str = "auto"

    def recipe(self) -> dict[str, Any]:
        """The settings that change results (all but the device), as stored in the results table."""
        return {key: value for key, value in dataclasses.asdict(self).items() if key != "device"}


def run_record(name: str, config: ModelConfig, tokens: int) -> dict[str, Any]:
    """The compute side of one run (no training needed): sizes, steps and FLOPs."""
    per_token = training_flops_per_token(config, BLOCK_SIZE)
    return {
        "model": name,
        "parameters": count_parameters(config),
        "non_embedding_parameters": count_parameters(config, include_embedding=False),
        "tokens": tokens,
        "steps": tokens // TOKENS_PER_STEP,
        "training_flops": per_token * tokens,
        "inference_flops_per_token": per_token // 3,
    }


def train_one(
    name: str, config: ModelConfig, tokens: int, data: tuple, output_dir: Path, settings: ScalingSettings
) -> dict[str, Any]:
    """Train model `name` for `tokens` training tokens and measure it; returns the run's record."""
    from llama_course.measurements.story_samples import sampled_grammar_score
    from llama_course.training.trainer import Trainer, TrainerConfig

    tokenizer, train, validation = data
    record = run_record(name, config, tokens)
    steps = record["steps"]
    trainer_config = TrainerConfig(
        steps=steps, micro_batch_size=MICRO_BATCH, lr=settings.lr,
        warmup_steps=max(5, int(settings.warmup_fraction * steps)), eval_every=0,
        eval_batches=settings.eval_batches, checkpoint_every=0, keep_checkpoints=1, log_every=max(1, steps // 50),
        seed=settings.seed, device=settings.device, autocast="off", progress=False,
    )
    torch.manual_seed(settings.seed)
    model = Llama(config)
    trainer = Trainer(model, train, trainer_config, output_dir / f"{name}-{tokens}", eval_data=validation,
                      columns=["input_ids", "labels", "document_ids"])
    started = time.perf_counter()
    result = trainer.fit()
    record["seconds"] = round(time.perf_counter() - started, 1)
    record["val_loss"] = result.val_loss
    record["device"] = str(trainer.context.device)
    if settings.grammar_samples:
        score = sampled_grammar_score(trainer.raw_model.eval(), tokenizer, settings.grammar_samples,
                                      seed=settings.seed)
        record["grammar_score"] = score.fraction
    return record


def run_experiment(
    output: str | Path = SHIPPED_RESULTS,
    models: list[str] | None = None,
    budgets: list[int] | None = None,
    settings: ScalingSettings = ScalingSettings(),
    work_dir: str | Path = "runs/scaling",
) -> dict[str, Any]:
    """Train every (model, budget) pair missing from `output`, rewriting the JSON table after each run."""
    from llama_course.experiments.toyworld_data import pretraining_data
    from llama_course.training.pretrain import DataConfig

    models = list(models or SCALING_MODELS)
    budgets = sorted(budgets or DEFAULT_BUDGETS)
    unknown = [name for name in models if name not in SCALING_MODELS]
    if unknown:
        raise ValueError(f"unknown scaling models {unknown}; choose from {list(SCALING_MODELS)}")
    too_small = [tokens for tokens in budgets if tokens < MIN_STEPS * TOKENS_PER_STEP]
    if too_small:
        raise ValueError(f"budgets {too_small} are under {MIN_STEPS} steps of {TOKENS_PER_STEP} tokens; "
                         f"use at least {MIN_STEPS * TOKENS_PER_STEP} tokens")
    output = Path(output)
    shared = settings.recipe()
    table = load_results(output) if output.exists() else {"settings": shared, "runs": []}
    if table["settings"] != shared:
        raise ValueError(f"{output} was made with settings {table['settings']}, not {shared}; "
                         "write to another --output")
    done = {(run["model"], run["tokens"]) for run in table["runs"]}
    # Enough stories for the largest budget without repeating one (a story is about 65 tokens).
    documents = max(budgets) // 50 + 1_000
    data = pretraining_data(DataConfig(documents=documents, validation_documents=500, block_size=BLOCK_SIZE))
    for tokens in budgets:  # the cheapest budgets first: an interrupted grid is complete up to some budget
        for name in models:
            if (name, tokens) in done:
                continue
            record = train_one(name, SCALING_MODELS[name], tokens, data, Path(work_dir), settings)
            table["runs"].append(record)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(json.dumps(table, indent=1) + "\n")
            print(json.dumps(record))
    return table


def load_results(path: str | Path = SHIPPED_RESULTS) -> dict[str, Any]:
    """A results table: {"settings": ..., "runs": [one record per (model, tokens)]}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no scaling results at {str(path)!r}; "
                                "run `llama-course scaling`")
    return json.loads(path.read_text())


def smaller_model_wins(runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs (smaller, larger) where the smaller model reaches a LOWER validation loss than the larger one,
    while using at most the larger one's training compute: Llama 1's case, cheaper to serve and no worse."""
    pairs = []
    for small in runs:
        for large in runs:
            if (small["parameters"] < large["parameters"] and small["val_loss"] < large["val_loss"]
                    and small["training_flops"] <= large["training_flops"]):
                pairs.append((small, large))
    return pairs


def best_loss_per_compute(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The compute frontier: runs whose loss no cheaper-to-train run beats, in order of training FLOPs."""
    frontier, best = [], float("inf")
    for run in sorted(runs, key=lambda run: run["training_flops"]):
        if run["val_loss"] < best:
            frontier.append(run)
            best = run["val_loss"]
    return frontier


def plot_scaling(table: dict[str, Any]):
    """Validation loss against training FLOPs (one line per model) and against inference FLOPs per token
    (one line per token budget). Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    runs = table["runs"]
    figure, (train_axis, serve_axis) = plt.subplots(1, 2, figsize=(8, 3.4))
    models = sorted({run["model"] for run in runs}, key=lambda name: SCALING_MODELS[name].dim)
    for name in models:
        line = sorted((run for run in runs if run["model"] == name), key=lambda run: run["tokens"])
        label = f"{name} ({line[0]['parameters'] / 1e6:.2f}M params)"
        train_axis.plot([r["training_flops"] for r in line], [r["val_loss"] for r in line], "o-", label=label)
    frontier = best_loss_per_compute(runs)
    train_axis.plot([r["training_flops"] for r in frontier], [r["val_loss"] for r in frontier], "k--", lw=1,
                    label="best loss for the compute")
    train_axis.set(xscale="log", xlabel="training FLOPs", ylabel="validation loss (nats/token)",
                   title="training cost: size x tokens")
    train_axis.legend(fontsize=8)
    for tokens in sorted({run["tokens"] for run in runs}):
        line = sorted((run for run in runs if run["tokens"] == tokens), key=lambda run: run["parameters"])
        serve_axis.plot([r["inference_flops_per_token"] for r in line], [r["val_loss"] for r in line], "o-",
                        label=f"{tokens / 1e6:.2g}M tokens")
    serve_axis.set(xscale="log", xlabel="inference FLOPs per generated token", ylabel="validation loss",
                   title="serving cost: the same runs by model size")
    serve_axis.legend(fontsize=8, title="training tokens")
    figure.tight_layout()
    return figure
