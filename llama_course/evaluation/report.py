"""The whole evaluation of a set of models, as a JSON-ready report and two plots (Llama 2, sections 3.4 and 4.4).

For every pair of models: side-by-side ratings of their answers to held-out tasks by (three) noisy raters
(order randomised), reduced to one rating per prompt (median) and to win / tie / loss rates with bootstrap
intervals; inter-rater reliability (Gwet's AC2 with ordinal weights, Fleiss' kappa); the same comparison by
a TRUE judge; a position-bias check by swapping; and, when a scorer is given, a reward model as judge with its
agreement with the true judge. For every model: mean true helpfulness, and the safety violation rate on
unsafe and borderline requests (5-point ratings, majority of three raters). Who judges is the caller's, an
`EvaluationJudges` (the toy world's: `experiments.toyworld_judges.ToyEvaluationJudges`, with its held-out
prompts `experiments.toyworld_judges.evaluation_prompts`).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from llama_course.evaluation.agreement import fleiss_kappa, gwet_ac2
from llama_course.evaluation.bootstrap import win_tie_loss
from llama_course.evaluation.judges import Judge, RewardModelJudge, SideBySide, judge_side_by_side, position_bias
from llama_course.evaluation.ratings import consensus_ratings, outcome_of
from llama_course.evaluation.safety import LIKERT_POINTS, SafetyJudge, safety_ratings, violation_rate
from llama_course.pretrained import ASSETS_DIR


@dataclass(frozen=True)
class EvaluationPrompts:
    helpfulness: list[str]  # task prompts for the side-by-side comparisons
    safety: list[str]  # unsafe and borderline requests for the safety evaluation


@dataclass(frozen=True)
class ModelAnswers:
    helpfulness: list[str]  # one answer per `EvaluationPrompts.helpfulness` prompt
    safety: list[str]  # one answer per `EvaluationPrompts.safety` prompt


class EvaluationJudges(Protocol):
    """Who judges an evaluation: `settings` go into the report; `side_by_side()` gives one pair of models' (raters,
    true judge, position-bias judge), fresh for each pair; `safety_raters()` the raters of every model's safety
    answers; `helpfulness(prompt, response)` a model's true helpfulness on one prompt."""

    settings: dict[str, Any]

    def side_by_side(self) -> tuple[Sequence[Judge], Judge, Judge]: ...

    def safety_raters(self) -> Sequence[SafetyJudge]: ...

    def helpfulness(self, prompt: str, response: str) -> float: ...


def _rates(outcomes: np.ndarray, resamples: int, seed: int) -> dict[str, dict[str, float]]:
    return {name: interval.as_dict() for name, interval in win_tie_loss(outcomes, resamples=resamples,
                                                                        seed=seed).items()}


def _agreement(ratings: np.ndarray, categories: int) -> dict[str, float | None]:
    try:
        kappa: float | None = fleiss_kappa(ratings, categories)
    except ValueError:  # every rating in one category: kappa is 0/0
        kappa = None
    return {"gwet_ac2": gwet_ac2(ratings, categories), "fleiss_kappa": kappa}


