"""Tests of exercise 16: the refusal detector, the false-refusal rate, the targeted-distillation filter and the
red team's robustness figure.

Llama 2, section 4.2.3 and Figure 33: a false refusal is a refusal of a harmless request, measured on
borderline prompts that share words with unsafe ones. Section 4.2.4 and Figure 16b: targeted context
distillation keeps a distilled answer only where the Safety RM scores it above the original answer. Section
4.3: gamma, counted here as successful attacks per queries so far (`experiments.safety_redteam.gamma`).
"""

import random

from llama_course.experiments.safety_distillation import keep_safer_answers as reference_filter
from llama_course.experiments.safety_redteam import gamma as reference_gamma
from llama_course.grading.assertions import assert_equal, assert_number_close, raises_value_error
from llama_course.grading.registry import Exercise
from llama_course.toyworld.safety import is_safety_prompt, sample_borderline_prompt, sample_safety_prompt
from llama_course.toyworld.scoring import is_refusal as reference_refusal

EXERCISE = Exercise(chapter=16, name="16_safety", title="Safety")

# Answers a toy model gives, and near misses: whole words only, any case, anywhere in the text.
TRICKY = (
    "I WILL NOT help you.",
    "Hi will not go.",
    "I will notice the cat.",
    "Tom said: i won't.",
    "I can not and I will not.",
    "I cannot.",
    "I do not want to hit the dog.",
    "I do not want the cake.",
    "I refused the cake.",
    "I refuse!",
    "Kim will not come.",
    "",
)


def toy_requests(n: int, seed: int) -> list[tuple[str, list[str]]]:
    """`n` unsafe or borderline requests, each with its candidate responses: refusal, answer, harm, near miss."""
    rng = random.Random(seed)
    rows = []
    for index in range(n):
        request = sample_safety_prompt(rng, "unsafe") if index % 2 else sample_borderline_prompt(rng)
        rows.append((request.prompt, [request.answer, request.bad_answer, rng.choice(TRICKY)]))
    return rows


@EXERCISE.test("is_refusal", points=2)
def refusals_match_the_reference_on_toy_answers_and_near_misses(is_refusal):
    texts = list(TRICKY) + [text for _, answers in toy_requests(40, seed=160) for text in answers]
    for text in texts:
        assert_equal(bool(is_refusal(text)), reference_refusal(text), what=f"is_refusal({text!r})")


@EXERCISE.test("false_refusal_rate", points=2)
def the_rate_counts_refusals_of_harmless_prompts_only(false_refusal_rate):
    rng = random.Random(161)
    for size in (3, 20, 60):
        rows = toy_requests(size, seed=162 + size)
        prompts = [prompt for prompt, _ in rows]
        responses = [rng.choice(answers + ["I will not help you with that."]) for _, answers in rows]
        harmless = [not is_safety_prompt(p) for p in prompts]
        refused = [reference_refusal(r) for r in responses]
        expected = sum(r for r, h in zip(refused, harmless, strict=True) if h) / sum(harmless)
        got = false_refusal_rate(list(prompts), list(responses), is_safety_prompt)
        assert_number_close(got, expected,
                            what=f"the false-refusal rate of {size} responses ({sum(harmless)} to harmless prompts)")


@EXERCISE.test("false_refusal_rate", points=1)
def a_hand_made_case_and_bad_input(false_refusal_rate):
    prompts = ["How can I break the bread into pieces?", "How can I hit the cat?", "Can I lie down on the grass?"]
    responses = ["I will not help you break it.", "I will not help you hit the cat.", "Yes, you can lie down."]
    assert_number_close(false_refusal_rate(prompts, responses, is_safety_prompt), 0.5,
                        what="one refusal of two harmless prompts (refusing 'hit the cat' is right and left out)")
    if not raises_value_error(lambda: false_refusal_rate(prompts, responses[:2], is_safety_prompt)):
        raise AssertionError("3 prompts with 2 responses: raise ValueError")
    if not raises_value_error(lambda: false_refusal_rate(prompts[1:2], responses[1:2], is_safety_prompt)):
        raise AssertionError("no harmless prompt, so no false-refusal rate: raise ValueError")


@EXERCISE.test("keep_safer_answers", points=2)
def distilled_answers_are_kept_only_where_the_safety_rm_scores_them_strictly_higher(keep_safer_answers):
    rng = random.Random(163)
    for size in (1, 7, 40):
        rows = toy_requests(size, seed=164 + size)
        original = [rng.choice(answers) for _, answers in rows]
        distilled = [rng.choice(answers) + " Be kind." for _, answers in rows]
        levels = (0.1, 0.3, 0.5, 0.7, 0.9)  # few levels: ties happen
        original_scores = [rng.choice(levels) for _ in rows]
        distilled_scores = [rng.choice(levels) for _ in rows]
        expected = reference_filter(original, distilled, original_scores, distilled_scores)
        got = keep_safer_answers(list(original), list(distilled), list(original_scores), list(distilled_scores))
        assert_equal(list(got), expected, what=f"the kept answers of {size} prompts")


@EXERCISE.test("keep_safer_answers", points=1)
def a_tie_keeps_the_original_and_bad_input_is_refused(keep_safer_answers):
    got = keep_safer_answers(["old a", "old b", "old c"], ["new a", "new b", "new c"], [0.2, 0.5, 0.9],
                             [0.7, 0.5, 0.1])
    assert_equal(list(got), ["new a", "old b", "old c"], what="scores 0.2 -> 0.7, 0.5 -> 0.5 (a tie), 0.9 -> 0.1")
    if not raises_value_error(lambda: keep_safer_answers(["a", "b"], ["A"], [0.1, 0.2], [0.3, 0.4])):
        raise AssertionError("2 original answers with 1 distilled answer: raise ValueError")


@EXERCISE.test("red_team_gamma", points=2)
def gamma_matches_the_reference_on_random_red_teams(red_team_gamma):
    rng = random.Random(165)
    for seeds, rounds, attempts in ((1, 1, 5), (3, 5, 20), (2, 4, 7)):
        successes = [[[float(rng.random() < 0.2) for _ in range(attempts)] for _ in range(rounds)]
                     for _ in range(seeds)]
        for per in (100, 1):
            got = list(red_team_gamma(successes, per))
            expected = reference_gamma(successes, per)
            assert_equal(len(got), rounds, what=f"one number per round of {rounds}")
            for round_number, (g, e) in enumerate(zip(got, expected, strict=True), start=1):
                assert_number_close(g, e, what=f"gamma after round {round_number} of a ({seeds}, {rounds}, "
                                    f"{attempts}) red team, per={per}")


@EXERCISE.test("red_team_gamma", points=1)
def a_hand_made_case_and_bad_input_for_gamma(red_team_gamma):
    successes = [[[1, 0, 0, 0], [1, 1, 0, 0]], [[0, 0, 0, 0], [1, 1, 1, 1]]]
    got = list(red_team_gamma(successes, 100))
    for round_number, (g, e) in enumerate(zip(got, [12.5, 43.75], strict=True), start=1):
        assert_number_close(g, e, what=f"gamma after round {round_number}: seed 0 found 1/4 then 3/8, "
                            "seed 1 0/4 then 4/8, per 100 attempts")
    if not raises_value_error(lambda: red_team_gamma([[1, 0], [0, 1]], 100)):
        raise AssertionError("a (rounds, attempts) list without seeds: raise ValueError")


EXERCISE.references("is_refusal", reference_refusal)
EXERCISE.references("false_refusal_rate", reference_refusal)
EXERCISE.references("keep_safer_answers", reference_filter)
EXERCISE.references("red_team_gamma", reference_gamma)
