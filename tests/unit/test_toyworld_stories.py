"""The story grammar and corpus: determinism, validity by construction, and the checker on hand-written cases."""

import re

import pytest

from llama_course.toyworld.lexicon import all_words
from llama_course.toyworld.stories import generate_stories
from llama_course.toyworld.story_grammar import TEMPLATES, check_story, split_sentences, story_validity

GOOD = (
    "Once upon a time, there was a red cat named Tom. Tom lived in the park. He had a blue ball. "
    "Tom went to the river. He lost his ball. The cat was sad. One day, Tom met an orange fox named Lily. "
    "Lily found the ball. The ball was blue. Lily gave the ball to the red cat. Tom said thank you to Lily. "
    "Tom and Lily became friends. In the end, Tom and the fox were happy. The end."
)


def test_same_seed_same_stories_and_different_seed_different_stories():
    first, again, other = generate_stories(50, seed=3), generate_stories(50, seed=3), generate_stories(50, seed=4)
    assert first["text"] == again["text"]
    assert first["text"] != other["text"]
    assert generate_stories(10, seed=3)["text"] == first["text"][:10]


def test_dataset_has_one_string_column_and_distinct_short_stories():
    stories = generate_stories(2000, seed=0)
    assert stories.column_names == ["text"]
    assert stories.features["text"].dtype == "string"
    assert len(set(stories["text"])) == 2000
    assert max(len(text.split()) for text in stories["text"]) <= 150


def test_every_generated_sentence_is_valid():
    for text in generate_stories(500, seed=1)["text"]:
        report = check_story(text)
        assert report.valid_fraction == 1.0, [v for v in report.verdicts if not v.valid]
        assert len(report.verdicts) >= 5


def test_hand_written_good_story_is_fully_valid():
    report = check_story(GOOD)
    assert [v.valid for v in report.verdicts] == [True] * 14
    assert report.state.items["ball"].owner == "Tom"
    assert report.state.characters["Lily"].kind == "fox"


@pytest.mark.parametrize(
    ("story", "reason"),
    [
        ("There was a red cat named Tom. There was a blue dog named Tom.", "already introduced"),
        ("There was a red cat named Tom. There was a blue cat named Ben.", "already has a cat"),
        ("There was a red cat named Tom. The dog was happy.", "no dog"),
        ("There was a red cat named Tom. The blue cat was happy.", "not blue"),
        ("There was a red cat named Tom. She was happy.", "does not fit"),
        ("There was a red cat named Tom. Lily was happy.", "not been introduced"),
        ("There was a red cat named Tom. Tom had a red ball. Tom loved her ball.", "does not fit"),
        ("There was a red cat named Tom. Tom had a red ball. The ball was green.", "not green"),
        ("There was a red cat named Tom. Tom found the kite.", "no kite"),
        ("There was a red cat named Tom. Tom had a red ball. Tom found the ball.", "not lost"),
        ("There was a red cat named Tom. Tom had a red cake. Tom played with his cake.", "food"),
        ("There was a red cat named Tom. Tom had a red cake. Tom ate the cake. Tom ate the cake.", "repeats"),
        ("There was a red cat named Tom. Tom lived in the park. Tom lived in the farm.", "not the farm"),
        ("There was a red cat named Tom. Tom lived in the park. Tom went back home.", "already home"),
        ("There was a red cat named Tom. Tom went to the moon.", "not in the grammar"),
        ("There was a orange cat named Tom.", "article"),
        ("It was a cold day. It was a warm day.", "not warm"),
        ("There was a red cat named Tom. Once upon a time, there was a blue dog named Ben.", "only begins"),
    ],
)
def test_checker_rejects_the_last_sentence_of_bad_stories(story, reason):
    report = check_story(story)
    assert [v.valid for v in report.verdicts] == [True] * (len(report.verdicts) - 1) + [False]
    assert reason in report.verdicts[-1].reason


def test_invalid_sentences_do_not_change_the_state_and_fraction_counts_them():
    text = "There was a red cat named Tom. Tom gave the ball to Tom. Tom had a blue ball. Tom was happy."
    assert story_validity(text) == pytest.approx(3 / 4)
    assert check_story(text).state.items["ball"].owner == "Tom"


def test_truncated_fragment_is_ignored_and_empty_text_scores_zero():
    assert split_sentences("There was a red cat named Tom. Tom had a") == ["There was a red cat named Tom."]
    assert story_validity("There was a red cat named Tom. Tom had a") == 1.0
    assert story_validity("") == 0.0
    assert story_validity("cat cat cat") == 0.0


def test_every_template_word_is_in_the_lexicon():
    for template in TEMPLATES:
        for word in re.findall(r"[a-z']+", re.sub(r"\{\w+\}", "", template.pattern)):
            assert word in all_words(), (template.key, word)


def test_negative_or_non_integer_count_is_rejected():
    with pytest.raises(ValueError, match="n=-1"):
        generate_stories(-1)
    with pytest.raises(ValueError, match="n=2.5"):
        generate_stories(2.5)
