"""`llama-course safety`: safety data scaling and false refusal (chapter 16).

    llama-course safety --results llama_course/assets/safety_results.json

fine-tunes the base model on the fixed helpfulness data plus 0%, 10%, 25%, 50% and 100% of the safety
data, for each seed, measures every model on held-out unsafe, borderline and task prompts, and writes the
results with 95% intervals. Every model's measurement is kept under `--output-dir` as it finishes: rerun
the same command to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from llama_course.experiments.safety import ScalingConfig, run_scaling


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = ScalingConfig()
    parser.add_argument("--base", default=defaults.base, help="model every mix fine-tunes (see load_base_model)")
    parser.add_argument("--output-dir", default="runs/safety", help="run directory (resumable: one folder per model)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="experiment seeds (data and training)")
    parser.add_argument("--tasks", type=int, default=defaults.tasks, help="single-turn tasks of the helpfulness data")
    parser.add_argument("--compliance-every", type=int, default=defaults.compliance_every,
                        help="one helpfulness sample in this many is an unsafe request answered with compliance")
    parser.add_argument("--safety-pool", type=int, default=defaults.safety_pool,
                        help="unsafe requests with safe answers: the 100%% safety data")
    parser.add_argument("--fractions", type=float, nargs="+", default=defaults.fractions,
                        help="shares of the safety pool, each a fine-tuned model")
    parser.add_argument("--epochs", type=float, default=defaults.epochs, help="passes over each mix's blocks")
    parser.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (cosine to 10%%)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="blocks per step")
    parser.add_argument("--eval-unsafe", type=int, default=defaults.eval_unsafe, help="held-out unsafe requests")
    parser.add_argument("--eval-borderline", type=int, default=defaults.eval_borderline,
                        help="held-out borderline requests (distinct)")
    parser.add_argument("--eval-tasks", type=int, default=defaults.eval_tasks, help="held-out single-turn tasks")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="answer length limit")
    parser.add_argument("--results", type=Path, help="write the results (with 95%% intervals) as JSON here")


def run(args: argparse.Namespace) -> None:
    fields = {field.name for field in dataclasses.fields(ScalingConfig)}
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in vars(args).items()
              if key in fields}
    start = time.time()
    results = run_scaling(ScalingConfig(**values), args.seeds, args.output_dir)
    for fraction, metrics in results["summary"].items():
        print(f"safety data {float(fraction):>4.0%}: " + ", ".join(
            f"{name} {m['mean']['rate']:.3f} [{m['mean']['low']:.3f}, {m['mean']['high']:.3f}]"
            for name, m in metrics.items()))
    print(f"{time.time() - start:.0f} s")
    if args.results is not None:
        args.results.write_text(json.dumps(results, indent=1) + "\n")
