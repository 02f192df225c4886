"""Evaluation as Llama 2 ran it: the 7-point scale, agreement statistics, bootstrap intervals, judges, safety."""

import itertools
import math

import numpy as np
import pytest

from llama_course.evaluation.agreement import fleiss_kappa, gwet_ac2, ordinal_weights
from llama_course.evaluation.bootstrap import bootstrap_difference, bootstrap_rates, win_tie_loss
from llama_course.evaluation.judges import STRENGTH_POINTS, RewardModelJudge, judge_side_by_side, position_bias
from llama_course.evaluation.ratings import (
    LOSS,
    TIE,
    WIN,
    consensus_ratings,
    count_outcomes,
    outcome_of,
    rating_from_points,
    swap_sides,
)
from llama_course.evaluation.safety import likert_from_score, safety_ratings, violation_rate, violations
from llama_course.experiments.toyworld_judges import SafetyRater, ToyRater, safety_raters, toy_raters
from llama_course.toyworld import generate_tasks, helpfulness
from llama_course.toyworld.annotators import FLIP_PROBABILITY, strength_of
from llama_course.toyworld.safety import sample_safety_prompt

# ---- the 7-point scale ------------------------------------------------------------------------------------


def test_seven_points_map_to_win_tie_loss_from_model_a_side():
    assert outcome_of([1, 2, 3, 4, 5, 6, 7]).tolist() == [WIN, WIN, WIN, TIE, LOSS, LOSS, LOSS]
    # tie_band=1: "slightly better" either way also counts as a tie
    assert outcome_of([1, 2, 3, 4, 5, 6, 7], tie_band=1).tolist() == [WIN, WIN, TIE, TIE, TIE, LOSS, LOSS]
    assert swap_sides([1, 2, 3, 4, 5, 6, 7]).tolist() == [7, 6, 5, 4, 3, 2, 1]
    assert [rating_from_points(p, True) for p in (3, 2, 1, 0)] == [1, 2, 3, 4]
    assert [rating_from_points(p, False) for p in (3, 2, 1, 0)] == [7, 6, 5, 4]


def test_three_raters_aggregate_by_median_then_count():
    ratings = [
        [1, 2, 6],  # median 2 -> win (two raters prefer A)
        [3, 4, 4],  # median 4 -> tie
        [2, 4, 7],  # median 4 -> tie: one for A, one for B, one undecided
        [5, 5, 1],  # median 5 -> loss
        [7, 6, 3],  # median 6 -> loss
        [3, 3, 3],  # win
    ]
    consensus = consensus_ratings(ratings)
    assert consensus.tolist() == [2, 4, 4, 5, 6, 3]
    outcomes = outcome_of(consensus)
    assert count_outcomes(outcomes) == {"win": 2, "tie": 2, "loss": 2}
    rates = win_tie_loss(outcomes, resamples=200)
    assert [rates[name].rate for name in ("win", "tie", "loss")] == pytest.approx([1 / 3, 1 / 3, 1 / 3])
    for interval in rates.values():
        assert 0.0 <= interval.low <= interval.rate <= interval.high <= 1.0


@pytest.mark.parametrize(
    ("ratings", "message"),
    [([0, 4], "outside the 7-point scale"), ([4, 8], "outside"), ([2.5], "whole numbers"), ([], "empty"),
     (["A"], "whole numbers")],
)
def test_bad_ratings_are_rejected_with_the_value(ratings, message):
    with pytest.raises(ValueError, match=message):
        outcome_of(ratings)


def test_consensus_needs_an_odd_number_of_raters_and_a_known_tie_band():
    with pytest.raises(ValueError, match="2 raters per pair has no middle rating"):
        consensus_ratings([[1, 7], [2, 3]])
    with pytest.raises(ValueError, match="tie_band=3"):
        outcome_of([1], tie_band=3)
    with pytest.raises(ValueError, match=r"\[2\]"):
        count_outcomes([1, 2])


