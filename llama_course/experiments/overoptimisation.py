"""Reward over-optimisation (Gao et al., 2022) on the toy world: the proxy RM's reward and the true reward
against the KL divergence from the starting policy, for best-of-N and for PPO with and without the KL penalty.

Gao et al. measured it against a large "gold" RM standing in for humans; the toy world has the truth itself.
Both methods optimise the helpfulness RM on task prompts, so the picture is the proxy against the gold:

- best-of-N: from K samples per prompt the exact expected RM score and true helpfulness of the RM's pick
  among N <= K (`rejection.expected_order_statistic`), at KL = log N - (N - 1)/N (`best_of_n_kl_bound`);
- PPO: per iteration, the RM score, the true helpfulness and the KL of the sampled responses (k3 estimator,
  nats per response: the same unit as best-of-N's) for each KL coefficient.

    llama-course rlhf --config llama_course/assets/configs/rlhf-careless.toml --set ppo.iterations=120 \
        --set ppo.lr=1e-4 --overoptimisation llama_course/assets/overoptimisation.json

(after that config's rounds: the proxy is seed 0's round-1 helpfulness RM, trained on the SFT model's own answers).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llama_course.alignment.ppo_rollout import ValueModel
from llama_course.alignment.ppo_train import PPOConfig, PPOModels
from llama_course.alignment.rejection import best_of_n_kl_bound, expected_order_statistic, sample_responses
from llama_course.alignment.reward import RewardModel, score_responses
from llama_course.evaluation import bootstrap_difference
from llama_course.experiments import load_results_file
from llama_course.experiments.ppo import train_ppo
from llama_course.model import Llama
from llama_course.pretrained import ASSETS_DIR
from llama_course.tokenizer import Tokenizer
from llama_course.toyworld import generate_tasks, helpfulness

SHIPPED_RESULTS = ASSETS_DIR / "overoptimisation.json"
REGENERATE = ("llama-course rlhf --config llama_course/assets/configs/rlhf-careless.toml --set ppo.iterations=120 "
              "--set ppo.lr=1e-4 --overoptimisation")


def best_of_n_curve(policy: Llama, rm: RewardModel, tokenizer: Tokenizer, prompts: Sequence[str],
                    ns: Sequence[int], temperature: float = 0.8, max_new_tokens: int = 48, seed: int = 0
                    ) -> dict[str, list[float]]:
    """For each N of `ns`: KL = log N - (N-1)/N, and the mean over prompts of the RM's sigmoid score and the true
    helpfulness of the best of N by the RM, computed exactly from max(ns) samples per prompt."""
    k = max(ns)
    samples = sample_responses(policy, tokenizer, prompts, k, temperature, max_new_tokens=max_new_tokens, seed=seed)
    flat_prompts = [p for p in prompts for _ in range(k)]
    flat = [s for row in samples for s in row]
    truth = torch.tensor([helpfulness(p, r) for p, r in zip(flat_prompts, flat, strict=True)]).view(len(prompts), k)
    kept = [i for i, response in enumerate(flat) if response.strip()]
    scores = torch.zeros(len(flat))  # an empty answer scores 0 on the sigmoid scale: never the pick
    scores[kept] = torch.sigmoid(score_responses(rm, tokenizer, [flat_prompts[i] for i in kept],
                                                 [flat[i] for i in kept]))
    scores = scores.view(len(prompts), k)
    return {"n": list(ns), "kl": [best_of_n_kl_bound(n) for n in ns],
            "rm": [float(expected_order_statistic(scores, n, n).mean()) for n in ns],
            "true": [float(expected_order_statistic(scores, n, n, values=truth).mean()) for n in ns]}


def ppo_curve(policy: Llama, rm: RewardModel, safety_rm: RewardModel, tokenizer: Tokenizer,
              prompts: Sequence[str], config: PPOConfig, output_dir: str | Path) -> dict[str, list[float]]:
    """PPO on the helpfulness RM alone (`reward="helpfulness"`) from `policy`; per iteration the KL (k3, nats per
    response), the RM's sigmoid score and the true helpfulness of the sampled responses."""
    models = PPOModels(copy.deepcopy(policy), copy.deepcopy(policy), ValueModel.from_reward_model(rm),
                       copy.deepcopy(rm), copy.deepcopy(safety_rm))
    return history_curve(train_ppo(models, tokenizer, prompts, config, output_dir))


