"""Chapter 12's rejection sampling runs (Llama 2, section 3.2.3): what `llama-course rejection-sample --figures
FILE` measures.

`measure_figures` measures Figure 7 (max and median among N of K sampled answers), Figure 8 (max reward against
N for several temperatures, before and after one round), the best-of-N KL beside its bound, and the
distillation variant; `load_rejection_results` reads the shipped JSON back. `rejection_sampling` is the
algorithm's loop measured by the toy world's true reward as well.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llama_course.alignment import rejection
from llama_course.alignment.rejection import (
    RejectionConfig,
    Scorer,
    best_of_n,
    best_of_n_kl,
    best_of_n_kl_bound,
    expected_order_statistic,
    max_and_median_curves,
)
from llama_course.alignment.reward import RewardModel
from llama_course.experiments import load_results_file
from llama_course.experiments.toyworld_judges import true_reward
from llama_course.model import Llama
from llama_course.pretrained import ASSETS_DIR
from llama_course.tokenizer import Tokenizer

SHIPPED_RESULTS = ASSETS_DIR / "rejection_results.json"


def load_rejection_results(path: str | Path = SHIPPED_RESULTS) -> dict[str, Any]:
    """The measurements written by `llama-course rejection-sample --figures FILE` (chapter 12 plots them)."""
    return load_results_file(path, f"llama-course rejection-sample --figures {path}")


def rejection_sampling(policy: Llama, reward_model: RewardModel | Scorer, tokenizer: Tokenizer,
                       prompts: Sequence[str], held_out: Sequence[str], config: RejectionConfig,
                       output_dir: str | Path, **options: Any) -> tuple[Llama, list[dict[str, Any]]]:
    """`rejection.rejection_sampling` on toy-world prompts, measured by the toy world's true reward as well (each
    history row's `true`); `options` are the loop's other keywords (`student`, `on_round`)."""
    return rejection.rejection_sampling(policy, reward_model, tokenizer, prompts, held_out, config, output_dir,
                                        truth=true_reward, **options)


def sampled_rewards(model: Llama, scorer: Scorer, tokenizer: Tokenizer, prompts: list[str], k: int,
                    temperature: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(RM scores, true rewards) of k sampled answers to each prompt, each (P, k)."""
    result = best_of_n(model, scorer, prompts, k, temperature, tokenizer=tokenizer, seed=seed)
    flat = [response for samples in result.responses for response in samples]
    true = true_reward([p for p in prompts for _ in range(k)], flat).reshape(len(prompts), k)
    return result.scores, true


def figure7(rm: torch.Tensor, true: torch.Tensor, ns: list[int]) -> dict[str, Any]:
    """Max and median among N by the RM and by the true reward, and the true reward of the RM's pick."""
    picked_true = [float(expected_order_statistic(rm, n, n, true).mean()) for n in ns]
    return {"rm": max_and_median_curves(rm, ns), "true": max_and_median_curves(true, ns),
            "true_of_rm_pick": picked_true}


def measure_figures(policy: Llama, scorer: Scorer, tokenizer: Tokenizer, prompts: list[str], held_out: list[str],
                    config: RejectionConfig, output_dir: str | Path, *, figure_prompts: int = 32, k: int = 100,
                    temperatures: tuple[float, ...] = (0.6, 1.0, 1.4), figure8_k: int = 16) -> dict[str, Any]:
    """Everything chapter 12 plots; see the module docstring."""
    started = time.time()
    few = held_out[:figure_prompts]
    ns = list(range(1, k + 1))
    rm, true = sampled_rewards(policy, scorer, tokenizer, few, k, config.temperature, config.seed)
    results: dict[str, Any] = {"config": dataclasses.asdict(config), "training_prompts": len(prompts),
                               "held_out_prompts": len(held_out), "figure_prompts": len(few), "k": k}
    results["figure7"] = figure7(rm, true, ns)
    results["kl"] = {"n": ns, "bound": [best_of_n_kl_bound(n) for n in ns],
                     "measured_rm": [float(best_of_n_kl(rm, n).mean()) for n in ns]}
    rounds: dict[int, Llama] = {}
    tuned, history = rejection_sampling(policy, scorer, tokenizer, prompts, held_out, config, output_dir,
                                        on_round=lambda iteration, model: rounds.setdefault(iteration,
                                                                                            copy.deepcopy(model)))
    results["iterations"] = history
    one_round = rounds[1]
    figure8: dict[str, Any] = {"n": list(range(1, figure8_k + 1))}
    for name, model in (("sft", policy), ("one_round", one_round)):
        figure8[name] = {}
        for temperature in temperatures:
            rm_t, true_t = sampled_rewards(model, scorer, tokenizer, few, figure8_k, temperature, config.seed + 7)
            figure8[name][str(temperature)] = {"rm": max_and_median_curves(rm_t, figure8["n"])["max"],
                                               "true": max_and_median_curves(true_t, figure8["n"])["max"]}
    results["figure8"] = figure8
    # Distillation: the tuned model samples, the starting model is fine-tuned on its best answers.
    _, distilled = rejection_sampling(tuned, scorer, tokenizer, prompts, held_out,
                                      dataclasses.replace(config, iterations=1), Path(output_dir) / "distill",
                                      student=policy)
    results["distillation"] = {"teacher": history[-1], "student_before": distilled[0], "student_after": distilled[-1],
                               "student_own_round": results["iterations"][1]}
    results["seconds"] = round(time.time() - started, 1)
    return results
