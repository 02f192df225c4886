"""`llama-course rejection-sample`: run rejection sampling fine-tuning and measure what chapter 12 plots.

    llama-course rejection-sample --iterations 2 --prompts 128 --samples 8
    llama-course rejection-sample --figures llama_course/assets/rejection_results.json

The first runs the loop of `alignment.rejection.rejection_sampling` from the shipped SFT model with the shipped
helpfulness RM on toy-world tasks and prints held-out RM and true reward per iteration. The second also
measures chapter 12's figures (`experiments.rejection_sampling.measure_figures`) and writes them all to one
JSON file (results only: no checkpoint is written into the package).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from llama_course.alignment.rejection import RejectionConfig, reward_model_scorer
from llama_course.alignment.reward_train import load_reward_model
from llama_course.alignment.sft import export_model, load_base_model
from llama_course.config_files import (
    add_config_arguments,
    add_config_flag,
    add_config_flags,
    config_settings,
    load_config,
)
from llama_course.experiments.rejection_sampling import measure_figures, rejection_sampling
from llama_course.experiments.toyworld_judges import true_reward
from llama_course.toyworld import generate_tasks

PROMPTS, HELD_OUT = 128, 32  # toy-world training and held-out tasks


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `llama-course rejection-sample` flags (defaults: `RejectionConfig`)."""
    defaults = RejectionConfig()
    add_config_arguments(parser, defaults, name="RejectionConfig")
    parser.add_argument("--policy", default="sft", help="shipped model name or exported folder that samples")
    parser.add_argument("--reward", default="helpfulness",
                        help="shipped RM (helpfulness, safety), an RM folder, or 'true' for the toy world's oracle")
    parser.add_argument("--student", help="distillation: a model fine-tuned on the policy's best answers instead")
    parser.add_argument("--prompts", type=int, default=PROMPTS, help="training prompts (toy-world tasks)")
    parser.add_argument("--held-out", type=int, default=HELD_OUT, help="held-out prompts for greedy evaluation")
    add_config_flags(parser, defaults, int,
                     ("iterations", "samples", "max_new_tokens", "steps", "batch_size", "block_size", "seed"))
    add_config_flag(parser, defaults, "temperature", type=float)
    add_config_flag(parser, defaults, "lr", type=float, help="peak learning rate (cosine to 10%%)")
    parser.add_argument("--no-pool", dest="pool", action="store_const", const=False,
                        help="train each iteration on its own best answers only (pool = false)")
    add_config_flag(parser, defaults, "device", help="cpu, cuda, mps or auto")
    parser.add_argument("--output-dir", default="runs/rejection", help="fine-tuning runs (checkpoints, metrics)")
    parser.add_argument("--figure-prompts", type=int, default=16, help="held-out prompts behind Figures 7 and 8")
    parser.add_argument("--figures", type=Path, metavar="FILE", help="also measure chapter 12's figures into FILE")
    parser.add_argument("--export", type=Path, metavar="FOLDER",
                        help="write the tuned model into FOLDER (weights; config.json whose card holds the history)")


def config_from_args(args: argparse.Namespace) -> RejectionConfig:
    """The `RejectionConfig` of parsed flags: the config file, then the flags, then --set (the last one wins)."""
    return load_config(RejectionConfig, args.config, config_settings(args, RejectionConfig()), args.overrides)


def toy_world_setup(policy: str, reward: str, prompts: int, held_out: int, seed: int):
    """The policy (a model name or folder) and its tokenizer, the judge named by `reward`, and the toy-world training
    and held-out task prompts."""
    model, tokenizer = load_base_model(policy)
    scorer = true_reward if reward == "true" else reward_model_scorer(load_reward_model(reward)[0], tokenizer)
    train = list(generate_tasks(prompts, seed=seed + 2000)["prompt"])
    training = set(train)
    return model, tokenizer, scorer, train, [p for p in generate_tasks(held_out, seed=seed + 3000)["prompt"]
                                             if p not in training]


def rejection_sample(config: RejectionConfig, policy: str, reward: str, output_dir: str, *, prompts: int = PROMPTS,
                     held_out: int = HELD_OUT, student: str | None = None, export: Path | None = None) -> list[dict]:
    """Rejection sampling fine-tuning of `policy` on toy-world tasks, judged by `reward` (see the flags); writes the
    tuned model into `export` if given; returns the history (held-out RM and true reward by iteration)."""
    model, tokenizer, scorer, train, held = toy_world_setup(policy, reward, prompts, held_out, config.seed)
    student_model = load_base_model(student)[0] if student else None
    tuned, history = rejection_sampling(model, scorer, tokenizer, train, held, config, output_dir,
                                        student=student_model)
    if export is not None:
        export_model(tuned, export, {"policy": policy, "reward": reward, "student": student, "prompts": len(train),
                                     "held_out": len(held), "rejection_config": dataclasses.asdict(config),
                                     "history": history})
    return history


def run(args: argparse.Namespace) -> None:
    """Run `llama-course rejection-sample`."""
    if args.figures is not None and args.export is not None:
        raise ValueError("--figures writes results only; run --export FOLDER without --figures to keep the model")
    config = config_from_args(args)
    if args.figures is None:
        history = rejection_sample(config, args.policy, args.reward, args.output_dir, prompts=args.prompts,
                                   held_out=args.held_out, student=args.student, export=args.export)
        print(json.dumps(history, indent=1))
        return
    policy, tokenizer, scorer, prompts, held_out = toy_world_setup(args.policy, args.reward, args.prompts,
                                                                   args.held_out, config.seed)
    results = measure_figures(policy, scorer, tokenizer, prompts, held_out, config, args.output_dir,
                              figure_prompts=args.figure_prompts)
    args.figures.parent.mkdir(parents=True, exist_ok=True)
    args.figures.write_text(json.dumps(results) + "\n")
    print(json.dumps({"iterations": results["iterations"], "distillation": results["distillation"],
                      "seconds": results["seconds"]}, indent=1))
