"""`load_corpus` (toy corpora, the offline error, HH-RLHF splitting) and the shipped toy tokenizer."""

import datasets
import pytest

from llama_course.toyworld import build_tokenizer, corpus
from llama_course.toyworld.assets import TOY_TOKENIZER_PATH, TOY_VOCAB_SIZE, toy_tokenizer
from llama_course.toyworld.corpus import CorpusUnavailableError, load_corpus, split_hh_transcript
from llama_course.toyworld.stories import generate_stories


def test_default_corpus_is_the_toy_stories():
    assert load_corpus(n=20, seed=7)["text"] == generate_stories(20, seed=7)["text"]


@pytest.mark.parametrize(
    ("name", "column"),
    [("toy-tasks", "answer"), ("toy-safety", "topic"), ("toy-dialogues", "messages"), ("toy-preferences", "strength")],
)
def test_every_toy_corpus_loads_by_name(name, column):
    corpus = load_corpus(name, n=5, seed=1)
    assert len(corpus) == 5 and column in corpus.column_names


def test_generator_options_pass_through():
    assert set(load_corpus("toy-preferences", n=20, criterion="safety")["criterion"]) == {"safety"}


def test_offline_hub_corpus_names_the_offline_alternative(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'roneneldan/TinyStories' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setattr(corpus, "hub_unreachable", lambda: None)  # the Hub answers, the download fails
    with pytest.raises(CorpusUnavailableError, match="load_corpus\\('toy-stories'\\)"):
        load_corpus("tinystories")
    with pytest.raises(CorpusUnavailableError, match="load_corpus\\('toy-preferences'\\)"):
        load_corpus("hh-rlhf")


def test_hub_corpus_is_cut_and_hh_rlhf_is_split(monkeypatch):
    transcript = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: How are you?\n\nAssistant:"
    fake = datasets.Dataset.from_dict(
        {"chosen": [transcript + " Fine, thanks."] * 3, "rejected": [transcript + " Go away."] * 3}
    )
    calls = []

    def fake_load_dataset(path, split):
        calls.append((path, split))
        return fake

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(corpus, "hub_unreachable", lambda: None)
    pairs = load_corpus("hh-rlhf", n=2, split="test")
    assert calls == [("Anthropic/hh-rlhf", "test")]
    assert len(pairs) == 2
    assert pairs[0] == {"chosen": "Fine, thanks.", "rejected": "Go away.", "prompt": transcript}


def test_split_hh_transcript_handles_a_shorter_chosen():
    split = split_hh_transcript("\n\nHuman: Hi\n\nAssistant: A", "\n\nHuman: Hi\n\nAssistant: B b")
    assert split == {"prompt": "\n\nHuman: Hi\n\nAssistant:", "chosen": "A", "rejected": "B b"}


def test_unknown_corpus_and_bad_sizes_are_errors():
    with pytest.raises(ValueError, match="unknown corpus 'wikipedia'"):
        load_corpus("wikipedia")
    with pytest.raises(ValueError, match="n=-3"):
        load_corpus("toy-stories", n=-3)
    with pytest.raises(ValueError, match="n=-3"):
        load_corpus("tinystories", n=-3)


def test_shipped_tokenizer_is_small_and_fits_the_toy_world():
    tokenizer = toy_tokenizer()
    assert tokenizer.vocab_size == TOY_VOCAB_SIZE
    assert TOY_TOKENIZER_PATH.stat().st_size < 1_000_000
    for story in generate_stories(200, seed=11)["text"]:
        ids = tokenizer.encode(story)
        assert tokenizer.decode(ids) == story
        assert tokenizer.unk_id not in ids
        assert len(ids) < 1.4 * len(story.split())  # nearly every word is one piece


def test_tokenizer_training_texts_are_deterministic_and_cover_every_generator():
    first = list(build_tokenizer.tokenizer_training_texts(n_stories=3, n_tasks=3, n_safety=3, n_dialogues=3))
    again = list(build_tokenizer.tokenizer_training_texts(n_stories=3, n_tasks=3, n_safety=3, n_dialogues=3))
    assert first == again and len(first) == 12
    assert "[INST]" in first[-1]
