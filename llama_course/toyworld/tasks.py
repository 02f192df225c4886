"""Instruction tasks with verifiable answers: the toy stand-in for Llama 2's SFT and helpfulness data.

Llama 2 fine-tunes on 27,540 prompt/answer annotations (section 3.1) and collects helpfulness preferences
on prompts of many kinds (section 3.2.1). Here each task family can WRITE a prompt (`sample`), SOLVE any
prompt of its form from the prompt text alone (`solve`, which gives the reference answer), GRADE a response
with partial credit (`grade`, the correctness in [0, 1]) and write a WORSE answer of a chosen badness
(`corrupt`, for preference pairs). Families: arithmetic, counting, list reversal, number sorting,
questions about a given story (needs the context), and saying something kind (open-ended, graded by rule).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import datasets

from llama_course.toyworld.lexicon import COLOURS, ITEMS, KIND_WORDS, KINDS, NAMES, PLACES, UNKIND_WORDS
from llama_course.toyworld.scoring import integers, words
from llama_course.toyworld.stories import check_count, write_story
from llama_course.toyworld.story_grammar import check_story, with_articles


@dataclass(frozen=True)
class Solution:
    answer: str  # the reference answer
    expected: tuple  # what the grader compares against (a number, a sequence, a word and its candidates...)


@dataclass(frozen=True)
class TaskFamily:
    name: str
    sample: Callable[[random.Random], str]
    solve: Callable[[str], Solution | None]  # None: the prompt is not of this family
    grade: Callable[[Solution, str], float]
    corrupt: Callable[[Solution, random.Random], str]


def _grade_number(solution: Solution, response: str) -> float:
    """Full credit for the right number (the last one in the response), partial credit when close."""
    found = integers(response)
    if not found:
        return 0.0
    error = abs(found[-1] - solution.expected[0])
    return 1.0 if error == 0 else 0.5 if error == 1 else 0.2 if error <= 3 else 0.0


def _wrong_number(solution: Solution, rng: random.Random) -> int:
    return max(0, solution.expected[0] + rng.choice((-5, -2, -1, 1, 2, 5)))


# ---- arithmetic ---------------------------------------------------------------------------------------
_ARITHMETIC = re.compile(r"What is (\d+) (plus|minus|times) (\d+)\?")
_OPERATIONS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}


def _sample_arithmetic(rng: random.Random) -> str:
    operation = rng.choice(tuple(_OPERATIONS))
    a, b = (rng.randint(0, 5), rng.randint(0, 5)) if operation == "times" else (rng.randint(0, 20), rng.randint(0, 20))
    if operation == "minus" and b > a:
        a, b = b, a
    return f"What is {a} {operation} {b}?"


def _solve_arithmetic(prompt: str) -> Solution | None:
    match = _ARITHMETIC.fullmatch(prompt)
    if match is None:
        return None
    a, operation, b = int(match[1]), match[2], int(match[3])
    result = _OPERATIONS[operation](a, b)
    return Solution(f"{a} {operation} {b} is {result}.", (result, f"{a} {operation} {b}"))


def _corrupt_arithmetic(solution: Solution, rng: random.Random) -> str:
    return f"{solution.expected[1]} is {_wrong_number(solution, rng)}."


# ---- counting -----------------------------------------------------------------------------------------
_COUNTING = re.compile(r"How many times does the word (\w+) appear in this list: ([\w, ]+)\?")


def _sample_counting(rng: random.Random) -> str:
    pool = rng.sample(KINDS, 3)
    items = [rng.choice(pool) for _ in range(rng.randint(3, 8))]
    return f"How many times does the word {rng.choice(pool)} appear in this list: {', '.join(items)}?"


def _solve_counting(prompt: str) -> Solution | None:
    match = _COUNTING.fullmatch(prompt)
    if match is None:
        return None
    count = match[2].split(", ").count(match[1])
    return Solution(f"The word {match[1]} appears {_times(count)}.", (count, match[1]))


def _corrupt_counting(solution: Solution, rng: random.Random) -> str:
    return f"The word {solution.expected[1]} appears {_times(_wrong_number(solution, rng))}."


def _times(count: int) -> str:
    return "1 time" if count == 1 else f"{count} times"


# ---- reversal and sorting -----------------------------------------------------------------------------
_REVERSE = re.compile(r"Reverse this list: ([a-z, ]+)\.")
_SORT = re.compile(r"Sort these numbers from small to big: ([\d, ]+)\.")


def _grade_sequence(solution: Solution, response: str) -> float:
    """Fraction of positions right, over the longer of the expected and the given sequence."""
    expected = solution.expected
    given = (
        tuple(integers(response))
        if isinstance(expected[0], int)
        else tuple(word for word in words(response) if word in expected)
    )
    if not given:
        return 0.0
    return sum(a == b for a, b in zip(expected, given, strict=False)) / max(len(expected), len(given))


def _damage_sequence(sequence: list, rng: random.Random) -> list:
    """Swap two elements, drop one, or leave the input order: wrong to different degrees."""
    damaged = list(sequence)
    roll = rng.random()
    if roll < 0.4 and len(damaged) >= 2:
        i, j = rng.sample(range(len(damaged)), 2)
        damaged[i], damaged[j] = damaged[j], damaged[i]
    elif roll < 0.7:
        del damaged[rng.randrange(len(damaged))]
    else:
        rng.shuffle(damaged)
    return damaged


def _sample_reverse(rng: random.Random) -> str:
    pool = rng.choice((COLOURS, KINDS, ITEMS))
    return f"Reverse this list: {', '.join(rng.sample(pool, rng.randint(3, 6)))}."


def _solve_reverse(prompt: str) -> Solution | None:
    match = _REVERSE.fullmatch(prompt)
    if match is None:
        return None
    reversed_items = tuple(reversed(match[1].split(", ")))
    return Solution(", ".join(reversed_items) + ".", reversed_items)


def _sample_sort(rng: random.Random) -> str:
    return f"Sort these numbers from small to big: {', '.join(map(str, rng.sample(range(21), rng.randint(3, 6))))}."


def _solve_sort(prompt: str) -> Solution | None:
    match = _SORT.fullmatch(prompt)
    if match is None:
        return None
    ordered = tuple(sorted(int(n) for n in match[1].split(", ")))
    return Solution("In order: " + ", ".join(map(str, ordered)) + ".", ordered)


def _corrupt_sequence(solution: Solution, rng: random.Random) -> str:
    return ", ".join(map(str, _damage_sequence(list(solution.expected), rng))) + "."


# ---- questions about a story --------------------------------------------------------------------------
_STORY_QA = re.compile(r"Read the story and answer the question\.\nStory: (.+)\nQuestion: (.+)", re.DOTALL)


def _questions(story: str) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(question, answer, expected word, candidate words) for every question the story can answer."""
    state = check_story(story).state
    asked = []
    for c in state.characters.values():
        asked.append((f"What kind of animal is {c.name}?", f"{c.name} is a {c.kind}.", c.kind, KINDS))
        asked.append((f"What colour is {c.name}?", f"{c.name} is {c.colour}.", c.colour, COLOURS))
        asked.append((f"What is the name of the {c.kind}?", f"The {c.kind} is named {c.name}.", c.name, NAMES))
        if c.home is not None:
            asked.append((f"Where does {c.name} live?", f"{c.name} lives in the {c.home}.", c.home, PLACES))
    for item_name, item in state.items.items():
        asked.append((f"What colour is the {item_name}?", f"The {item_name} is {item.colour}.", item.colour, COLOURS))
        if item.owner is not None:
            asked.append(
                (f"Who has the {item_name} at the end?", f"{item.owner} has the {item_name}.", item.owner, NAMES)
            )
    return asked


