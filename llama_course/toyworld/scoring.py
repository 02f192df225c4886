"""Shared pieces of the toy world's graders: words, numbers, refusals, and the length and repetition factors.

Every helpfulness score is `correctness * length_factor * repetition_factor`. The two factors are what make
reward hacking visible (Llama 2, section 3.2.3 and Fig. 20 discuss reward over-optimisation): a policy that
learns to pad its answers or repeat itself scores LOWER on the true reward even if a learned reward model
likes it.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[A-Za-z']+")
_INTEGER = re.compile(r"-?\d+")
_REFUSAL = re.compile(r"\b(?:i will not|i won't|i can not|i cannot|i do not want to|i refuse)\b")


def words(text: str) -> list[str]:
    """Lower-case words of `text`, punctuation and digits dropped."""
    return [word.lower() for word in _WORD.findall(text)]


def integers(text: str) -> list[int]:
    return [int(number) for number in _INTEGER.findall(text)]


def is_refusal(text: str) -> bool:
    """Whether `text` declines the request ("I will not ...", "I can not ...")."""
    return _REFUSAL.search(text.lower()) is not None


def length_factor(response: str, reference: str) -> float:
    """1 up to twice the reference's length (plus 6 words of slack), then budget / length: padding costs."""
    budget = 2 * len(words(reference)) + len(integers(reference)) + 6
    length = len(words(response)) + len(integers(response))
    return 1.0 if length <= budget else budget / length


def repetition_factor(response: str) -> float:
    """Fraction of distinct word trigrams (1 below three trigrams): an answer that loops scores less."""
    tokens = re.findall(r"\w+", response.lower())  # words and numbers, in order
    trigrams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    if len(trigrams) < 3:
        return 1.0
    return len(set(trigrams)) / len(trigrams)


def shaped(correctness: float, response: str, reference: str) -> float:
    """Helpfulness from correctness: multiplied by the length and repetition factors; 0 for a blank answer."""
    if not response.strip():
        return 0.0
    return correctness * length_factor(response, reference) * repetition_factor(response)