# ---- agreement --------------------------------------------------------------------------------------------


def test_gwet_ordinal_weights_on_the_seven_point_scale():
    # w(d) = 1 - C(d + 1, 2) / C(7, 2): C(d+1, 2) = 0, 1, 3, 6, 10, 15, 21 for d = 0..6
    expected = [1, 20 / 21, 18 / 21, 15 / 21, 11 / 21, 6 / 21, 0]
    weights = ordinal_weights(7)
    assert weights[0].tolist() == pytest.approx(expected)
    assert np.allclose(weights, weights.T)
    assert weights[3, 5] == pytest.approx(18 / 21)


# Four items, three raters, three ordered categories. Ordinal weights for q = 3: w(0) = 1, w(1) = 1 - 1/3 = 2/3,
# w(2) = 0.
#   item   ratings   rater pairs (weights)      mean     unweighted
#   1      1 1 2     1, 2/3, 2/3                7/9      1/3
#   2      2 3 3     2/3, 2/3, 1                7/9      1/3
#   3      3 3 3     1, 1, 1                    1        1
#   4      1 2 3     2/3, 0, 2/3                4/9      0
# Weighted p_a = (7/9 + 7/9 + 1 + 4/9) / 4 = 3/4.
# pi_k = mean of each item's shares: (2/3 + 1/3) / 4, (1/3 * 3) / 4, (2/3 + 1 + 1/3) / 4 = 1/4, 1/4, 1/2;
# sum pi(1 - pi) = 3/16 + 3/16 + 1/4 = 5/8; sum of all weights T_w = 3 + 4 * 2/3 = 17/3;
# AC2 p_e = T_w / (q (q - 1)) * 5/8 = 17/18 * 5/8 = 85/144; AC2 = (3/4 - 85/144) / (1 - 85/144) = 23/59.
# AC1 (identity weights): p_a = (1/3 + 1/3 + 1 + 0) / 4 = 5/12, p_e = 3/6 * 5/8 = 5/16, AC1 = (5/48) / (11/16) = 5/33.
# Fleiss: p_k = 3/12, 3/12, 6/12 over all 12 ratings, p_e = 1/16 + 1/16 + 1/4 = 3/8,
# kappa = (5/12 - 3/8) / (1 - 3/8) = 1/15.
# (Gwet's irrCAC 0.4.4 gives AC2 0.38983, p_a 0.75, p_e 0.59028, AC1 0.15152, Fleiss 0.06667 on these ratings.)
HAND_RATINGS = [[1, 1, 2], [2, 3, 3], [3, 3, 3], [1, 2, 3]]


def test_ac2_ac1_and_kappa_match_the_hand_computed_example():
    assert gwet_ac2(HAND_RATINGS, categories=3) == pytest.approx(23 / 59, abs=1e-12)
    assert gwet_ac2(HAND_RATINGS, categories=3, weights=np.eye(3)) == pytest.approx(5 / 33, abs=1e-12)
    assert fleiss_kappa(HAND_RATINGS, categories=3) == pytest.approx(1 / 15, abs=1e-12)


def _pairwise_reference(ratings: np.ndarray, weights: np.ndarray, categories: int) -> tuple[float, float]:
    """AC2 and kappa from the definitions, pair by pair in float64 (an independent route to the same numbers)."""
    raters = ratings.shape[1]
    pairs = list(itertools.permutations(range(raters), 2))
    agreement = np.mean([np.mean([weights[row[j] - 1, row[k] - 1] for j, k in pairs]) for row in ratings])
    identity = np.mean([np.mean([float(row[j] == row[k]) for j, k in pairs]) for row in ratings])
    shares = np.array([[np.mean(row == c) for c in range(1, categories + 1)] for row in ratings]).mean(axis=0)
    chance_ac2 = weights.sum() / (categories * (categories - 1)) * np.sum(shares * (1 - shares))
    overall = np.array([np.mean(ratings == c) for c in range(1, categories + 1)])
    chance_kappa = np.sum(overall**2)
    return (agreement - chance_ac2) / (1 - chance_ac2), (identity - chance_kappa) / (1 - chance_kappa)


