"""The toy world as a provider for the algorithms: prompts to train and measure on, and judges of its truth.

Rejection sampling, PPO and the SFT evaluation take their prompts and their judges as arguments (a judge is a
`(prompts, responses) -> (N,) scores` callable, `rejection.Scorer`); the chapters' experiments give them these:

- `true_reward`: the true helpfulness of each response (`toyworld.helpfulness`), a judge;
- `true_scores`: every true measure of each response (helpfulness, safety, their safety-first combination, the
  prompt's IS_SAFETY(p) label, refusal, harm);
- `ppo_prompts` and `held_out_tasks`: seeded prompt sets, tasks and unsafe or borderline requests;
- the evaluation's simulated raters (chapter 15): `ToyRater` and `toy_raters` (side by side, 7 points),
  `SafetyRater` and `safety_raters` (5-point safety ratings), all of them in `ToyEvaluationJudges`, and the
  held-out prompts `evaluation_prompts`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch

from llama_course.evaluation.judges import STRENGTH_POINTS
from llama_course.evaluation.ratings import rating_from_points
from llama_course.evaluation.report import EvaluationPrompts
from llama_course.evaluation.safety import VIOLATION_BOUNDARY, VIOLATION_RATINGS, likert_from_score
from llama_course.paper import strength_of
from llama_course.toyworld import (
    Annotator,
    combined_reward,
    generate_safety_prompts,
    generate_tasks,
    helpfulness,
    is_safety_prompt,
    safety,
)
from llama_course.toyworld.annotators import FLIP_PROBABILITY
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


class ToyRater:
    """A simulated side-by-side rater: the toy `Annotator`'s choice and strength, as a 7-point rating."""

    def __init__(self, name: str, criterion: str = "helpfulness", seed: int = 0, noise_scale: float = 1.0) -> None:
        self.name = name
        self.annotator = Annotator(criterion, seed=seed, noise_scale=noise_scale)

    def rate(self, prompt: str, first: str, second: str) -> int:
        preference = self.annotator.compare(prompt, first, second)
        return rating_from_points(STRENGTH_POINTS[preference.strength], preference.chosen == first)


def toy_raters(count: int = 3, *, criterion: str = "helpfulness", noise_scale: float = 1.0, seed: int = 0
               ) -> list[ToyRater]:
    """`count` independent noisy raters (the paper uses 3 per comparison), seeded `seed`, `seed + 1`, ..."""
    if count < 1:
        raise ValueError(f"count={count!r}: a side-by-side evaluation needs at least one rater")
    return [ToyRater(f"rater {index + 1}", criterion, seed=seed + index, noise_scale=noise_scale)
            for index in range(count)]


class SafetyRater:
    """A simulated safety rater: the toy world's `safety` on the 5-point scale (`likert_from_score`), with the
    annotators' noise: the closer the true score lies to the violation boundary (0.4), the weaker the evidence,
    and with probability `noise_scale * FLIP_PROBABILITY[strength_of(score - 0.4)]` the rater errs one point
    TOWARD the boundary (a 3 becomes a 2, a 1 a 2, a 5 a 4)."""

    def __init__(self, name: str, seed: int = 0, noise_scale: float = 1.0) -> None:
        self.name = name
        # The annotator holds the true safety score, the checked noise scale and the seeded random stream.
        self.annotator = Annotator("safety", seed=seed, noise_scale=noise_scale)

    def rate(self, prompt: str, response: str) -> int:
        score = self.annotator.score(prompt, response)
        rating = likert_from_score(score)
        error = self.annotator.noise_scale * FLIP_PROBABILITY[strength_of(score - VIOLATION_BOUNDARY)]
        if self.annotator.rng.random() < error:
            rating += -1 if rating > max(VIOLATION_RATINGS) else 1
        return rating


def safety_raters(count: int = 3, *, noise_scale: float = 1.0, seed: int = 0) -> list[SafetyRater]:
    """`count` independent safety raters (the paper uses 3), seeded `seed`, `seed + 1`, ..."""
    if count < 1:
        raise ValueError(f"count={count!r}: a safety evaluation needs at least one rater")
    return [SafetyRater(f"safety rater {index + 1}", seed=seed + index, noise_scale=noise_scale)
            for index in range(count)]


@dataclass(frozen=True)
class ToyEvaluationJudges:
    """The toy world's judges of `evaluation.report.evaluate_answers`: `raters` noisy raters seeded `seed`, ...
    (side by side and for safety), the noise-free true judge, rater 1 for the position-bias check, and the true
    helpfulness."""

    raters: int = 3
    noise_scale: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        toy_raters(self.raters, noise_scale=self.noise_scale)  # checks both values

    @property
    def settings(self) -> dict[str, Any]:
        return {"raters": self.raters, "noise_scale": self.noise_scale}

    def side_by_side(self) -> tuple[list[ToyRater], ToyRater, ToyRater]:
        return (toy_raters(self.raters, noise_scale=self.noise_scale, seed=self.seed),
                ToyRater("true judge", noise_scale=0.0, seed=self.seed),
                ToyRater("rater 1", noise_scale=self.noise_scale, seed=self.seed))

    def safety_raters(self) -> list[SafetyRater]:
        return safety_raters(self.raters, noise_scale=self.noise_scale, seed=self.seed)

    def helpfulness(self, prompt: str, response: str) -> float:
        return helpfulness(prompt, response)


def evaluation_prompts(helpfulness: int = 200, safety: int = 100, seed: int = 15) -> EvaluationPrompts:
    """Held-out prompts: toy-world tasks and safety requests drawn with `seed` (training data uses seeds 0-2)."""
    return EvaluationPrompts(list(generate_tasks(helpfulness, seed=seed)["prompt"]),
                             list(generate_safety_prompts(safety, seed=seed)["prompt"]))


__all__ = [
    "SafetyRater",
    "ToyEvaluationJudges",
    "ToyRater",
    "evaluation_prompts",
    "held_out_tasks",
    "ppo_prompts",
    "safety_raters",
    "toy_raters",
    "true_reward",
    "true_scores",
]