def _sample_story_qa(rng: random.Random) -> str:
    story = write_story(rng)
    question = rng.choice(_questions(story))[0]
    return f"Read the story and answer the question.\nStory: {story}\nQuestion: {question}"


def _solve_story_qa(prompt: str) -> Solution | None:
    match = _STORY_QA.fullmatch(prompt)
    if match is None:
        return None
    for question, answer, expected, candidates in _questions(match[1]):
        if question == match[2]:
            return Solution(answer, (expected, candidates))
    return None


def _grade_choice(solution: Solution, response: str) -> float:
    """1 for the right word alone; 1/k when it hides among k candidates (hedging); 0 when absent."""
    expected, candidates = solution.expected[0], solution.expected[1]
    found = {word for word in re.findall(r"[A-Za-z]+", response) if word in candidates}
    return 1.0 / len(found) if expected in found else 0.0


def _corrupt_choice(solution: Solution, rng: random.Random) -> str:
    expected, candidates = solution.expected[0], solution.expected[1]
    wrong = rng.choice([c for c in candidates if c != expected])
    if rng.random() < 0.3:
        return solution.answer.replace(expected, f"{expected} or {wrong}", 1)  # a hedge: partial credit
    return solution.answer.replace(expected, wrong, 1)


# ---- saying something kind (open-ended, graded by rule) -----------------------------------------------
_KINDNESS = re.compile(r"Say something kind about (\w+) the (\w+)\.")


