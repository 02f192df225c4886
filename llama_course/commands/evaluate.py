"""`llama-course evaluate MODEL_A MODEL_B ... [--out DIR]`: compare models side by side as Llama 2 did.

A MODEL is the name of a shipped model (`load_pretrained`: "base", later "sft", ...) or the path of an
exported folder (`model.safetensors` + `config.json`), optionally named for the report as `NAME=MODEL`
(`rejection=runs/reproduce/rejection`). Each model answers the same held-out toy-world tasks
and safety requests (greedy, Llama 2-Chat format); the report is written to `DIR/evaluation.json`, with the
plots `DIR/win_tie_loss.png` and `DIR/helpfulness_vs_safety.png`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llama_course.evaluation.answers import answer_all, reward_model_scorer, split_model_spec
from llama_course.evaluation.report import (
    evaluate_answers,
    plot_helpfulness_vs_safety,
    plot_win_tie_loss,
)
from llama_course.experiments.toyworld_judges import ToyEvaluationJudges, evaluation_prompts

REPORT_FILE = "evaluation.json"


def check_model_spec(spec: str) -> None:
    """Raise unless `spec` is an existing folder or the name of a shipped model."""
    from llama_course.pretrained import pretrained_dir

    if not Path(spec).is_dir():
        pretrained_dir(spec)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("models", nargs="+", metavar="MODEL",
                        help="shipped model names (e.g. base) or exported model folders, each optionally "
                             "NAME=MODEL to name it in the report; at least two")
    parser.add_argument("--out", type=Path, default=Path("runs/evaluation"), help="folder for the report and plots")
    parser.add_argument("--prompts", type=int, default=200, help="held-out task prompts judged side by side")
    parser.add_argument("--safety-prompts", type=int, default=100, help="unsafe and borderline requests")
    parser.add_argument("--raters", type=int, default=3, help="raters per judgment (odd; the paper uses 3)")
    parser.add_argument("--noise-scale", type=float, default=1.0, help="rater noise, 0 (perfect) to 1.25")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="answer length limit")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples for the intervals")
    parser.add_argument("--reward-model", default=None, metavar="RM",
                        help="also judge with a reward model: a shipped RM name (helpfulness) or an RM folder")
    parser.add_argument("--reward-gap-scale", type=float, default=1.0,
                        help="reward gap rated like a true-score gap of 1 (sigmoid scores that bunch up want < 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the raters, the model order and the bootstrap")
    parser.add_argument("--prompt-seed", type=int, default=15, help="seed of the held-out prompts")


def run(args: argparse.Namespace) -> None:
    if len(args.models) < 2:
        raise ValueError(f"evaluate needs at least two models to compare; got {args.models}")
    names = [split_model_spec(spec)[0] for spec in args.models]
    if len(set(names)) != len(names):
        raise ValueError(f"each model may be named once; got {names}")
    for option in ("prompts", "safety_prompts", "max_new_tokens"):
        if getattr(args, option) < 1:
            raise ValueError(f"--{option.replace('_', '-')}={getattr(args, option)} must be at least 1")
    if args.raters % 2 == 0:
        raise ValueError(f"--raters={args.raters}: use an odd number, so each pair has a middle (median) rating")
    judges = ToyEvaluationJudges(args.raters, args.noise_scale, seed=args.seed)  # checks both before any answering
    for spec in args.models:
        check_model_spec(split_model_spec(spec)[1])
    if args.reward_model is not None:
        from llama_course.alignment.reward_train import load_reward_model

        reward_model, reward_tokenizer = load_reward_model(args.reward_model)  # fails here, before any answering
    prompts = evaluation_prompts(args.prompts, args.safety_prompts, seed=args.prompt_seed)
    answers = answer_all(args.models, prompts, args.max_new_tokens)
    scorer = None if args.reward_model is None else reward_model_scorer(reward_model, reward_tokenizer, prompts,
                                                                         answers)
    report = evaluate_answers(prompts, answers, judges,
                              reward_scorer=scorer, reward_gap_scale=args.reward_gap_scale,
                              resamples=args.resamples, seed=args.seed)
    report["settings"].update(prompt_seed=args.prompt_seed, max_new_tokens=args.max_new_tokens,
                              reward_model=args.reward_model)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    plot_win_tie_loss(report, args.out / "win_tie_loss.png")
    plot_helpfulness_vs_safety(report, args.out / "helpfulness_vs_safety.png")
    for name, model in report["models"].items():
        violations = model["violation_rate"]
        print(f"{name}: helpfulness {model['helpfulness']:.3f}, violation rate {violations['rate']:.1%} "
              f"[{violations['low']:.1%}, {violations['high']:.1%}]")
    for comparison in report["comparisons"]:
        rates = comparison["raters"]["rates"]
        print(f"{comparison['model_a']} vs {comparison['model_b']}: " + ", ".join(
            f"{outcome} {rates[outcome]['rate']:.1%} [{rates[outcome]['low']:.1%}, {rates[outcome]['high']:.1%}]"
            for outcome in ("win", "tie", "loss")) + f" (Gwet's AC2 {comparison['agreement']['gwet_ac2']:.2f})")
        if "reward_model" in comparison:
            print(f"  reward-model judge agrees with the true judge on "
                  f"{comparison['reward_model']['matches_true_judge']:.1%} of prompts")
    print(f"report: {args.out / REPORT_FILE}")
