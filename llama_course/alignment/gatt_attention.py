"""How much the answers attend to the system message, turn by turn (Llama 2, Figure 10).

Figure 10 plots the maximum attention activations of the model over a dialogue: with GAtt the model keeps
attending to the system message many turns later. Here, from the eager backend's weights (B, H, T, T) per
layer, each answer token's attention to the system message is the sum of its weights over the system-message
tokens; a turn's score is the mean over its answer tokens of the maximum over heads and layers (and, per
layer, of the maximum over that layer's heads). The span of the system message excludes BOS and the
`[INST] <<SYS>>` tags: BOS draws most of the attention in every layer (an attention sink) and would drown
the signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llama_course.chat import B_INST, B_SYS, Message, encode_dialog
from llama_course.model import Llama
from llama_course.tokenizer import Tokenizer


def system_span(tokenizer: Tokenizer, ids: Sequence[int], system: str) -> tuple[int, int]:
    """The token positions [start, end) of the system message's text in the encoded dialogue `ids`.

    The text's last piece may merge with the closing tag (e.g. '.\\n<</'); that piece is left out.
    """
    opening = tokenizer.encode(f"{B_INST} {B_SYS}", bos=True)
    with_system = tokenizer.encode(f"{B_INST} {B_SYS}{system}", bos=True)
    if list(ids[: len(opening)]) != opening:
        raise ValueError("the dialogue does not open with '[INST] <<SYS>>': it needs a system message first")
    end = len(opening)
    while end < min(len(ids), len(with_system)) and ids[end] == with_system[end]:
        end += 1
    if end == len(opening):
        raise ValueError(f"no token of the system message {system!r} found in the dialogue")
    return len(opening), end


@dataclass(frozen=True)
class SystemAttention:
    """Attention paid to the system message. `per_token` (T,): max over layers and heads, for every position;
    `by_turn` (n_turns,): its mean over each turn's answer tokens; `by_turn_layer` (n_turns, n_layers): the
    same with the max over heads only; `answer_mask` (T,) marks answer tokens; `span` is the system span."""

    per_token: torch.Tensor
    by_turn: torch.Tensor
    by_turn_layer: torch.Tensor
    answer_mask: torch.Tensor
    span: tuple[int, int]


@torch.no_grad()
def attention_to_system(model: Llama, tokenizer: Tokenizer, messages: Sequence[Message]) -> SystemAttention:
    """The attention each answer of a complete dialogue pays to its system message (Figure 10's quantity).

    Runs the model once with the eager backend (switched back afterwards) and `need_weights=True`.
    """
    if not messages or messages[0]["role"] != "system":
        raise ValueError("attention_to_system needs a dialogue whose first message is the system message")
    encoded = encode_dialog(tokenizer, messages)
    if len(encoded.ids) > model.config.max_seq_len:
        raise ValueError(f"the dialogue has {len(encoded.ids)} tokens, more than the model's context of "
                         f"{model.config.max_seq_len}; drop its last turns")
    start, end = system_span(tokenizer, encoded.ids, messages[0]["content"])
    backend = model.config.attention_backend
    model.set_attention_backend("eager")
    try:
        model.eval()
        model(torch.tensor([encoded.ids], device=model.output.weight.device), need_weights=True)
        weights = torch.stack(model.last_attention)[:, 0]  # (layers, H, T, T)
    finally:
        model.set_attention_backend(backend)
    to_system = weights[..., start:end].sum(dim=-1).float().cpu()  # (layers, H, T)
    per_layer = to_system.amax(dim=1)  # (layers, T)
    per_token = per_layer.amax(dim=0)  # (T,)
    answer_mask = torch.tensor(encoded.answer_mask)
    turn_of_token = torch.cumsum(torch.tensor([t == tokenizer.bos_id for t in encoded.ids]), dim=0) - 1
    by_turn, by_turn_layer = [], []
    for turn in range(int(turn_of_token[-1]) + 1):
        answer = answer_mask & (turn_of_token == turn)
        if answer.any():
            by_turn.append(per_token[answer].mean())
            by_turn_layer.append(per_layer[:, answer].mean(dim=1))
    return SystemAttention(per_token, torch.stack(by_turn), torch.stack(by_turn_layer), answer_mask, (start, end))


def fit_to_context(tokenizer: Tokenizer, messages: Sequence[Message], max_tokens: int) -> list[dict[str, str]]:
    """The longest prefix of whole (user, assistant) turns of a complete dialogue that fits `max_tokens`."""
    kept = [dict(m) for m in messages]
    while len(kept) > 3 and len(encode_dialog(tokenizer, kept).ids) > max_tokens:
        kept = kept[:-2]
    return kept


def mean_attention_by_turn(
    model: Llama, tokenizer: Tokenizer, dialogues: Sequence[Sequence[Message]]
) -> tuple[list[float], list[list[float]]]:
    """`by_turn` and `by_turn_layer` of `attention_to_system`, averaged over the dialogues that reach each turn
    (each dialogue first cut to the model's context by `fit_to_context`)."""
    sums: list[torch.Tensor] = []
    counts: list[int] = []
    for messages in dialogues:
        result = attention_to_system(model, tokenizer, fit_to_context(tokenizer, messages, model.config.max_seq_len))
        rows = torch.cat([result.by_turn[:, None], result.by_turn_layer], dim=1)  # (turns, 1 + layers)
        for turn, row in enumerate(rows):
            if turn == len(sums):
                sums.append(torch.zeros_like(row))
                counts.append(0)
            sums[turn] += row
            counts[turn] += 1
    means = [total / count for total, count in zip(sums, counts, strict=True)]
    return [float(m[0]) for m in means], [m[1:].tolist() for m in means]