def test_ac2_and_kappa_match_a_pairwise_reference_on_random_ratings():
    rng = np.random.default_rng(0)
    ratings = rng.integers(1, 8, size=(50, 3))
    ratings[:20] = ratings[:20, :1]  # 20 items on which all three raters agree
    ac2, kappa = _pairwise_reference(ratings, ordinal_weights(7), 7)
    assert gwet_ac2(ratings) == pytest.approx(ac2, abs=1e-12)
    assert fleiss_kappa(ratings) == pytest.approx(kappa, abs=1e-12)
    # Measured while developing with independent packages on exactly these ratings: irrCAC 0.4.4 (Gwet's own
    # method, ordinal weights) AC2 = 0.39163; statsmodels 0.15 fleiss_kappa = 0.38711367207962283.
    assert gwet_ac2(ratings) == pytest.approx(0.39163, abs=5e-6)
    assert fleiss_kappa(ratings) == pytest.approx(0.38711367207962283, abs=1e-12)


def test_agreement_extremes_and_errors():
    assert gwet_ac2([[4, 4, 4]] * 5) == pytest.approx(1.0)  # everyone agrees on one category: AC2 stays defined
    with pytest.raises(ValueError, match="every rating is in one category"):
        fleiss_kappa([[4, 4, 4]] * 5)
    with pytest.raises(ValueError, match="n_raters >= 2"):
        gwet_ac2([[1], [2]])
    with pytest.raises(ValueError, match=r"weights has shape \(2, 2\)"):
        gwet_ac2([[1, 2]], categories=7, weights=np.eye(2))
    with pytest.raises(ValueError, match="outside the 3-point scale"):
        fleiss_kappa([[1, 4]], categories=3)


# ---- bootstrap --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_bootstrap_interval_covers_the_true_win_rate_at_its_nominal_rate(confidence):
    """400 simulated evaluations of 150 prompts each, with true win / tie / loss rates 0.45 / 0.2 / 0.35."""
    rng = np.random.default_rng(12)
    true_rates = (0.45, 0.2, 0.35)
    repetitions = 400
    covered = 0
    for repetition in range(repetitions):
        outcomes = rng.choice([WIN, TIE, LOSS], size=150, p=true_rates)
        win = win_tie_loss(outcomes, resamples=400, confidence=confidence, seed=repetition)["win"]
        covered += win.low <= true_rates[0] <= win.high
    # the binomial standard error of the coverage is sqrt(0.95 * 0.05 / 400) = 0.011 (0.02 at 0.8)
    assert abs(covered / repetitions - confidence) < 0.035


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match=r"labels hold \[2\]"):
        win_tie_loss([1, 0, 2])
    with pytest.raises(ValueError, match="non-empty"):
        win_tie_loss([])
    with pytest.raises(ValueError, match="resamples=10"):
        win_tie_loss([1, 0], resamples=10)
    with pytest.raises(ValueError, match="confidence=95"):
        bootstrap_rates([True], [True, False], confidence=95)


# ---- judges -----------------------------------------------------------------------------------------------

PROMPT = "What is 3 plus 4?"
EXACT, OFF_BY_ONE, OFF_BY_TWO, WRONG = "3 plus 4 is 7.", "3 plus 4 is 8.", "3 plus 4 is 9.", "3 plus 4 is 12."


def test_noise_free_toy_rater_rates_by_the_true_gap_in_both_orders():
    rater = ToyRater("true judge", noise_scale=0.0)
    # true helpfulness 1.0, 0.5, 0.2, 0.0: gaps 0.5 (significantly), 0.3 (better), 0.2 (slightly), 0 (unsure)
    assert rater.rate(PROMPT, EXACT, OFF_BY_ONE) == 1
    assert rater.rate(PROMPT, OFF_BY_TWO, OFF_BY_ONE) == 6
    assert rater.rate(PROMPT, OFF_BY_TWO, WRONG) == 3
    assert rater.rate(PROMPT, WRONG, "I do not know.") == 4
    assert rater.rate(PROMPT, OFF_BY_ONE, EXACT) == 7


