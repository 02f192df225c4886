"""Files the toy world ships inside the package: its SentencePiece tokenizer."""

from __future__ import annotations

from pathlib import Path

from llama_course.tokenizer import Tokenizer

TOY_TOKENIZER_PATH = Path(__file__).resolve().parent.parent / "assets" / "toy_tokenizer.model"
TOY_VOCAB_SIZE = 1024  # why 1024: see build_tokenizer.py


def toy_tokenizer() -> Tokenizer:
    """The tokenizer shipped with the package, trained on the toy world (1024 pieces).

    Rebuilt by `llama-course build-tokenizer`.
    """
    return Tokenizer(TOY_TOKENIZER_PATH)
