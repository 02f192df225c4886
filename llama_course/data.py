"""From a text dataset to training blocks: tokenize with `Dataset.map(batched=True)`, then pack.

Llama trains on sequences of a fixed length (2048 tokens in Llama 1, 4096 in Llama 2, section 2.2) cut
from a stream of documents: short documents are concatenated rather than padded, so no compute is spent
on padding. `pack_dataset` does the same for any tokenized `datasets.Dataset` (the toy stories, TinyStories,
SFT dialogues) and keeps, for every position, which document it belongs to (`document_ids`, so attention
and RoPE positions can restart at each document) and the label to predict there (`labels`, already
aligned: `labels[t]` is the token after position t, or -100 where there is nothing to learn).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import datasets

from llama_course.tokenizer import Tokenizer

IGNORE_INDEX = -100
# `Dataset.map` draws a progress bar for every call. The toy world's datasets (a few thousand rows) map in
# well under a second, and in a notebook the bar only lands on the page; real corpora still show theirs.
PROGRESS_MIN_ROWS = 50_000


@contextmanager
def progress_bars_for(dataset: datasets.Dataset) -> Iterator[None]:
    """Inside the block, `datasets` draws progress bars only if `dataset` has PROGRESS_MIN_ROWS rows or more."""
    quiet = len(dataset) < PROGRESS_MIN_ROWS and not datasets.are_progress_bars_disabled()
    if quiet:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if quiet:
            datasets.enable_progress_bars()


def tokenize_dataset(
    dataset: datasets.Dataset,
    tokenizer: Tokenizer,
    *,
    text_column: str = "text",
    bos: bool = True,
    eos: bool = True,
    batch_size: int = 1000,
) -> datasets.Dataset:
    """Encode `text_column` of every row into `input_ids` (list of int), with BOS and EOS by default.

    Other columns are dropped: the result has the single column `input_ids`, ready for `pack_dataset`.
    """
    if text_column not in dataset.column_names:
        raise ValueError(
            f"text_column={text_column!r} is not a column of the dataset; its columns are {dataset.column_names}"
        )

    def encode_batch(batch: dict[str, list]) -> dict[str, list[list[int]]]:
        return {"input_ids": tokenizer.encode(list(batch[text_column]), bos=bos, eos=eos)}

    with progress_bars_for(dataset):
        return dataset.map(encode_batch, batched=True, batch_size=batch_size, remove_columns=dataset.column_names)


def pack_token_lists(
    documents: Sequence[Sequence[int]],
    block_size: int,
    loss_masks: Sequence[Sequence[int]] | None = None,
) -> dict[str, list[list[int]]]:
    """Concatenate `documents` into one stream and cut it into blocks of `block_size` positions.

    Block i holds stream positions [i * block_size, (i + 1) * block_size); its labels are the NEXT tokens, so
    a block reads one token past its end and consecutive blocks waste no token. A label is IGNORE_INDEX
    where the next token starts another document (predicting a document from the previous one's end teaches
    nothing) or where `loss_masks` (one 0/1 list per document, e.g. 0 on an SFT prompt, Llama 2 section 3.1)
    marks the next token as not to be learned. `document_ids` number the documents of each block from 0.
    The tail of the stream that does not fill a block is dropped.
    Returns the columns `input_ids`, `labels`, `document_ids` (lists of `block_size` ints each).
    """
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r} must be a positive int (tokens per training sequence)")
    if loss_masks is not None and len(loss_masks) != len(documents):
        raise ValueError(f"got {len(loss_masks)} loss masks for {len(documents)} documents: give one per document")
    stream: list[int] = []
    owner: list[int] = []
    learn: list[int] = []
    for index, document in enumerate(documents):
        mask = loss_masks[index] if loss_masks is not None else [1] * len(document)
        if len(mask) != len(document):
            raise ValueError(f"document {index} has {len(document)} tokens but a loss mask of {len(mask)}")
        stream.extend(document)
        owner.extend([index] * len(document))
        learn.extend(int(bool(m)) for m in mask)
    blocks: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "document_ids": []}
    for start in range(0, len(stream) - block_size, block_size):
        end = start + block_size
        blocks["input_ids"].append(stream[start:end])
        blocks["labels"].append(
            [stream[t + 1] if owner[t + 1] == owner[t] and learn[t + 1] else IGNORE_INDEX for t in range(start, end)]
        )
        first_document = owner[start]
        blocks["document_ids"].append([owner[t] - first_document for t in range(start, end)])
    return blocks


def pack_dataset(dataset: datasets.Dataset, block_size: int, *, batch_size: int = 1000) -> datasets.Dataset:
    """Pack a tokenized dataset (`input_ids`, optionally `loss_mask`) into fixed-length training blocks.

    Packing runs through `Dataset.map(batched=True)` over `batch_size` documents at a time (so it streams
    through corpora larger than memory); each batch drops its own tail of less than `block_size + 1`
    tokens, as Hugging Face's `group_texts` does. Columns: `input_ids`, `labels`, `document_ids`.
    """
    if "input_ids" not in dataset.column_names:
        raise ValueError(
            f"the dataset has no 'input_ids' column (its columns are {dataset.column_names}): "
            "tokenize it first with tokenize_dataset"
        )
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size={block_size!r} must be a positive int (tokens per training sequence)")
    has_mask = "loss_mask" in dataset.column_names

    def pack_batch(batch: dict[str, list]) -> dict[str, list[list[int]]]:
        return pack_token_lists(batch["input_ids"], block_size, batch["loss_mask"] if has_mask else None)

    with progress_bars_for(dataset):
        return dataset.map(pack_batch, batched=True, batch_size=batch_size, remove_columns=dataset.column_names)
