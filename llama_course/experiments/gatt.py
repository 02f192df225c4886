"""Chapter 14's measurement: Ghost Attention against the SFT model and a control, over seeds, with intervals.

For each seed, `run_seed` builds GAtt data from the SFT model (answers sampled with the instruction in every
turn and kept only when the toy world's adherence checker says they follow it, `alignment.gatt`), fine-tunes
two models for the same number of steps, and measures each:

- GAtt: the last-turn samples of every depth k >= 1 (the instruction in the first turn only, the loss on the
  k-th answer). The paper's latest model already obeys an instruction in the turn it is given; our SFT model
  does not, so GAtt's data also teaches the first turn (k = 1), as it comes;
- the control: the same dialogues' first turns only (k = 1, the instruction right before the answer), repeated
  to as many samples as GAtt's: the same answers placed the ordinary SFT way;
- both with the same replay of the SFT model's own training mix (`sft_mix` conversations), which limits what
  fine-tuning on constraint dialogues costs single-turn answers.

`measure` gives one model's constraint adherence at every turn of held-out dialogues (Table 30), its held-out
single-turn helpfulness on tasks (the cost), and the attention to the system message (Figure 10). `summarize`
turns them into the headline numbers: each model's recall over turns 4 to 10 and its helpfulness, and the
paired differences (same dialogue or prompt, same seed) with `evaluation.bootstrap_mean`'s two-level 95%
interval over seeds and dialogues. Every measurement is written under `output_dir` as it finishes, so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from llama_course.alignment.gatt import build_gatt_data, finetune_gatt, measure_adherence
from llama_course.alignment.gatt_attention import attention_to_system, fit_to_context, mean_attention_by_turn
from llama_course.alignment.sft import SHIPPED_SFT_DIR, SFTConfig, export_model, load_base_model, load_sft_config
from llama_course.alignment.sft_eval import helpfulness_by_family
from llama_course.evaluation import bootstrap_mean
from llama_course.experiments import cached_json, load_results_file
from llama_course.experiments.sft import EVAL_SEED, JUDGE, training_prompts
from llama_course.experiments.toyworld_data import evaluation_dialogues, gatt_dialogues, sft_conversations
from llama_course.experiments.toyworld_judges import held_out_tasks
from llama_course.model import Llama
from llama_course.pretrained import ASSETS_DIR
from llama_course.tokenizer import Tokenizer
from llama_course.toyworld import adherence as toy_adherence

SHIPPED_RESULTS = ASSETS_DIR / "gatt_results.json"
COMMAND = "llama-course gatt --seeds 0 1 2 --results llama_course/assets/gatt_results.json"
VARIANTS = ("gatt", "control")
MEASUREMENT_FILE = "measurement.json"
MODEL_FOLDER = "model"  # each fine-tuned model, exported beside its measurement


@dataclass(frozen=True)
class GAttConfig:
    """One GAtt experiment (the defaults are the shipped run's)."""

    base: str = "sft"  # the model GAtt starts from (see alignment.sft.load_base_model)
    dialogues: int = 400  # training dialogues per seed, before rejection
    train_turns: tuple[int, int] = (2, 10)  # user turns of each training dialogue (inclusive range)
    answers: str = "rejection"  # "rejection", "model" or "reference" (alignment.gatt.build_gatt_data)
    samples_per_turn: int = 8  # answers drawn per turn for the rejection step
    temperature: float = 1.0  # of those samples
    sft_mix: int = 1500  # conversations of the SFT mix replayed with both fine-tunings (0: none)
    epochs: float = 3.0  # passes over GAtt's blocks (samples and mix); the control gets as many steps
    lr: float = 1e-3
    batch_size: int = 16
    eval_dialogues: int = 100  # held-out dialogues for recall
    eval_turns: int = 10  # user turns of each
    recall_turns: tuple[int, int] = (4, 10)  # the headline recall averages these turns (inclusive)
    eval_tasks: int = 200  # held-out single-turn tasks for the helpfulness cost
    attention_dialogues: int = 24  # reference dialogues for the attention picture
    max_new_tokens: int = 40

    def __post_init__(self) -> None:
        low, high = self.recall_turns
        if not 1 <= low <= high <= self.eval_turns:
            raise ValueError(f"recall_turns={self.recall_turns} must lie within 1..eval_turns={self.eval_turns}")
        for name in ("dialogues", "eval_dialogues", "eval_tasks", "attention_dialogues", "samples_per_turn"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.sft_mix < 0:
            raise ValueError(f"sft_mix={self.sft_mix} must be >= 0 (0: no SFT data replayed)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The settings each cached file depends on: the sampled data, the measurements of the base model.
DATA_FIELDS = ("base", "dialogues", "train_turns", "answers", "samples_per_turn", "temperature", "max_new_tokens")
EVAL_FIELDS = ("base", "eval_dialogues", "eval_turns", "eval_tasks", "attention_dialogues", "max_new_tokens")


def held_out_single_turn_tasks(config: GAttConfig) -> datasets.Dataset:
    """The held-out tasks of the single-turn cost: chapter 10's evaluation seed, no prompt of the SFT mix."""
    return held_out_tasks(config.eval_tasks, EVAL_SEED, exclude=training_prompts(load_sft_config(_sft_toml())))


def _sft_toml() -> Path:
    return SHIPPED_SFT_DIR / "sft.toml"


def sft_mix(n: int) -> datasets.Dataset:
    """`n` conversations of the shipped SFT model's own training mix (same seed, same proportions): a replay."""
    data = load_sft_config(_sft_toml()).data if _sft_toml().is_file() else SFTConfig().data
    counts = (data.tasks, data.multi_turn, data.dialogues, data.safety)
    return sft_conversations(*(round(n * count / sum(counts)) for count in counts), seed=data.seed,
                             task_families=data.task_families)


def measure(model: Llama, tokenizer: Tokenizer, config: GAttConfig, tasks: datasets.Dataset,
            attention: bool = True) -> dict[str, Any]:
    """One model's measurements: adherence at every turn of each held-out dialogue (`adherence`, a list per
    dialogue), the first answered dialogue, held-out single-turn helpfulness per task, and (with `attention`)
    the Figure 10 quantities on teacher-forced reference dialogues."""
    adherence, answered = measure_adherence(model, tokenizer,
                                            evaluation_dialogues(config.eval_dialogues, config.eval_turns),
                                            toy_adherence, max_new_tokens=config.max_new_tokens)
    helpfulness = [item.helpfulness for item in helpfulness_by_family(model, tokenizer, tasks, JUDGE)[1]]
    result = {"adherence": adherence, "helpfulness": helpfulness, "sample_dialogue": answered[0]}
    if attention:
        references = [fit_to_context(tokenizer, d, model.config.max_seq_len)
                      for d in evaluation_dialogues(config.attention_dialogues, config.eval_turns)]
        by_turn, by_turn_layer = mean_attention_by_turn(model, tokenizer, references)
        picture = attention_to_system(model, tokenizer, references[0])
        result |= {"attention_by_turn": by_turn, "attention_by_turn_layer": by_turn_layer,
                   "attention_per_token": picture.per_token.tolist(), "answer_mask": picture.answer_mask.tolist(),
                   "reference_dialogue": references[0]}
    return result


def _training_sets(messages: list[Any], turns: list[int]) -> dict[str, datasets.Dataset]:
    """GAtt's samples (every k >= 1) and the control's (k = 1 only, repeated to as many rows as GAtt's)."""
    first = [m for m, k in zip(messages, turns, strict=True) if k == 1]
    if not first or len(first) == len(messages):
        raise ValueError(f"the GAtt data has {len(messages)} samples, {len(first)} of them of turn 1; it needs "
                         "samples of turn 1 and of later turns: raise dialogues or samples_per_turn")
    control = [first[i % len(first)] for i in range(len(messages))]
    return {"gatt": datasets.Dataset.from_dict({"messages": messages}),
            "control": datasets.Dataset.from_dict({"messages": control})}


def run_seed(config: GAttConfig, seed: int, output_dir: str | Path, *, base: Llama, tokenizer: Tokenizer,
             tasks: datasets.Dataset, log: Any = print) -> dict[str, Any]:
    """Build seed `seed`'s GAtt data, fine-tune GAtt and the control from `config.base`, measure both.

    Returns {"data": kept-turn counts, "gatt": {...}, "control": {...}}, each variant with its training summary
    and `measure`'s values; everything is cached under `output_dir/seed-S/` and read back on a rerun, and each
    fine-tuned model is exported to `output_dir/seed-S/VARIANT/model`.
    """
    folder = Path(output_dir) / f"seed-{seed}"

    def sample() -> dict[str, Any]:
        data = build_gatt_data(base, tokenizer, gatt_dialogues(config.dialogues, seed, config.train_turns),
                               toy_adherence, seed=seed, turns=(1, None), answers=config.answers,
                               samples_per_turn=config.samples_per_turn, max_new_tokens=config.max_new_tokens,
                               temperature=config.temperature)
        return {"messages": list(data["messages"]), "turn": list(data["turn"])}

    data = cached_json(folder / "data.json", {f: getattr(config, f) for f in DATA_FIELDS}, sample)
    turns = np.bincount(data["turn"], minlength=2).tolist()
    log(f"seed {seed}: {len(data['turn'])} samples kept from {config.dialogues} dialogues, by turn {turns[1:]}")
    mix = sft_mix(config.sft_mix) if config.sft_mix else None
    results: dict[str, Any] = {"data": {"samples_by_turn": turns}}
    for name, samples in _training_sets(data["messages"], data["turn"]).items():
        def train_and_measure(name: str = name, samples: datasets.Dataset = samples) -> dict[str, Any]:
            model, _ = load_base_model(config.base)
            trainer = dataclasses.replace(SFTConfig().trainer, lr=config.lr, micro_batch_size=config.batch_size,
                                          progress=False, resume=False, seed=seed)
            result = finetune_gatt(model, tokenizer, samples, folder / name, epochs=config.epochs, trainer=trainer,
                                   mix=mix)
            log(f"seed {seed} {name}: {len(samples)} samples, {result.step} steps, last loss "
                f"{result.losses[-1]:.3f}")
            export_model(model, folder / name / MODEL_FOLDER, {"gatt_config": config.to_dict(), "seed": seed,
                                                                "variant": name})
            return {"training": {"samples": len(samples), "steps": result.step, "losses": result.losses},
                    **measure(model, tokenizer, config, tasks, attention=seed == 0)}

        results[name] = cached_json(folder / name / MEASUREMENT_FILE, config.to_dict(), train_and_measure)
    return results


def measure_base(config: GAttConfig, output_dir: str | Path, *, base: Llama, tokenizer: Tokenizer,
                 tasks: datasets.Dataset) -> dict[str, Any]:
    """`measure` of the model GAtt starts from, cached under `output_dir/base/`."""
    return cached_json(Path(output_dir) / "base" / MEASUREMENT_FILE, {f: getattr(config, f) for f in EVAL_FIELDS},
                   lambda: measure(base, tokenizer, config, tasks))


def recall_over_turns(adherence: list[list[float]], turns: tuple[int, int]) -> np.ndarray:
    """Each dialogue's mean adherence over its answers at turns low..high (inclusive), shape (dialogues,)."""
    low, high = turns
    values = [row[low - 1: high] for row in adherence]
    short = [index for index, row in enumerate(values) if not row]
    if short:
        raise ValueError(f"dialogues {short} end before turn {low}: the context cannot hold them; lower "
                         "recall_turns or shorten the dialogues")
    return np.array([sum(row) / len(row) for row in values])


def mean_by_turn(rows: list[list[list[float]]]) -> list[float]:
    """Mean adherence at each turn over seeds and the dialogues that reach it (Table 30's quantity)."""
    by_turn: list[list[float]] = []
    for adherence in rows:
        for row in adherence:
            for turn, value in enumerate(row):
                if turn == len(by_turn):
                    by_turn.append([])
                by_turn[turn].append(value)
    return [sum(values) / len(values) for values in by_turn]


def summarize(config: GAttConfig, base: dict[str, Any], seeds: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Headline numbers with 95% intervals: recall over `recall_turns` and single-turn helpfulness of each model,
    and the paired differences GAtt - SFT, GAtt - control, control - SFT (per dialogue or task, per seed)."""
    recall = {"base": np.stack([recall_over_turns(base["adherence"], config.recall_turns)] * len(seeds))}
    helpfulness = {"base": np.stack([np.array(base["helpfulness"])] * len(seeds))}
    for name in VARIANTS:
        recall[name] = np.stack([recall_over_turns(seeds[s][name]["adherence"], config.recall_turns) for s in seeds])
        helpfulness[name] = np.stack([np.array(seeds[s][name]["helpfulness"]) for s in seeds])
    pairs = (("gatt", "base"), ("gatt", "control"), ("control", "base"))

    def intervals(values: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"mean": {name: bootstrap_mean(v).as_dict() for name, v in values.items()},
                "difference": {f"{a}-{b}": bootstrap_mean(values[a] - values[b]).as_dict() for a, b in pairs}}

    return {"seeds": list(seeds), "recall_turns": list(config.recall_turns), "dialogues": int(recall["base"].shape[1]),
            "tasks": int(helpfulness["base"].shape[1]), "recall": intervals(recall),
            "helpfulness": intervals(helpfulness)}


def results_file(config: GAttConfig, base: dict[str, Any], seeds: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The shipped results: config, summary, and per model the recall by turn (over seeds), the per-seed
    values behind every interval, training summaries, and the first seed's sample dialogue and attention."""
    results: dict[str, Any] = {"config": config.to_dict(), "summary": summarize(config, base, seeds),
                               "base": base | {"recall_by_turn": mean_by_turn([base["adherence"]])},
                               "data": {str(s): seeds[s]["data"] for s in seeds}}
    first = min(seeds)
    for name in VARIANTS:
        per_seed = [seeds[s][name] for s in seeds]
        results[name] = seeds[first][name] | {
            "recall_by_turn": mean_by_turn([values["adherence"] for values in per_seed]),
            "adherence_by_seed": [values["adherence"] for values in per_seed],
            "helpfulness_by_seed": [values["helpfulness"] for values in per_seed],
            "training_by_seed": [values["training"] for values in per_seed]}
        del results[name]["adherence"], results[name]["helpfulness"]
    return results


def run_experiment(config: GAttConfig, seeds: list[int], output_dir: str | Path, *, log: Any = print
                   ) -> tuple[dict[str, Any], Llama, Tokenizer]:
    """The base model's measurements, then every seed's (`run_seed`), resumable from `output_dir`; returns
    `results_file`'s dict and the base model and tokenizer."""
    base, tokenizer = load_base_model(config.base)
    tasks = held_out_single_turn_tasks(config)
    base_values = measure_base(config, output_dir, base=base, tokenizer=tokenizer, tasks=tasks)
    log(f"base: recall by turn {[round(r, 2) for r in mean_by_turn([base_values['adherence']])]}")
    per_seed = {seed: run_seed(config, seed, output_dir, base=base, tokenizer=tokenizer, tasks=tasks, log=log)
                for seed in seeds}
    return results_file(config, base_values, per_seed), base, tokenizer


def load_gatt_results(path: str | Path = SHIPPED_RESULTS) -> dict[str, Any]:
    """The measurements of a `llama-course gatt --results FILE` run (the shipped one by default)."""
    return load_results_file(path, COMMAND)
