"""`llama-course scaling`: Llama 1's thesis at laptop scale, a grid of model sizes x token budgets
(`experiments.scaling` holds the runs).

    llama-course scaling                       # the full grid: 2.5 minutes on one H200 GPU
    llama-course scaling --budgets 65536 131072 --models d32 d64 --output runs/scaling.json
"""

import argparse
from pathlib import Path

from llama_course.experiments.scaling import (
    DEFAULT_BUDGETS,
    SCALING_MODELS,
    SHIPPED_RESULTS,
    ScalingSettings,
    run_experiment,
    smaller_model_wins,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ScalingSettings()
    parser.add_argument("--output", type=Path, default=SHIPPED_RESULTS, help="results table (JSON) to extend")
    parser.add_argument("--models", nargs="+", choices=list(SCALING_MODELS), help="model sizes (default: all)")
    parser.add_argument("--budgets", nargs="+", type=int, help=f"training tokens per run (default {DEFAULT_BUDGETS})")
    parser.add_argument("--work-dir", default="runs/scaling", help="checkpoints and metrics of every run")
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, mps")
    parser.add_argument("--grammar-samples", type=int, default=defaults.grammar_samples,
                        help="stories sampled per run for the grammar score (0: skip)")


def run(args: argparse.Namespace) -> None:
    settings = ScalingSettings(device=args.device, grammar_samples=args.grammar_samples)
    table = run_experiment(args.output, args.models, args.budgets, settings, args.work_dir)
    for small, large in smaller_model_wins(table["runs"]):
        print(f"{small['model']} on {small['tokens']:,} tokens (loss {small['val_loss']:.3f}) beats "
              f"{large['model']} on {large['tokens']:,} tokens (loss {large['val_loss']:.3f})")