def history_curve(history: Sequence[dict[str, float]]) -> dict[str, list[float]]:
    """A PPO history (one metrics row per iteration) as the curves `ppo_change` and the plot read: the KL (k3,
    nats per response), the helpfulness RM's score and the true helpfulness of the sampled responses."""
    return {"iteration": [row["step"] for row in history], "kl": [row["kl_k3"] for row in history],
            "rm": [row["rm_helpfulness"] for row in history],
            "true": [row["true_helpfulness_tasks"] for row in history]}


def overoptimisation(policy: Llama, rm: RewardModel, safety_rm: RewardModel, tokenizer: Tokenizer,
                     output_dir: str | Path, *, prompts: int = 200, ns: Sequence[int] = (1, 2, 4, 8, 16, 32, 64),
                     betas: Sequence[float] = (0.2, 0.0), ppo: dict[str, Any] | None = None, seed: int = 0
                     ) -> dict[str, Any]:
    """Both curves from `policy` against `rm` (the gold: the toy world's helpfulness), on held-out task prompts
    for best-of-N and fresh task prompts for PPO, one PPO run per KL coefficient in `betas`."""
    held_out = list(generate_tasks(prompts, seed=515_151)["prompt"])
    train = [p for p in generate_tasks(2000, seed=525_252 + seed)["prompt"] if p not in set(held_out)]
    result: dict[str, Any] = {"best_of_n": best_of_n_curve(policy, rm, tokenizer, held_out, ns, seed=seed), "ppo": {}}
    for beta in betas:
        overrides = {"seed": seed} | (ppo or {}) | {"beta": beta, "reward": "helpfulness"}
        config = PPOConfig(**overrides)
        result["ppo"][str(beta)] = ppo_curve(policy, rm, safety_rm, tokenizer, train, config,
                                             Path(output_dir) / f"ppo-beta-{beta}")
    return result


def load_overoptimisation(path: str | Path = SHIPPED_RESULTS) -> dict[str, Any]:
    """The curves written by `llama-course rlhf --overoptimisation FILE` (chapter 13 plots them)."""
    return load_results_file(path, f"{REGENERATE} {path}")


def ppo_change(curve: dict[str, list[float]], key: str, window: int = 10) -> dict[str, float]:
    """The change of `key` ("rm", "true" or "kl") over a PPO run: the mean of the last `window` iterations minus the
    mean of the first `window`, with a 95% bootstrap interval (`bootstrap_difference`: every iteration is the mean
    over its own fresh prompts, so the two windows are independent samples)."""
    values = curve[key]
    if len(values) < 2 * window:
        raise ValueError(f"a run of {len(values)} iterations has no two disjoint windows of {window}")
    first, last = values[:window], values[-window:]
    change = bootstrap_difference(first, last)
    return {"first": float(np.mean(first)), "last": float(np.mean(last)), "change": change.rate, "low": change.low,
            "high": change.high}


def plot_overoptimisation(result: dict[str, Any], axes=None, window: int = 10):
    """Proxy (RM) and gold (true) reward against KL, on two panels: best-of-N, and PPO per KL coefficient as
    means over consecutive blocks of `window` iterations (one iteration's 64 answers are too few to read)."""
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharex=True)
    curves = [("best-of-N", result["best_of_n"], "o-")]
    for beta, curve in result["ppo"].items():
        blocks = len(curve["kl"]) // window
        means = {key: np.asarray(curve[key][: blocks * window]).reshape(blocks, window).mean(axis=1)
                 for key in ("kl", "rm", "true")}
        curves.append((f"PPO, beta = {beta} (means of {window} iterations)", means, ".-"))
    for axis, key, title in ((axes[0], "rm", "RM score (proxy)"), (axes[1], "true", "true helpfulness (gold)")):
        for label, curve, style in curves:
            axis.plot(curve["kl"], curve[key], style, label=label, markersize=5)
        axis.set_xlabel("KL from the starting policy (nats per answer)")
        axis.set_title(title, fontsize=10)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return axes


__all__ = ["best_of_n_curve", "history_curve", "load_overoptimisation", "overoptimisation", "plot_overoptimisation",
           "ppo_change", "ppo_curve"]
