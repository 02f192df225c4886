"""`load_corpus`: the toy world's datasets and real corpora behind one name-based entry point.

The toy corpora are generated offline and deterministically; the real ones (TinyStories, which the toy
stories imitate, and Anthropic's HH-RLHF preferences, a public stand-in for Llama 2's Meta reward-modelling
data) come from the Hugging Face Hub through `datasets.load_dataset` and need a network. Both come back as
`datasets.Dataset` with the same columns, so a chapter switches corpus by changing one name.
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from collections.abc import Callable

import datasets
import huggingface_hub.constants

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


def hub_unreachable(timeout: float = 3.0) -> str | None:
    """None when the Hugging Face Hub answers an HTTP request within `timeout` seconds (any status), else why
    not. The request runs in a thread: a name lookup ignores timeouts, and nothing may take longer."""
    endpoint = huggingface_hub.constants.ENDPOINT
    silent = f"{endpoint} did not answer within {timeout:g} s"
    outcome: list[str | None] = []

    def probe() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # an answer, if not a welcome one: the Hub is there
            outcome.append(None)
        except (OSError, ValueError) as error:  # URLError, timeouts, refused connections, a malformed endpoint
            reason = getattr(error, "reason", error)
            # the socket's own timeout can fire just before join() gives up: the same silence, said the same way
            outcome.append(silent if isinstance(reason, TimeoutError) else f"{endpoint} is unreachable ({reason})")

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return outcome[0] if outcome else silent


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
    unavailable = f"could not load {name!r} ({HUB_CORPORA[name]}) from the Hugging Face Hub"
    offline = (f"Without a network use the offline toy corpus: load_corpus({_OFFLINE_ALTERNATIVE[name]!r}); a copy "
               "already cached loads with HF_HUB_OFFLINE=1")
    unreachable = None if huggingface_hub.constants.HF_HUB_OFFLINE else hub_unreachable()
    if unreachable is not None:  # fail in seconds instead of the Hub client's half-minute of retries
        raise CorpusUnavailableError(f"{unavailable}: {unreachable}. {offline}")
    try:
        dataset = datasets.load_dataset(HUB_CORPORA[name], split=split, **options)
    except (OSError, ConnectionError) as error:  # offline: ConnectionError; DNS and HTTP failures: OSError
        raise CorpusUnavailableError(f"{unavailable}: {error}. {offline}") from error
    if n is not None:
        dataset = dataset.select(range(min(n, len(dataset))))
    if name == "hh-rlhf":
        dataset = dataset.map(lambda row: split_hh_transcript(row["chosen"], row["rejected"]))
    return dataset
