"""Chapter 13's PPO runs (Llama 2, section 3.2.3): what `llama-course ppo --experiments FILE` measures.

`measure_experiments` runs `EXPERIMENTS` from the shipped SFT and reward models (about 17 minutes on a 2-core CPU)
and returns their curves, held-out measurements and sample answers, which `load_ppo_results` reads back from the
shipped JSON; `plot_ppo_metrics` draws a run's curves.

The algorithm (`alignment.ppo_train`) takes its prompts and judges as arguments; here the toy world provides
them (`toy_judges`: IS_SAFETY(p), the oracle judge of `reward="true"`, the truth the chapter logs), and
`train_ppo`, `evaluate_policy` and `score_rollout` are the algorithm's functions with them filled in.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from llama_course.alignment import ppo_train
from llama_course.alignment.ppo_rollout import Rollout
from llama_course.alignment.ppo_train import PPOConfig, PPOModels, load_ppo_models
from llama_course.alignment.reward import Scorer, combine_rewards
from llama_course.alignment.sft_eval import answer_prompts
from llama_course.experiments import load_results_file
from llama_course.experiments.toyworld_judges import ppo_prompts, true_scores
from llama_course.model import Llama
from llama_course.pretrained import ASSETS_DIR
from llama_course.tokenizer import Tokenizer
from llama_course.toyworld import generate_safety_prompts, generate_tasks, is_safety_prompt

SHIPPED_RESULTS = ASSETS_DIR / "ppo_results.json"
PLOTTED = (("rm_combined", "RM reward R_c (sigmoid)"), ("true_combined", "true reward (safety-first)"),
           ("true_helpfulness_tasks", "true helpfulness, tasks"), ("true_safety_unsafe", "true safety, unsafe"),
           ("kl_k1", "KL k1 (nats / response)"), ("kl_k3", "KL k3 (nats / response)"), ("entropy", "entropy (nats)"),
           ("clip_fraction", "clip fraction"), ("value_loss", "value loss"), ("response_length", "length (tokens)"))
# The chapter's runs, each from the shipped SFT model: (`PPOConfig` overrides of `EXPERIMENT_BASE`, the share of
# unsafe or borderline prompts). "kl_penalty" is Llama 2's recipe (safety-first reward, KL penalty); "no_penalty"
# drops the penalty; "oracle" puts the toy world's true scores in place of the reward models. The safety pair
# has no penalty (the reward alone decides) and twice the safety prompts; "helpfulness_only" drops the rule.
EXPERIMENT_BASE = dict(iterations=40, lr=5e-5, beta=0.2)
EXPERIMENTS: dict[str, tuple[dict[str, Any], float]] = {
    "kl_penalty": ({}, 0.25),
    "no_penalty": ({"beta": 0.0}, 0.25),
    "oracle": ({"reward": "true"}, 0.25),
    "safety_first": ({"beta": 0.0}, 0.5),
    "helpfulness_only": ({"beta": 0.0, "reward": "helpfulness"}, 0.5),
}
# The toy world's true scores are often exactly 0 or 1; with LOGIT clamped at 1e-6 they would map to +-13.8 and
# swamp every partial credit after whitening. The oracle reward clamps them to [0.01, 0.99] (logits +-4.6), a
# range an RM's sigmoid scores stay within.
ORACLE_LOGIT_EPS = 0.01


def oracle_judge(threshold: float) -> Scorer:
    """The toy world's true safety-first reward as a PPO judge (`reward="true"`, the oracle control): LOGIT(R_c) of
    the true helpfulness and safety, R_c combined as for the RMs (`reward.combine_rewards`, `threshold`)."""

    def judge(prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        truth = true_scores(prompts, responses)
        combined = combine_rewards(truth["helpfulness"], truth["safety"], truth["is_safety"] > 0, threshold)
        return torch.logit(combined, eps=ORACLE_LOGIT_EPS)

    return judge


def ppo_truth(prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
    """The toy world's truth as chapter 13 logs it (`ppo_train.measure`): the true R_c of every response, the true
    helpfulness of answers to tasks, and the true safety, refusals and harm of answers to safety prompts (NaN
    where a measure does not apply); each (B,) float64."""
    truth = true_scores(prompts, responses)
    unsafe = truth["is_safety"] > 0
    missing = torch.tensor(math.nan, dtype=torch.float64)
    return {"true_combined": truth["combined"],
            "true_helpfulness_tasks": torch.where(unsafe, missing, truth["helpfulness"]),
            "true_safety_unsafe": torch.where(unsafe, truth["safety"], missing),
            "refusal_unsafe": torch.where(unsafe, truth["refuses"], missing),
            "harmful_unsafe": torch.where(unsafe, truth["harmful"], missing)}


def toy_judges(config: PPOConfig) -> dict[str, Any]:
    """PPO's judges on the toy world: IS_SAFETY(p), the oracle judge when `config.reward` is "true", the truth."""
    return {"is_safety": is_safety_prompt, "truth": ppo_truth,
            "judge": oracle_judge(config.safety_threshold) if config.reward == "true" else None}


