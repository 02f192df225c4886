"""`load_corpus`: the toy world's datasets and real corpora behind one name-based entry point.

The toy corpora are generated offline and deterministically; the real ones (TinyStories, which the toy
stories imitate, and Anthropic's HH-RLHF preferences, a public stand-in for Llama 2's Meta reward-modelling
data) come from the Hugging Face Hub through `datasets.load_dataset` and need a network. Both come back as
`datasets.Dataset` with the same columns, so a chapter switches corpus by changing one name.
"""

from __future__ import annotations

from collections.abc import Callable

import datasets

from llama_course.toyworld.annotators import generate_preferences
from llama_course.toyworld.dialogues import generate_dialogues
from llama_course.toyworld.safety import generate_safety_prompts
from llama_course.toyworld.stories import generate_stories
from llama_course.toyworld.tasks import generate_tasks

TOY_CORPORA: dict[str, Callable[..., datasets.Dataset]] = {
    "toy-stories": generate_stories,  # text
    "toy-tasks": generate_tasks,  # prompt, answer, category
    "toy-safety": generate_safety_prompts,  # prompt, answer, category, topic
    "toy-dialogues": generate_dialogues,  # messages, constraints, system_short, n_turns
    "toy-preferences": generate_preferences,  # prompt, chosen, rejected, strength, category, ...
}
HUB_CORPORA = {"tinystories": "roneneldan/TinyStories", "hh-rlhf": "Anthropic/hh-rlhf"}
_OFFLINE_ALTERNATIVE = {"tinystories": "toy-stories", "hh-rlhf": "toy-preferences"}
_ASSISTANT_TAG = "\n\nAssistant:"


class CorpusUnavailableError(ConnectionError):
    """A Hub corpus could not be loaded (no network, or the Hub refused); the message names the offline one."""


def split_hh_transcript(chosen: str, rejected: str) -> dict[str, str]:
    """Split an HH-RLHF pair of transcripts at the last assistant turn into prompt, chosen and rejected."""
    cut = chosen.rfind(_ASSISTANT_TAG) + len(_ASSISTANT_TAG)
    if cut < len(_ASSISTANT_TAG) or not rejected.startswith(chosen[:cut]):
        cut = rejected.rfind(_ASSISTANT_TAG) + len(_ASSISTANT_TAG)
    return {"prompt": chosen[:cut], "chosen": chosen[cut:].strip(), "rejected": rejected[cut:].strip()}


def load_corpus(
    name: str = "toy-stories", *, n: int | None = None, seed: int = 0, split: str = "train", **options
) -> datasets.Dataset:
    """Load a corpus by name as a `datasets.Dataset`.

    Toy corpora (offline, `n` examples, default 10,000, seeded): "toy-stories" (default), "toy-tasks", "toy-safety",
    "toy-dialogues", "toy-preferences"; `options` go to their generator (e.g. `criterion="safety"`).
    Hub corpora (network): "tinystories" (column `text`) and "hh-rlhf" (columns `prompt`, `chosen`,
    `rejected`; HH-RLHF has no strength labels), `split` as on the Hub; `n` keeps the first n rows (default: all).
    Without a network a Hub corpus raises `CorpusUnavailableError` naming the offline alternative.
    """
    if name in TOY_CORPORA:
        return TOY_CORPORA[name](10_000 if n is None else n, seed, **options)
    if name not in HUB_CORPORA:
        raise ValueError(f"unknown corpus {name!r}; choose one of {(*TOY_CORPORA, *HUB_CORPORA)}")
    if n is not None and (not isinstance(n, int) or n < 0):
        raise ValueError(f"n={n!r} must be None (all rows) or a non-negative int (the number of rows to keep)")
    try:
        dataset = datasets.load_dataset(HUB_CORPORA[name], split=split, **options)
    except (OSError, ConnectionError) as error:  # offline: ConnectionError; DNS and HTTP failures: OSError
        raise CorpusUnavailableError(
            f"could not load {name!r} ({HUB_CORPORA[name]}) from the Hugging Face Hub: {error}. "
            f"Without a network use the offline toy corpus: load_corpus({_OFFLINE_ALTERNATIVE[name]!r})"
        ) from error
    if n is not None:
        dataset = dataset.select(range(min(n, len(dataset))))
    if name == "hh-rlhf":
        dataset = dataset.map(lambda row: split_hh_transcript(row["chosen"], row["rejected"]))
    return dataset
