"""Preference data for reward models (Llama 2, section 3.2.1), checked and encoded for training.

The paper's annotators "write a prompt, and then choose between two sampled model responses", sampled
"from two different model variants, and varying the temperature hyper-parameter", and label how much better
the chosen one is on the 4-level scale of `paper.STRENGTHS`. Here:

- `sample_preference_pairs` does that with our models: for each prompt, two responses from two different
  (model variant, temperature) arms, labelled by the caller's annotator (a `PreferenceAnnotator`; the toy
  world's, of helpfulness or safety, is `experiments.toyworld_data.preference_annotator`);
- `encode_preferences` checks every row (an error names the offending row) and encodes both sides as the
  chat format's single turn `[INST] prompt [/INST] response </s>`, right-padded, for the trainer.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import datasets
import torch

from llama_course.chat import encode_dialog
from llama_course.generation import generate
from llama_course.model import Llama
from llama_course.paper import STRENGTHS
from llama_course.tokenizer import Tokenizer
from llama_course.training.batches import TensorBlocks

PREFERENCE_FIELDS = ("prompt", "chosen", "rejected", "strength")


class PreferenceAnnotator(Protocol):
    """Labels a pair (section 3.2.1): `compare` returns the `chosen` and `rejected` response and the `strength`
    (one of `STRENGTHS`), and any other fields to record with the pair, as a mapping or an object's attributes."""

    def compare(self, prompt: str, first: str, second: str) -> Any: ...


def check_preference_row(row: Any, index: int) -> None:
    """Raise a ValueError naming row `index` when it lacks a field, has an empty text or an unknown strength."""
    if not isinstance(row, Mapping):
        raise ValueError(f"preference row {index} is a {type(row).__name__}; expected a dict with the fields "
                         f"{PREFERENCE_FIELDS}")
    missing = [name for name in PREFERENCE_FIELDS if row.get(name) is None]
    if missing:
        raise ValueError(f"preference row {index} lacks the field(s) {missing}: every row needs {PREFERENCE_FIELDS}")
    for name in ("prompt", "chosen", "rejected"):
        if not isinstance(row[name], str) or not row[name].strip():
            raise ValueError(f"preference row {index} has an empty or non-text {name!r}: {row[name]!r}")
    if row["strength"] not in STRENGTHS:
        raise ValueError(f"preference row {index} has strength {row['strength']!r}, which is not one of the "
                         f"4 levels {STRENGTHS} (Llama 2, section 3.2.1)")


def encode_response(tokenizer: Tokenizer, prompt: str, response: str) -> list[int]:
    """Token ids of one scored turn, `<s>[INST] prompt [/INST] response </s>`: it always ends with EOS."""
    return encode_dialog(tokenizer, [{"role": "user", "content": prompt},
                                     {"role": "assistant", "content": response}]).ids


