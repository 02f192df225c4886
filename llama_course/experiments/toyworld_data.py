"""The toy world as a provider of training data for the algorithms: SFT conversations, GAtt dialogues, preference
pairs and their annotators.

SFT, reward-model training and GAtt take their data, their annotator and their judge as arguments; the chapters'
experiments and commands give them these (`toyworld_judges` gives the judges of rejection sampling, PPO and the
evaluation):

- `sft_conversations`, `training_conversations`, `sft_data`: the SFT mix of tasks, chats, dialogues under a
  system constraint and safety requests, with its held-out part;
- `gatt_dialogues`, `evaluation_dialogues` (and `toyworld.adherence`, their judge): dialogues under sampled
  constraints for GAtt's data and for measuring recall;
- `pretraining_data`: the corpus and tokenizer a pretraining run names, tokenized and packed;
- `preference_annotator`, `sample_preference_pairs`, `reward_preferences`, `reward_data`, `held_out_preferences`:
  the pairs a reward model trains and is measured on (the toy world's graded candidate answers and pairs sampled
  from a model), labelled by an `Annotator`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from llama_course.alignment.reward_data import sample_preference_pairs as sample_annotated_pairs
from llama_course.alignment.reward_train import RewardConfig
from llama_course.alignment.sft import SFTDataConfig, load_base_model
from llama_course.model import Llama
from llama_course.tokenizer import Tokenizer
from llama_course.toyworld import (
    Annotator,
    generate_dialogues,
    generate_preferences,
    generate_safety_prompts,
    generate_tasks,
    load_corpus,
    toy_tokenizer,
)
from llama_course.toyworld.annotators import write_demonstration
from llama_course.training.pretrain import DataConfig

Dialogue = list[dict[str, str]]


def pretraining_data(config: DataConfig) -> tuple[Tokenizer, datasets.Dataset, datasets.Dataset | None]:
    """The tokenizer a pretraining run names ("toy": the shipped one, else a SentencePiece file), and its
    corpus (`toyworld.load_corpus`: toy-stories offline, tinystories from the Hub) tokenized and packed into
    training and validation blocks (input_ids, labels, document_ids) for `training.pretrain.run_pretraining`."""
    from llama_course.data import pack_dataset, tokenize_dataset

    tokenizer = toy_tokenizer() if config.tokenizer == "toy" else Tokenizer(config.tokenizer)
    corpus = load_corpus(config.corpus, n=config.documents + config.validation_documents, seed=config.seed)
    wanted = config.documents + config.validation_documents
    if len(corpus) < wanted:
        raise ValueError(f"corpus {config.corpus!r} has {len(corpus)} documents, fewer than "
                         f"data.documents + data.validation_documents = {wanted}")
    # Blocks never straddle the split: pack each part separately.
    train = pack_dataset(tokenize_dataset(corpus.select(range(config.documents)), tokenizer), config.block_size)
    validation = None
    if config.validation_documents:
        held_out = corpus.select(range(config.documents, len(corpus)))
        validation = pack_dataset(tokenize_dataset(held_out, tokenizer), config.block_size)
    return tokenizer, train, validation


def sft_conversations(
    n_tasks: int,
    n_multi_turn: int,
    n_dialogues: int,
    n_safety: int,
    seed: int = 0,
    task_families: Sequence[str] | None = None,
    careless: float = 0.0,
) -> datasets.Dataset:
    """The toy world's SFT mix as a `datasets.Dataset` with columns `messages` and `source`. Same seed, same rows.

    - `n_tasks` single-turn instruction tasks (`generate_tasks`, of `task_families` or all families), no
      system message; source "task:<family>";
    - with `careless` > 0, that share of the task answers (single-turn and in chats) is an annotator's slip
      instead of the reference: a mistake or filler padding (`toyworld.annotators.write_demonstration`);
    - `n_multi_turn` chats of 2 to 4 such tasks in a row, no system message; source "multi_turn";
    - `n_dialogues` dialogues whose system message states constraints that every answer follows
      (`generate_dialogues`, 2 to 4 turns); source "dialogue";
    - `n_safety` unsafe and borderline requests with their reference answers (a refusal with an alternative,
      or a helpful answer); source "safety:<category>".
    """
    for name, value in (("n_tasks", n_tasks), ("n_multi_turn", n_multi_turn), ("n_dialogues", n_dialogues),
                        ("n_safety", n_safety)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}={value!r} must be an int >= 0")
    rows: dict[str, list[Any]] = {"messages": [], "source": []}
    writer = random.Random(seed + 4)  # the annotators' slips; drawn from only when careless > 0

    def demonstration(task: Mapping[str, str]) -> list[dict[str, str]]:
        return _exchange(task["prompt"], write_demonstration(task["prompt"], task["answer"], careless, writer))

    def add(messages: list[dict[str, str]], source: str) -> None:
        rows["messages"].append(messages)
        rows["source"].append(source)

    if n_tasks:
        for task in generate_tasks(n_tasks, seed=seed, families=task_families):
            add(demonstration(task), f"task:{task['category']}")
    if n_multi_turn:
        lengths = random.Random(seed + 1).choices(range(2, 5), k=n_multi_turn)
        chained = generate_tasks(sum(lengths), seed=seed + 1, families=task_families)
        start = 0
        for length in lengths:
            turns = chained.select(range(start, start + length))
            add([m for task in turns for m in demonstration(task)], "multi_turn")
            start += length
    if n_dialogues:
        for dialogue in generate_dialogues(n_dialogues, seed=seed + 2, n_turns=(2, 4)):
            add(dialogue["messages"], "dialogue")
    if n_safety:
        for request in generate_safety_prompts(n_safety, seed=seed + 3):
            add(_exchange(request["prompt"], request["answer"]), f"safety:{request['category']}")
    message = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    features = datasets.Features({"messages": [message], "source": datasets.Value("string")})
    return datasets.Dataset.from_dict(rows, features=features)


def _exchange(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def training_conversations(config: SFTDataConfig) -> datasets.Dataset:
    """The SFT training mix of `config`: same config, same rows."""
    return sft_conversations(config.tasks, config.multi_turn, config.dialogues, config.safety, seed=config.seed,
                             task_families=config.task_families, careless=config.careless)


def sft_data(config: SFTDataConfig) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(training, held-out) conversations of `config` for `alignment.sft.run_sft`: the held-out part has the same
    mix, `config.validation` rows in all, drawn with another seed and without the annotators' slips."""
    train = training_conversations(config)
    counts = (config.tasks, config.multi_turn, config.dialogues, config.safety)
    share = config.validation / max(1, sum(counts))
    held_out = sft_conversations(*(math.ceil(share * n) for n in counts), seed=config.seed + 1000,
                                 task_families=config.task_families)
    return train, held_out


