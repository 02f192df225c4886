"""Ghost Attention (GAtt, Llama 2 section 3.3 and appendix A.3.5): keep a system instruction alive over many turns.

A chat model given an instruction in its first turn ("Act as Napoleon") tends to forget it a few turns later
(Table 30: 100 / 10 / 0 % attribute recall at turns 2 / 4 / 6). GAtt builds fine-tuning data that fixes it:

1. take a dialogue `[u1, a1, ..., un, an]` and an instruction `inst`, and concatenate `inst` to EVERY user turn;
2. sample the answers with the latest model (it follows an instruction it has just been given);
3. keep `inst` in the first turn only, and set the loss to 0 for all tokens of previous turns, assistant
   messages included: only the last turn is learned, in a context where the instruction is far behind.

The instructions are the toy world's synthetic constraints (`toyworld.dialogues`: hobby, language, public
figure, randomly combined, shortened half the time), stated as the system message, which Meta's format folds
into the first user turn. Our choices where the paper is silent: every prefix `[u1, a1, ..., uk, ak]` with
k >= 2 of a sampled dialogue becomes one sample (the loss on `ak` only), so one sampled dialogue teaches every
depth; each sample sits alone in its training block, padded, so the system message is always in its context.
`recall_by_turn` measures constraint recall turn by turn with `toyworld.adherence` (Table 30);
`gatt_attention.attention_to_system` gives the Figure 10 picture.

    llama-course gatt --control --dialogues 160 --results llama_course/assets/gatt_results.json

fine-tunes the shipped SFT model with GAtt (and, with `--control`, on the same answers' first turns only)
and measures both. The answers are sampled from the SFT model itself, the paper's step 2; `--answers
reference` takes the toy world's reference answers instead, for a model too weak to follow an instruction
even when it is repeated in the turn.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import datasets
import torch

from llama_course.alignment.sft import RANDOM_BASE, SFTConfig, export_model, load_base_model
from llama_course.alignment.sft_data import encode_conversation
from llama_course.chat import Message, encode_dialog
from llama_course.data import pack_token_lists
from llama_course.generation import generate
from llama_course.model import Llama
from llama_course.pretrained import ASSETS_DIR
from llama_course.tokenizer import Tokenizer
from llama_course.toyworld.dialogues import adherence, generate_dialogues
from llama_course.training.trainer import Trainer, TrainerConfig, TrainingResult

Dialogue = list[dict[str, str]]


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
) -> list[Dialogue]:
    """Let the model answer every user turn of each dialogue, turn by turn, its own answers kept in context.

    `dialogues` hold a system message and user turns (their assistant messages, if any, are replaced).
    With `instruction_in_every_turn` the model is asked with the instruction repeated in every user turn
    (GAtt step 2), and the returned dialogues keep it there. A dialogue stops at the last turn whose prompt
    plus `max_new_tokens` fits the model's context: the result may have fewer turns than asked.
    """
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
        with torch.no_grad():
            outputs = generate(model, [ids for _, _, ids in asking], max_new_tokens, temperature=temperature,
                               eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, seed=seed + turn)
        for (index, prompt, _), output in zip(asking, outputs, strict=True):
            answer = tokenizer.decode(output).strip() or "..."  # an empty answer would not pass validate_dialog
            done[index] = [*prompt, {"role": "assistant", "content": answer}]
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


ANSWER_SOURCES = ("model", "reference")


def build_gatt_data(
    model: Llama,
    tokenizer: Tokenizer,
    n_dialogues: int,
    *,
    seed: int = 0,
    n_turns: int | tuple[int, int] = (2, 10),
    turns: tuple[int, int | None] = (2, None),
    answers: str = "model",
    max_new_tokens: int = 48,
    temperature: float = 0.0,
) -> datasets.Dataset:
    """The GAtt dataset: toy-world dialogues under sampled constraints, answered with the instruction in every
    turn, then turned into last-turn samples (`gatt_samples`). Columns `messages` and `turn` (k).

    `answers="model"` samples them with `model` (the paper's step 2); `answers="reference"` takes the toy
    world's reference answers, which follow every constraint: a stand-in for a latest model that obeys an
    instruction it is given in the same turn, for when `model` cannot (our 1M-parameter SFT model cannot).
    """
    if answers not in ANSWER_SOURCES:
        raise ValueError(f"answers={answers!r} is unknown; choose one of {ANSWER_SOURCES}")
    dialogues = generate_dialogues(n_dialogues, seed=seed, n_turns=n_turns)["messages"]
    if answers == "model":
        sampled = answer_dialogues(model, tokenizer, dialogues, instruction_in_every_turn=True,
                                   max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    else:
        sampled = [with_instruction_in_every_turn(d) for d in dialogues]
    samples = gatt_samples(sampled, turns)
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


def recall_by_turn(dialogues: Sequence[Sequence[Message]]) -> list[float]:
    """Constraint recall at each turn: the mean over dialogues of `adherence(system, answer)` (Table 30).

    Entry t-1 is turn t, averaged over the dialogues that reach turn t.
    """
    totals: list[float] = []
    counts: list[int] = []
    for messages in dialogues:
        system = _check_system_first(messages)
        answers = [m["content"] for m in messages[1:] if m["role"] == "assistant"]
        for turn, answer in enumerate(answers):
            if turn == len(totals):
                totals.append(0.0)
                counts.append(0)
            totals[turn] += adherence(system, answer)
            counts[turn] += 1
    return [total / count for total, count in zip(totals, counts, strict=True)]


def evaluation_dialogues(n: int, n_turns: int, seed: int = 1234) -> list[Dialogue]:
    """`n` held-out dialogues of `n_turns` user turns (system message first), for measuring recall."""
    return [list(d) for d in generate_dialogues(n, seed=seed, n_turns=n_turns)["messages"]]


def measure_recall(
    model: Llama, tokenizer: Tokenizer, n: int = 64, n_turns: int = 12, seed: int = 1234, max_new_tokens: int = 48
) -> tuple[list[float], list[Dialogue]]:
    """Recall by turn of `model` answering `n` held-out dialogues (instruction in the system message only)."""
    answered = answer_dialogues(model, tokenizer, evaluation_dialogues(n, n_turns, seed), max_new_tokens=max_new_tokens)
    return recall_by_turn(answered), answered



SHIPPED_RESULTS = ASSETS_DIR / "gatt_results.json"


def load_gatt_results(path: str | Path = SHIPPED_RESULTS) -> dict:
    """The measurements of a `llama-course gatt --results FILE` run (the shipped one by default)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no GAtt results at {str(path)!r}: run `llama-course gatt "
                                f"--control --results {path}`")
    return json.loads(path.read_text())


def finetune_gatt(
    model: Llama,
    tokenizer: Tokenizer,
    samples: datasets.Dataset,
    output_dir: str | Path,
    *,
    epochs: float = 1.0,
    trainer: TrainerConfig | None = None,
) -> TrainingResult:
    """Fine-tune `model` in place on GAtt samples with the SFT machinery (trainer, AdamW, cosine, clipping).

    Defaults are SFT's (`llama_course.alignment.sft`): peak lr 1e-3 without warm-up, weight decay 0.1, 16
    blocks per step; blocks span the model's context so no sample is cut.
    """
    blocks = gatt_blocks(tokenizer, samples, model.config.max_seq_len)
    config = trainer or SFTConfig().trainer
    steps = max(1, math.ceil(epochs * len(blocks) / (config.micro_batch_size * config.grad_accum_steps)))
    config = dataclasses.replace(config, steps=steps, warmup_steps=min(config.warmup_steps, steps))
    fit = Trainer(model, blocks, config, output_dir, columns=["input_ids", "labels", "document_ids"],
                  metadata={"model_config": model.config.to_dict()})
    result = fit.fit()
    fit.raw_model.cpu().eval()
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `llama-course gatt` flags."""
    parser.add_argument("--base", default="sft", help=f"model to start from (see load_base_model), or {RANDOM_BASE}")
    parser.add_argument("--output-dir", default="runs/gatt", help="run directory (one sub-folder per variant)")
    parser.add_argument("--dialogues", type=int, default=160, help="sampled dialogues for the training data")
    parser.add_argument("--answers", choices=ANSWER_SOURCES, default="model",
                        help="who answers the training dialogues: the base model (paper) or the toy world's reference")
    parser.add_argument("--epochs", type=float, default=1.0, help="passes over the GAtt blocks")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine to 10%%)")
    parser.add_argument("--batch-size", type=int, default=16, help="blocks per step")
    parser.add_argument("--eval-dialogues", type=int, default=24, help="held-out dialogues for recall by turn")
    parser.add_argument("--eval-turns", type=int, default=10, help="user turns of each held-out dialogue")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="answer length limit when sampling")
    parser.add_argument("--control", action="store_true",
                        help="also train the no-GAtt control: same answers, first turns only (k = 1), as many steps")
    parser.add_argument("--results", type=Path, help="write recall by turn (base, control, gatt) as JSON here")
    parser.add_argument("--export", type=Path, metavar="FOLDER", help="write the GAtt model into FOLDER (weights, "
                        "config.json whose card holds its training and recall by turn)")
    parser.add_argument("--seed", type=int, default=0, help="data seed")


def run(args: argparse.Namespace) -> None:
    """Run `llama-course gatt`: build the data, fine-tune (GAtt, optionally the control), measure recall."""
    import time

    from llama_course.alignment.gatt_attention import attention_to_system, fit_to_context, mean_attention_by_turn

    trainer = dataclasses.replace(SFTConfig().trainer, lr=args.lr, micro_batch_size=args.batch_size,
                                  progress=False, resume=False, seed=args.seed)
    base, tokenizer = load_base_model(args.base)
    variants = {"gatt": (2, None)} | ({"control": (1, 1)} if args.control else {})
    results: dict = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                                if k not in ("handlers", "command")}}

    def measure(name: str, model: Llama) -> None:
        start = time.time()
        recall, answered = measure_recall(model, tokenizer, args.eval_dialogues, args.eval_turns,
                                          max_new_tokens=args.max_new_tokens)
        references = [fit_to_context(tokenizer, d, model.config.max_seq_len)
                      for d in evaluation_dialogues(args.eval_dialogues, args.eval_turns)]
        by_turn, by_turn_layer = mean_attention_by_turn(model, tokenizer, references)
        picture = attention_to_system(model, tokenizer, references[0])
        results[name] = {"recall_by_turn": recall, "sample_dialogue": answered[0],
                         "attention_by_turn": by_turn, "attention_by_turn_layer": by_turn_layer,
                         "attention_per_token": picture.per_token.tolist(),
                         "answer_mask": picture.answer_mask.tolist(), "reference_dialogue": references[0]}
        print(f"{name}: recall by turn {[round(r, 2) for r in recall]} ({time.time() - start:.0f} s)")

    measure("base", base)
    data = build_gatt_data(base, tokenizer, args.dialogues, seed=args.seed, n_turns=(2, 8), turns=(1, None),
                           answers=args.answers, max_new_tokens=args.max_new_tokens)
    n_gatt = sum(row >= 2 for row in data["turn"])
    for name, (low, high) in variants.items():
        model, _ = load_base_model(args.base)
        samples = data.filter(lambda row, low=low, high=high: low <= row["turn"] <= (high or row["turn"]))
        start = time.time()
        # The control gets as many optimizer steps as GAtt: more epochs over its fewer samples.
        epochs = args.epochs * n_gatt / len(samples)
        result = finetune_gatt(model, tokenizer, samples, Path(args.output_dir) / name, epochs=epochs,
                               trainer=trainer)
        print(f"{name}: {len(samples)} samples, {result.step} steps, last loss {result.losses[-1]:.3f} "
              f"({time.time() - start:.0f} s)")
        results[name + "_training"] = {"samples": len(samples), "steps": result.step, "losses": result.losses}
        measure(name, model)
        if name == "gatt" and args.export is not None:
            export_model(model, args.export, {"gatt_config": results["config"], "training": results["gatt_training"],
                                              "recall_by_turn": results["gatt"]["recall_by_turn"]})
    if args.results is not None:
        args.results.write_text(json.dumps(results, indent=1) + "\n")
