"""Supervised fine-tuning data: conversations in the Llama 2-Chat format, answer-only labels, packed blocks.

Llama 2, section 3.1 ("Fine-Tuning Details"): "we zero-out the loss on tokens from the user prompt, so as a
result, we backpropagate only on answer tokens", and "to ensure the model sequence length is properly filled,
we concatenate all the prompts and answers from the training set". Here:

- the conversations are the caller's rows of `messages` (the toy world's mix of tasks, chats, dialogues under
  a system constraint and safety requests is `experiments.toyworld_data.sft_conversations`);
- `encode_conversations` renders each with `llama_course.chat.encode_dialog` (Meta's format, one BOS ... EOS
  call per turn) into `input_ids` and a `loss_mask` that is 1 exactly on the assistant answers (and the EOS
  closing each one, so the model learns to stop) in EVERY turn, 0 on BOS, `[INST] ... [/INST]`, the system
  message and the user prompts. Malformed rows raise an error naming the row; rows longer than the block are
  truncated at a turn boundary (or rejected, see `overlong`);
- `pack_sft` concatenates them into blocks with `llama_course.data.pack_dataset`. Each block keeps its
  `document_ids`; training with them (the default, `document_masking=True`) keeps each conversation from
  attending to the others and restarts RoPE positions at each one, so a conversation's loss does not depend
  on its neighbours. The paper does not say whether Meta isolated samples this way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from llama_course.chat import Message, encode_dialog
from llama_course.data import pack_dataset
from llama_course.tokenizer import Tokenizer

OVERLONG_POLICIES = ("truncate", "error")


def encode_conversation(
    tokenizer: Tokenizer,
    messages: Sequence[Message],
    *,
    max_tokens: int,
    answers_only: bool = True,
    overlong: str = "truncate",
    row: int | None = None,
) -> tuple[list[int], list[int]]:
    """`(input_ids, loss_mask)` of one conversation ending on an assistant answer (Llama 2, section 3.1).

    `loss_mask[t]` is 1 where token t is to be learned: the answer tokens and their EOS when `answers_only`
    (the paper's recipe), every token when not (the ablation). A conversation longer than `max_tokens` is
    cut after its last complete (user, assistant) turn that fits when `overlong="truncate"` (documented
    truncation: whole turns are dropped from the end, a turn is never cut in half), and rejected when
    `overlong="error"`. Errors name `row`: a malformed message (see `llama_course.chat.validate_dialog`), a
    conversation that does not end on an answer, or one whose first turn alone exceeds `max_tokens`.
    """
    where = f"row {row}" if row is not None else "the conversation"
    if overlong not in OVERLONG_POLICIES:
        raise ValueError(f"overlong={overlong!r} is unknown; choose one of {OVERLONG_POLICIES}")
    try:
        encoded = encode_dialog(tokenizer, messages)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{where}: {error}") from None
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where} ends on a {messages[-1]['role']!r} message: an SFT sample must end on the "
                         "assistant's answer, which is what the model learns")
    ids, mask = encoded.ids, [int(flag) for flag in encoded.answer_mask]
    if len(ids) > max_tokens:
        if overlong == "error":
            raise ValueError(f"{where} has {len(ids)} tokens, more than max_tokens={max_tokens}: shorten it, raise "
                             "the block size, or pass overlong='truncate' to drop its last turns")
        # Turn boundaries are the BOS tokens; keep the longest prefix of whole turns that fits.
        ends = [t for t in range(1, len(ids) + 1) if t == len(ids) or ids[t] == tokenizer.bos_id]
        fitting = [end for end in ends if end <= max_tokens]
        if not fitting:
            raise ValueError(f"{where}: its first turn alone has {ends[0]} tokens, more than max_tokens={max_tokens}, "
                             "so no truncation at a turn boundary fits; shorten it or raise the block size")
        ids, mask = ids[: fitting[-1]], mask[: fitting[-1]]
    return ids, mask if answers_only else [1] * len(ids)


def encode_conversations(
    tokenizer: Tokenizer,
    conversations: datasets.Dataset | Sequence[Mapping[str, Any]],
    *,
    max_tokens: int,
    answers_only: bool = True,
    overlong: str = "truncate",
) -> datasets.Dataset:
    """Encode every row's `messages` (see `encode_conversation`) into columns `input_ids` and `loss_mask`."""
    encoded: dict[str, list[list[int]]] = {"input_ids": [], "loss_mask": []}
    for index, conversation in enumerate(conversations):
        if not isinstance(conversation, Mapping) or "messages" not in conversation:
            raise ValueError(f"row {index} has no 'messages': each row needs a list of {{'role', 'content'}} messages")
        ids, mask = encode_conversation(tokenizer, conversation["messages"], max_tokens=max_tokens,
                                        answers_only=answers_only, overlong=overlong, row=index)
        encoded["input_ids"].append(ids)
        encoded["loss_mask"].append(mask)
    return datasets.Dataset.from_dict(encoded)


def pack_sft(encoded: datasets.Dataset, block_size: int) -> datasets.Dataset:
    """Concatenate encoded conversations and cut them into blocks (`input_ids`, `labels`, `document_ids`).

    `labels[t]` is the next token where the loss mask keeps it and it belongs to the same conversation,
    IGNORE_INDEX elsewhere (see `llama_course.data.pack_token_lists`). As in the paper's concatenation, a
    conversation may straddle two blocks; its second part then starts a block of its own.
    """
    return pack_dataset(encoded, block_size)
