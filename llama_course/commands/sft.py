"""`llama-course sft`: supervised fine-tuning of the base model (chapter 10; `alignment.sft` holds the method).

    llama-course sft --config llama_course/assets/sft/sft.toml --export llama_course/assets/sft --ablation

trains, then with `--export` measures held-out helpfulness and writes the model folder (`experiments.sft`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llama_course.alignment.sft import RANDOM_BASE, SFTConfig, run_sft
from llama_course.config_files import add_config_arguments, config_values, flag_settings
from llama_course.experiments.sft import measure_and_export
from llama_course.experiments.toyworld_data import sft_data


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `llama-course sft` flags (they override the config file; --set overrides them)."""
    add_config_arguments(parser, SFTConfig(), name="SFT config", skip=("trainer.steps",),
                         notes={"epochs": "decides trainer.steps"})
    parser.add_argument("--output-dir", help="run directory: checkpoints and metrics.jsonl")
    parser.add_argument("--base", help=f"shipped model name, exported folder, run directory, or {RANDOM_BASE}")
    parser.add_argument("--epochs", type=float, help="passes over the packed SFT blocks (paper: 2)")
    parser.add_argument("--lr", type=float, help="peak learning rate (cosine to 10%%)")
    parser.add_argument("--batch-size", type=int, help="blocks per micro-batch")
    parser.add_argument("--block-size", type=int, help="tokens per packed block")
    parser.add_argument("--all-tokens", dest="answers_only", action="store_const", const=False,
                        help="loss on every token (the ablation; data.answers_only = false)")
    parser.add_argument("--no-document-masking", dest="document_masking", action="store_const", const=False,
                        help="let packed conversations attend to each other (positions not reset)")
    parser.add_argument("--device", help="auto, cpu, cuda, mps")
    parser.add_argument("--seed", type=int, help="data order seed")
    parser.add_argument("--export", type=Path, metavar="FOLDER",
                        help="after training, measure helpfulness and write the model folder (weights, config.json)")
    parser.add_argument("--ablation", action="store_true",
                        help="with --export: also train with the loss on all tokens and write results.json")
    parser.add_argument("--eval-tasks", type=int, default=300, help="held-out tasks for the helpfulness measure")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config (JSON) and exit")


FLAG_KEYS = {"output_dir": "output_dir", "base": "base", "epochs": "epochs", "lr": "trainer.lr",
             "batch_size": "trainer.micro_batch_size", "block_size": "data.block_size", "device": "trainer.device",
             "seed": "trainer.seed", "answers_only": "data.answers_only", "document_masking": "data.document_masking"}


def config_from_args(args: argparse.Namespace) -> SFTConfig:
    """The `SFTConfig` of parsed flags: the config file, then the flags, then --set (the last one wins)."""
    return SFTConfig.from_dict(config_values(args.config, flag_settings(args, FLAG_KEYS), args.overrides))


def run(args: argparse.Namespace) -> None:
    """Run `llama-course sft`: train, then optionally measure and export (see the module docstring)."""
    config = config_from_args(args)
    if args.print_config:
        print(json.dumps(config.to_dict(), indent=2))
        return
    if args.ablation and args.export is None:
        raise ValueError("--ablation writes its results next to the exported model: add --export FOLDER")
    if args.export is None:
        result, _, _ = run_sft(config, *sft_data(config.data))
        loss = "no validation loss" if result.val_loss is None else f"validation loss {result.val_loss:.4f}"
        print(f"finished step {result.step}: {loss} ({result.checkpoint})")
        return
    summary = measure_and_export(config, args.export, eval_tasks=args.eval_tasks, ablation=args.ablation)
    print(json.dumps(summary, indent=1))