@pytest.mark.parametrize(("better", "worse"), [(EXACT, OFF_BY_ONE), (OFF_BY_ONE, OFF_BY_TWO), (OFF_BY_TWO, WRONG)])
def test_rater_noise_is_the_annotators_and_grows_as_the_preference_weakens(better, worse):
    rater = ToyRater("rater", noise_scale=1.0, seed=3)
    ratings = np.array([rater.rate(PROMPT, better, worse) for _ in range(3000)])
    strength = strength_of(helpfulness(PROMPT, better) - helpfulness(PROMPT, worse))
    assert set(ratings.tolist()) == {4 - STRENGTH_POINTS[strength], 4 + STRENGTH_POINTS[strength]}
    wrong_side = float((ratings > 4).mean())
    expected = FLIP_PROBABILITY[strength]
    assert abs(wrong_side - expected) < 4 * math.sqrt(expected * (1 - expected) / ratings.size)


def test_reward_model_judge_with_the_true_reward_agrees_with_the_noise_free_rater():
    tasks = generate_tasks(30, seed=5)
    rater, judge = ToyRater("true", noise_scale=0.0), RewardModelJudge(helpfulness)
    rng = np.random.default_rng(0)
    for prompt, answer in zip(tasks["prompt"], tasks["answer"], strict=True):
        other = [answer + " " + answer, "I do not know.", answer.replace("1", "2")][rng.integers(3)]
        if other == answer:
            continue
        assert judge.rate(prompt, answer, other) == rater.rate(prompt, answer, other)
    # gap_scale: a reward on a 0..10 scale rated like a 0..1 one
    assert RewardModelJudge(lambda p, r: 10 * helpfulness(p, r), gap_scale=10).rate(PROMPT, OFF_BY_TWO, WRONG) == 3


def test_reward_model_judge_rejects_bad_scorers():
    with pytest.raises(TypeError, match="callable"):
        RewardModelJudge(0.5)
    with pytest.raises(ValueError, match="gap_scale=0"):
        RewardModelJudge(helpfulness, gap_scale=0)
    with pytest.raises(ValueError, match="non-finite"):
        RewardModelJudge(lambda p, r: float("nan")).rate(PROMPT, EXACT, WRONG)


class FirstShownBias:
    """A judge that always finds the first response slightly better."""

    name = "first-shown bias"

    def rate(self, prompt, first, second):
        return 3


def test_order_is_randomised_and_read_back_from_model_a_side():
    prompts = [PROMPT] * 200
    a, b = [EXACT] * 200, [OFF_BY_TWO] * 200
    result = judge_side_by_side(prompts, a, b, [ToyRater("true", noise_scale=0.0), FirstShownBias()], seed=1)
    assert 0.4 < result.a_shown_first.mean() < 0.6
    assert (result.ratings[:, 0] == 1).all()  # A much better, whichever order it was shown in
    assert (result.ratings[:, 1] == np.where(result.a_shown_first, 3, 5)).all()
    assert result.judges == ("true", "first-shown bias")


def test_position_bias_check_by_swapping():
    prompts, a, b = [PROMPT] * 20, [EXACT, OFF_BY_TWO] * 10, [OFF_BY_ONE, WRONG] * 10
    biased = position_bias(prompts, a, b, FirstShownBias())
    assert (biased.mean_shift, biased.consistency) == (2.0, 0.0)  # A: 3 when first, 5 when second
    fair = position_bias(prompts, a, b, ToyRater("true", noise_scale=0.0))
    assert (fair.mean_shift, fair.consistency) == (0.0, 1.0)


class OffTheScale:
    name = "off the scale"

    def rate(self, prompt, first, second):
        return 0


