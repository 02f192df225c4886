"""The story grammar: sentence templates with state, and the checker that grades a model's stories.

The Llama papers pretrain on 1.4T to 2T tokens of web text (Llama 1, section 2.1); the course pretrains on
TinyStories-like stories written by a small grammar. Each sentence is one of the `TEMPLATES` below, and
each template has an action that reads and updates a `StoryState`: characters keep their names, kinds,
colours, homes and places, and items keep their colour and owner across sentences. The SAME actions write
the stories and check them, so every generated story is valid by construction, and `story_validity`
measures what fraction of a model's sentences are both grammatical and consistent with the story so far:
the pretraining chapter's quality measure.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from llama_course.toyworld.lexicon import (
    COLOURS,
    FOODS,
    ITEMS,
    KINDS,
    MOODS,
    NAMES,
    PLACES,
    TOYS,
    WEATHERS,
    gender_of,
    possessive,
)


class Inconsistent(Exception):
    """A sentence that parses but contradicts the story so far (the message says how)."""


@dataclass
class Character:
    name: str
    kind: str
    colour: str
    home: str | None = None
    place: str | None = None


@dataclass
class Item:
    colour: str
    owner: str | None  # None once lost
    lost_by: str | None = None


@dataclass
class StoryState:
    """What a reader knows after some sentences: who exists, where they are, who owns what."""

    characters: dict[str, Character] = field(default_factory=dict)
    items: dict[str, Item] = field(default_factory=dict)
    friends: set[frozenset[str]] = field(default_factory=set)
    weather: str | None = None
    focus: str | None = None  # subject of the previous sentence: what "he"/"she" refers to
    said: set[str] = field(default_factory=set)  # sentences already in the story (repeats are invalid)

    def resolve(self, reference: str) -> str:
        """The name a character reference denotes: a name, "the [colour] kind", or "he"/"she"."""
        if reference in ("he", "she"):
            if self.focus is None:
                raise Inconsistent(f"{reference!r} refers to nobody yet")
            if gender_of(self.focus) != reference:
                raise Inconsistent(f"{reference!r} does not fit {self.focus}, the previous subject")
            return self.focus
        if reference in NAMES:
            if reference not in self.characters:
                raise Inconsistent(f"{reference} has not been introduced")
            return reference
        words = reference.split()  # "the kind" or "the colour kind"
        kind, colour = words[-1], (words[1] if len(words) == 3 else None)
        matches = [c for c in self.characters.values() if c.kind == kind]
        if not matches:
            raise Inconsistent(f"there is no {kind} in the story")
        if colour is not None and matches[0].colour != colour:
            raise Inconsistent(f"the {kind} is {matches[0].colour}, not {colour}")
        return matches[0].name

    def item(self, name: str) -> Item:
        if name not in self.items:
            raise Inconsistent(f"there is no {name} in the story")
        return self.items[name]

    def owned(self, item: str, owner: str) -> Item:
        found = self.item(item)
        if found.owner != owner:
            raise Inconsistent(f"{owner} does not have the {item}")
        return found


# ---- the grammar: one template per sentence shape, each with the action that checks and updates state --

Slots = dict[str, str]
Action = Callable[[StoryState, Slots], str | None]  # returns the subject's name (the next pronoun's referent)


def _introduce(state: StoryState, slots: Slots) -> str:
    name, kind = slots["N"], slots["K"]
    if name in state.characters:
        raise Inconsistent(f"{name} was already introduced")
    if any(c.kind == kind for c in state.characters.values()):
        raise Inconsistent(f"the story already has a {kind}")
    subject = state.resolve(slots["X"]) if "X" in slots else name
    state.characters[name] = Character(name, kind, slots["C"])
    return subject


def _begin(state: StoryState, slots: Slots) -> str:
    if state.characters:
        raise Inconsistent("'once upon a time' only begins a story")
    return _introduce(state, slots)


def _check_possessive(name: str, slots: Slots) -> None:
    if "his" in slots and slots["his"] != possessive(gender_of(name)):
        raise Inconsistent(f"{slots['his']!r} does not fit {name}")


def _both(state: StoryState, slots: Slots) -> tuple[str, str]:
    first, second = state.resolve(slots["X"]), state.resolve(slots["Y"])
    if first == second:
        raise Inconsistent(f"{first} cannot act with {first}")
    return first, second


def _weather(state: StoryState, slots: Slots) -> str | None:
    if state.weather not in (None, slots["W"]):
        raise Inconsistent(f"the day is {state.weather}, not {slots['W']}")
    state.weather = slots["W"]
    return state.focus


def _the_end(state: StoryState, slots: Slots) -> str | None:
    return state.focus


def _lives(state: StoryState, slots: Slots) -> str:
    who = state.characters[state.resolve(slots["X"])]
    if who.home is not None and who.home != slots["P"]:
        raise Inconsistent(f"{who.name} lives in the {who.home}, not the {slots['P']}")
    who.home = who.place = slots["P"]
    return who.name


def _has(state: StoryState, slots: Slots) -> str:
    name = state.resolve(slots["X"])
    if slots["T"] in state.items:
        raise Inconsistent(f"the story already has a {slots['T']}")
    state.items[slots["T"]] = Item(slots["C"], name)
    return name


def _loves(state: StoryState, slots: Slots) -> str:
    name = state.resolve(slots["X"])
    _check_possessive(name, slots)
    state.owned(slots["T"], name)
    return name


def _item_colour(state: StoryState, slots: Slots) -> str | None:
    item = state.item(slots["T"])
    if item.colour != slots["C"]:
        raise Inconsistent(f"the {slots['T']} is {item.colour}, not {slots['C']}")
    return state.focus


def _plays_with(state: StoryState, slots: Slots) -> str:
    name = _loves(state, slots)
    if slots["T"] not in TOYS:
        raise Inconsistent(f"nobody plays with a {slots['T']}: it is food")
    return name


def _play_together(state: StoryState, slots: Slots) -> str:
    first, second = _both(state, slots)
    if slots["T"] not in TOYS:
        raise Inconsistent(f"nobody plays with a {slots['T']}: it is food")
    if state.item(slots["T"]).owner not in (first, second):
        raise Inconsistent(f"neither {first} nor {second} has the {slots['T']}")
    return first


def _loses(state: StoryState, slots: Slots) -> str:
    name = _loves(state, slots)
    item = state.items[slots["T"]]
    item.owner, item.lost_by = None, name
    return name


def _looks_for(state: StoryState, slots: Slots) -> str:
    name = state.resolve(slots["X"])
    _check_possessive(name, slots)
    if state.item(slots["T"]).lost_by != name or state.items[slots["T"]].owner is not None:
        raise Inconsistent(f"{name} has not lost the {slots['T']}")
    return name


def _finds(state: StoryState, slots: Slots) -> str:
    name = state.resolve(slots["X"])
    item = state.item(slots["T"])
    if item.owner is not None:
        raise Inconsistent(f"the {slots['T']} is not lost: {item.owner} has it")
    item.owner, item.lost_by = name, None
    return name


def _gives(state: StoryState, slots: Slots) -> str:
    giver, receiver = _both(state, slots)
    state.owned(slots["T"], giver).owner = receiver
    return giver


def _shares(state: StoryState, slots: Slots) -> str:
    giver, _ = _both(state, slots)
    _check_possessive(giver, slots)
    if slots["T"] not in FOODS:
        raise Inconsistent(f"nobody shares a {slots['T']} like food")
    state.owned(slots["T"], giver)
    return giver


def _eats(state: StoryState, slots: Slots) -> str:
    name = state.resolve(slots["X"])
    if slots["T"] not in FOODS:
        raise Inconsistent(f"nobody eats a {slots['T']}")
    state.owned(slots["T"], name)
    del state.items[slots["T"]]
    return name


def _goes(state: StoryState, slots: Slots) -> str:
    who = state.characters[state.resolve(slots["X"])]
    if who.place == slots["P"]:
        raise Inconsistent(f"{who.name} is already in the {slots['P']}")
    who.place = slots["P"]
    return who.name


def _goes_home(state: StoryState, slots: Slots) -> str:
    who = state.characters[state.resolve(slots["X"])]
    if who.home is None:
        raise Inconsistent(f"{who.name} has no home in the story")
    if who.place == who.home:
        raise Inconsistent(f"{who.name} is already home")
    who.place = who.home
    return who.name


def _mood(state: StoryState, slots: Slots) -> str:
    return state.resolve(slots["X"])


def _pair(state: StoryState, slots: Slots) -> str:
    return _both(state, slots)[0]


def _befriend(state: StoryState, slots: Slots) -> str:
    pair = frozenset(_both(state, slots))
    if pair in state.friends:
        raise Inconsistent(f"{' and '.join(sorted(pair))} are already friends")
    state.friends.add(pair)
    return state.resolve(slots["X"])


@dataclass(frozen=True)
class Template:
    """A sentence shape: lower-case text with slots, and the action that checks it against the story."""

    key: str
    pattern: str
    action: Action


TEMPLATES = (
    Template("once", "once upon a time, there was {a} {C} {K} named {N}.", _begin),
    Template("there_was", "there was {a} {C} {K} named {N}.", _introduce),
    Template("met", "one day, {X} met {a} {C} {K} named {N}.", _introduce),
    Template("weather", "it was a {W} day.", _weather),
    Template("lives", "{X} lived in the {P}.", _lives),
    Template("has", "{X} had {a} {C} {T}.", _has),
    Template("loves", "{X} loved {his} {T}.", _loves),
    Template("item_colour", "the {T} was {C}.", _item_colour),
    Template("plays_with", "{X} played with {his} {T}.", _plays_with),
    Template("play_together", "{X} and {Y} played with the {T}.", _play_together),
    Template("loses", "{X} lost {his} {T}.", _loses),
    Template("looks_for", "{X} looked for {his} {T}.", _looks_for),
    Template("finds", "{X} found the {T}.", _finds),
    Template("gives", "{X} gave the {T} to {Y}.", _gives),
    Template("shares", "{X} shared {his} {T} with {Y}.", _shares),
    Template("eats", "{X} ate the {T}.", _eats),
    Template("goes", "{X} went to the {P}.", _goes),
    Template("goes_home", "{X} went back home.", _goes_home),
    Template("mood", "{X} was {M}.", _mood),
    Template("feels", "{X} felt {M}.", _mood),
    Template("thanks", "{X} said thank you to {Y}.", _pair),
    Template("friends", "{X} and {Y} became friends.", _befriend),
    Template("pair_mood", "in the end, {X} and {Y} were {M}.", _pair),
    Template("the_end", "the end.", _the_end),
)
TEMPLATES_BY_KEY = {template.key: template for template in TEMPLATES}


def _alternatives(words: tuple[str, ...]) -> str:
    return "|".join(sorted(words, key=len, reverse=True))


_REFERENCE = rf"(?:{_alternatives(NAMES)}|the (?:(?:{_alternatives(COLOURS)}) )?(?:{_alternatives(KINDS)}))"
_SLOT_PATTERNS = {
    "X": rf"(?P<X>he|she|{_REFERENCE})",  # only the sentence's first slot may be a pronoun (see below)
    "Y": rf"(?P<Y>{_REFERENCE})",
    "N": rf"(?P<N>{_alternatives(NAMES)})",
    "K": rf"(?P<K>{_alternatives(KINDS)})",
    "C": rf"(?P<C>{_alternatives(COLOURS)})",
    "P": rf"(?P<P>{_alternatives(PLACES)})",
    "T": rf"(?P<T>{_alternatives(ITEMS)})",
    "M": rf"(?P<M>{_alternatives(MOODS)})",
    "W": rf"(?P<W>{_alternatives(WEATHERS)})",
    "his": r"(?P<his>his|her)",
    "a": r"(?:an|a)",  # agreement with the next word is checked by `_check_articles`
}


def _compile(template: Template) -> re.Pattern[str]:
    pattern = re.escape(template.pattern)
    for slot, slot_pattern in _SLOT_PATTERNS.items():
        if slot == "X" and not template.pattern.startswith("{X}"):
            slot_pattern = rf"(?P<X>{_REFERENCE})"
        pattern = pattern.replace(re.escape("{" + slot + "}"), slot_pattern)
    return re.compile(pattern)


_COMPILED = {template.key: _compile(template) for template in TEMPLATES}
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


_WRONG_ARTICLE = re.compile(r"\b(?:a (?=[aeiou])|an (?=[^aeiou]))")


def with_articles(text: str) -> str:
    """Write "a" as "an" before a vowel: "a orange cat" -> "an orange cat"."""
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _normalise(sentence: str) -> str:
    """Lower-case the first letter (sentences are capitalised), unless the sentence starts with a name."""
    first_word = sentence.split(" ", 1)[0].rstrip(".,")
    return sentence if first_word in NAMES else sentence[:1].lower() + sentence[1:]


def read_sentence(state: StoryState, sentence: str, key: str | None = None) -> str:
    """Parse one sentence, check it against `state` and apply it; raise `Inconsistent` if it cannot be.

    Returns the template key it matched. On failure `state` is left unchanged. `key` restricts parsing to
    one template (the generator uses it; the checker tries them all).
    """
    text = _normalise(sentence.strip())
    if _WRONG_ARTICLE.search(text):
        raise Inconsistent("wrong article: 'a' goes before a consonant, 'an' before a vowel")
    if text in state.said:
        raise Inconsistent("the sentence repeats an earlier one")
    for template in [TEMPLATES_BY_KEY[key]] if key else TEMPLATES:
        match = _COMPILED[template.key].fullmatch(text)
        if match is None:
            continue
        slots = {slot: value for slot, value in match.groupdict().items() if value is not None}
        trial = _copy(state)
        trial.focus = template.action(trial, slots)
        trial.said.add(text)
        state.__dict__.update(trial.__dict__)
        return template.key
    raise Inconsistent("the sentence is not in the grammar")


def _copy(state: StoryState) -> StoryState:
    return StoryState(
        characters={name: Character(**vars(c)) for name, c in state.characters.items()},
        items={name: Item(**vars(item)) for name, item in state.items.items()},
        friends=set(state.friends),
        weather=state.weather,
        focus=state.focus,
        said=set(state.said),
    )


@dataclass(frozen=True)
class SentenceVerdict:
    sentence: str
    valid: bool
    reason: str  # the template key when valid, why not otherwise


@dataclass(frozen=True)
class StoryReport:
    verdicts: tuple[SentenceVerdict, ...]
    state: StoryState

    @property
    def valid_fraction(self) -> float:
        """Fraction of complete sentences that are valid; 0.0 when there is no complete sentence."""
        if not self.verdicts:
            return 0.0
        return sum(v.valid for v in self.verdicts) / len(self.verdicts)


def split_sentences(text: str) -> list[str]:
    """Complete sentences of `text`; a trailing fragment without final punctuation (a cut sample) is dropped."""
    pieces = [piece for piece in _SENTENCE_END.split(" ".join(text.split())) if piece]
    if pieces and pieces[-1][-1] not in ".!?":
        pieces.pop()
    return pieces


def check_story(text: str) -> StoryReport:
    """Check each complete sentence of `text` in order: grammatical, and consistent with the story so far.

    Invalid sentences are reported and skipped (they do not change what the reader knows).
    """
    state = StoryState()
    verdicts = []
    for sentence in split_sentences(text):
        try:
            verdicts.append(SentenceVerdict(sentence, True, read_sentence(state, sentence)))
        except Inconsistent as error:
            verdicts.append(SentenceVerdict(sentence, False, str(error)))
    return StoryReport(tuple(verdicts), state)


def story_validity(text: str) -> float:
    """Fraction of the complete sentences of `text` that are valid (the pretraining chapter's measure)."""
    return check_story(text).valid_fraction
