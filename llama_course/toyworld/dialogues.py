"""Multi-turn dialogues under a system constraint, and the per-turn adherence checker, for Ghost Attention.

Llama 2 (section 3.3) builds GAtt data from synthetic constraints in three families, randomly combined and,
half of the time, shortened: Hobbies ("You enjoy e.g. Tennis"), Language ("Speak in e.g. French") and
Public Figure ("Act as e.g. Napoleon"). Here a hobby answer mentions the hobby, a language answer is in the
toy French of `language.py`, and a figure answer opens with the figure's signature phrase. The user turns
are toy-world tasks, the reference answers follow every constraint, and `adherence` grades one answer
against one constraint, so the chapter can plot constraint recall turn by turn (Table 30).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import datasets

from llama_course.toyworld.language import ENGLISH_TO_TOY, to_toy_french, toy_french_fraction
from llama_course.toyworld.lexicon import FIGURE_OPENINGS, HOBBIES, NAMES
from llama_course.toyworld.stories import check_count
from llama_course.toyworld.tasks import FAMILIES

CONSTRAINT_FAMILIES = ("hobby", "language", "figure")
LANGUAGES = ("French",)
DIALOGUE_TASKS = ("arithmetic", "counting", "reverse", "sort", "kindness")  # short prompts, short answers
_HOBBY_SENTENCES = ("I love {hobby}.", "This reminds me of {hobby}.", "I enjoy {hobby} every day.")
_INSTRUCTIONS = {
    "hobby": ("You enjoy {value}. Talk about it in every answer.", "Hobby: {value}"),
    "language": ("Speak in {value}.", "Language: {value}"),
    "figure": ("Act as {value}.", "Figure: {value}"),
}


@dataclass(frozen=True)
class Constraint:
    """One system constraint: a family ("hobby", "language", "figure") and its value ("tennis", ...)."""

    family: str
    value: str

    def __post_init__(self) -> None:
        allowed = {"hobby": HOBBIES, "language": LANGUAGES, "figure": tuple(FIGURE_OPENINGS)}
        if self.family not in allowed:
            raise ValueError(f"unknown constraint family {self.family!r}; the families are {CONSTRAINT_FAMILIES}")
        if self.value not in allowed[self.family]:
            raise ValueError(
                f"{self.value!r} is not a {self.family} of the toy world; choose one of {allowed[self.family]}"
            )

    def instruction(self, short: bool = False) -> str:
        """The system instruction: the full sentence, or the shortened "Family: value" form."""
        return _INSTRUCTIONS[self.family][short].format(value=self.value)


def parse_constraints(system: str) -> list[Constraint]:
    """The constraints stated in a system message, full or shortened, in the order they appear."""
    found: list[tuple[int, Constraint]] = []
    for family, forms in _INSTRUCTIONS.items():
        for form in forms:
            pattern = re.escape(form).replace(re.escape("{value}"), r"(\w+)")
            found.extend((m.start(), Constraint(family, m[1])) for m in re.finditer(pattern, system))
    if not found:
        raise ValueError(
            f"system={system!r} states no constraint; families are {CONSTRAINT_FAMILIES}, "
            "e.g. 'You enjoy tennis. Talk about it in every answer.' or 'Figure: Napoleon'"
        )
    return [constraint for _, constraint in sorted(found, key=lambda pair: pair[0])]


def apply_constraints(answer: str, constraints: Sequence[Constraint], rng: random.Random) -> str:
    """Rewrite a plain answer to follow the constraints: figure opening, hobby sentence, then language."""
    for constraint in constraints:
        if constraint.family == "figure":
            opening = FIGURE_OPENINGS[constraint.value]
            if opening.endswith(",") and answer.split(" ", 1)[0] not in (*NAMES, "I"):
                answer = answer[:1].lower() + answer[1:]  # "By the river Nile, the word ..."
            answer = f"{opening} {answer}"
    for constraint in constraints:
        if constraint.family == "hobby":
            answer = f"{answer} {rng.choice(_HOBBY_SENTENCES).format(hobby=constraint.value)}"
    if any(constraint.family == "language" for constraint in constraints):
        answer = to_toy_french(answer)
    return answer


def adherence(constraint: Constraint | str, answer: str) -> float:
    """How well one answer follows a constraint, in [0, 1].

    hobby: 1 if the answer names the hobby (in English or toy French), else 0. language: the fraction of
    the answer's words that are toy French. figure: 1 if the answer opens with the figure's signature
    phrase (in either language), 0.5 if the phrase appears later, else 0. A system message (str) is parsed
    and its constraints' adherences averaged.
    """
    if isinstance(constraint, str):
        constraints = parse_constraints(constraint)
        return sum(adherence(c, answer) for c in constraints) / len(constraints)
    if constraint.family == "language":
        return toy_french_fraction(answer)
    lowered = answer.lower()
    if constraint.family == "hobby":
        forms = {constraint.value, ENGLISH_TO_TOY[constraint.value]}
        return 1.0 if forms & set(re.findall(r"[a-z']+", lowered)) else 0.0
    opening = FIGURE_OPENINGS[constraint.value].lower()
    forms = (opening, to_toy_french(opening))
    if lowered.startswith(forms):
        return 1.0
    return 0.5 if any(form in lowered for form in forms) else 0.0


def sample_constraints(rng: random.Random) -> list[Constraint]:
    """One to three constraints from distinct families, randomly combined (Llama 2, section 3.3)."""
    families = rng.sample(CONSTRAINT_FAMILIES, rng.randint(1, 3))
    values = {"hobby": HOBBIES, "language": LANGUAGES, "figure": tuple(FIGURE_OPENINGS)}
    return [Constraint(family, rng.choice(values[family])) for family in CONSTRAINT_FAMILIES if family in families]


def generate_dialogues(n: int, seed: int = 0, n_turns: int | tuple[int, int] = (2, 6)) -> datasets.Dataset:
    """`n` dialogues: a system constraint, then user tasks and answers that follow it. Same seed, same data.

    `n_turns` is the number of user/assistant pairs, fixed or drawn from an inclusive range.
    Columns: `messages` (list of {"role", "content"}, system first), `constraints` (list of {"family",
    "value"}), `system_short` (bool: the shortened instruction was used), `n_turns` (int).
    """
    check_count("n", n)
    low, high = (n_turns, n_turns) if isinstance(n_turns, int) else n_turns
    if not 1 <= low <= high:
        raise ValueError(f"n_turns={n_turns!r} must be a positive int or a range (low, high) with 1 <= low <= high")
    rng = random.Random(seed)
    rows: dict[str, list] = {"messages": [], "constraints": [], "system_short": [], "n_turns": []}
    for _ in range(n):
        constraints = sample_constraints(rng)
        short = rng.random() < 0.5
        messages = [{"role": "system", "content": " ".join(c.instruction(short) for c in constraints)}]
        turns = rng.randint(low, high)
        for _ in range(turns):
            family = FAMILIES[rng.choice(DIALOGUE_TASKS)]
            prompt = family.sample(rng)
            answer = apply_constraints(family.solve(prompt).answer, constraints, rng)
            messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        rows["messages"].append(messages)
        rows["constraints"].append([{"family": c.family, "value": c.value} for c in constraints])
        rows["system_short"].append(short)
        rows["n_turns"].append(turns)
    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    features = datasets.Features(
        {
            "messages": [message],
            "constraints": [{"family": datasets.Value("string"), "value": datasets.Value("string")}],
            "system_short": datasets.Value("bool"),
            "n_turns": datasets.Value("int32"),
        }
    )
    return datasets.Dataset.from_dict(rows, features=features)
