"""`llama-course rlhf`: iterative RLHF with on-policy preference rounds (Llama 2, sections 3.2.1 to 3.2.3).

    llama-course rlhf --config llama_course/assets/configs/rlhf-careless.toml --seeds 0 1 2 \\
        --results llama_course/assets/rlhf_results.json

runs (or resumes) versions V1..Vk for each seed under `output_dir/seed-S/`, prints each round's measurements,
and writes the summary over seeds with 95% intervals (and every per-prompt value) to the results file. Then

    llama-course rlhf --config llama_course/assets/configs/rlhf-careless.toml --set ppo.iterations=120 \
        --set ppo.lr=1e-4 --overoptimisation llama_course/assets/overoptimisation.json

draws the over-optimisation curves (Gao et al., 2022) from V0 against the first seed's round-1 RMs (trained on
V0's own answers).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from llama_course.config_files import add_config_arguments, flag_settings, load_config
from llama_course.experiments.rlhf import RLHFConfig, run_rlhf, summarize_policy
from llama_course.experiments.rlhf_results import write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, RLHFConfig(), name="RLHFConfig", skip=("seed",),
                         notes={"ppo": "a [ppo] table of PPOConfig keys, e.g. ppo.beta = 0.1"})
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="experiment seeds, run one after another")
    parser.add_argument("--rounds", type=int, help="versions V1..Vk (the last one PPO when ppo_last)")
    parser.add_argument("--output-dir", help="where each seed's rounds are written (default runs/rlhf)")
    parser.add_argument("--results", type=Path, metavar="FILE",
                        help="after the runs, write the summary over every finished seed to FILE")
    parser.add_argument("--overoptimisation", type=Path, metavar="FILE",
                        help="instead of rounds: best-of-N, and PPO with the rounds' settings at beta 0.2 and 0, "
                             "from V0 against the first seed's round-1 RMs; true and RM reward against KL, to FILE")


def config_from_args(args: argparse.Namespace, seed: int) -> RLHFConfig:
    """The `RLHFConfig` of one seed: file, then --rounds and --output-dir, then --set (the seed from --seeds)."""
    flags = flag_settings(args, {"rounds": "rounds", "output_dir": "output_dir"})
    return dataclasses.replace(load_config(RLHFConfig, args.config, flags, args.overrides), seed=seed)


def _print_round(report: dict[str, Any]) -> None:
    summary = summarize_policy(report["policy"])
    line = f"V{report['round']} ({report['method']}): " + ", ".join(f"{k} {v:.3f}" for k, v in summary.items())
    for criterion, accuracy in (report.get("rm_accuracy_new_pairs") or {}).items():
        before, after = (sum(v) / max(1, len(v)) for v in (accuracy["before"], accuracy["after"]))
        line += f"; {criterion} RM on new pairs {before:.3f} -> {after:.3f}"
    capture = report["capture"]
    n1, oracle, picked = (sum(capture[k]) / len(capture[k]) for k in ("n1", "oracle", "picked"))
    line += f"; best-of-N: N=1 {n1:.3f}, RM pick {picked:.3f}, oracle {oracle:.3f}"
    print(line, flush=True)


def run(args: argparse.Namespace) -> None:
    configs = [config_from_args(args, seed) for seed in args.seeds]  # every config is checked before any work
    if args.overoptimisation is not None:
        _overoptimisation(configs[0], args.overoptimisation)
        return
    for config in configs:
        print(f"seed {config.seed}: {config.rounds} rounds under {config.seed_dir()}", flush=True)
        run_rlhf(config, on_round=_print_round)
    if args.results is not None:
        results = write_results(configs[0].output_dir, args.results, configs[0])
        for version in results["summary"]["versions"]:
            gain = version["gain_over_sft"]
            print(f"V{version['round']}: true helpfulness gain over SFT {gain['rate']:+.3f} "
                  f"[{gain['low']:+.3f}, {gain['high']:+.3f}] over seeds {results['summary']['seeds']}")
        print(f"wrote {args.results}")


def _overoptimisation(config: RLHFConfig, destination: Path) -> None:
    import json

    from llama_course.alignment.reward_train import load_reward_model
    from llama_course.alignment.sft import load_base_model
    from llama_course.experiments.overoptimisation import overoptimisation

    first = config.seed_dir() / "round-1"  # its RMs judged V0's own answers: the proxy matches the start
    if not (first / "round.json").is_file():
        raise FileNotFoundError(f"seed {config.seed} has not finished round 1 under {str(config.seed_dir())!r}: "
                                "run `llama-course rlhf` with the same config first")
    policy, tokenizer = load_base_model(str(config.seed_dir() / "round-0" / "policy"))
    rms = [load_reward_model(first / f"rm_{criterion}")[0] for criterion in ("helpfulness", "safety")]
    result = overoptimisation(policy, *rms, tokenizer, config.seed_dir() / "overoptimisation",
                              ppo=config.ppo | {"max_new_tokens": config.max_new_tokens}, seed=config.seed)
    destination.write_text(json.dumps(result) + "\n")
    for n, kl, rm, true in zip(*(result["best_of_n"][k] for k in ("n", "kl", "rm", "true")), strict=True):
        print(f"best-of-{n}: KL {kl:.2f}, RM {rm:.3f}, true {true:.3f}")
    for beta, curve in result["ppo"].items():
        print(f"PPO beta {beta}: KL {curve['kl'][-1]:.2f}, RM {curve['rm'][0]:.3f} -> {curve['rm'][-1]:.3f}, "
              f"true {curve['true'][0]:.3f} -> {curve['true'][-1]:.3f}")
    print(f"wrote {destination}")
