"""`llama-course train-rm`: train a helpfulness or safety reward model (chapter 11; `alignment.reward_train`
holds the recipe).

    llama-course train-rm --criterion helpfulness --margin-study --export llama_course/assets/rm_helpfulness
    llama-course train-rm --criterion safety --export llama_course/assets/rm_safety

train the two shipped RMs from the SFT model (the base model while no SFT model is shipped); the first also
trains with no / small / large margin on the same data and writes `margins.json` for chapter 11.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llama_course.alignment.reward import HEADS
from llama_course.alignment.reward_train import (
    RewardConfig,
    held_out_summary,
    margin_study,
    save_reward_model,
    train_reward_model,
)
from llama_course.arguments import add_config_flags
from llama_course.experiments.toyworld_data import reward_data
from llama_course.paper import MARGINS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `llama-course train-rm` flags (defaults: `RewardConfig`)."""
    defaults = RewardConfig()
    parser.add_argument("--criterion", choices=["helpfulness", "safety"], default=defaults.criterion)
    parser.add_argument("--margin", choices=list(MARGINS), default=defaults.margin, help="Table 27 margin")
    parser.add_argument("--head", choices=HEADS, default=defaults.head, help="scalar (the paper's regression "
                        "head) or likelihood (scores the answer's log-probability under the backbone)")
    parser.add_argument("--base", default=defaults.base, help="auto (sft if shipped, else base), a shipped model "
                        "name, an exported folder, a training run, or random-tiny")
    add_config_flags(parser, defaults, int, ("pairs", "sampled_pairs", "held_out", "batch_size", "seed"))
    parser.add_argument("--helpfulness-mix", type=float, default=defaults.helpfulness_mix,
                        help="safety RM: share of helpfulness pairs in its data (paper: 0.1)")
    parser.add_argument("--epochs", type=float, default=defaults.epochs, help="passes over the pairs (paper: 1)")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (cosine to 10%%)")
    parser.add_argument("--device", default=defaults.device, help="cpu, cuda, mps or auto")
    parser.add_argument("--output-dir", help="run directory (default runs/rm-CRITERION)")
    parser.add_argument("--export", type=Path, metavar="FOLDER", help="write the trained RM into FOLDER")
    parser.add_argument("--margin-study", action="store_true",
                        help="train with every margin on the same pairs; write margins.json next to --export")


def config_from_args(args: argparse.Namespace) -> RewardConfig:
    """The `RewardConfig` of parsed `llama-course train-rm` flags."""
    return RewardConfig(criterion=args.criterion, margin=args.margin, head=args.head, base=args.base,
                        pairs=args.pairs, sampled_pairs=args.sampled_pairs, held_out=args.held_out,
                        batch_size=args.batch_size, helpfulness_mix=args.helpfulness_mix, seed=args.seed,
                        epochs=args.epochs, lr=args.lr, device=args.device,
                        output_dir=args.output_dir or f"runs/rm-{args.criterion}")


def run(args: argparse.Namespace) -> None:
    """Run `llama-course train-rm`."""
    config = config_from_args(args)
    if args.margin_study:
        study = margin_study(config, reward_data(config), args.export)
        for margin, result in study["margins"].items():
            accuracies = {s: r["accuracy"] for s, r in result["by_strength"].items()}
            print(f"margin {margin}: held-out accuracy {result['accuracy']:.3f}, by strength {accuracies}")
        return
    model, _, card = train_reward_model(config, reward_data(config))
    if args.export is not None:
        save_reward_model(model, args.export, card | {"held_out": held_out_summary(card["held_out"])})
    print(json.dumps({"base": config.resolved_base(), "steps": card["steps"], "final_loss": card["final_loss"],
                      **held_out_summary(card["held_out"])}, indent=1))