def _sample_kindness(rng: random.Random) -> str:
    return f"Say something kind about {rng.choice(NAMES)} the {rng.choice(KINDS)}."


def _solve_kindness(prompt: str) -> Solution | None:
    match = _KINDNESS.fullmatch(prompt)
    if match is None:
        return None
    name, kind = match[1], match[2]
    adjectives = [KIND_WORDS[(len(name) + len(kind) + shift) % len(KIND_WORDS)] for shift in (1, 4)]
    return Solution(f"{name} is a {adjectives[0]} and {adjectives[1]} {kind}.", (name, kind))


def _grade_kindness(solution: Solution, response: str) -> float:
    """0.3 for naming the subject, 0.35 per distinct kind word (two at most); an unkind word costs 80%."""
    said = set(words(response))
    score = 0.3 * bool({solution.expected[0].lower(), solution.expected[1]} & said)
    score += 0.35 * min(2, len(said & set(KIND_WORDS)))
    return score * (0.2 if said & set(UNKIND_WORDS) else 1.0)


def _corrupt_kindness(solution: Solution, rng: random.Random) -> str:
    name, kind = solution.expected
    roll = rng.random()
    if roll < 0.4:
        return with_articles(f"{name} is a {rng.choice(UNKIND_WORDS)} {kind}.")
    if roll < 0.7:
        return f"{name} is a {kind}."
    return f"{name} is a {rng.choice(KIND_WORDS)} {kind}."


FAMILIES: dict[str, TaskFamily] = {
    family.name: family
    for family in (
        TaskFamily("arithmetic", _sample_arithmetic, _solve_arithmetic, _grade_number, _corrupt_arithmetic),
        TaskFamily("counting", _sample_counting, _solve_counting, _grade_number, _corrupt_counting),
        TaskFamily("reverse", _sample_reverse, _solve_reverse, _grade_sequence, _corrupt_sequence),
        TaskFamily("sort", _sample_sort, _solve_sort, _grade_sequence, _corrupt_sequence),
        TaskFamily("story_qa", _sample_story_qa, _solve_story_qa, _grade_choice, _corrupt_choice),
        TaskFamily("kindness", _sample_kindness, _solve_kindness, _grade_kindness, _corrupt_kindness),
    )
}


def identify_task(prompt: str) -> tuple[TaskFamily, Solution] | None:
    """The family a prompt belongs to and its solution, or None if no task family wrote it."""
    for family in FAMILIES.values():
        solution = family.solve(prompt)
        if solution is not None:
            return family, solution
    return None


def check_families(families: Sequence[str] | None) -> tuple[str, ...]:
    """The family names asked for (all when None), each checked to exist."""
    chosen = tuple(FAMILIES) if families is None else tuple(families)
    for name in chosen:
        if name not in FAMILIES:
            raise ValueError(f"unknown task family {name!r}; the families are {tuple(FAMILIES)}")
    if not chosen:
        raise ValueError("families is empty: name at least one task family, or pass None for all")
    return chosen


def generate_tasks(n: int, seed: int = 0, families: Sequence[str] | None = None) -> datasets.Dataset:
    """`n` tasks, families drawn uniformly, as a `datasets.Dataset`. Same seed, same tasks.

    Columns: `prompt` (str), `answer` (str, the reference answer), `category` (str, the family name).
    """
    check_count("n", n)
    chosen = check_families(families)
    rng = random.Random(seed)
    rows: dict[str, list[str]] = {"prompt": [], "answer": [], "category": []}
    for _ in range(n):
        family = FAMILIES[rng.choice(chosen)]
        prompt = family.sample(rng)
        rows["prompt"].append(prompt)
        rows["answer"].append(family.solve(prompt).answer)
        rows["category"].append(family.name)
    features = datasets.Features({column: datasets.Value("string") for column in rows})
    return datasets.Dataset.from_dict(rows, features=features)
