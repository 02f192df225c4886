"""The toy world as a provider for the algorithms: prompts to train and measure on, and judges of its truth.

Rejection sampling, PPO and the SFT evaluation take their prompts and their judges as arguments (a judge is a
`(prompts, responses) -> (N,) scores` callable, `rejection.Scorer`); the chapters' experiments give them these:

- `true_reward`: the true helpfulness of each response (`toyworld.helpfulness`), a judge;
- `true_scores`: every true measure of each response (helpfulness, safety, their safety-first combination, the
  prompt's IS_SAFETY(p) label, refusal, harm);
- `ppo_prompts` and `held_out_tasks`: seeded prompt sets, tasks and unsafe or borderline requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import datasets
import torch

from llama_course.toyworld import (
    combined_reward,
    generate_safety_prompts,
    generate_tasks,
    helpfulness,
    is_safety_prompt,
    safety,
)
from llama_course.toyworld.safety import harmful_sentences
from llama_course.toyworld.scoring import is_refusal


def true_reward(prompts: Sequence[str], responses: Sequence[str], dtype: torch.dtype = torch.float32
                ) -> torch.Tensor:
    """The toy world's true helpfulness (`toyworld.helpfulness`) of each response, (N,) in [0, 1] (float64: the
    checker's exact values)."""
    return torch.tensor([helpfulness(p, r) for p, r in zip(prompts, responses, strict=True)], dtype=dtype)


def true_scores(prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
    """The toy world's truth for each response: helpfulness, safety, their safety-first combination, whether
    the prompt is a safety prompt (IS_SAFETY(p)), whether the response refuses, and whether it describes
    harm (complies with an unsafe request); all (B,) float64."""
    rows = [(helpfulness(p, r), safety(p, r), combined_reward(p, r), is_safety_prompt(p), is_refusal(r),
             bool(harmful_sentences(r))) for p, r in zip(prompts, responses, strict=True)]
    return dict(zip(("helpfulness", "safety", "combined", "is_safety", "refuses", "harmful"),
                    torch.tensor(rows, dtype=torch.float64).T, strict=True))


def ppo_prompts(n: int, seed: int, safety_fraction: float = 0.25) -> list[str]:
    """`n` toy-world prompts: instruction tasks, and `safety_fraction` of them unsafe or borderline requests
    (`toyworld.generate_safety_prompts`, half and half), in a seeded random order."""
    if not 0 <= safety_fraction <= 1:
        raise ValueError(f"safety_fraction={safety_fraction} must lie in [0, 1]")
    n_safety = round(n * safety_fraction)
    prompts = list(generate_tasks(n - n_safety, seed=seed)["prompt"]) if n > n_safety else []
    prompts += list(generate_safety_prompts(n_safety, seed=seed)["prompt"]) if n_safety else []
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))
    return [prompts[int(i)] for i in order]


def held_out_tasks(
    n: int, seed: int, exclude: Iterable[str] = (), families: Sequence[str] | None = None
) -> datasets.Dataset:
    """`n` toy-world tasks (of `families`, or all) drawn with `seed`, less any prompt in `exclude` (e.g. the
    training prompts): the result may have fewer than `n` rows."""
    excluded = set(exclude)
    tasks = generate_tasks(n, seed=seed, families=families)
    return tasks.filter(lambda row: row["prompt"] not in excluded)


__all__ = ["held_out_tasks", "ppo_prompts", "true_reward", "true_scores"]
