"""Preference annotators: strength thresholds, strength-dependent label noise, and the preference datasets."""

import collections

import pytest

from llama_course.toyworld.annotators import (
    FLIP_PROBABILITY,
    STRENGTHS,
    Annotator,
    generate_preferences,
    strength_of,
)
from llama_course.toyworld.rewards import helpfulness, safety


@pytest.mark.parametrize(
    ("gap", "strength"),
    [
        (1.0, STRENGTHS[0]),
        (0.5, STRENGTHS[0]),
        (-0.49, STRENGTHS[1]),
        (0.25, STRENGTHS[1]),
        (0.2, STRENGTHS[2]),
        (0.1, STRENGTHS[2]),
        (0.09, STRENGTHS[3]),
        (0.0, STRENGTHS[3]),
    ],
)
def test_strength_thresholds(gap, strength):
    assert strength_of(gap) == strength


def test_noiseless_annotator_always_prefers_the_better_response():
    annotator = Annotator("helpfulness", seed=0, noise_scale=0.0)
    for _ in range(50):
        preference = annotator.compare("What is 2 plus 3?", "2 plus 3 is 6.", "2 plus 3 is 5.")
        assert (preference.chosen, preference.strength) == ("2 plus 3 is 5.", "significantly better")  # 1 vs 0.5


@pytest.fixture(scope="module")
def helpfulness_pairs():
    return generate_preferences(3000, seed=0)


def test_label_noise_per_strength_matches_the_documented_rates(helpfulness_pairs):
    by_strength = collections.defaultdict(list)
    for strength, flipped in zip(helpfulness_pairs["strength"], helpfulness_pairs["flipped"], strict=True):
        by_strength[strength].append(flipped)
    for strength in STRENGTHS:
        flips = by_strength[strength]
        assert len(flips) >= 250, strength
        rate = sum(flips) / len(flips)
        tolerance = 3 * (FLIP_PROBABILITY[strength] * (1 - FLIP_PROBABILITY[strength]) / len(flips)) ** 0.5
        assert abs(rate - FLIP_PROBABILITY[strength]) < tolerance, (strength, rate)


def test_strength_distribution_is_as_documented(helpfulness_pairs):
    counts = collections.Counter(helpfulness_pairs["strength"])
    documented = dict(zip(STRENGTHS, (0.53, 0.18, 0.18, 0.11), strict=True))  # generate_preferences docstring
    for strength, fraction in documented.items():
        assert abs(counts[strength] / len(helpfulness_pairs) - fraction) < 0.03, strength


def test_recorded_scores_are_the_true_scores_and_flips_invert_them(helpfulness_pairs):
    for row in helpfulness_pairs.select(range(300)):
        assert row["score_chosen"] == helpfulness(row["prompt"], row["chosen"])
        assert row["score_rejected"] == helpfulness(row["prompt"], row["rejected"])
        assert strength_of(row["score_chosen"] - row["score_rejected"]) == row["strength"]
        if row["flipped"]:
            assert row["score_chosen"] < row["score_rejected"]
        else:
            assert row["score_chosen"] >= row["score_rejected"]


def test_preference_columns_types_and_determinism():
    pairs = generate_preferences(200, seed=4, criterion="safety")
    assert pairs["chosen"] == generate_preferences(200, seed=4, criterion="safety")["chosen"]
    assert pairs.column_names == [
        "prompt",
        "chosen",
        "rejected",
        "strength",
        "category",
        "criterion",
        "score_chosen",
        "score_rejected",
        "flipped",
    ]
    assert pairs.features["score_chosen"].dtype == "float64"
    assert pairs.features["flipped"].dtype == "bool"
    assert set(pairs["category"]) == {"unsafe", "borderline"}
    assert set(pairs["strength"]) <= set(STRENGTHS)
    for row in pairs.select(range(100)):
        assert row["score_chosen"] == safety(row["prompt"], row["chosen"])


def test_bad_annotator_settings_are_errors():
    with pytest.raises(ValueError, match="criterion='honesty'"):
        Annotator("honesty")
    with pytest.raises(ValueError, match="noise_scale=2"):
        Annotator(noise_scale=2)
    with pytest.raises(ValueError, match="n=-1"):
        generate_preferences(-1)


def test_careless_demonstrations_slip_at_the_asked_rate_with_mistakes_and_padding():
    import random

    from llama_course.toyworld import generate_tasks
    from llama_course.toyworld.annotators import write_demonstration

    tasks = generate_tasks(2000, seed=5)
    rng = random.Random(0)
    written = [write_demonstration(t["prompt"], t["answer"], 0.3, rng) for t in tasks]
    slips = [(t, w) for t, w in zip(tasks, written, strict=True) if w != t["answer"]]
    padded = [w for t, w in slips if w.startswith(t["answer"] + " ")]
    # A slip that happens to equal the reference (a corruption cannot) is impossible, so the rate is exact.
    assert abs(len(slips) / len(tasks) - 0.3) < 0.03
    assert abs(len(padded) / len(slips) - 0.5) < 0.06
    mistakes = [(t, w) for t, w in slips if not w.startswith(t["answer"] + " ")]
    # Every reference scores 1.0; measured (seed 0): padding keeps 0.67 of it on average, a mistake 0.31.
    assert all(helpfulness(t["prompt"], t["answer"]) == 1.0 for t, _ in slips)
    assert 0.55 < sum(helpfulness(t["prompt"], w) for t, w in slips if w in padded) / len(padded) < 0.8
    assert 0.2 < sum(helpfulness(t["prompt"], w) for t, w in mistakes) / len(mistakes) < 0.4
    # careless=0 draws no random number and returns the reference.
    untouched = random.Random(1)
    assert write_demonstration(tasks[0]["prompt"], tasks[0]["answer"], 0.0, untouched) == tasks[0]["answer"]
    assert untouched.random() == random.Random(1).random()
    with pytest.raises(ValueError, match="careless=1.5"):
        write_demonstration(tasks[0]["prompt"], tasks[0]["answer"], 1.5, rng)
