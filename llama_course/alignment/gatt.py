"""Ghost Attention (GAtt, Llama 2 section 3.3 and appendix A.3.5): keep a system instruction alive over many turns.

A chat model given an instruction in its first turn ("Act as Napoleon") tends to forget it a few turns later
(Table 30: 100 / 10 / 0 % attribute recall at turns 2 / 4 / 6). GAtt builds fine-tuning data that fixes it:

1. take a dialogue `[u1, a1, ..., un, an]` and an instruction `inst`, and concatenate `inst` to EVERY user turn;
2. sample the answers with the latest model (it follows an instruction it has just been given);
3. keep `inst` in the first turn only, and set the loss to 0 for all tokens of previous turns, assistant
   messages included: only the last turn is learned, in a context where the instruction is far behind.

The dialogues and their instructions are the caller's (the chapter's are the toy world's synthetic constraints:
hobby, language, public figure, randomly combined, shortened half the time, from
`experiments.toyworld_data.gatt_dialogues`), the instruction stated as the system message, which Meta's format
folds into the first user turn. A judge `judge(system, answer)` in [0, 1] says how well an answer follows it (the
toy world's is `toyworld.adherence`). Our choices where the paper is silent: every prefix `[u1, a1, ..., uk, ak]` with
k >= 2 of a sampled dialogue becomes one sample (the loss on `ak` only), so one sampled dialogue teaches every
depth; each sample sits alone in its training block, padded, so the system message is always in its context.
Step 2's "latest model" must follow an instruction it has just been given; ours follows it only part of the
time, so `build_gatt_data` samples several answers per turn and keeps only samples whose learned answer the
judge passes (a rejection step). `recall_by_turn` measures constraint recall turn by turn with the judge
(Table 30); `gatt_attention.attention_to_system` gives the Figure 10 picture;
`llama_course.experiments.gatt` runs the chapter's measurement (`llama-course gatt`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import datasets
import torch

from llama_course.alignment.sft import SFTConfig
from llama_course.alignment.sft_data import encode_conversation, encode_conversations
from llama_course.chat import Message, encode_dialog
from llama_course.data import pack_token_lists
from llama_course.generation import generate
from llama_course.model import Llama
from llama_course.tokenizer import Tokenizer
from llama_course.training.trainer import Trainer, TrainerConfig, TrainingResult

Dialogue = list[dict[str, str]]
Judge = Callable[[str, str], float]  # judge(system, answer) in [0, 1]: how well the answer follows the system message


def _check_system_first(messages: Sequence[Message]) -> str:
    if not messages or messages[0]["role"] != "system":
        raise ValueError("a GAtt dialogue starts with the system message that states the instruction; got roles "
                         f"{[m['role'] for m in messages]}")
    return messages[0]["content"]


def with_instruction_in_every_turn(messages: Sequence[Message]) -> Dialogue:
    """Step 1: the instruction (the system message) concatenated to every user turn after the first.

    The first user turn already carries it: Meta's format folds the system message into that turn.
    """
    instruction = _check_system_first(messages)
    out = [dict(messages[0])]
    for index, message in enumerate(messages[1:]):
        content = message["content"]
        if message["role"] == "user" and index > 0:
            content = f"{instruction} {content}"
        out.append({"role": message["role"], "content": content})
    return out


def with_instruction_in_first_turn_only(messages: Sequence[Message]) -> Dialogue:
    """Step 3's context: undo `with_instruction_in_every_turn`, so the instruction is only in the first turn."""
    instruction = _check_system_first(messages)
    prefix = f"{instruction} "
    out = [dict(messages[0])]
    for index, message in enumerate(messages[1:]):
        content = message["content"]
        if message["role"] == "user" and index > 0:
            if not content.startswith(prefix):
                raise ValueError(f"user message {index + 1} does not start with the instruction {instruction!r}: "
                                 "build the dialogue with with_instruction_in_every_turn first")
            content = content[len(prefix):]
        out.append({"role": message["role"], "content": content})
    return out


