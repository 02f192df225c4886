"""Measuring an assistant: greedy answers to prompts, and held-out helpfulness by task family under a judge.

Llama 2 judges its SFT model by human evaluation (section 3.4); with a programmatic grader a laptop can do
better: `helpfulness_by_family` answers held-out prompts with the model (greedy decoding, the Llama 2-Chat
prompt format) and averages a judge's scores per task family. The course's judge is the toy world's exact
checker (`experiments.toyworld_judges.true_reward`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import datasets
import torch

from llama_course.chat import encode_dialog
from llama_course.generation import generate
from llama_course.model import Llama
from llama_course.tokenizer import Tokenizer


@dataclass(frozen=True)
class AnsweredPrompt:
    prompt: str
    family: str
    response: str
    helpfulness: float


def answer_dialogs(model: Llama, tokenizer: Tokenizer, dialogs: Sequence[Sequence[dict[str, str]]], *,
                   max_new_tokens: int = 48, batch_size: int = 64) -> list[str]:
    """The model's greedy answer to each dialog (messages ending with a user turn), in the Llama 2-Chat format."""
    answers: list[str] = []
    model.eval()
    for start in range(0, len(dialogs), batch_size):
        encoded = [encode_dialog(tokenizer, list(dialog)).ids for dialog in dialogs[start : start + batch_size]]
        longest = max(len(ids) for ids in encoded)
        budget = min(max_new_tokens, model.config.max_seq_len - longest)
        if budget < 1:
            raise ValueError(f"a prompt of {longest} tokens leaves no room to answer in the context of "
                             f"{model.config.max_seq_len} tokens")
        with torch.no_grad():
            outputs = generate(model, encoded, budget, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
        answers += [tokenizer.decode(ids).strip() for ids in outputs]
    return answers


def answer_prompts(
    model: Llama,
    tokenizer: Tokenizer,
    prompts: list[str],
    *,
    system: str | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 64,
) -> list[str]:
    """The model's greedy answer to each single-turn prompt (after `system`, if given), in the Llama 2-Chat format."""
    preamble = [{"role": "system", "content": system}] if system else []
    return answer_dialogs(model, tokenizer, [[*preamble, {"role": "user", "content": p}] for p in prompts],
                          max_new_tokens=max_new_tokens, batch_size=batch_size)


def helpfulness_by_family(
    model: Llama, tokenizer: Tokenizer, tasks: datasets.Dataset,
    judge: Callable[[Sequence[str], Sequence[str]], torch.Tensor], *, max_new_tokens: int = 48
) -> tuple[dict[str, float], list[AnsweredPrompt]]:
    """Mean helpfulness per task family (and "all") by `judge` (`(prompts, responses) -> (N,) scores`), and every
    answered prompt, on `tasks` (columns `prompt` and `category`, the family)."""
    prompts = list(tasks["prompt"])
    answers = answer_prompts(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    scores = judge(prompts, answers).tolist() if prompts else []
    answered = [AnsweredPrompt(prompt, family, answer, score)
                for prompt, family, answer, score in zip(prompts, tasks["category"], answers, scores, strict=True)]
    by_family: dict[str, list[float]] = defaultdict(list)
    for item in answered:
        by_family[item.family].append(item.helpfulness)
        by_family["all"].append(item.helpfulness)
    return {family: sum(values) / len(values) for family, values in sorted(by_family.items())}, answered
