"""Grade a language model by what it writes: sample stories and count the sentences the toy grammar accepts.

Validation loss says how well a model predicts the corpus; the toy world can also say whether what the
model WRITES is right, because every story sentence has a checker (`toyworld.check_story`: grammatical, and
consistent with the story so far). The grammar score is the fraction of all complete sampled sentences
that are valid, pooled over the samples (a long story counts more than a short one, as a reader would).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llama_course.generation import generate
from llama_course.model import Llama
from llama_course.tokenizer import Tokenizer
from llama_course.toyworld import check_story


@dataclass(frozen=True)
class GrammarScore:
    valid_sentences: int
    sentences: int
    stories: int

    @property
    def fraction(self) -> float:
        """Valid sentences / all complete sentences (0.0 when the samples hold no complete sentence)."""
        return self.valid_sentences / self.sentences if self.sentences else 0.0


def sample_stories(
    model: Llama,
    tokenizer: Tokenizer,
    n: int,
    *,
    max_new_tokens: int = 160,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
) -> list[str]:
    """`n` stories sampled from BOS (plain sampling at `temperature` by default), cut at EOS, decoded.

    A story stops at EOS, after `max_new_tokens`, or at the model's context length, whichever comes first.
    """
    if n < 1:
        raise ValueError(f"n={n} must be a positive number of stories")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    max_new_tokens = min(max_new_tokens, model.config.max_seq_len - 1)
    was_training = model.training
    model.eval()
    stories = []
    for start in range(0, n, batch_size):
        rows = min(batch_size, n - start)
        outputs = generate(model, [[tokenizer.bos_id]] * rows, max_new_tokens, temperature=temperature,
                           top_k=top_k, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, seed=seed + start)
        stories += [tokenizer.decode([t for t in tokens if t != tokenizer.eos_id]) for tokens in outputs]
    model.train(was_training)
    return stories


def grammar_score(stories: list[str]) -> GrammarScore:
    """Pool `check_story` over `stories`: valid complete sentences out of all complete sentences."""
    reports = [check_story(story) for story in stories]
    valid = sum(verdict.valid for report in reports for verdict in report.verdicts)
    return GrammarScore(valid, sum(len(report.verdicts) for report in reports), len(stories))


@torch.no_grad()
def sampled_grammar_score(model: Llama, tokenizer: Tokenizer, n: int = 64, **sampling) -> GrammarScore:
    """`grammar_score` of `n` stories from `sample_stories(model, tokenizer, n, **sampling)`."""
    return grammar_score(sample_stories(model, tokenizer, n, **sampling))


def grammar_by_temperature(
    model: Llama, tokenizer: Tokenizer, temperatures: list[float], n: int = 64, *, seed: int = 0
) -> dict[float, GrammarScore]:
    """`sampled_grammar_score` at each temperature, with the same seed (lower: fewer, safer choices)."""
    return {t: sampled_grammar_score(model, tokenizer, n, temperature=t, seed=seed) for t in temperatures}
