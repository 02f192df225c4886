"""The toy French and the Ghost Attention dialogues: translation both ways, constraints and adherence."""

import pytest

from llama_course.chat import validate_dialog
from llama_course.toyworld.dialogues import Constraint, adherence, generate_dialogues, parse_constraints
from llama_course.toyworld.language import ENGLISH_TO_TOY, from_toy_french, to_toy_french, toy_french_fraction
from llama_course.toyworld.lexicon import NAMES, all_words
from llama_course.toyworld.stories import generate_stories


def test_dictionary_is_a_bijection_disjoint_from_english():
    toy_words = set(ENGLISH_TO_TOY.values())
    assert len(toy_words) == len(ENGLISH_TO_TOY) == len(all_words())
    assert not toy_words & set(all_words())
    assert not toy_words & {name.lower() for name in NAMES}


def test_translation_word_for_word_both_ways():
    english = "The cat is happy. I will not help you hurt Tom!"
    toy = to_toy_french(english)
    expected = " ".join(ENGLISH_TO_TOY[w] for w in ("the", "cat", "is", "happy")).capitalize() + "."
    assert toy.startswith(expected)
    assert "Tom!" in toy  # names and punctuation stay
    assert from_toy_french(toy) == english
    assert to_toy_french("3 plus 4 is 7.") == f"3 {ENGLISH_TO_TOY['plus']} 4 {ENGLISH_TO_TOY['is']} 7."


def test_stories_round_trip_through_the_toy_language():
    for story in generate_stories(100, seed=9)["text"]:
        toy = to_toy_french(story)
        assert toy_french_fraction(toy) == 1.0
        assert from_toy_french(toy) == story


def test_toy_french_fraction_grades_mixtures():
    assert toy_french_fraction("The cat is happy.") == 0.0
    assert toy_french_fraction(to_toy_french("The cat") + " is happy.") == 0.5
    assert toy_french_fraction("Tom 42") == 0.0


def test_dialogues_are_deterministic_typed_and_valid_chats():
    dialogues = generate_dialogues(300, seed=2)
    assert dialogues["messages"] == generate_dialogues(300, seed=2)["messages"]
    assert dialogues.column_names == ["messages", "constraints", "system_short", "n_turns"]
    assert dialogues.features["system_short"].dtype == "bool"
    assert 0.4 < sum(dialogues["system_short"]) / 300 < 0.6
    families = {c["family"] for row in dialogues["constraints"] for c in row}
    assert families == {"hobby", "language", "figure"}
    for row in dialogues:
        validate_dialog(row["messages"])
        assert len(row["messages"]) == 1 + 2 * row["n_turns"]
        assert 2 <= row["n_turns"] <= 6
        constraints = [Constraint(**c) for c in row["constraints"]]
        assert parse_constraints(row["messages"][0]["content"]) == constraints
        for message in row["messages"][2::2]:
            assert [adherence(c, message["content"]) for c in constraints] == [1.0] * len(constraints)


def test_n_turns_can_be_fixed():
    assert set(generate_dialogues(20, seed=0, n_turns=8)["n_turns"]) == {8}


@pytest.mark.parametrize(
    ("constraint", "answer", "expected"),
    [
        (Constraint("hobby", "tennis"), "2 plus 2 is 4. I love tennis.", 1.0),
        (Constraint("hobby", "tennis"), to_toy_french("2 plus 2 is 4. I love tennis."), 1.0),
        (Constraint("hobby", "tennis"), "2 plus 2 is 4.", 0.0),
        (Constraint("hobby", "tennis"), "I love chess.", 0.0),
        (Constraint("figure", "Napoleon"), "Soldiers, listen! 2 plus 2 is 4.", 1.0),
        (Constraint("figure", "Napoleon"), "2 plus 2 is 4. Soldiers, listen!", 0.5),
        (Constraint("figure", "Napoleon"), "Verily, good friend, 2 plus 2 is 4.", 0.0),
        (Constraint("language", "French"), to_toy_french("The cat is happy."), 1.0),
        (Constraint("language", "French"), "The cat is happy.", 0.0),
        ("Hobby: tennis Figure: Napoleon", "Soldiers, listen! I love chess.", 0.5),
    ],
)
def test_adherence_on_hand_written_answers(constraint, answer, expected):
    assert adherence(constraint, answer) == pytest.approx(expected)


def test_unknown_constraints_are_errors():
    with pytest.raises(ValueError, match="unknown constraint family 'mood'"):
        Constraint("mood", "happy")
    with pytest.raises(ValueError, match="'golf' is not a hobby"):
        Constraint("hobby", "golf")
    with pytest.raises(ValueError, match="states no constraint"):
        parse_constraints("Be nice.")
    with pytest.raises(ValueError, match="n_turns=0"):
        generate_dialogues(2, n_turns=0)
