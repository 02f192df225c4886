"""The toy "French": a fixed word-for-word language for the "Speak in French" constraint of Ghost Attention.

Llama 2 (section 3.3) tests whether a chat model keeps obeying "Speak in French" over many turns. A tiny
model cannot learn French, so the toy world has its own second language: every English word of the lexicon
has one made-up two-syllable word (`ENGLISH_TO_TOY`), and translation is a word-for-word substitution in
both directions. Names, numbers and punctuation stay as they are. The dictionary is built by a fixed rule
(a seeded draw from the syllable grid, seed 0), so it never changes between runs or machines.
"""

from __future__ import annotations

import random
import re

from llama_course.toyworld.lexicon import NAMES, all_words

_ONSETS = ("b", "d", "f", "g", "j", "l", "m", "n", "p", "r", "s", "t", "v", "ch")
_VOWELS = ("a", "e", "i", "o", "u", "ou", "eau", "oi")
_WORD = re.compile(r"[A-Za-z']+")


def _build_dictionary() -> dict[str, str]:
    english = all_words()
    syllables = [onset + vowel for onset in _ONSETS for vowel in _VOWELS]
    taken = set(english) | {name.lower() for name in NAMES}
    rng = random.Random(0)
    dictionary: dict[str, str] = {}
    for word in english:
        while True:
            toy = rng.choice(syllables) + rng.choice(syllables)
            if toy not in taken:
                break
        taken.add(toy)
        dictionary[word] = toy
    return dictionary


ENGLISH_TO_TOY = _build_dictionary()
TOY_TO_ENGLISH = {toy: english for english, toy in ENGLISH_TO_TOY.items()}


def _substitute(text: str, dictionary: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        word = match[0]
        translated = dictionary.get(word.lower())
        if translated is None:
            return word
        return translated.capitalize() if word[0].isupper() else translated

    return _WORD.sub(replace, text)


def to_toy_french(text: str) -> str:
    """Translate English to the toy language word for word ("The cat is happy." -> "Lipou ..."); case kept."""
    return _substitute(text, ENGLISH_TO_TOY)


def from_toy_french(text: str) -> str:
    """Translate the toy language back to English word for word (the inverse of `to_toy_french`)."""
    return _substitute(text, TOY_TO_ENGLISH)


def toy_french_fraction(text: str) -> float:
    """Fraction of the translatable words of `text` that are toy-language words (names and numbers skipped).

    1.0 for an answer entirely in the toy language, 0.0 for plain English, in between for a mix; 0.0 when
    the text has no word at all.
    """
    counted = [word.lower() for word in _WORD.findall(text) if word not in NAMES]
    if not counted:
        return 0.0
    return sum(word in TOY_TO_ENGLISH for word in counted) / len(counted)
