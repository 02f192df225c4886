"""The models a side-by-side evaluation compares: each one's greedy answers, and a reward model as a judge of them.

A MODEL is the name of a shipped model (`load_pretrained`: "base", "sft", ...) or the path of an exported folder
(`model.safetensors` + `config.json`), optionally named for the report as `NAME=MODEL`
(`rejection=runs/reproduce/rejection`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from llama_course.evaluation.report import EvaluationPrompts, ModelAnswers

if TYPE_CHECKING:
    from llama_course.alignment.reward import RewardModel
    from llama_course.model import Llama
    from llama_course.tokenizer import Tokenizer


def split_model_spec(spec: str) -> tuple[str, str]:
    """(name in the report, model) of a MODEL argument: `NAME=MODEL`, or MODEL named by itself."""
    name, sep, model = spec.partition("=")
    if not sep:
        return spec, spec
    if not name or not model:
        raise ValueError(f"model {spec!r}: write NAME=MODEL with both parts, e.g. rejection=runs/reproduce/rejection")
    return name, model


def load_model(spec: str) -> tuple[Llama, Tokenizer]:
    """A shipped model by name, or an exported folder by path: (model, tokenizer)."""
    from llama_course.pretrained import load_pretrained, load_pretrained_folder

    return load_pretrained_folder(spec) if Path(spec).is_dir() else load_pretrained(spec)


def answer_all(specs: list[str], prompts: EvaluationPrompts, max_new_tokens: int) -> dict[str, ModelAnswers]:
    """Every model's greedy answers to the helpfulness and the safety prompts, keyed by its name (NAME=MODEL)."""
    from llama_course.alignment.sft_eval import answer_prompts

    answers = {}
    for name, spec in map(split_model_spec, specs):
        model, tokenizer = load_model(spec)
        answers[name] = ModelAnswers(*(answer_prompts(model, tokenizer, chosen, max_new_tokens=max_new_tokens)
                                       for chosen in (prompts.helpfulness, prompts.safety)))
    return answers


def reward_model_scorer(reward_model: RewardModel, tokenizer: Tokenizer, prompts: EvaluationPrompts,
                        answers: dict[str, ModelAnswers]) -> Callable[[str, str], float]:
    """A scorer for `RewardModelJudge`: the reward model's score after a sigmoid (Llama 2 reports reward
    scores in [0, 1]), computed once, in batches, for every answer to a task prompt.

    An empty answer scores 0, the bottom of the scale: the chat format cannot encode an empty message."""
    import torch

    from llama_course.alignment.reward import score_responses

    pairs = sorted({(prompt, answer) for given in answers.values()
                    for prompt, answer in zip(prompts.helpfulness, given.helpfulness, strict=True) if answer.strip()})
    raw = score_responses(reward_model, tokenizer, [prompt for prompt, _ in pairs], [answer for _, answer in pairs])
    table = dict(zip(pairs, torch.sigmoid(raw).tolist(), strict=True))
    return lambda prompt, response: table[(prompt, response)] if response.strip() else 0.0