def compare_pair(
    prompts: Sequence[str],
    answers_a: Sequence[str],
    answers_b: Sequence[str],
    judges: tuple[Sequence[Judge], Judge, Judge],
    *,
    reward_scorer: Callable[[str, str], float] | None = None,
    reward_gap_scale: float = 1.0,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The side-by-side comparison of model A with model B (see the module docstring) by `judges` = (raters, true
    judge, position-bias judge), as a dict.

    `reward_gap_scale` is the `gap_scale` of the reward-model judge (`judges.RewardModelJudge`).
    """
    raters, true_judge, position_judge = judges
    noisy = judge_side_by_side(prompts, answers_a, answers_b, raters, seed=seed)
    truth = judge_side_by_side(prompts, answers_a, answers_b, [true_judge], seed=seed)
    true_outcomes = outcome_of(truth.ratings[:, 0])
    result: dict[str, Any] = {
        "prompts": len(prompts),
        "raters": _summary(noisy, resamples, seed),
        "agreement": _agreement(noisy.ratings, 7),
        "true_judge": _summary(truth, resamples, seed),
        "raters_match_true_judge": float((outcome_of(consensus_ratings(noisy.ratings)) == true_outcomes).mean()),
        "position_bias": position_bias(prompts, answers_a, answers_b, position_judge).as_dict(),
    }
    if reward_scorer is not None:
        judge = RewardModelJudge(reward_scorer, gap_scale=reward_gap_scale)
        by_reward = judge_side_by_side(prompts, answers_a, answers_b, [judge], seed=seed)
        result["reward_model"] = {
            **_summary(by_reward, resamples, seed),
            "matches_true_judge": float((outcome_of(by_reward.ratings[:, 0]) == true_outcomes).mean()),
            "position_bias": position_bias(prompts, answers_a, answers_b, judge).as_dict(),
        }
    return result


def _summary(side_by_side: SideBySide, resamples: int, seed: int) -> dict[str, Any]:
    consensus = consensus_ratings(side_by_side.ratings)
    return {"rates": _rates(outcome_of(consensus), resamples, seed),
            "rating_counts": np.bincount(consensus, minlength=8)[1:].tolist()}


def evaluate_answers(
    prompts: EvaluationPrompts,
    answers: Mapping[str, ModelAnswers],
    judges: EvaluationJudges,
    *,
    reward_scorer: Callable[[str, str], float] | None = None,
    reward_gap_scale: float = 1.0,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """The report of models that already answered `prompts`, judged by `judges`: per model, then per pair (first
    named is A)."""
    if len(answers) < 2:
        raise ValueError(f"a side-by-side evaluation needs at least 2 models; got {list(answers)}")
    for name, given in answers.items():
        if len(given.helpfulness) != len(prompts.helpfulness) or len(given.safety) != len(prompts.safety):
            raise ValueError(f"model {name!r} answered {len(given.helpfulness)}/{len(given.safety)} prompts; expected "
                             f"{len(prompts.helpfulness)} helpfulness and {len(prompts.safety)} safety answers")
    models: dict[str, Any] = {}
    judges_of_safety = judges.safety_raters()  # the same raters rate every model
    for name, given in answers.items():
        ratings = safety_ratings(prompts.safety, given.safety, judges_of_safety)
        models[name] = {
            "helpfulness": float(np.mean([judges.helpfulness(p, r) for p, r in zip(prompts.helpfulness,
                                                                                    given.helpfulness, strict=True)])),
            "violation_rate": violation_rate(ratings, resamples=resamples, seed=seed).as_dict(),
            "mean_safety_rating": float(ratings.mean()),
            "safety_agreement": _agreement(ratings, LIKERT_POINTS),
        }
    comparisons = [
        {"model_a": a, "model_b": b,
         **compare_pair(prompts.helpfulness, answers[a].helpfulness, answers[b].helpfulness, judges.side_by_side(),
                        reward_scorer=reward_scorer, reward_gap_scale=reward_gap_scale, resamples=resamples,
                        seed=seed)}
        for a, b in itertools.combinations(answers, 2)
    ]
    settings = {**judges.settings, "resamples": resamples, "confidence": 0.95,
                "seed": seed, "reward_gap_scale": reward_gap_scale, "helpfulness_prompts": len(prompts.helpfulness),
                "safety_prompts": len(prompts.safety),
                "mapping": "ratings 1-3 win, 4 tie, 5-7 loss for model A; median of the raters per prompt"}
    return {"settings": settings, "models": models, "comparisons": comparisons}


SHIPPED_RESULTS = ASSETS_DIR / "evaluation_results.json"


def load_evaluation_results(path: str | Path = SHIPPED_RESULTS) -> dict[str, Any]:
    """The evaluation of every model of the pipeline (chapter 15 plots it): a report of `evaluate_answers` plus,
    under "pipeline", the `llama-course reproduce` report of the run that trained the models."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation results at {str(path)!r}: run `llama-course reproduce --out DIR`, "
                                f"then copy DIR/evaluation_results.json to {path}")
    return json.loads(path.read_text())


def draw_win_tie_loss(axis: Any, comparisons: Sequence[Mapping[str, Any]], judge: str = "raters") -> None:
    """Llama 2 Fig. 1 style on a matplotlib axis: one stacked bar of A's win / tie / loss per comparison, with the
    win rate's bootstrap interval. `judge` is "raters", "true_judge" or "reward_model"."""
    labels = [f"{c['model_a']} vs {c['model_b']}" for c in comparisons]
    left = np.zeros(len(comparisons))
    for outcome, colour in (("win", "tab:blue"), ("tie", "tab:gray"), ("loss", "tab:red")):
        widths = np.array([c[judge]["rates"][outcome]["rate"] for c in comparisons])
        axis.barh(labels, widths, left=left, color=colour, label=outcome)
        left += widths
    wins = [c[judge]["rates"]["win"] for c in comparisons]
    axis.errorbar([w["rate"] for w in wins], labels, fmt="none", ecolor="black", capsize=3,
                  xerr=[[w["rate"] - w["low"] for w in wins], [w["high"] - w["rate"] for w in wins]])
    axis.set_xlim(0, 1)
    axis.invert_yaxis()  # the first comparison on top
    axis.set_xlabel("share of prompts: model A's wins, ties, losses\n(whisker: 95% bootstrap interval of the win rate)")


def draw_helpfulness_vs_safety(axis: Any, models: Mapping[str, Mapping[str, Any]]) -> None:
    """The trade-off on a matplotlib axis: each model's violation rate (with its interval) against its mean true
    helpfulness (Llama 2 plots helpfulness against safety in Fig. 2 and violation rates in Fig. 17)."""
    for name, model in models.items():
        violations = model["violation_rate"]
        axis.errorbar(violations["rate"], model["helpfulness"], fmt="o", capsize=3,
                      xerr=[[violations["rate"] - violations["low"]], [violations["high"] - violations["rate"]]])
        axis.annotate(name, (violations["rate"], model["helpfulness"]), textcoords="offset points", xytext=(5, 5))
    axis.set_xlabel("safety violation rate (majority of 3 raters)")
    axis.set_ylabel("mean true helpfulness")


def _save(draw: Callable[[Any], None], size: tuple[float, float], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=size)
    draw(axis)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_win_tie_loss(report: Mapping[str, Any], path: str | Path) -> None:
    """`draw_win_tie_loss` of the report's comparisons (three raters), saved to `path`."""
    comparisons = report["comparisons"]

    def draw(axis: Any) -> None:
        draw_win_tie_loss(axis, comparisons)
        axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=3)

    _save(draw, (8, 0.6 * len(comparisons) + 2.2), path)


def plot_helpfulness_vs_safety(report: Mapping[str, Any], path: str | Path) -> None:
    """`draw_helpfulness_vs_safety` of the report's models, saved to `path`."""
    _save(lambda axis: draw_helpfulness_vs_safety(axis, report["models"]), (5, 4), path)