def answer_dialogues(
    model: Llama,
    tokenizer: Tokenizer,
    dialogues: Sequence[Sequence[Message]],
    *,
    instruction_in_every_turn: bool = False,
    max_new_tokens: int = 48,
    temperature: float = 0.0,
    seed: int = 0,
    samples_per_turn: int = 1,
    judge: Judge | None = None,
    batch_size: int = 256,
) -> list[Dialogue]:
    """Let the model answer every user turn of each dialogue, turn by turn, its own answers kept in context.

    `dialogues` hold a system message and user turns (their assistant messages, if any, are replaced).
    With `instruction_in_every_turn` the model is asked with the instruction repeated in every user turn
    (GAtt step 2), and the returned dialogues keep it there. A dialogue stops at the last turn whose prompt
    plus `max_new_tokens` fits the model's context: the result may have fewer turns than asked.

    With a `judge` (`judge(system, answer)` in [0, 1], e.g. the toy world's `toyworld.adherence`), each turn draws
    `samples_per_turn` answers at `temperature` and keeps the one the judge scores highest (the first of
    ties): best-of-N by the checker. Generation runs `batch_size` sequences at a time.
    """
    if samples_per_turn < 1 or (samples_per_turn > 1 and (judge is None or temperature == 0)):
        raise ValueError(f"samples_per_turn={samples_per_turn} needs to be 1, or more with a judge and a "
                         f"temperature above 0 (temperature={temperature}) to choose among different samples")
    users = [[m["content"] for m in d if m["role"] == "user"] for d in dialogues]
    done: list[Dialogue] = [[dict(d[0])] for d in dialogues]
    for d in dialogues:
        _check_system_first(d)
    active = list(range(len(dialogues)))
    model.eval()
    for turn in range(max(map(len, users), default=0)):
        asking = []
        for index in active:
            if turn >= len(users[index]):
                continue
            user = users[index][turn]
            if instruction_in_every_turn and turn > 0:
                user = f"{done[index][0]['content']} {user}"
            prompt = [*done[index], {"role": "user", "content": user}]
            ids = encode_dialog(tokenizer, prompt).ids
            if len(ids) + max_new_tokens <= model.config.max_seq_len:
                asking.append((index, prompt, ids))
        if not asking:
            break
        requests = [ids for _, _, ids in asking for _ in range(samples_per_turn)]
        outputs = []
        with torch.no_grad():
            for start in range(0, len(requests), batch_size):
                outputs += generate(model, requests[start: start + batch_size], max_new_tokens,
                                    temperature=temperature, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                                    seed=seed + 1000 * turn + start)
        for position, (index, prompt, _) in enumerate(asking):
            candidates = outputs[position * samples_per_turn: (position + 1) * samples_per_turn]
            # An empty answer would not pass validate_dialog.
            answers = [tokenizer.decode(output).strip() or "..." for output in candidates]
            if judge is not None:
                answers.sort(key=lambda answer: -judge(prompt[0]["content"], answer))  # stable: first of ties
            done[index] = [*prompt, {"role": "assistant", "content": answers[0]}]
        active = [index for index, _, _ in asking]
    return done


def gatt_sample_ids(tokenizer: Tokenizer, messages: Sequence[Message], max_tokens: int) -> tuple[list[int], list[int]]:
    """`(input_ids, loss_mask)` of one GAtt sample: the loss mask is 1 on the LAST answer (and its EOS) only.

    `messages` are in their final form (instruction in the first turn only). Previous turns, assistant
    answers included, get loss 0 (Llama 2, section 3.3). A sample longer than `max_tokens` loses whole
    turns from the end (see `encode_conversation`), so the learned turn is the last one that fits.
    """
    ids, mask = encode_conversation(tokenizer, messages, max_tokens=max_tokens, overlong="truncate")
    last_turn = max(t for t, token in enumerate(ids) if token == tokenizer.bos_id)  # each turn opens with BOS
    return ids, [flag if t >= last_turn else 0 for t, flag in enumerate(mask)]