def train_ppo(models: PPOModels, tokenizer: Tokenizer, prompts: Sequence[str], config: PPOConfig,
              output_dir: str | Path | None = None,
              on_iteration: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """`alignment.ppo_train.train_ppo` on toy-world prompts, with the toy world's judges (`toy_judges`)."""
    return ppo_train.train_ppo(models, tokenizer, prompts, config, output_dir, on_iteration, **toy_judges(config))


def evaluate_policy(models: PPOModels, tokenizer: Tokenizer, prompts: Sequence[str], config: PPOConfig, *,
                    samples: int = 1, seed: int = 12345) -> dict[str, float]:
    """`alignment.ppo_train.evaluate_policy` with the toy world's judges (`toy_judges`)."""
    return ppo_train.evaluate_policy(models, tokenizer, prompts, config, samples=samples, seed=seed,
                                     **toy_judges(config))


def score_rollout(models: PPOModels, rollout: Rollout, config: PPOConfig, tokenizer: Tokenizer
                  ) -> dict[str, torch.Tensor]:
    """`alignment.ppo_train.score_rollout` with the toy world's IS_SAFETY(p) and, for `reward="true"`, its oracle."""
    judges = toy_judges(config)
    return ppo_train.score_rollout(models, rollout, config, tokenizer, is_safety=judges["is_safety"],
                                   judge=judges["judge"])


def load_ppo_results(path: str | Path = SHIPPED_RESULTS) -> dict[str, Any]:
    """The measurements written by `llama-course ppo --experiments FILE` (chapter 13 plots them)."""
    return load_results_file(path, f"llama-course ppo --experiments {path}")


def plot_ppo_metrics(history: list[dict[str, Any]], output: str | Path | None = None, *,
                     label: str | None = None, axes=None):
    """One panel per metric of `PLOTTED` against the iteration; draws onto `axes` (to overlay runs) or new
    ones. Returns the axes; saves the figure to `output` when given."""
    import matplotlib

    if output is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(5, 2, figsize=(8, 12))  # two panels a row: readable in a book column
    steps = [row["step"] for row in history]
    for axis, (key, title) in zip(axes.flat, PLOTTED, strict=True):
        axis.plot(steps, [row[key] for row in history], label=label, linewidth=1.2)
        axis.set(title=title, xlabel="iteration")
    if label is not None:
        axes.flat[0].legend(fontsize=8)
    axes.flat[0].figure.tight_layout()
    if output is not None:
        axes.flat[0].figure.savefig(output, dpi=110)
    return axes


def asset_fingerprints() -> dict[str, str]:
    """SHA-256 (first 16 hex digits) of the shipped weights PPO starts from: results measured on other assets
    are stale."""
    import hashlib

    files = {"sft": ASSETS_DIR / "sft" / "model.safetensors",
             "rm_helpfulness": ASSETS_DIR / "rm_helpfulness" / "model.safetensors",
             "rm_safety": ASSETS_DIR / "rm_safety" / "model.safetensors"}
    return {name: hashlib.sha256(path.read_bytes()).hexdigest()[:16] for name, path in files.items()}


def held_out_prompts(seed: int = 4242) -> dict[str, list[str]]:
    """Held-out prompts (seeds no training pool uses): 64 tasks and 32 unsafe or borderline requests."""
    return {"tasks": list(generate_tasks(64, seed=seed)["prompt"]),
            "safety": list(generate_safety_prompts(32, seed=seed)["prompt"])}


def greedy_samples(policy: Llama, tokenizer: Tokenizer, prompts: list[str]) -> list[str]:
    return answer_prompts(policy, tokenizer, prompts)


def run_experiment(config: PPOConfig, output_dir: str | Path, sample_prompts: list[str],
                   safety_fraction: float = 0.25) -> dict[str, Any]:
    """One PPO run from the shipped models: its per-iteration metrics, held-out metrics before and after (4
    sampled answers per held-out prompt), and greedy answers to `sample_prompts` before and after."""
    models, tokenizer = load_ppo_models()
    held_out = held_out_prompts()
    prompts = held_out["tasks"] + held_out["safety"]
    started = time.time()
    before = evaluate_policy(models, tokenizer, prompts, config, samples=4)
    answers_before = greedy_samples(models.policy, tokenizer, sample_prompts)
    history = train_ppo(models, tokenizer, ppo_prompts(2000, seed=config.seed + 1, safety_fraction=safety_fraction),
                        config, output_dir,
                        on_iteration=lambda row: print(f"  iteration {row['step']}: RM {row['rm_combined']:.3f}, "
                                                       f"true {row['true_combined']:.3f}, KL {row['kl_k1']:.2f}",
                                                       flush=True))
    models.to(torch.device("cpu"), torch.float32)
    after = evaluate_policy(models, tokenizer, prompts, config, samples=4)
    samples = [{"prompt": p, "before": b, "after": a}
               for p, b, a in zip(sample_prompts, answers_before, greedy_samples(models.policy, tokenizer,
                                                                                   sample_prompts), strict=True)]
    return {"config": dataclasses.asdict(config), "safety_fraction": safety_fraction, "history": history,
            "held_out_before": before, "held_out_after": after, "samples": samples,
            "seconds": round(time.time() - started, 1)}


def measure_experiments(output_dir: str | Path = "runs/ppo-experiments", seed: int = 0,
                        only: list[str] | None = None) -> dict[str, Any]:
    """Every run of `EXPERIMENTS` (or those named in `only`), in order; see the module docstring."""
    started = time.time()
    held_out = held_out_prompts()
    unsafe = [prompt for prompt in held_out["safety"] if is_safety_prompt(prompt)]
    borderline = [prompt for prompt in held_out["safety"] if not is_safety_prompt(prompt)]
    sample_prompts = held_out["tasks"][:4] + unsafe[:3] + borderline[:1]
    results: dict[str, Any] = {"experiment_base": EXPERIMENT_BASE, "held_out": held_out, "runs": {},
                               "assets": asset_fingerprints()}
    for name, (overrides, safety_fraction) in EXPERIMENTS.items():
        if only is not None and name not in only:
            continue
        print(f"{name}: {overrides}, safety prompts {safety_fraction:.0%}", flush=True)
        config = PPOConfig(**(EXPERIMENT_BASE | overrides), seed=seed)
        results["runs"][name] = run_experiment(config, Path(output_dir) / name, sample_prompts, safety_fraction)
    results["seconds"] = round(time.time() - started, 1)
    return results
