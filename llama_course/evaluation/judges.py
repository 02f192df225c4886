"""Judges that rate two responses side by side on the 7-point scale, the randomised protocol, and position bias.

Llama 2 (section 3.4.2) has three raters judge every pair and randomises which model's response is shown
first. A judge here is anything with `rate(prompt, first, second) -> int` (1 = first much better ... 7 =
second much better, see `ratings.py`):

- the toy world's simulated raters (`experiments.toyworld_judges.ToyRater`: its preference `Annotator`'s choice
  and strength, with the rater noise that grows as the preference weakens; with `noise_scale=0`, the TRUE judge);
- `RewardModelJudge` wraps any `score(prompt, response) -> float` (a trained reward model, or a true reward)
  and rates the score gap by `paper.strength_of`, the thresholds the toy world's annotators use.

The 4 strengths map to points: significantly better -> much better, better -> better, slightly better ->
slightly better, negligibly better / unsure -> about the same.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from llama_course.evaluation.ratings import ABOUT_THE_SAME, check_ratings, rating_from_points, swap_sides
from llama_course.paper import STRENGTHS, strength_of

# "significantly better" -> 3 points ("much better"), ..., "negligibly better / unsure" -> 0 ("about the same")
STRENGTH_POINTS = {strength: 3 - index for index, strength in enumerate(STRENGTHS)}


class Judge(Protocol):
    name: str

    def rate(self, prompt: str, first: str, second: str) -> int: ...


class RewardModelJudge:
    """Rates by the gap of a scorer: `gap_scale` is the gap the annotators would call a gap of 1.

    The annotators' thresholds (gaps of 0.5, 0.25, 0.1 of a [0, 1] true score for "significantly", "better",
    "slightly") are applied to `gap / gap_scale`; Llama 2's reward scores pass through a sigmoid, so they
    share the [0, 1] range and `gap_scale=1` suits them.
    """

    def __init__(self, score: Callable[[str, str], float], name: str = "reward model", gap_scale: float = 1.0) -> None:
        if not callable(score):
            raise TypeError(f"score must be a callable score(prompt, response) -> float, got {type(score).__name__}")
        if not gap_scale > 0:
            raise ValueError(f"gap_scale={gap_scale!r} must be positive")
        self.name = name
        self.score = score
        self.gap_scale = gap_scale

    def rate(self, prompt: str, first: str, second: str) -> int:
        gap = float(self.score(prompt, first)) - float(self.score(prompt, second))
        if not np.isfinite(gap):
            raise ValueError(f"the scorer of judge {self.name!r} returned a non-finite score for {prompt[:60]!r}")
        return rating_from_points(STRENGTH_POINTS[strength_of(gap / self.gap_scale)], gap > 0)


@dataclass(frozen=True)
class SideBySide:
    """Ratings of a comparison of model A with model B, read from A's side (1 = A much better)."""

    ratings: np.ndarray  # (n_prompts, n_judges), ints 1..7
    a_shown_first: np.ndarray  # (n_prompts,) bool: the randomised order each prompt was shown in
    judges: tuple[str, ...]


def _check_pairs(prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> None:
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(f"{len(prompts)} prompts need as many responses from each model; got "
                         f"{len(responses_a)} from A and {len(responses_b)} from B")
    if not prompts:
        raise ValueError("no prompts to judge: give at least one prompt with a response from each model")


def judge_side_by_side(
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    judges: Sequence[Judge],
    *,
    seed: int = 0,
) -> SideBySide:
    """Every judge rates every pair, each prompt shown in a random order (the same order to all its judges)."""
    _check_pairs(prompts, responses_a, responses_b)
    if not judges:
        raise ValueError("judges is empty: give at least one judge, e.g. experiments.toyworld_judges.toy_raters(3)")
    a_first = np.random.default_rng(seed).random(len(prompts)) < 0.5
    ratings = np.empty((len(prompts), len(judges)), dtype=np.int64)
    for row, (prompt, a, b) in enumerate(zip(prompts, responses_a, responses_b, strict=True)):
        for column, judge in enumerate(judges):
            rating = judge.rate(prompt, a, b) if a_first[row] else judge.rate(prompt, b, a)
            check_ratings([rating], name=f"the rating of judge {judge.name!r}")
            ratings[row, column] = rating if a_first[row] else 2 * ABOUT_THE_SAME - rating
    return SideBySide(ratings, a_first, tuple(judge.name for judge in judges))


@dataclass(frozen=True)
class PositionBias:
    """The same pairs rated in both orders by one judge, read from A's side each time."""

    a_first: np.ndarray  # (n,) ratings with A shown first
    a_second: np.ndarray  # (n,) ratings with A shown second
    mean_shift: float  # mean(a_second - a_first): > 0 means a response gains when shown first
    consistency: float  # share of pairs with the same rating in both orders

    def as_dict(self) -> dict[str, float]:
        return {"mean_shift": self.mean_shift, "consistency": self.consistency, "pairs": int(self.a_first.size)}


def position_bias(
    prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str], judge: Judge
) -> PositionBias:
    """Rate each pair twice, A first then B first; a judge without position bias has mean_shift near 0.

    Rating r read from A's side is lower when A looks better, so a judge that favours whichever response is
    shown first rates A better (lower) when A is first: mean(a_second - a_first) > 0.
    """
    _check_pairs(prompts, responses_a, responses_b)
    name = f"the ratings of judge {judge.name!r}"
    first = check_ratings([judge.rate(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b, strict=True)],
                          name=name)
    second = swap_sides(check_ratings([judge.rate(p, b, a) for p, a, b in zip(prompts, responses_a, responses_b,
                                                                               strict=True)], name=name))
    return PositionBias(first, second, float((second - first).mean()), float((first == second).mean()))
