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
from llama_course.config_files import (
    add_config_arguments,
    add_config_flag,
    add_config_flags,
    build_config,
    config_settings,
    config_values,
)
from llama_course.experiments.toyworld_data import reward_data
from llama_course.paper import MARGINS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `llama-course train-rm` flags (defaults: `RewardConfig`)."""
    defaults = RewardConfig()
    add_config_arguments(parser, defaults, name="RewardConfig", notes={"output_dir": "unset: runs/rm-CRITERION"})
    add_config_flag(parser, defaults, "criterion", choices=["helpfulness", "safety"])
    add_config_flag(parser, defaults, "margin", choices=list(MARGINS), help="Table 27 margin")
    add_config_flag(parser, defaults, "head", choices=HEADS, help="scalar (the paper's regression head) or "
                    "likelihood (scores the answer's log-probability under the backbone)")
    add_config_flag(parser, defaults, "base", help="auto (sft if shipped, else base), a shipped model name, an "
                    "exported folder, a training run, or random-tiny")
    add_config_flags(parser, defaults, int, ("pairs", "sampled_pairs", "held_out", "batch_size", "seed"))
    add_config_flag(parser, defaults, "helpfulness_mix", type=float,
                    help="safety RM: share of helpfulness pairs in its data (paper: 0.1)")
    add_config_flag(parser, defaults, "epochs", type=float, help="passes over the pairs (paper: 1)")
    add_config_flag(parser, defaults, "lr", type=float, help="peak learning rate (cosine to 10%%)")
    add_config_flag(parser, defaults, "device", help="cpu, cuda, mps or auto")
    parser.add_argument("--output-dir", help="run directory (default runs/rm-CRITERION)")
    parser.add_argument("--export", type=Path, metavar="FOLDER", help="write the trained RM into FOLDER")
    parser.add_argument("--margin-study", action="store_true",
                        help="train with every margin on the same pairs; write margins.json next to --export")


def config_from_args(args: argparse.Namespace) -> RewardConfig:
    """The `RewardConfig` of parsed `llama-course train-rm` flags: file, then flags, then --set; an unset output_dir
    is runs/rm-CRITERION."""
    values = config_values(args.config, config_settings(args, RewardConfig()), args.overrides)
    values.setdefault("output_dir", f"runs/rm-{values.get('criterion', RewardConfig.criterion)}")
    return build_config(RewardConfig, values)


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
