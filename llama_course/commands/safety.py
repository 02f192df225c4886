"""`llama-course safety [PART]`: chapter 16's safety experiments, one part at a time.

    llama-course safety --seeds 0 1 2 --results llama_course/assets/safety_results.json
    llama-course safety distill --seeds 0 1 2 --results llama_course/assets/safety_distillation_results.json
    llama-course safety pretraining --results llama_course/assets/safety_pretraining_results.json
    llama-course safety redteam --seeds 0 1 2 --results llama_course/assets/safety_redteam_results.json

`scaling` (the default part) fine-tunes the SFT model on the fixed helpfulness data plus 0%, 10%, 25%, 50% and
100% of the safety data, for each seed; `distill` distils the 0% model of each seed with a plain and a
targeted safety preprompt (context distillation). Each model is measured on held-out unsafe, borderline and
task prompts and the results are written with 95% intervals. `pretraining` counts the unsafe documents of
the base model's corpus and the unsafe continuations of toxic openings by the base and SFT models.
`redteam` attacks the SFT model automatically for `--rounds` rounds, trains it on safe answers to the attacks
that succeeded, and attacks both models afresh. Every measurement is kept under `--output-dir` (`scaling/`,
`distill/`, `pretraining/`, `redteam/`) as it finishes: rerun the same command to resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from llama_course.experiments.safety import ScalingConfig, run_scaling
from llama_course.experiments.safety_distillation import DistillationConfig, run_distillation
from llama_course.experiments.safety_pretraining import PretrainingSafetyConfig, run_pretraining_safety
from llama_course.experiments.safety_redteam import RedTeamConfig, run_redteam

PARTS = ("scaling", "distill", "pretraining", "redteam")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults, distill, redteam = ScalingConfig(), DistillationConfig(), RedTeamConfig()
    parser.add_argument("part", nargs="?", choices=PARTS, default="scaling",
                        help="which experiment: safety data scaling (default), context distillation, the "
                        "pretraining data and toxic continuations, or automated red teaming")
    parser.add_argument("--base", default=defaults.base, help="model every mix fine-tunes (see load_base_model)")
    parser.add_argument("--output-dir", type=Path, default=Path("runs/safety"),
                        help="run directory (resumable: one folder per model)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="experiment seeds (data and training)")
    parser.add_argument("--tasks", type=int, default=defaults.tasks, help="single-turn tasks of the helpfulness data")
    parser.add_argument("--compliance-every", type=int, default=defaults.compliance_every,
                        help="one helpfulness sample in this many is an unsafe request answered with compliance")
    parser.add_argument("--safety-pool", type=int, default=defaults.safety_pool,
                        help="unsafe requests with safe answers: the 100%% safety data")
    parser.add_argument("--fractions", type=float, nargs="+", default=defaults.fractions,
                        help="shares of the safety pool, each a fine-tuned model (scaling)")
    parser.add_argument("--epochs", type=float, help=f"passes over each mix's blocks (default {defaults.epochs:g}; "
                        f"redteam's safety round {redteam.epochs:g})")
    parser.add_argument("--lr", type=float, help=f"peak learning rate, cosine to 10%% (default {defaults.lr:g}; "
                        f"redteam's safety round {redteam.lr:g})")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="blocks per step")
    parser.add_argument("--eval-unsafe", type=int, default=defaults.eval_unsafe, help="held-out unsafe requests")
    parser.add_argument("--eval-borderline", type=int, default=defaults.eval_borderline,
                        help="held-out borderline requests (distinct)")
    parser.add_argument("--eval-tasks", type=int, default=defaults.eval_tasks, help="held-out single-turn tasks")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens, help="answer length limit")
    for kind in ("unsafe", "borderline", "tasks"):
        parser.add_argument(f"--distill-{kind}", type=int, default=getattr(distill, kind),
                            help=f"{kind} prompts answered with a preprompt (distill)")
    pretraining = PretrainingSafetyConfig()
    parser.add_argument("--openings", type=int, default=pretraining.openings,
                        help="toxic openings each model continues (pretraining)")
    parser.add_argument("--continuation-tokens", type=int, default=pretraining.max_new_tokens,
                        help="length of each continuation (pretraining)")
    parser.add_argument("--models", nargs="+", default=pretraining.models,
                        help="shipped models continuing the openings, the first the reference (pretraining)")
    parser.add_argument("--rounds", type=int, default=redteam.rounds, help="attack rounds (redteam)")
    parser.add_argument("--attempts", type=int, default=redteam.attempts, help="attacks asked per round (redteam)")
    parser.add_argument("--tasks-per-attack", type=int, default=redteam.tasks_per_attack,
                        help="normal tasks per safe answer in the safety round (redteam)")
    parser.add_argument("--results", type=Path, help="write the results (with 95%% intervals) as JSON here")


def _interval(metric: dict[str, Any]) -> str:
    mean = metric["mean"]
    return f"{mean['rate']:.3f} [{mean['low']:.3f}, {mean['high']:.3f}]"


def run(args: argparse.Namespace) -> None:
    fields = {field.name for field in dataclasses.fields(ScalingConfig)}
    values = {key: tuple(value) if isinstance(value, list) else value for key, value in vars(args).items()
              if key in fields and value is not None}
    scaling = ScalingConfig(**values)
    start = time.time()
    if args.part == "scaling":
        results = run_scaling(scaling, args.seeds, args.output_dir / "scaling")
        rows = {f"safety data {float(fraction):>4.0%}": metrics for fraction, metrics in results["summary"].items()}
    elif args.part == "pretraining":
        results = run_pretraining_safety(PretrainingSafetyConfig(args.openings, args.continuation_tokens,
                                                                 tuple(args.models)), args.output_dir / "pretraining")
        corpus = results["corpus"]
        for kind in ("unsafe", "risk_word"):
            share = corpus[f"{kind}_documents"]
            print(f"{corpus['documents']:,} documents, {kind.replace('_', ' ')}: {share['rate']:.4%} "
                  f"[{share['low']:.4%}, {share['high']:.4%}]")
        rows = {f"unsafe continuations {name:>5}": {"rate": {"mean": measured["unsafe"]}}
                for name, measured in results["continuations"].items()}
    elif args.part == "redteam":
        recipe = {name: getattr(args, name) for name in ("epochs", "lr") if getattr(args, name) is not None}
        config = RedTeamConfig(base=args.base, rounds=args.rounds, attempts=args.attempts,
                               tasks_per_attack=args.tasks_per_attack, batch_size=args.batch_size,
                               max_new_tokens=args.max_new_tokens, eval=scaling, **recipe)
        results = run_redteam(config, args.seeds, args.output_dir / "redteam")
        summary = results["summary"]
        for name in ("red_team", "fresh_original", "fresh_retrained"):
            print(f"{name:>15} success rate per round: "
                  + ", ".join(f"{r['rate']:.3f}" for r in summary[name]["success_rate"]))
        rows = {"fresh attack replayed": {k: {"mean": v} for k, v in summary["fresh_replay"].items()}}
        rows |= {f"cost {metric}": {"difference": {"mean": values["difference"]}}
                 for metric, values in summary["costs"].items()}
    else:
        config = DistillationConfig(scaling=scaling, unsafe=args.distill_unsafe, borderline=args.distill_borderline,
                                    tasks=args.distill_tasks, epochs=scaling.epochs, lr=scaling.lr,
                                    batch_size=args.batch_size)
        results = run_distillation(config, args.seeds, args.output_dir)
        rows = {f"distillation {variant:>8}": metrics for variant, metrics in results["summary"].items()}
    for label, metrics in rows.items():
        print(f"{label}: " + ", ".join(f"{name} {_interval(metric)}" for name, metric in metrics.items()))
    print(f"{time.time() - start:.0f} s")
    if args.results is not None:
        args.results.write_text(json.dumps(results, indent=1) + "\n")
