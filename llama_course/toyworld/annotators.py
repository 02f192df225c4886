"""Preference annotators: compare two responses, pick the better one, and rate how much better it is.

Llama 2 (section 3.2.1) asks annotators which of two responses is better and by how much, on a 4-level
scale: significantly better, better, slightly better, negligibly better / unsure. The toy annotator
compares the TRUE scores (`helpfulness` or `safety` of `rewards.py`) and labels the strength from the gap
between them with the thresholds below. Like human raters, who agree less on close calls (Llama 2 reports
RM accuracy falling from 79% on "significantly better" pairs to 55% on "negligibly better", Table 28), it
picks the worse response with a probability that grows as the gap shrinks (`FLIP_PROBABILITY`), scaled by
`noise_scale` (0 gives a perfect annotator).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import datasets

from llama_course.paper import STRENGTH_THRESHOLDS as STRENGTH_THRESHOLDS  # re-exported: the toy world's names
from llama_course.paper import STRENGTHS as STRENGTHS
from llama_course.paper import strength_of
from llama_course.toyworld.rewards import helpfulness, safety
from llama_course.toyworld.safety import sample_safety_prompt
from llama_course.toyworld.stories import check_count
from llama_course.toyworld.tasks import FAMILIES, identify_task

# Llama 2's four strengths (`paper.STRENGTHS`) from the true scores, by `paper.strength_of`.
FLIP_PROBABILITY = {
    "significantly better": 0.02,
    "better": 0.10,
    "slightly better": 0.20,
    "negligibly better / unsure": 0.40,
}
CRITERIA: dict[str, Callable[[str, str], float]] = {"helpfulness": helpfulness, "safety": safety}
_FILLERS = (
    "I hope this helps you.",
    "Thank you for the question.",
    "This is a very good question.",
    "Let me know if you want more help.",
)


@dataclass(frozen=True)
class Preference:
    chosen: str
    rejected: str
    strength: str
    score_chosen: float  # true score (criterion) of the chosen response; lower than score_rejected if flipped
    score_rejected: float
    flipped: bool  # the annotator's noise chose the truly worse response


class Annotator:
    """A simulated rater with one criterion ("helpfulness" or "safety") and strength-dependent noise."""

    def __init__(self, criterion: str = "helpfulness", seed: int = 0, noise_scale: float = 1.0) -> None:
        if criterion not in CRITERIA:
            raise ValueError(f"criterion={criterion!r} is unknown; choose one of {tuple(CRITERIA)}")
        if not 0.0 <= noise_scale <= 1.0 / (2 * max(FLIP_PROBABILITY.values())):
            raise ValueError(f"noise_scale={noise_scale!r} must be in [0, 1.25] so no flip probability exceeds 0.5")
        self.criterion = criterion
        self.score = CRITERIA[criterion]
        # Between two equally safe responses a safety rater still prefers the more helpful one (as Llama 2's
        # raters pick a preferred response first, then judge safety); the strength stays that of the safety gap.
        self.tie_breaker = helpfulness if criterion == "safety" else None
        self.noise_scale = noise_scale
        self.rng = random.Random(seed)

    def compare(self, prompt: str, response_a: str, response_b: str) -> Preference:
        """Which of two responses is better, and how much; exact ties are broken by a coin flip."""
        key_a, key_b = self.score_key(prompt, response_a), self.score_key(prompt, response_b)
        if key_a == key_b and self.rng.random() < 0.5 or key_b > key_a:
            response_a, response_b, key_a, key_b = response_b, response_a, key_b, key_a
        strength = strength_of(key_a[0] - key_b[0])
        flipped = key_a > key_b and self.rng.random() < self.noise_scale * FLIP_PROBABILITY[strength]
        if flipped:
            response_a, response_b, key_a, key_b = response_b, response_a, key_b, key_a
        return Preference(response_a, response_b, strength, key_a[0], key_b[0], flipped)

    def score_key(self, prompt: str, response: str) -> tuple[float, float]:
        """What the rater compares: (criterion score, tie-breaker score)."""
        secondary = self.tie_breaker(prompt, response) if self.tie_breaker is not None else 0.0
        return self.score(prompt, response), secondary


def padded(answer: str, rng: random.Random) -> str:
    """`answer` followed by two to four filler sentences (the length factor of `scoring.py` prices them)."""
    return " ".join([answer, *rng.sample(_FILLERS, rng.randint(2, 4))])


def candidate_responses(prompt: str, reference: str, worse: list[str], rng: random.Random) -> list[str]:
    """Responses of graded quality to one prompt: the reference, worse answers, padded, looping, refusing."""
    looping = " ".join([reference] * rng.randint(3, 5))
    return [reference, *worse, padded(reference, rng), looping, "I will not help you with that.", "I do not know."]


def write_demonstration(prompt: str, reference: str, careless: float, rng: random.Random) -> str:
    """A demonstration an annotator writes for a task prompt, for SFT: the reference answer, except that with
    probability `careless` the writer slips, half the time with a mistake of the task's kind (its family's
    `corrupt`) and half the time with the right answer padded by filler sentences.

    Llama 2 found its SFT data's quality uneven across annotators (section 3.1) and argues that RLHF goes
    beyond the demonstrations because annotators compare answers better than they write them (section 5.1);
    the toy annotators' demonstrations are perfect unless `careless` > 0. No random number is drawn at 0.
    """
    if not 0.0 <= careless <= 1.0:
        raise ValueError(f"careless={careless!r} must be a probability in [0, 1]")
    if careless == 0.0 or rng.random() >= careless:
        return reference
    if rng.random() < 0.5:
        found = identify_task(prompt)
        if found is None:
            raise ValueError(f"prompt={prompt[:60]!r} is not a task prompt: only task demonstrations have slips")
        family, solution = found
        return family.corrupt(solution, rng)
    return padded(reference, rng)


def _task_candidates(rng: random.Random) -> tuple[str, str, list[str]]:
    family = FAMILIES[rng.choice(tuple(FAMILIES))]
    prompt = family.sample(rng)
    solution = family.solve(prompt)
    worse = [family.corrupt(solution, rng) for _ in range(3)]
    return prompt, family.name, candidate_responses(prompt, solution.answer, worse, rng)


def _safety_candidates(rng: random.Random) -> tuple[str, str, list[str]]:
    example = sample_safety_prompt(rng)
    bare_refusal = example.answer.split(". ")[0].rstrip(".") + "."  # no alternative offered
    worse = [example.bad_answer, bare_refusal, f"I will not help you. But here is how. {example.bad_answer}"]
    return example.prompt, example.category, candidate_responses(example.prompt, example.answer, worse, rng)


def generate_preferences(
    n: int, seed: int = 0, criterion: str = "helpfulness", noise_scale: float = 1.0
) -> datasets.Dataset:
    """`n` preference pairs labelled by an `Annotator`. Same seed, same pairs.

    helpfulness: prompts of every task family, plus borderline/unsafe prompts one time in five; safety:
    unsafe and borderline prompts. Two distinct candidates are drawn per prompt, redrawn (up to 5 times)
    while their true scores tie.
    Measured over 4,000 helpfulness pairs (seed 0) the strengths are about 53% significantly better, 18%
    better, 18% slightly better and 11% negligibly better / unsure.
    Columns: `prompt`, `chosen`, `rejected`, `strength` (one of STRENGTHS), `category` (task family, or
    "unsafe" / "borderline"), `criterion` (str); `score_chosen`, `score_rejected` (float64, true scores);
    `flipped` (bool, the annotator's label noise).
    """
    check_count("n", n)
    annotator = Annotator(criterion, seed=seed + 1, noise_scale=noise_scale)
    rng = random.Random(seed)
    rows: dict[str, list] = {
        column: []
        for column in (
            "prompt",
            "chosen",
            "rejected",
            "strength",
            "category",
            "criterion",
            "score_chosen",
            "score_rejected",
            "flipped",
        )
    }
    for _ in range(n):
        use_safety = criterion == "safety" or rng.random() < 0.2
        prompt, category, candidates = (_safety_candidates if use_safety else _task_candidates)(rng)
        distinct = sorted(set(candidates))
        for _ in range(5):  # prefer a pair the criterion can tell apart: an exact tie teaches a reward model nothing
            first, second = rng.sample(distinct, 2)
            if annotator.score_key(prompt, first) != annotator.score_key(prompt, second):
                break
        preference = annotator.compare(prompt, first, second)
        for column, value in (
            ("prompt", prompt),
            ("category", category),
            ("criterion", criterion),
            *vars(preference).items(),
        ):
            rows[column].append(value)
    features = datasets.Features(
        {
            **{
                column: datasets.Value("string")
                for column in ("prompt", "chosen", "rejected", "strength", "category", "criterion")
            },
            "score_chosen": datasets.Value("float64"),
            "score_rejected": datasets.Value("float64"),
            "flipped": datasets.Value("bool"),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)
