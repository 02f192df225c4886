"""The Llama tokenizer: SentencePiece byte-pair encoding with byte fallback and split digits.

Llama 1 (section 2.1, "Tokenizer") tokenizes with the byte-pair encoding algorithm (BPE) of SentencePiece,
"splits all numbers into individual digits" and "falls back to bytes to decompose unknown UTF-8
characters"; Llama 2 (section 2.2) keeps the same tokenizer and its 32,000-token vocabulary. This module
trains such a tokenizer on any text (`train_tokenizer`) and loads any SentencePiece `tokenizer.model`,
Meta's included (`Tokenizer`).

Special ids. Our own models reserve `<unk>`=0, `<s>`=1 (BOS, begin of sequence), `</s>`=2 (EOS, end of
sequence) and `<pad>`=3. Meta's tokenizer has the first three at the same ids but no pad piece
(`pad_id() == -1`); see `Tokenizer.pad_id` for how padding then works.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import overload

import sentencepiece as spm

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
N_BYTE_PIECES = 256  # byte fallback adds one piece per byte value, <0x00> ... <0xFF>


def llama_trainer_options(vocab_size: int) -> dict[str, object]:
    """The SentencePiece trainer options that reproduce Llama's tokenizer design, for `vocab_size` pieces.

    Each option is one sentence of the Llama papers or one field of Meta's `tokenizer.model`:
    BPE (Llama 1, section 2.1); `split_digits` ("we split all numbers into individual digits");
    `byte_fallback` ("fallback to bytes to decompose unknown UTF-8 characters"); the `identity`
    normalisation with whitespace kept as it is (text is never rewritten, so decode(encode(s)) == s);
    a dummy space prefixed to each text, so that "cat" at the start is the same piece as " cat" later.
    """
    return {
        "model_type": "bpe",
        "vocab_size": vocab_size,
        "byte_fallback": True,
        "split_digits": True,
        "split_by_number": True,
        "split_by_unicode_script": True,
        "split_by_whitespace": True,
        "treat_whitespace_as_suffix": False,
        "allow_whitespace_only_pieces": True,
        "normalization_rule_name": "identity",
        "add_dummy_prefix": True,
        "remove_extra_whitespaces": False,
        # Every character seen in training gets a piece (Meta used 0.99995 on 2T tokens; on a small corpus
        # rare characters would otherwise be split into bytes for no gain). Unseen ones fall back to bytes.
        "character_coverage": 1.0,
        "unk_id": UNK_ID,
        "bos_id": BOS_ID,
        "eos_id": EOS_ID,
        "pad_id": PAD_ID,
        "input_sentence_size": 0,  # use every text: no random sampling, so training is deterministic
        "max_sentencepiece_length": 16,
        "minloglevel": 2,  # errors only; the trainer is otherwise very chatty
    }


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    model_path: str | Path,
    *,
    max_text_bytes: int = 1 << 16,
    num_threads: int = 2,
) -> Tokenizer:
    """Train a Llama-style BPE tokenizer on `texts` and write it to `model_path` (a `tokenizer.model`).

    `texts` is any iterable of strings (a list, a generator, a `datasets` column); it is streamed to the
    trainer, never written to a corpus file. The same texts in the same order give the same pieces; the
    file is byte-identical when `num_threads` is the same too (the file records it).
    `vocab_size` counts everything: the 4 special pieces, the 256 byte pieces, one piece per distinct
    character, then the learned merges. The model file is written atomically (a temporary file renamed into
    place), so a reader never sees half a model. Returns the loaded `Tokenizer`.

    SentencePiece silently skips texts longer than its `max_sentence_length`; instead a text longer than
    `max_text_bytes` UTF-8 bytes is an error, so no training data is dropped unnoticed.
    """
    min_vocab = PAD_ID + 1 + N_BYTE_PIECES
    if not isinstance(vocab_size, int) or vocab_size <= min_vocab:
        raise ValueError(
            f"vocab_size={vocab_size!r} is too small: it must be an int above {min_vocab} "
            f"(4 special pieces + {N_BYTE_PIECES} byte pieces), plus room for characters and merges"
        )
    failure: list[Exception] = []  # an error raised inside the iterator, which SentencePiece would mask

    def checked_texts() -> Iterator[str]:
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                failure.append(TypeError(f"texts[{index}] is a {type(text).__name__}, expected str"))
            elif (problem := invalid_unicode(text, f"texts[{index}]")) is not None:
                failure.append(ValueError(problem))
            elif (n_bytes := len(text.encode("utf-8"))) > max_text_bytes:
                message = (
                    f"texts[{index}] is {n_bytes} UTF-8 bytes, above max_text_bytes={max_text_bytes}: "
                    "split long documents into paragraphs, or raise max_text_bytes"
                )
                failure.append(ValueError(message))
            if failure:
                raise failure[0]
            yield text

    model_bytes = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=checked_texts(),
            model_writer=model_bytes,
            max_sentence_length=max_text_bytes,
            num_threads=num_threads,
            **llama_trainer_options(vocab_size),
        )
    except RuntimeError as error:
        if failure:
            raise failure[0] from None
        if "sentences_.empty()" in str(error):
            raise ValueError("train_tokenizer got no text: `texts` is empty or holds only empty strings") from None
        raise ValueError(f"SentencePiece could not train with vocab_size={vocab_size}: {error}") from None
    _write_atomically(Path(model_path), model_bytes.getvalue())
    return Tokenizer(model_path)


def invalid_unicode(text: str, name: str) -> str | None:
    """Why `text` cannot be tokenized (it holds a lone surrogate, which has no UTF-8 encoding), or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return (f"{name} holds {text[error.start:error.end]!r} at character {error.start}, a lone surrogate that is "
                "not valid Unicode text; remove it, or decode the source with errors='replace'")
    return None


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path` (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        try:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            os.unlink(handle.name)
            raise
    os.replace(handle.name, path)


class Tokenizer:
    """A SentencePiece `tokenizer.model`, ours or Meta's, with Llama's encode/decode conventions.

    `encode` never adds BOS/EOS by itself: as in Meta's `llama/tokenizer.py`, the caller asks for them
    (`bos=True` at the start of a document or chat turn, `eos=True` where generation should stop).
    """

    def __init__(self, model_path: str | Path) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise FileNotFoundError(
                f"no tokenizer model at {str(self.model_path)!r}: train one with "
                "llama_course.tokenizer.train_tokenizer(texts, vocab_size, model_path) "
                "or pass the path of an existing SentencePiece tokenizer.model"
            )
        try:
            self._processor = spm.SentencePieceProcessor(model_file=str(self.model_path))
        except RuntimeError as error:
            raise ValueError(f"{str(self.model_path)!r} is not a SentencePiece model: {error}") from None

    @property
    def vocab_size(self) -> int:
        """Number of pieces; valid ids are 0 ... vocab_size - 1 (Llama: 32,000)."""
        return self._processor.vocab_size()

    @property
    def bos_id(self) -> int:
        """Id of `<s>`, which begins every document and every chat turn."""
        return self._processor.bos_id()

    @property
    def eos_id(self) -> int:
        """Id of `</s>`, which ends a document or an answer: generation stops when it is sampled."""
        return self._processor.eos_id()

    @property
    def unk_id(self) -> int:
        """Id of `<unk>`. With byte fallback no text ever encodes to it."""
        return self._processor.unk_id()

    @property
    def pad_id(self) -> int:
        """Id used to fill the unused positions of a batch; never equal to `eos_id`.

        Our tokenizers have a `<pad>` piece (id 3). Meta's tokenizer has none (SentencePiece reports -1,
        not a valid embedding row), so we pad with `<unk>` (id 0) instead. That is safe: padded positions
        are masked out of attention and out of the loss, so their id only has to be a valid row of the
        embedding, and with byte fallback `<unk>` never occurs in real text. Padding with EOS, the common
        shortcut, is wrong: a loss or reward read "at the EOS token" would then land on padding.
        """
        pad = self._processor.pad_id()
        return pad if pad >= 0 else self.unk_id

    @overload
    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    @overload
    def encode(self, text: list[str], bos: bool = False, eos: bool = False) -> list[list[int]]: ...

    def encode(self, text: str | list[str], bos: bool = False, eos: bool = False) -> list[int] | list[list[int]]:
        """Token ids of `text` (or of each string of a list), with BOS first and EOS last when asked."""
        if isinstance(text, list):
            for index, item in enumerate(text):
                if not isinstance(item, str):
                    raise TypeError(f"text[{index}] is a {type(item).__name__}, expected str")
                if (problem := invalid_unicode(item, f"text[{index}]")) is not None:
                    raise ValueError(problem)
        elif not isinstance(text, str):
            raise TypeError(f"encode takes a str or a list of str, got {type(text).__name__}")
        elif (problem := invalid_unicode(text, "the text")) is not None:
            raise ValueError(problem)
        return self._processor.encode(text, add_bos=bos, add_eos=eos)

    def decode(self, ids: Iterable[int]) -> str:
        """The text of `ids`; special pieces (BOS, EOS, pad) decode to nothing, byte pieces to their UTF-8."""
        ids = [self._check_id(token_id) for token_id in ids]
        return self._processor.decode(ids)

    def id_to_piece(self, token_id: int) -> str:
        """The piece of one id, e.g. '▁cat' ('▁' marks a preceding space) or '<0xF0>' (a fallback byte)."""
        return self._processor.id_to_piece(self._check_id(token_id))

    def _check_id(self, token_id: int) -> int:
        token_id = int(token_id)  # accepts numpy and 0-d torch integers too
        if not 0 <= token_id < self.vocab_size:
            raise ValueError(
                f"token id {token_id} is out of range for this tokenizer: valid ids are 0 ... {self.vocab_size - 1}"
            )
        return token_id

    def __repr__(self) -> str:
        return f"Tokenizer({str(self.model_path)!r}, vocab_size={self.vocab_size})"


def tokens_per_character(tokenizer: Tokenizer, texts: Iterable[str]) -> float:
    """Compression of `texts`: total tokens (no BOS/EOS) divided by total characters; lower is better.

    A character-level tokenizer scores 1.0; a larger vocabulary merges more characters into each piece
    and scores lower: the same text becomes a shorter sequence, so a context window holds more of it
    and a training step sees more of it, at the price of a larger embedding and output layer.
    """
    n_tokens = n_characters = 0
    for text in texts:
        n_tokens += len(tokenizer.encode(text))
        n_characters += len(text)
    if n_characters == 0:
        raise ValueError("tokens_per_character got no characters: `texts` is empty or holds only empty strings")
    return n_tokens / n_characters