def gatt_dialogues(n: int, seed: int, n_turns: int | tuple[int, int] = (2, 10)) -> list[Dialogue]:
    """`n` dialogues under sampled constraints (system message first, reference answers), for GAtt's data."""
    return [list(d) for d in generate_dialogues(n, seed=seed, n_turns=n_turns)["messages"]]


def evaluation_dialogues(n: int, n_turns: int, seed: int = 1234) -> list[Dialogue]:
    """`n` held-out dialogues of `n_turns` user turns (system message first), for measuring recall."""
    return gatt_dialogues(n, seed, n_turns)


class _CriterionAnnotator:
    """An `Annotator` whose preferences carry its criterion, in the columns' order of the toy world's pairs."""

    def __init__(self, criterion: str, seed: int, noise_scale: float) -> None:
        self.criterion = criterion
        self.annotator = Annotator(criterion, seed=seed, noise_scale=noise_scale)

    def compare(self, prompt: str, first: str, second: str) -> dict[str, Any]:
        preference = vars(self.annotator.compare(prompt, first, second))
        head = {name: preference.pop(name) for name in ("chosen", "rejected", "strength")}
        return head | {"criterion": self.criterion} | preference


def preference_annotator(criterion: str = "helpfulness", seed: int = 0, noise_scale: float = 1.0
                         ) -> _CriterionAnnotator:
    """A toy-world `Annotator` of `criterion` for `reward_data.sample_preference_pairs`; each pair it labels also
    records its criterion and the true scores of both sides."""
    return _CriterionAnnotator(criterion, seed, noise_scale)


