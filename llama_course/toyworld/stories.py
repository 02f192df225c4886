"""The pretraining corpus: TinyStories-like short stories written by the story grammar.

Llama 1 (section 2.1) pretrains on a mixture of public web text; the course pretrains a tiny Llama on
stories whose every sentence comes from `story_grammar.TEMPLATES`. A story follows one of four plots (a lost
toy found by a new friend, food shared with a hungry friend, a toy played with together, a trip away from
home), with optional sentences and varied references ("Tom", "the cat", "the black cat", "he"), so the
stream of distinct stories is practically unlimited while the vocabulary stays closed. Each sentence is
written by the same action that checks it, so `story_validity` of every generated story is exactly 1.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import datasets

from llama_course.toyworld.lexicon import COLOURS, FOODS, KINDS, NAMES, PLACES, TOYS, WEATHERS, gender_of, possessive
from llama_course.toyworld.story_grammar import (
    TEMPLATES_BY_KEY,
    Inconsistent,
    StoryState,
    read_sentence,
    with_articles,
)


def check_count(name: str, n: int) -> None:
    """Reject a negative or non-integer example count with an error that names it."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{name}={n!r} must be a non-negative int (the number of examples to generate)")


class StoryWriter:
    """Writes one story sentence by sentence, keeping the story state a reader would keep."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.state = StoryState()
        self.sentences: list[str] = []

    def refer(self, name: str, may_be_pronoun: bool) -> str:
        """A reference to a character: mostly its name, sometimes "the [colour] kind" or a pronoun."""
        roll = self.rng.random()
        if may_be_pronoun and name == self.state.focus and roll < 0.25:
            return gender_of(name)
        character = self.state.characters[name]
        if roll > 0.95:
            return f"the {character.colour} {character.kind}"
        if roll > 0.85:
            return f"the {character.kind}"
        return name

    def say(self, key: str, **values: str) -> None:
        """Write the sentence of template `key`; X and Y are character names, other slots literal words."""
        template = TEMPLATES_BY_KEY[key]
        slots = dict(values)
        for slot in ("X", "Y"):
            if slot in values:
                slots[slot] = self.refer(values[slot], slot == "X" and template.pattern.startswith("{X}"))
        if "{his}" in template.pattern:
            slots["his"] = possessive(gender_of(values["X"]))
        text = with_articles(template.pattern.format(a="a", **slots))
        text = text[:1].upper() + text[1:]
        read_sentence(self.state, text, key)  # the checker's own action updates the state
        self.sentences.append(text)

    def maybe(self, probability: float, key: str, **values: str) -> None:
        """Say an optional sentence with `probability`, unless it would repeat one already said."""
        if self.rng.random() < probability:
            try:
                self.say(key, **values)
            except Inconsistent:
                pass

    def new_character(self) -> tuple[str, str, str]:
        """A fresh (name, kind, colour): names and kinds are never shared within a story."""
        name = self.rng.choice([n for n in NAMES if n not in self.state.characters])
        used_kinds = {c.kind for c in self.state.characters.values()}
        kind = self.rng.choice([k for k in KINDS if k not in used_kinds])
        return name, kind, self.rng.choice(COLOURS)

    def introduce(self, met_by: str | None = None) -> str:
        name, kind, colour = self.new_character()
        if met_by is not None:
            self.say("met", X=met_by, C=colour, K=kind, N=name)
        else:
            opening = self.rng.choice(("once", "once", "there_was")) if not self.state.characters else "there_was"
            self.say(opening, C=colour, K=kind, N=name)
        return name

    def give_item(self, owner: str, choices: tuple[str, ...]) -> str:
        item = self.rng.choice([i for i in choices if i not in self.state.items])
        self.say("has", X=owner, C=self.rng.choice(COLOURS), T=item)
        return item

    def elsewhere(self, name: str) -> str:
        return self.rng.choice([p for p in PLACES if p != self.state.characters[name].place])

    def mood(self, name: str, moods: tuple[str, ...]) -> None:
        self.maybe(1.0, self.rng.choice(("mood", "feels")), X=name, M=self.rng.choice(moods))


def _lost_and_found(writer: StoryWriter, hero: str) -> str:
    toy = writer.give_item(hero, TOYS)
    writer.maybe(0.5, "loves", X=hero, T=toy)
    writer.say("goes", X=hero, P=writer.elsewhere(hero))
    writer.say("loses", X=hero, T=toy)
    writer.mood(hero, ("sad", "scared", "angry"))
    writer.maybe(0.6, "looks_for", X=hero, T=toy)
    friend = writer.introduce(met_by=hero)
    writer.say("finds", X=friend, T=toy)
    writer.maybe(0.3, "item_colour", T=toy, C=writer.state.items[toy].colour)
    writer.say("gives", X=friend, T=toy, Y=hero)
    writer.say("thanks", X=hero, Y=friend)
    return friend


def _sharing(writer: StoryWriter, hero: str) -> str:
    food = writer.give_item(hero, FOODS)
    friend = writer.introduce(met_by=hero if writer.rng.random() < 0.7 else None)
    writer.mood(friend, ("hungry", "sad", "tired"))
    writer.say("shares", X=hero, T=food, Y=friend)
    writer.say("thanks", X=friend, Y=hero)
    writer.maybe(0.5, "eats", X=hero, T=food)
    return friend


def _playing(writer: StoryWriter, hero: str) -> str:
    toy = writer.give_item(hero, TOYS)
    writer.maybe(0.5, "plays_with", X=hero, T=toy)
    friend = writer.introduce(met_by=hero)
    writer.say("play_together", X=hero, Y=friend, T=toy)
    if writer.rng.random() < 0.5:
        writer.say("gives", X=hero, T=toy, Y=friend)
        writer.maybe(0.7, "plays_with", X=friend, T=toy)
    writer.mood(friend, ("happy", "excited", "proud"))
    return friend


def _trip(writer: StoryWriter, hero: str) -> str:
    writer.say("goes", X=hero, P=writer.elsewhere(hero))
    writer.maybe(0.4, "weather", W=writer.rng.choice(WEATHERS))
    friend = writer.introduce(met_by=hero)
    toy = writer.give_item(friend, TOYS)
    writer.say("play_together", X=friend, Y=hero, T=toy)
    writer.mood(hero, ("tired", "sleepy", "happy"))
    writer.say("goes_home", X=hero)
    return friend


PLOTS: dict[str, Callable[[StoryWriter, str], str]] = {
    "lost_and_found": _lost_and_found,
    "sharing": _sharing,
    "playing": _playing,
    "trip": _trip,
}


def write_story(rng: random.Random) -> str:
    """One story: an introduction, a plot, an ending (about 6 to 14 sentences, 60 to 130 words)."""
    writer = StoryWriter(rng)
    plot = rng.choice(tuple(PLOTS))
    hero = writer.introduce()
    writer.maybe(0.3, "weather", W=rng.choice(WEATHERS))
    writer.maybe(1.0 if plot == "trip" else 0.7, "lives", X=hero, P=rng.choice(PLACES))
    friend = PLOTS[plot](writer, hero)
    writer.maybe(0.5, "friends", X=hero, Y=friend)
    writer.maybe(0.7, "pair_mood", X=hero, Y=friend, M=rng.choice(("happy", "happy", "excited", "calm")))
    writer.maybe(0.3, "the_end")
    return " ".join(writer.sentences)


def generate_stories(n: int, seed: int = 0) -> datasets.Dataset:
    """`n` stories as a `datasets.Dataset` with one column, `text` (str). Same seed, same stories.

    The stories of `generate_stories(n, seed)` are the first `n` of `generate_stories(m, seed)` for m > n.
    """
    check_count("n", n)
    rng = random.Random(seed)
    features = datasets.Features({"text": datasets.Value("string")})
    return datasets.Dataset.from_dict({"text": [write_story(rng) for _ in range(n)]}, features=features)
