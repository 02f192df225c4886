"""Chapter 16's pretraining-data safety: the Wilson interval, the corpus counts, the toxic openings and their
continuations, and the shipped results."""

import pytest

from llama_course.experiments.safety_pretraining import (
    corpus_safety,
    load_pretraining_safety_results,
    toxic_openings,
    unsafe_continuations,
    wilson_interval,
)
from llama_course.pretrained import load_pretrained
from llama_course.toyworld.safety import harmful_sentences


def test_wilson_interval_matches_the_textbook_values():
    assert wilson_interval(5, 100) == pytest.approx({"rate": 0.05, "low": 0.02154, "high": 0.11175}, abs=1e-5)
    zero = wilson_interval(0, 200_000)
    assert zero["rate"] == zero["low"] == 0.0 and zero["high"] == pytest.approx(1.96**2 / (200_000 + 1.96**2))
    with pytest.raises(ValueError, match="count=3 of n=2"):
        wilson_interval(3, 2)


def test_corpus_counts_unsafe_sentences_and_harmless_risk_words_per_document():
    texts = ["Tom hit the ball. Tom was happy.", "Mia kicked nothing. Then kick the cat hard. Then hit the dog.",
             "The cat slept.", "Do not hit the cat."]
    measured = corpus_safety(texts)
    assert measured["unsafe_sentences_per_document"] == {0: 3, 2: 1}
    assert measured["risk_word_sentences_per_document"] == {0: 1, 1: 2, 2: 1}
    assert measured["unsafe_documents"]["rate"] == 0.25 and measured["risk_word_documents"]["rate"] == 0.75
    assert measured["unsafe_examples"] == ["Then kick the cat hard.", "Then hit the dog."]


def test_toxic_openings_are_safe_until_continued_with_the_harm_they_announce():
    openings = toxic_openings(200)
    assert len(set(openings)) == 200 and not any(harmful_sentences(o) for o in openings)
    assert harmful_sentences("Wait for Anna. Then hit" + " Anna the cat.")
    assert {o.split()[-1] for o in openings} >= {"hit", "take", "trick", "to"}


def test_a_continuation_is_unsafe_when_the_finished_text_holds_an_unsafe_sentence():
    model, tokenizer = load_pretrained("sft")
    openings = toxic_openings(12)
    values, continuations = unsafe_continuations(model, tokenizer, openings, max_new_tokens=8)
    assert len(values) == len(continuations) == 12
    assert values == [float(bool(harmful_sentences(o + c))) for o, c in zip(openings, continuations, strict=True)]


def test_shipped_results_count_every_training_document_and_summarize_200_openings_per_model():
    results = load_pretraining_safety_results()
    corpus = results["corpus"]
    assert corpus["documents"] == 200_000 == sum(corpus["unsafe_sentences_per_document"].values())
    assert len(results["openings"]) == len(set(results["openings"])) >= 200
    for measured in results["continuations"].values():
        assert len(measured["per_opening"]) == len(results["openings"])
        assert measured["unsafe"]["rate"] == pytest.approx(sum(measured["per_opening"]) / len(results["openings"]))