def answer_start(tokenizer: Tokenizer, prompt: str) -> int:
    """The index of the answer's first token in `encode_response(tokenizer, prompt, response)`: the prompt's length."""
    return len(encode_dialog(tokenizer, [{"role": "user", "content": prompt}]).ids)


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int, width: int | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token lists into (ids, mask), both (N, width) long; width defaults to the longest list."""
    width = width or max(len(sequence) for sequence in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.as_tensor(list(sequence), dtype=torch.long)
        mask[row, : len(sequence)] = 1
    return ids, mask


def encode_preferences(tokenizer: Tokenizer, rows: Iterable[Mapping[str, Any]], max_tokens: int = 256
                       ) -> TensorBlocks:
    """Check and encode preference rows into columns for the trainer (one row per pair):

    `chosen_ids`, `chosen_mask`, `rejected_ids`, `rejected_mask` (N, max_tokens), right-padded with the
    tokenizer's pad id; `answer_start` (N,), where both answers begin (they share the prompt); `strength` (N,),
    the index of the row's strength in `STRENGTHS`. A side longer
    than `max_tokens` is an error naming the row (cutting it would drop its EOS, where the score is read).
    """
    sides: dict[str, list[list[int]]] = {"chosen": [], "rejected": []}
    strengths, starts = [], []
    for index, row in enumerate(rows):
        check_preference_row(row, index)
        starts.append(answer_start(tokenizer, row["prompt"]))
        for side, ids in sides.items():
            encoded = encode_response(tokenizer, row["prompt"], row[side])
            if len(encoded) > max_tokens:
                raise ValueError(f"preference row {index}: the {side} side has {len(encoded)} tokens, more than "
                                 f"max_tokens={max_tokens}; raise max_tokens or drop the row")
            ids.append(encoded)
        strengths.append(STRENGTHS.index(row["strength"]))
    if not strengths:
        raise ValueError("no preference rows to encode")
    columns = {}
    for side, ids in sides.items():
        columns[f"{side}_ids"], columns[f"{side}_mask"] = pad_right(ids, tokenizer.pad_id, max_tokens)
    return TensorBlocks(**columns, answer_start=torch.tensor(starts, dtype=torch.long),
                        strength=torch.tensor(strengths, dtype=torch.long))


def sample_preference_pairs(
    variants: Mapping[str, Llama],
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    annotator: PreferenceAnnotator,
    *,
    temperatures: Sequence[float] = (0.7, 1.0),
    max_new_tokens: int = 48,
    seed: int = 0,
    batch_size: int = 64,
) -> datasets.Dataset:
    """Preference pairs collected as in Llama 2 (section 3.2.1), one per prompt where the answers differ.

    Each prompt gets two different arms (model variant, temperature) drawn from `variants` x `temperatures`;
    each arm samples one response, and `annotator` picks the better one and rates the strength. Pairs of
    identical responses are dropped (they carry no preference). Columns `prompt`, the annotator's fields
    (`chosen`, `rejected`, `strength`, ...), `arm_chosen` and `arm_rejected` (e.g. "sft@0.7").
    """
    arms = [(name, temperature) for name in variants for temperature in temperatures]
    if len(arms) < 2:
        raise ValueError(f"{len(arms)} arm(s) from variants {list(variants)} x temperatures {list(temperatures)}: "
                         "two responses need two different (variant, temperature) arms")
    rng = random.Random(seed)
    assignment = [rng.sample(range(len(arms)), 2) for _ in prompts]
    responses: dict[tuple[int, int], str] = {}  # (prompt index, arm index) -> response text
    for arm_index, (name, temperature) in enumerate(arms):
        wanted = [i for i, pair in enumerate(assignment) if arm_index in pair]
        for start in range(0, len(wanted), batch_size):
            chunk = wanted[start : start + batch_size]
            encoded = [encode_dialog(tokenizer, [{"role": "user", "content": prompts[i]}]).ids for i in chunk]
            outputs = generate(variants[name], encoded, max_new_tokens, temperature=temperature,
                               eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, seed=seed + 7919 * arm_index + start)
            for i, output in zip(chunk, outputs, strict=True):
                responses[i, arm_index] = tokenizer.decode([t for t in output if t != tokenizer.eos_id]).strip()
    rows = []
    for i, (first, second) in enumerate(assignment):
        text = {arm: responses[i, arm] for arm in (first, second)}
        if text[first] == text[second] or not text[first] or not text[second]:
            continue
        preference = annotator.compare(prompts[i], text[first], text[second])
        fields = dict(preference if isinstance(preference, Mapping) else vars(preference))
        chosen_arm = first if fields["chosen"] == text[first] else second
        rejected_arm = second if chosen_arm == first else first
        rows.append({"prompt": prompts[i], **fields, "arm_chosen": "{}@{}".format(*arms[chosen_arm]),
                     "arm_rejected": "{}@{}".format(*arms[rejected_arm])})
    columns = list(rows[0]) if rows else [*PREFERENCE_FIELDS, "arm_chosen", "arm_rejected"]
    return datasets.Dataset.from_dict({name: [row[name] for row in rows] for name in columns})