def sample_preference_pairs(
    variants: Mapping[str, Llama],
    tokenizer: Tokenizer,
    prompts: Sequence[str],
    *,
    temperatures: Sequence[float] = (0.7, 1.0),
    criterion: str = "helpfulness",
    max_new_tokens: int = 48,
    seed: int = 0,
    noise_scale: float = 1.0,
    batch_size: int = 64,
) -> datasets.Dataset:
    """`reward_data.sample_preference_pairs` labelled by a toy-world annotator of `criterion` (seeded with
    `seed + 1`, noise `noise_scale`). Columns as `toyworld.generate_preferences`, plus `arm_chosen` and
    `arm_rejected` (e.g. "sft@0.7")."""
    return sample_annotated_pairs(
        variants, tokenizer, prompts, preference_annotator(criterion, seed + 1, noise_scale),
        temperatures=temperatures, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size)


def preference_prompts(criterion: str, n: int, seed: int) -> list[str]:
    """Prompts for sampled pairs: safety prompts for the safety RM; else tasks, plus safety prompts 1 in 5."""
    if criterion == "safety":
        return list(generate_safety_prompts(n, seed=seed)["prompt"])
    n_safety = n // 5
    tasks = list(generate_tasks(n - n_safety, seed=seed)["prompt"])
    return tasks + (list(generate_safety_prompts(n_safety, seed=seed)["prompt"]) if n_safety else [])


def reward_preferences(config: RewardConfig, model: Llama, tokenizer: Tokenizer
                       ) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(training pairs, held-out pairs) of `config`: the toy world's pairs over its graded candidate answers
    (`generate_preferences`), plus pairs sampled from `model` at two temperatures."""
    columns = ["prompt", "chosen", "rejected", "strength", "score_chosen", "score_rejected"]
    train = generate_preferences(config.pairs, seed=config.seed, criterion=config.criterion,
                                 noise_scale=config.noise_scale).select_columns(columns)
    if config.sampled_pairs:
        sampled = sample_preference_pairs({config.resolved_base(): model}, tokenizer,
                                          preference_prompts(config.criterion, config.sampled_pairs, config.seed + 500),
                                          temperatures=config.temperatures, criterion=config.criterion,
                                          seed=config.seed, noise_scale=config.noise_scale)
        train = datasets.concatenate_datasets([train, sampled.select_columns(columns)])
    if config.criterion == "safety" and config.helpfulness_mix:
        # Llama 2 (3.2.2) mixes 10% helpfulness data into the safety RM's: without it the RM never sees an
        # ordinary task and scores many task answers as unsafe (measured: 45% below the 0.15 threshold; with the
        # mix, 5%).
        n_helpful = round(len(train) * config.helpfulness_mix / (1.0 - config.helpfulness_mix))
        helpful = generate_preferences(n_helpful, seed=config.seed + 2000, criterion="helpfulness",
                                       noise_scale=config.noise_scale).select_columns(columns)
        train = datasets.concatenate_datasets([train, helpful])
    return train, held_out_preferences(config)


def held_out_preferences(config: RewardConfig, seed: int | None = None) -> datasets.Dataset:
    """`config.held_out` toy-world pairs to measure an RM of `config` on, labelled as its training pairs are;
    drawn with `config.seed + 1000` (the held-out pairs of `reward_preferences`) unless `seed` is given."""
    return generate_preferences(config.held_out, seed=config.seed + 1000 if seed is None else seed,
                                criterion=config.criterion, noise_scale=config.noise_scale)


def reward_data(config: RewardConfig) -> tuple[datasets.Dataset, datasets.Dataset]:
    """`reward_preferences` of `config`, the pairs sampled from its base model: what `train_reward_model` and
    `margin_study` train and measure on."""
    model, tokenizer = load_base_model(config.resolved_base(), config.max_tokens)
    return reward_preferences(config, model, tokenizer)


__all__ = [
    "evaluation_dialogues",
    "gatt_dialogues",
    "held_out_preferences",
    "preference_annotator",
    "preference_prompts",
    "reward_data",
    "reward_preferences",
    "sample_preference_pairs",
    "sft_conversations",
    "sft_data",
    "training_conversations",
]