def gatt_samples(sampled: Sequence[Sequence[Message]], turns: tuple[int, int | None] = (2, None)) -> list[Dialogue]:
    """Step 3: every prefix of each sampled dialogue ending on its k-th answer, for k in the inclusive range
    `turns` (None: up to the last), with the instruction removed from all user turns but the first (the
    loss goes on the k-th answer only). `turns=(1, 1)` keeps first turns only: the no-GAtt control."""
    low, high = turns
    if low < 1 or (high is not None and high < low):
        raise ValueError(f"turns={turns!r} must be (low, high) with 1 <= low <= high, or (low, None)")
    samples = []
    for messages in sampled:
        final = with_instruction_in_first_turn_only(messages)
        n_turns = (len(final) - 1) // 2
        last = n_turns if high is None else min(high, n_turns)
        samples += [final[: 1 + 2 * k] for k in range(low, last + 1)]
    return samples


ANSWER_SOURCES = ("rejection", "model", "reference")


def build_gatt_data(
    model: Llama,
    tokenizer: Tokenizer,
    dialogues: Sequence[Sequence[Message]],
    judge: Judge,
    *,
    seed: int = 0,
    turns: tuple[int, int | None] = (2, None),
    answers: str = "rejection",
    samples_per_turn: int = 8,
    max_new_tokens: int = 48,
    temperature: float = 1.0,
) -> datasets.Dataset:
    """The GAtt dataset: `dialogues` (a system message stating the instruction, then user turns and their
    reference answers), answered with the instruction in every turn, then turned into last-turn samples
    (`gatt_samples`). Columns `messages` and `turn` (k).

    `answers="rejection"` samples `samples_per_turn` answers per turn from `model` at `temperature`, keeps the
    one `judge` scores highest in the dialogue (`answer_dialogues`), and then keeps a sample only when its
    learned, last answer scores 1: the paper's step 2, with the judge's rejection step standing in for a latest
    model that reliably follows an instruction given in the same turn (earlier answers are context, as the
    model's own answers will be). `answers="model"` takes `model`'s greedy answers as they are, followed or
    not; `answers="reference"` takes the dialogues' own answers.
    """
    if answers not in ANSWER_SOURCES:
        raise ValueError(f"answers={answers!r} is unknown; choose one of {ANSWER_SOURCES}")
    if answers == "reference":
        sampled = [with_instruction_in_every_turn(d) for d in dialogues]
    else:
        rejection = answers == "rejection"
        sampled = answer_dialogues(model, tokenizer, dialogues, instruction_in_every_turn=True,
                                   max_new_tokens=max_new_tokens, temperature=temperature if rejection else 0.0,
                                   seed=seed, samples_per_turn=samples_per_turn if rejection else 1,
                                   judge=judge if rejection else None)
    samples = gatt_samples(sampled, turns)
    if answers == "rejection":
        samples = [s for s in samples if judge(s[0]["content"], s[-1]["content"]) == 1.0]
    return datasets.Dataset.from_dict({"messages": samples, "turn": [(len(s) - 1) // 2 for s in samples]})


def gatt_blocks(tokenizer: Tokenizer, samples: datasets.Dataset, block_size: int) -> datasets.Dataset:
    """One training block per sample (`input_ids`, `labels`, `document_ids`), padded to `block_size`.

    Packing samples end to end could cut one in two and train its last turn without the system message in
    view, teaching the model to follow instructions it cannot see; a padding document (loss 0) avoids it.
    """
    blocks: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "document_ids": []}
    for messages in samples["messages"]:
        ids, mask = gatt_sample_ids(tokenizer, messages, block_size)
        padding = block_size + 1 - len(ids)  # the block reads one token past its end for the last label
        block = pack_token_lists([ids, [tokenizer.pad_id] * padding], block_size, [mask, [0] * padding])
        for column, rows in block.items():
            blocks[column] += rows
    return datasets.Dataset.from_dict(blocks)


def mix_blocks(tokenizer: Tokenizer, conversations: datasets.Dataset, block_size: int) -> datasets.Dataset:
    """Conversations (rows of `messages`, e.g. SFT data) packed end to end into blocks with the SFT loss (answers
    only), as `alignment.sft` packs them; the stream is padded to whole blocks, so none is dropped."""
    encoded = encode_conversations(tokenizer, conversations, max_tokens=block_size)
    documents, masks = list(encoded["input_ids"]), list(encoded["loss_mask"])
    padding = (1 - sum(map(len, documents))) % block_size  # a block reads one token past its end
    packed = pack_token_lists([*documents, [tokenizer.pad_id] * padding], block_size, [*masks, [0] * padding])
    return datasets.Dataset.from_dict(packed)


def adherence_by_turn(dialogues: Sequence[Sequence[Message]], judge: Judge) -> list[list[float]]:
    """`judge(system, answer)` of every answer of each dialogue, in turn order: one list per dialogue."""
    return [[judge(_check_system_first(messages), m["content"]) for m in messages[1:] if m["role"] == "assistant"]
            for messages in dialogues]


def recall_by_turn(dialogues: Sequence[Sequence[Message]], judge: Judge) -> list[float]:
    """Constraint recall at each turn: the mean over dialogues of `judge(system, answer)` (Table 30).

    Entry t-1 is turn t, averaged over the dialogues that reach turn t.
    """
    totals: list[float] = []
    counts: list[int] = []
    for scores in adherence_by_turn(dialogues, judge):
        for turn, score in enumerate(scores):
            if turn == len(totals):
                totals.append(0.0)
                counts.append(0)
            totals[turn] += score
            counts[turn] += 1
    return [total / count for total, count in zip(totals, counts, strict=True)]


def measure_adherence(
    model: Llama, tokenizer: Tokenizer, dialogues: Sequence[Sequence[Message]], judge: Judge, max_new_tokens: int = 48
) -> tuple[list[list[float]], list[Dialogue]]:
    """`adherence_by_turn` of `model` answering held-out `dialogues` greedily (instruction in the system message
    only), and the answered dialogues."""
    answered = answer_dialogues(model, tokenizer, dialogues, max_new_tokens=max_new_tokens)
    return adherence_by_turn(answered, judge), answered


def finetune_gatt(
    model: Llama,
    tokenizer: Tokenizer,
    samples: datasets.Dataset,
    output_dir: str | Path,
    *,
    epochs: float = 1.0,
    trainer: TrainerConfig | None = None,
    mix: datasets.Dataset | None = None,
) -> TrainingResult:
    """Fine-tune `model` in place on GAtt samples with the SFT machinery (trainer, AdamW, cosine, clipping).

    `mix` (rows of `messages`, e.g. the SFT data) is packed into blocks of the same length with the SFT loss and
    trained alongside, shuffled in. Defaults are SFT's (`llama_course.alignment.sft`): peak lr 1e-3 without
    warm-up, weight decay 0.1, 16 blocks per step; blocks span the model's context so no sample is cut.
    """
    blocks = gatt_blocks(tokenizer, samples, model.config.max_seq_len)
    if mix is not None and len(mix):
        blocks = datasets.concatenate_datasets([blocks, mix_blocks(tokenizer, mix, model.config.max_seq_len)])
    config = trainer or SFTConfig().trainer
    steps = max(1, math.ceil(epochs * len(blocks) / (config.micro_batch_size * config.grad_accum_steps)))
    config = dataclasses.replace(config, steps=steps, warmup_steps=min(config.warmup_steps, steps))
    fit = Trainer(model, blocks, config, output_dir, columns=["input_ids", "labels", "document_ids"],
                  metadata={"model_config": model.config.to_dict()})
    result = fit.fit()
    fit.raw_model.cpu().eval()
    return result