def test_side_by_side_rejects_mismatched_input():
    with pytest.raises(ValueError, match="the rating of judge 'off the scale' holds 0"):
        judge_side_by_side([PROMPT], [EXACT], [WRONG], [OffTheScale()])
    with pytest.raises(ValueError, match="the ratings of judge 'off the scale' holds 0"):
        position_bias([PROMPT], [EXACT], [WRONG], OffTheScale())
    with pytest.raises(ValueError, match="3 prompts need as many responses"):
        judge_side_by_side([PROMPT] * 3, [EXACT] * 3, [WRONG] * 2, toy_raters(3))
    with pytest.raises(ValueError, match="judges is empty"):
        judge_side_by_side([PROMPT], [EXACT], [WRONG], [])
    with pytest.raises(ValueError, match="count=0"):
        toy_raters(0)
    with pytest.raises(ValueError, match="noise_scale=2"):
        toy_raters(3, noise_scale=2)


# ---- safety -----------------------------------------------------------------------------------------------


def test_likert_ratings_of_the_true_safety_levels():
    # does harm 0.0, refuses yet harms 0.1, evasive 0.4, bare refusal 0.7, refusal with an alternative 1.0
    assert [likert_from_score(s) for s in (0.0, 0.1, 0.2, 0.4, 0.7, 0.8, 1.0)] == [1, 1, 2, 3, 4, 5, 5]
    with pytest.raises(ValueError, match="score=1.5"):
        likert_from_score(1.5)


def test_violation_is_a_majority_of_ratings_of_one_or_two():
    ratings = [[1, 2, 5], [1, 3, 4], [2, 2, 2], [3, 4, 5], [2, 3, 1]]
    assert violations(ratings).tolist() == [True, False, True, False, True]
    assert violation_rate(ratings, resamples=200).rate == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="outside the 5-point scale"):
        violations([[6, 1, 1]])


def test_safety_raters_on_compliance_and_refusals():
    rng = __import__("random").Random(0)
    unsafe = [sample_safety_prompt(rng, "unsafe") for _ in range(20)]
    prompts = [example.prompt for example in unsafe]
    exact = safety_raters(3, noise_scale=0.0)
    assert (safety_ratings(prompts, [e.bad_answer for e in unsafe], exact) == 1).all()
    assert (safety_ratings(prompts, [e.answer for e in unsafe], exact) == 5).all()
    # an evasive answer (true safety 0.4, on the boundary) is a 3, and a noisy rater calls it a 2 about 40% of
    # the time (the annotators' "negligibly better / unsure" flip probability)
    noisy = SafetyRater("noisy", seed=2, noise_scale=1.0)
    evasive = np.array([noisy.rate(prompts[0], "The sky is blue.") for _ in range(2000)])
    assert set(evasive.tolist()) == {2, 3}
    assert abs((evasive == 2).mean() - FLIP_PROBABILITY["negligibly better / unsure"]) < 0.045
    with pytest.raises(ValueError, match="2 prompts need as many responses; got 1"):
        safety_ratings(prompts[:2], ["x"], exact)


def test_bootstrap_difference_of_independent_samples():
    exact = bootstrap_difference([0.25] * 10, [0.75] * 20)
    assert (exact.rate, exact.low, exact.high) == (0.5, 0.5, 0.5)
    rng = np.random.default_rng(1)
    before, after = rng.normal(0.0, 1.0, 400), rng.normal(0.3, 1.0, 300)
    interval = bootstrap_difference(before, after)
    assert interval.rate == pytest.approx(after.mean() - before.mean())
    # about 1.96 standard errors of a difference of two means on either side
    half_width = 1.96 * np.sqrt(before.var() / 400 + after.var() / 300)
    assert interval.high - interval.low == pytest.approx(2 * half_width, rel=0.15)
    with pytest.raises(ValueError, match="non-empty 1-D"):
        bootstrap_difference([], [1.0])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_difference([0.1, float("nan")], [0.2])
