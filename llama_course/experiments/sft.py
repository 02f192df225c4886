"""The measurements behind chapter 10, computed once by a package command and shipped as a small JSON.

`measure_and_export` fine-tunes the base model with the paper's prompt-masked loss, optionally also with the
loss on every token (the ablation), measures held-out helpfulness by task family for the base model and each
fine-tuned one, and writes the shipped SFT folder: the weights, `config.json` (with the card) and
`results.json` (loss curves, validation losses, helpfulness, sample answers).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import torch

from llama_course.alignment.sft import RESULTS_FILE, SFTConfig, export_model, load_base_model, run_sft
from llama_course.alignment.sft_eval import helpfulness_by_family
from llama_course.experiments.toyworld_data import sft_data, training_conversations
from llama_course.experiments.toyworld_judges import held_out_tasks, true_reward
from llama_course.training.metrics import read_metrics

EVAL_SEED = 12345  # held-out task prompts: another seed, and every training prompt removed
SAMPLES_PER_FAMILY = 2
JUDGE = functools.partial(true_reward, dtype=torch.float64)  # the toy world's exact helpfulness


def training_prompts(config: SFTConfig) -> set[str]:
    """Every user message of the SFT training mix of `config` (to keep evaluation prompts out of it)."""
    conversations = training_conversations(config.data)
    return {m["content"] for messages in conversations["messages"] for m in messages if m["role"] == "user"}


def _curves(run_dir: str | Path) -> dict[str, list]:
    records = read_metrics(run_dir)
    train = [r for r in records if "loss" in r]
    return {"step": [r["step"] for r in train], "loss": [r["loss"] for r in train], "lr": [r["lr"] for r in train],
            "val_loss": [r["val_loss"] for r in records if "val_loss" in r]}


def measure_and_export(
    config: SFTConfig, destination: str | Path, *, eval_tasks: int = 300, ablation: bool = False
) -> dict[str, Any]:
    """Train, measure and write the SFT folder (see the module docstring); returns the helpfulness summary."""
    tasks = held_out_tasks(eval_tasks, EVAL_SEED, exclude=training_prompts(config))
    base_model, tokenizer = load_base_model(config.base, config.data.block_size)
    helpfulness = {"base": helpfulness_by_family(base_model, tokenizer, tasks, JUDGE)[0]}
    variants = {"answers_only": dataclasses.replace(config, data=dataclasses.replace(config.data, answers_only=True))}
    if ablation:
        variants["all_tokens"] = dataclasses.replace(
            config, output_dir=f"{config.output_dir}-all-tokens",
            data=dataclasses.replace(config.data, answers_only=False))
    results: dict[str, Any] = {"config": config.to_dict(), "eval_tasks": len(tasks), "eval_seed": EVAL_SEED,
                               "curves": {}, "val_loss": {}, "samples": {}}
    shipped = None
    for name, variant in variants.items():
        _, model, _ = run_sft(variant, *sft_data(variant.data))
        scores, answered = helpfulness_by_family(model, tokenizer, tasks, JUDGE)
        helpfulness[name] = scores
        results["curves"][name] = _curves(variant.output_dir)
        results["val_loss"][name] = results["curves"][name]["val_loss"][-1]  # also right for a resumed, finished run
        results["samples"][name] = [dataclasses.asdict(item) for family in scores if family != "all"
                                    for item in [a for a in answered if a.family == family][:SAMPLES_PER_FAMILY]]
        if name == "answers_only":
            shipped = model
    results["helpfulness"] = helpfulness
    card = {"trained_from": config.base, "recipe": "Llama 2 section 3.1 scaled down: see sft.toml",
            "epochs": config.epochs, "steps": results["curves"]["answers_only"]["step"][-1],
            "validation_answer_loss": results["val_loss"]["answers_only"],
            "held_out_helpfulness": {"base": helpfulness["base"], "sft": helpfulness["answers_only"]},
            "parameters": sum(p.numel() for p in shipped.parameters())}
    export_model(shipped, destination, card)
    Path(destination, RESULTS_FILE).write_text(json.dumps(results, indent=1) + "\n")
    return {"helpfulness": helpfulness, "val_loss": results["val_loss"]}
