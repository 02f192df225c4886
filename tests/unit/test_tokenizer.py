"""Tokenizer: Llama's SentencePiece BPE options (byte fallback, split digits, identity normalisation)."""

import io
import random
from pathlib import Path

import pytest
import sentencepiece as spm

from llama_course.tokenizer import (
    Tokenizer,
    llama_trainer_options,
    tokens_per_character,
    train_tokenizer,
)

WORDS = (
    "the a cat dog bird sat ran flew on under over mat tree house big small red blue happy sad "
    "and then she he they saw found lost ball book Lily Tom"
).split()


def make_corpus(n_sentences: int, seed: int = 0) -> list[str]:
    """Simple story-like sentences; years and counts repeat often, so BPE would merge them if allowed."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n_sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(4, 12))]
        number = rng.choice(["2024", "2024", "100", "31415", str(rng.randint(0, 999))])
        sentences.append(" ".join(words) + f" in {number}.")
    return sentences


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    return train_tokenizer(make_corpus(2000), vocab_size=400, model_path=tmp_path_factory.mktemp("tok") / "t.model")


def pieces(tokenizer: Tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.id_to_piece(token_id) for token_id in ids]


@pytest.mark.parametrize(
    "text",
    [
        "the cat sat on the mat in 2024.",
        "",
        "  leading and trailing spaces  ",
        "tabs\tand\nnew lines\r\n",
        "Zoë's café: naïve façade",
        "日本語のテキスト",
        "emoji 🙂🦙 and flags 🇫🇷",
        "x\u0301 combining accent, \u00a0non-breaking space, \u200bzero width",
    ],
)
def test_decode_inverts_encode(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_unseen_characters_become_their_utf8_bytes(tokenizer):
    ids = tokenizer.encode("🦙")
    expected_bytes = [f"<0x{byte:02X}>" for byte in "🦙".encode()]  # F0 9F A6 99
    assert pieces(tokenizer, ids) == ["▁", *expected_bytes]
    assert tokenizer.unk_id not in tokenizer.encode("日本語 🙂 ∑ ﷽")


def test_numbers_are_split_into_single_digits(tokenizer):
    # "2024" is one of the most frequent strings of the corpus: only split_digits keeps it in four pieces.
    ids = tokenizer.encode("in 2024 and 31415")
    digit_pieces = [piece for piece in pieces(tokenizer, ids) if any(char.isdigit() for char in piece)]
    assert digit_pieces == list("2024") + list("31415")


def test_identity_normalisation_keeps_whitespace_runs(tokenizer):
    # NFKC or whitespace clean-up would change these; identity keeps every character.
    assert tokenizer.decode(tokenizer.encode("a  b   c")) == "a  b   c"
    assert tokenizer.decode(tokenizer.encode("ﬁ ①")) == "ﬁ ①"


def test_special_ids_and_pieces(tokenizer):
    assert (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, 1, 2, 3)
    assert [tokenizer.id_to_piece(i) for i in range(4)] == ["<unk>", "<s>", "</s>", "<pad>"]
    assert tokenizer.id_to_piece(4) == "<0x00>" and tokenizer.id_to_piece(4 + 255) == "<0xFF>"
    assert tokenizer.vocab_size == 400
    plain = tokenizer.encode("the cat")
    assert tokenizer.encode("the cat", bos=True, eos=True) == [1, *plain, 2]
    assert tokenizer.decode([1, *plain, 2, 3, 3]) == "the cat"


def test_batched_encode_equals_one_by_one(tokenizer):
    texts = ["the cat", "", "🙂 2024"]
    assert tokenizer.encode(texts, bos=True) == [tokenizer.encode(text, bos=True) for text in texts]


def test_training_is_deterministic_and_accepts_a_generator(tmp_path):
    corpus = make_corpus(500, seed=3)
    first = train_tokenizer(iter(corpus), vocab_size=330, model_path=tmp_path / "first.model")
    second = train_tokenizer((text for text in corpus), vocab_size=330, model_path=tmp_path / "second.model")
    assert first.model_path.read_bytes() == second.model_path.read_bytes()
    assert first.encode(corpus[:20]) == second.encode(corpus[:20])


def test_model_file_is_written_atomically_into_new_folders(tmp_path):
    path = tmp_path / "new" / "folder" / "tokenizer.model"
    train_tokenizer(make_corpus(200), vocab_size=300, model_path=path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["tokenizer.model"]  # no temporary file left
    train_tokenizer(make_corpus(200, seed=1), vocab_size=310, model_path=path)  # replaces the old model
    assert Tokenizer(path).vocab_size == 310


def test_meta_style_model_without_pad_pads_with_unk(tmp_path):
    # Meta's tokenizer.model has pad_id = -1; build one like it with Llama's options otherwise.
    options = {**llama_trainer_options(300), "pad_id": -1}
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(make_corpus(200)), model_writer=model, **options)
    path = tmp_path / "meta_like.model"
    path.write_bytes(model.getvalue())
    tokenizer = Tokenizer(path)
    assert spm.SentencePieceProcessor(model_file=str(path)).pad_id() == -1
    assert tokenizer.pad_id == tokenizer.unk_id == 0
    assert tokenizer.pad_id != tokenizer.eos_id
    assert 0 <= tokenizer.pad_id < tokenizer.vocab_size


def test_tokens_per_character(tokenizer, tmp_path):
    # "1234567890": the dummy-prefix space, then one token per digit: 11 tokens for 10 characters.
    assert tokens_per_character(tokenizer, ["1234567890"]) == pytest.approx(11 / 10)
    assert tokens_per_character(tokenizer, ["12", "345"]) == pytest.approx((3 + 4) / 5)
    corpus = make_corpus(2000)
    small = train_tokenizer(corpus, vocab_size=300, model_path=tmp_path / "small.model")
    held_out = make_corpus(200, seed=7)
    assert tokens_per_character(tokenizer, held_out) < tokens_per_character(small, held_out) < 1.0


@pytest.mark.parametrize("bad_id", [400, 10_000, -1])
def test_out_of_range_ids_are_rejected(tokenizer, bad_id):
    with pytest.raises(ValueError, match=rf"token id {bad_id} is out of range .* 0 \.\.\. 399"):
        tokenizer.decode([5, bad_id])
    with pytest.raises(ValueError, match=rf"token id {bad_id} is out of range"):
        tokenizer.id_to_piece(bad_id)


def test_encode_rejects_non_strings(tokenizer):
    with pytest.raises(TypeError, match="got int"):
        tokenizer.encode(5)
    with pytest.raises(TypeError, match=r"text\[1\] is a bytes"):
        tokenizer.encode(["ok", b"bytes"])


def test_missing_or_corrupt_model_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer model at .*absent.model.*train_tokenizer"):
        Tokenizer(tmp_path / "absent.model")
    corrupt = tmp_path / "corrupt.model"
    corrupt.write_text("not a model")
    with pytest.raises(ValueError, match="corrupt.model' is not a SentencePiece model"):
        Tokenizer(corrupt)


@pytest.mark.parametrize(
    ("texts", "vocab_size", "error", "message"),
    [
        (make_corpus(50), 260, ValueError, r"vocab_size=260 is too small"),
        (make_corpus(50), 40.5, ValueError, r"vocab_size=40.5 is too small"),
        (make_corpus(50), 5000, ValueError, r"vocab_size=5000.*Vocabulary size too high"),
        (["abcdefghijklmnopqrstuvwxyz0123456789"], 270, ValueError, r"vocab_size=270.*smaller than required_chars"),
        ([], 300, ValueError, r"got no text"),
        (["", ""], 300, ValueError, r"got no text"),
        (["fine", 7], 300, TypeError, r"texts\[1\] is a int, expected str"),
        (["fine", "x" * 70_000], 300, ValueError, r"texts\[1\] is 70000 UTF-8 bytes, above max_text_bytes=65536"),
    ],
)
def test_bad_training_input(tmp_path, texts, vocab_size, error, message):
    path: Path = tmp_path / "bad.model"
    with pytest.raises(error, match=message):
        train_tokenizer(texts, vocab_size=vocab_size, model_path=path)
    assert not path.exists()
