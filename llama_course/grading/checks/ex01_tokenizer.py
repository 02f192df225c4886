"""Tests of exercise 1: the BPE merge loop with byte fallback, digit splitting (Llama 1, section 2.1) and the
Llama 2-Chat answer mask (Llama 2, section 3.1), against the package's shipped SentencePiece tokenizer."""

import functools
import random
from pathlib import Path

import sentencepiece as spm

import llama_course
from llama_course.chat import encode_dialog
from llama_course.grading.assertions import assert_equal
from llama_course.grading.registry import Exercise
from llama_course.tokenizer import Tokenizer

EXERCISE = Exercise(chapter=1, name="01_tokenizer", title="The tokenizer")

# The toy world's tokenizer (llama_course.toyworld.assets), named by path: importing toyworld loads `datasets`.
TOKENIZER_PATH = Path(llama_course.__file__).parent / "assets" / "toy_tokenizer.model"
LETTERS = "abcdefghijklmnopqrstuvwxyzé€ü"


@functools.cache
def sentencepiece() -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(TOKENIZER_PATH))


def merge_scores() -> dict[str, float]:
    """Every ordinary piece of the tokenizer and its score (higher merges first); no special or byte pieces."""
    sp = sentencepiece()
    return {sp.id_to_piece(i): sp.get_score(i) for i in range(sp.vocab_size())
            if not (sp.is_control(i) or sp.is_byte(i) or sp.is_unknown(i))}


def random_words(seed: int, n: int, letters: str) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(letters) for _ in range(rng.randint(1, 12))) for _ in range(n)]


def check_bpe_on(bpe_pieces, words: list[str]) -> None:
    scores = merge_scores()
    for word in words:
        assert_equal(bpe_pieces("▁" + word, scores), sentencepiece().encode(word, out_type=str),
                     what=f"bpe_pieces('▁{word}')")


@EXERCISE.test("bpe_pieces", points=3)
def merges_like_sentencepiece_on_known_characters(bpe_pieces):
    common = ["the", "cat", "happy", "garden", "rabbit", "cookie", "then", "there", "aaaa", "llll", "ssssss"]
    check_bpe_on(bpe_pieces, common + random_words(0, 300, LETTERS[:25]))


@EXERCISE.test("bpe_pieces", points=2)
def falls_back_to_utf8_bytes_for_unknown_characters(bpe_pieces):
    check_bpe_on(bpe_pieces, ["lazy", "zoo", "café", "€5", "über"] + random_words(1, 200, LETTERS))


@EXERCISE.test("split_digits", points=2)
def every_digit_stands_alone_and_other_runs_stay_whole(split_digits):
    cases = {"in 2023!": ["in ", "2", "0", "2", "3", "!"], "abc": ["abc"], "42": ["4", "2"], "": [],
             "x1y22 z": ["x", "1", "y", "2", "2", " z"]}
    for text, expected in cases.items():
        assert_equal(split_digits(text), expected, what=f"split_digits({text!r})")


@EXERCISE.test("split_digits", points=1)
def the_tokenizer_never_crosses_a_chunk_boundary(split_digits):
    rng = random.Random(2)
    for _ in range(50):
        text = "".join(rng.choice("ab 0123456789.,") for _ in range(rng.randint(1, 20)))
        chunks = split_digits(text)
        assert_equal("".join(chunks), text, what=f"the concatenation of split_digits({text!r})")
        boundaries = {sum(len(chunk) for chunk in chunks[:i]) for i in range(len(chunks) + 1)}
        # SentencePiece encodes " " + text (the dummy prefix); its piece boundaries, in text positions:
        pieces = sentencepiece().encode(text, out_type=str)
        ends = {sum(len(piece) for piece in pieces[:i]) - 1 for i in range(1, len(pieces) + 1)}
        missing = sorted(b for b in boundaries if 0 < b < len(text) and b not in ends)
        assert_equal(missing, [], what=f"the chunk boundaries of {text!r} that the tokenizer's pieces cross")


DIALOGS = [
    [{"role": "user", "content": "Where is the cat?"}, {"role": "assistant", "content": "The cat is in the park."}],
    [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "What colour is the sky?"},
     {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "And the grass?"},
     {"role": "assistant", "content": " Green. "}],
    [{"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": "Tom had a red ball."},
     {"role": "user", "content": "What happened next?"}],
]


@EXERCISE.test("encode_dialog", points=2)
def token_ids_match_the_llama2_chat_format(encode_dialog_student):
    tokenizer = Tokenizer(TOKENIZER_PATH)
    for index, dialog in enumerate(DIALOGS):
        ids, _ = encode_dialog_student(tokenizer, dialog)
        assert_equal(list(ids), encode_dialog(tokenizer, dialog).ids, what=f"the token ids of dialog {index}")


@EXERCISE.test("encode_dialog", points=2)
def answer_mask_covers_the_answers_and_their_eos_only(encode_dialog_student):
    tokenizer = Tokenizer(TOKENIZER_PATH)
    for index, dialog in enumerate(DIALOGS):
        _, mask = encode_dialog_student(tokenizer, dialog)
        assert_equal([bool(m) for m in mask], encode_dialog(tokenizer, dialog).answer_mask,
                     what=f"the answer mask of dialog {index}")


EXERCISE.references("bpe_pieces", Tokenizer, spm.SentencePieceProcessor)
EXERCISE.references("split_digits", Tokenizer, spm.SentencePieceProcessor)
EXERCISE.references("encode_dialog", encode_dialog)
