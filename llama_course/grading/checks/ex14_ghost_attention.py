"""Tests of exercise 14: the instruction in every user turn, the last-turn samples, recall by turn.

Llama 2, section 3.3 (Ghost Attention: the instruction concatenated to every user turn for sampling, then kept
in the first turn only with the loss on the last turn) and Table 30 (attribute recall turn by turn).
"""

import copy
import functools
import random

from llama_course.alignment.gatt import gatt_samples as reference_samples
from llama_course.alignment.gatt import recall_by_turn as judged_recall
from llama_course.alignment.gatt import with_instruction_in_every_turn as reference_every_turn
from llama_course.grading.assertions import assert_equal, raises_value_error
from llama_course.grading.registry import Exercise
from llama_course.toyworld.dialogues import adherence, generate_dialogues

reference_recall = functools.partial(judged_recall, judge=adherence)  # the exercise's recall judges with adherence

EXERCISE = Exercise(chapter=14, name="14_ghost_attention", title="Ghost Attention")


def toy_dialogues(n: int, seed: int, n_turns: int | tuple[int, int] = (1, 6)) -> list[list[dict[str, str]]]:
    """`n` toy-world dialogues (system message first) of 1 to 6 turns."""
    return [list(d) for d in generate_dialogues(n, seed=seed, n_turns=n_turns)["messages"]]


@EXERCISE.test("with_instruction_in_every_turn", points=2)
def every_turn_matches_the_reference(with_instruction_in_every_turn):
    for dialogue in toy_dialogues(12, seed=140):
        original = copy.deepcopy(dialogue)
        assert_equal(with_instruction_in_every_turn(dialogue), reference_every_turn(original),
                     what=f"the dialogue {original} with the instruction in every user turn")
        assert_equal(dialogue, original, what="the input dialogue after the call (it should be left unchanged)")
    if not raises_value_error(with_instruction_in_every_turn, [{"role": "user", "content": "Hi"}]):
        raise AssertionError("a dialogue with roles ['user'] has no system message: it should raise ValueError")


@EXERCISE.test("with_instruction_in_every_turn", points=1)
def only_user_turns_after_the_first_change(with_instruction_in_every_turn):
    for dialogue in toy_dialogues(8, seed=141, n_turns=(2, 6)):
        instruction = dialogue[0]["content"]
        result = with_instruction_in_every_turn(dialogue)
        assert_equal([m["role"] for m in result], [m["role"] for m in dialogue], what="the roles of the messages")
        first_user = next(i for i, m in enumerate(dialogue) if m["role"] == "user")
        for index, (before, after) in enumerate(zip(dialogue, result, strict=True)):
            changed = before["role"] == "user" and index > first_user
            expected = f"{instruction} {before['content']}" if changed else before["content"]
            assert_equal(after["content"], expected, what=f"message {index} ({before['role']}) of {dialogue}")


@EXERCISE.test("gatt_samples", points=2)
def samples_match_the_reference(gatt_samples):
    sampled = [reference_every_turn(d) for d in toy_dialogues(10, seed=142)]
    for turns in ((2, None), (1, 1), (1, None), (2, 4), (3, 3), (5, None)):
        assert_equal(gatt_samples(copy.deepcopy(sampled), turns), reference_samples(sampled, turns),
                     what=f"the samples for turns={turns} of the sampled dialogues {sampled}")
    for turns in ((0, None), (3, 2), (0, 0)):
        if not raises_value_error(gatt_samples, sampled, turns):
            raise AssertionError(f"turns={turns} is not 1 <= low <= high: it should raise ValueError")
    unprefixed = toy_dialogues(1, seed=143, n_turns=3)
    if not raises_value_error(gatt_samples, unprefixed):
        raise AssertionError(f"user turn 2 of {unprefixed} does not start with the instruction: it should raise "
                             "ValueError")


@EXERCISE.test("gatt_samples", points=1)
def samples_undo_every_turn_and_end_on_each_answer(gatt_samples):
    for dialogue in toy_dialogues(6, seed=144, n_turns=(2, 6)):
        samples = gatt_samples([reference_every_turn(dialogue)], (1, None))
        n_turns = (len(dialogue) - 1) // 2
        assert_equal(len(samples), n_turns, what=f"the number of samples of a {n_turns}-turn dialogue, turns=(1, None)")
        for k, sample in enumerate(samples, start=1):
            assert_equal(sample, dialogue[: 1 + 2 * k],
                         what=f"sample {k}: the original dialogue {dialogue} up to its answer {k}")


def answered(seed: int) -> list[list[dict[str, str]]]:
    """Toy dialogues of different lengths, some answers swapped for ones that follow another dialogue's rule."""
    dialogues = toy_dialogues(16, seed=seed, n_turns=(1, 6))
    rng = random.Random(seed)
    for dialogue in dialogues:
        for message in dialogue:
            if message["role"] == "assistant" and rng.random() < 0.4:
                other = rng.choice(dialogues)
                message["content"] = rng.choice([m["content"] for m in other if m["role"] == "assistant"])
    return dialogues


@EXERCISE.test("recall_by_turn", points=2)
def recall_matches_the_reference(recall_by_turn):
    for seed in (145, 146):
        dialogues = answered(seed)
        got, expected = recall_by_turn(dialogues), reference_recall(dialogues)
        assert_equal(len(got), len(expected), what=f"the number of turns measured on {dialogues}")
        for turn, (value, reference) in enumerate(zip(got, expected, strict=True), start=1):
            if abs(value - reference) > 1e-9:
                raise AssertionError(f"recall at turn {turn}: got {value}, expected {reference} ({dialogues})")


@EXERCISE.test("recall_by_turn", points=1)
def recall_is_1_for_reference_answers_and_0_for_empty_ones(recall_by_turn):
    dialogues = toy_dialogues(10, seed=147, n_turns=(1, 5))
    expected_turns = max((len(d) - 1) // 2 for d in dialogues)
    recall = recall_by_turn(dialogues)
    assert_equal(len(recall), expected_turns, what="the number of turns measured (the longest dialogue's)")
    for turn, value in enumerate(recall, start=1):
        if abs(value - 1.0) > 1e-9:
            raise AssertionError(f"the toy world's reference answers follow every constraint: recall at turn {turn} "
                                 f"should be 1, got {value}")
    silent = [[m if m["role"] != "assistant" else {"role": "assistant", "content": "ok"} for m in d]
              for d in dialogues]
    for turn, value in enumerate(recall_by_turn(silent), start=1):
        if abs(value) > 1e-9:
            raise AssertionError(f"answers 'ok' follow no constraint: recall at turn {turn} should be 0, got {value}")


EXERCISE.references("with_instruction_in_every_turn", reference_every_turn)
EXERCISE.references("gatt_samples", reference_samples)
EXERCISE.references("recall_by_turn", judged_recall)
