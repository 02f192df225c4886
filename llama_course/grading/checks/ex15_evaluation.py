"""Tests of exercise 15: 7-point ratings to wins / ties / losses, Gwet's AC2, the safety violation rate.

Llama 2, section 3.4.2 (side-by-side ratings on a 7-point scale, three raters, wins / ties / losses, Gwet's AC2)
and section 4.4 (5-point safety ratings; a rating of 1 or 2 is a violation, by majority of the raters).
"""

import numpy as np

from llama_course.evaluation.agreement import gwet_ac2 as reference_ac2
from llama_course.evaluation.agreement import ordinal_weights
from llama_course.evaluation.ratings import consensus_ratings, outcome_of
from llama_course.evaluation.safety import violation_rate as safety_violation_rate
from llama_course.evaluation.safety import violations
from llama_course.grading.assertions import assert_equal, raises_value_error
from llama_course.grading.registry import Exercise

EXERCISE = Exercise(chapter=15, name="15_evaluation", title="Evaluation")


def random_ratings(seed: int, items: int, raters: int, points: int, agreeing: int = 0) -> np.ndarray:
    """(items, raters) ratings in 1..points; the first `agreeing` items have every rater on one rating."""
    rng = np.random.default_rng(seed)
    ratings = rng.integers(1, points + 1, size=(items, raters))
    ratings[:agreeing] = ratings[:agreeing, :1]
    return ratings


def assert_refused(function, argument: np.ndarray, why: str) -> None:
    """`function(argument)` must raise ValueError; `why` tells the student what is wrong with the argument."""
    if not raises_value_error(function, argument):
        raise AssertionError(f"{why}: raise ValueError")


def close(actual, expected: float, what: str, tolerance: float = 1e-9) -> None:
    if not isinstance(actual, (float, np.floating)) or abs(float(actual) - expected) > tolerance:
        raise AssertionError(f"expected the float {expected!r}, got {actual!r}: {what}")


@EXERCISE.test("outcomes_from_ratings", points=2)
def outcomes_match_the_reference_for_every_tie_band(outcomes_from_ratings):
    for seed, (items, raters) in enumerate(((1, 1), (30, 3), (40, 5))):
        ratings = random_ratings(150 + seed, items, raters, 7)
        for tie_band in (0, 1, 2):
            got = outcomes_from_ratings(ratings.copy(), tie_band)
            assert_equal(np.asarray(got).tolist(), outcome_of(consensus_ratings(ratings), tie_band).tolist(),
                         what=f"the outcomes of ratings {ratings.tolist()} with tie_band={tie_band}")


@EXERCISE.test("outcomes_from_ratings", points=1)
def the_median_rater_decides_and_bad_ratings_are_refused(outcomes_from_ratings):
    ratings = np.array([[1, 4, 7], [2, 3, 7], [5, 5, 1], [3, 7, 7]])
    # medians 4, 3, 5, 7: a tie, a (slight) win, a (slight) loss, a loss
    assert_equal(np.asarray(outcomes_from_ratings(ratings)).tolist(), [0, 1, -1, -1],
                 what=f"the outcomes of {ratings.tolist()} (medians 4, 3, 5, 7)")
    assert_equal(np.asarray(outcomes_from_ratings(ratings, 1)).tolist(), [0, 0, 0, -1],
                 what=f"the outcomes of {ratings.tolist()} with tie_band=1 (slightly better is a tie)")
    for bad in ([[1, 2]], [[0, 4, 4]], [[4, 8, 4]]):
        assert_refused(outcomes_from_ratings, np.array(bad), f"ratings {bad} have no middle rater or leave 1..7")


@EXERCISE.test("gwet_ac2", points=2)
def ac2_matches_the_reference_with_ordinal_and_identity_weights(gwet_ac2):
    for seed, (items, raters, points) in enumerate(((50, 3, 7), (30, 5, 5), (20, 2, 3))):
        ratings = random_ratings(160 + seed, items, raters, points, agreeing=items // 3)
        for weights, name in ((ordinal_weights(points), "ordinal"), (np.eye(points), "identity (AC1)")):
            close(gwet_ac2(ratings.copy(), weights.copy()), reference_ac2(ratings, points, weights),
                  what=f"AC2 with {name} weights of {items} items x {raters} raters on a {points}-point scale")


@EXERCISE.test("gwet_ac2", points=1)
def ac2_is_the_hand_computed_value_and_one_for_full_agreement(gwet_ac2):
    hand = np.array([[1, 1, 2], [2, 3, 3], [3, 3, 3], [1, 2, 3]])
    close(gwet_ac2(hand, ordinal_weights(3)), 23 / 59, what=f"AC2 of {hand.tolist()} with ordinal weights")
    close(gwet_ac2(hand, np.eye(3)), 5 / 33, what=f"AC1 (identity weights) of {hand.tolist()}")
    agreeing = np.array([[2, 2, 2], [5, 5, 5], [7, 7, 7], [2, 2, 2]])
    close(gwet_ac2(agreeing, ordinal_weights(7)), 1.0, what=f"AC2 of raters who always agree, {agreeing.tolist()}")


@EXERCISE.test("violation_rate", points=2)
def violation_rate_matches_the_reference(violation_rate):
    for seed, (items, raters) in enumerate(((1, 1), (40, 3), (25, 4), (60, 5))):
        ratings = random_ratings(170 + seed, items, raters, 5)
        close(violation_rate(ratings.copy()), float(violations(ratings).mean()),
              what=f"the violation rate of {items} responses x {raters} raters {ratings.tolist()[:5]}...")


@EXERCISE.test("violation_rate", points=1)
def a_violation_needs_more_than_half_the_raters(violation_rate):
    ratings = np.array([[1, 2, 5], [1, 5, 5], [2, 2, 2], [3, 4, 5]])
    close(violation_rate(ratings), 0.5, what=f"the violation rate of {ratings.tolist()} (rows 1 and 3 violate)")
    close(violation_rate(np.array([[1, 5], [2, 2]])), 0.5,
          what="the violation rate of [[1, 5], [2, 2]]: one vote of two is not a majority")
    assert_refused(violation_rate, np.array([[1, 6, 2]]), "a rating of 6 is outside the 5-point scale")


EXERCISE.references("outcomes_from_ratings", outcome_of, consensus_ratings)
EXERCISE.references("gwet_ac2", reference_ac2)
EXERCISE.references("violation_rate", violations, safety_violation_rate)
