"""`llama-course ppo`: run PPO (Llama 2, section 3.2.3) and measure what chapter 13 plots.

    llama-course ppo --iterations 40 --save runs/ppo/policy
    torchrun --nproc_per_node 2 -m llama_course.cli ppo --iterations 40
    llama-course ppo --experiments llama_course/assets/ppo_results.json

The first runs PPO from the shipped SFT model with the shipped reward models (`--policy`, `--helpfulness-rm`
and `--safety-rm` take other folders) on toy-world prompts and writes
`runs/ppo/metrics.jsonl` (one line per iteration) and `runs/ppo/metrics.png`; `--save FOLDER` writes the
trained policy as a model folder that `load_base_model` reads. The second runs the same on 2 processes.
The third runs the chapter's experiments (`experiments.ppo.EXPERIMENTS`, about 17 minutes on a 2-core CPU) and
writes their curves, held-out measurements and sample answers to one JSON file (results only: no model is
written into the package).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from llama_course.alignment.ppo_train import REWARDS, PPOConfig, load_ppo_models
from llama_course.alignment.sft import export_model
from llama_course.config_files import (
    add_config_arguments,
    add_config_flag,
    add_config_flags,
    config_settings,
    load_config,
)
from llama_course.experiments.ppo import measure_experiments, plot_ppo_metrics, train_ppo
from llama_course.experiments.toyworld_judges import ppo_prompts
from llama_course.training.distributed import shutdown_distributed

PROMPTS, SAFETY_FRACTION = 2000, 0.25  # the training prompt pool and its share of safety prompts


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `llama-course ppo` flags (defaults: `PPOConfig`)."""
    defaults = PPOConfig()
    add_config_arguments(parser, defaults, name="PPOConfig")
    parser.add_argument("--policy", default="sft", help="shipped model name or exported folder to start from")
    parser.add_argument("--helpfulness-rm", default="helpfulness",
                        help="shipped RM name or a folder written by `train-rm --export`")
    parser.add_argument("--safety-rm", default="safety",
                        help="shipped RM name or a folder written by `train-rm --export`")
    add_config_flags(parser, defaults, int,
                     ("iterations", "batch_size", "minibatch_size", "max_new_tokens", "chunk_size", "seed"))
    add_config_flags(parser, defaults, float,
                     ("lr", "value_lr", "beta", "temperature", "missing_eos_penalty", "safety_threshold"))
    add_config_flag(parser, defaults, "reward", choices=REWARDS,
                    help="safety-first (Llama 2), helpfulness (RM alone), true (the toy world's oracle)")
    parser.add_argument("--prompts", type=int, default=PROMPTS, help="size of the training prompt pool")
    parser.add_argument("--safety-fraction", type=float, default=SAFETY_FRACTION,
                        help="share of unsafe/borderline prompts")
    add_config_flag(parser, defaults, "device", help="cpu, cuda, mps or auto")
    add_config_flag(parser, defaults, "dtype", choices=["float32", "float64"])
    parser.add_argument("--output-dir", default="runs/ppo", help="metrics.jsonl and metrics.png go here")
    parser.add_argument("--save", type=Path, metavar="FOLDER", help="write the trained policy into FOLDER")
    parser.add_argument("--experiments", type=Path, metavar="FILE",
                        help="run chapter 13's experiments (shipped models; only --seed and --output-dir apply) "
                             "and write their results to FILE")


def config_from_args(args: argparse.Namespace) -> PPOConfig:
    """The `PPOConfig` of parsed flags: the config file, then the flags, then --set (the last one wins)."""
    return load_config(PPOConfig, args.config, config_settings(args, PPOConfig()), args.overrides)


def run(args: argparse.Namespace) -> None:
    """Run `llama-course ppo`."""
    config = config_from_args(args)
    if args.experiments is not None:
        results = measure_experiments(args.output_dir, seed=config.seed)
        args.experiments.parent.mkdir(parents=True, exist_ok=True)
        args.experiments.write_text(json.dumps(results) + "\n")
        print(json.dumps({name: {"before": run["held_out_before"], "after": run["held_out_after"]}
                          for name, run in results["runs"].items()}, indent=1))
        return
    ppo(config, args.policy, args.helpfulness_rm, args.safety_rm, args.output_dir, prompts=args.prompts,
        safety_fraction=args.safety_fraction, save=args.save)


def ppo(config: PPOConfig, policy: str, helpfulness_rm: str, safety_rm: str, output_dir: str, *,
        prompts: int = PROMPTS, safety_fraction: float = SAFETY_FRACTION, save: Path | None = None) -> list[dict]:
    """PPO from `policy` with the two reward models on toy-world prompts (see the flags), each iteration's metrics
    printed as a JSON line; writes `output_dir/metrics.png` and, if `save` is given, the trained policy there.
    Returns the history."""
    models, tokenizer = load_ppo_models(policy, helpfulness_rm, safety_rm)
    history = train_ppo(models, tokenizer, ppo_prompts(prompts, config.seed + 1, safety_fraction), config,
                        output_dir, on_iteration=lambda row: print(json.dumps(row), flush=True))
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        plot_ppo_metrics(history, Path(output_dir) / "metrics.png")
        if save is not None:
            export_model(models.policy, save, {"trained_from": policy, "ppo": dataclasses.asdict(config)})
    shutdown_distributed()
    return history
