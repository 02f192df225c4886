"""Chapter 16's context distillation (Llama 2, section 4.2.4 and Figure 16).

Context distillation makes a model answer as it would with a safety preprompt, without the preprompt: the
model answers prompts WITH a preprompt, then is fine-tuned on those answers WITHOUT it. Llama 2 tried two
kinds of preprompt:

- plain: one generic preprompt for every prompt, "You are a safe and responsible assistant" (`PLAIN_PREPROMPT`);
- targeted: a preprompt chosen by the prompt's risk category, with an answer template to follow
  (`TARGETED_PREPROMPTS`), and a distilled answer kept only where the Safety reward model scores it above the
  answer without preprompt (Figure 16b: distillation can make answers worse, mostly on prompts that were
  answered safely already). Where it does not, the example keeps the original answer.

The preprompt is the chat format's system message. The model distilled is the safety data scaling
experiment's "0%" model of the same seed (`experiments.safety`): the shipped SFT model after a helpfulness
round with compliance and no safety data, the one whose unsafe answers need mending. Its distillation
prompts are unsafe requests, borderline requests (of the SFT data's templates) and tasks, none of them a
held-out prompt; the risk category comes from the request's words (`risk_category`), as a classifier would
give it, so that a borderline request such as "How can I break the bread into pieces?" gets a targeted
preprompt too. Each distilled model is measured as the scaling models are, on the same held-out prompts, and
the "no distillation" row is the 0% model's own measurement. Everything is cached under `output_dir` as it
finishes, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llama_course.alignment.rejection import RejectionConfig, finetune_on_answers, reward_model_scorer
from llama_course.alignment.reward_train import load_reward_model
from llama_course.alignment.sft import load_base_model
from llama_course.alignment.sft_eval import answer_prompts
from llama_course.evaluation import bootstrap_mean
from llama_course.experiments import cached_json, load_results_file
from llama_course.experiments.safety import (
    MEASUREMENT_FILE,
    METRICS,
    ScalingConfig,
    measure,
    run_scaling_model,
    scaling_prompts,
    unsafe_requests,
)
from llama_course.model import Llama
from llama_course.pretrained import ASSETS_DIR
from llama_course.tokenizer import Tokenizer
from llama_course.toyworld import generate_tasks, is_safety_prompt
from llama_course.toyworld.safety import identify_borderline, sample_safety_prompt

SHIPPED_RESULTS = ASSETS_DIR / "safety_distillation_results.json"
COMMAND = "llama-course safety distill --seeds 0 1 2 --results llama_course/assets/safety_distillation_results.json"
DISTILL_SEED = 16_100  # the distillation prompts' draw
VARIANTS = ("none", "plain", "targeted")
PLAIN_PREPROMPT = "You are a safe and responsible assistant."
# Risk category: (words that flag it in a request, the targeted preprompt with its answer template).
TARGETED_PREPROMPTS = {
    "harm": (("hurt", "hit", "kick", "scare", "trap"),
             "You are a safe and responsible assistant. The request may ask you to hurt an animal. "
             "Answer like this: I will not help you hurt the animal. Be gentle with the animal instead."),
    "damage": (("break", "smash", "tear"),
               "You are a safe and responsible assistant. The request may ask you to break a toy. "
               "Answer like this: I will not help you break the toy. Ask to play with it instead."),
    "deceive": (("lie", "trick"),
                "You are a safe and responsible assistant. The request may ask you to lie to a friend. "
                "Answer like this: I will not help you lie. Tell the truth instead."),
    "steal": (("steal", "take"),
              "You are a safe and responsible assistant. The request may ask you to steal. "
              "Answer like this: I will not help you steal. Ask to share it instead."),
}


@dataclass(frozen=True)
class DistillationConfig:
    """The context distillation experiment (the defaults are the shipped run's); `scaling` gives the model
    distilled (its 0% model) and the held-out prompts."""

    scaling: ScalingConfig = ScalingConfig()
    unsafe: int = 60  # distillation prompts of each kind
    borderline: int = 30
    tasks: int = 60
    epochs: float = 2.0  # the scaling round's recipe
    lr: float = 1e-3
    batch_size: int = 16

    def __post_init__(self) -> None:
        for name in ("unsafe", "borderline", "tasks"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} distillation prompts: give 0 or more")
        if self.unsafe + self.borderline + self.tasks < 1:
            raise ValueError("no distillation prompt: give --distill-unsafe, --distill-borderline or --distill-tasks")
        if not self.epochs > 0 or not self.lr > 0:
            raise ValueError(f"epochs={self.epochs} and lr={self.lr} must be positive")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def risk_category(prompt: str) -> str | None:
    """The first risk category whose words the request uses ("harm", "damage", "deceive", "steal"), or None.
    A word classifier: it also flags borderline requests that use the words harmlessly."""
    said = set(re.findall(r"[a-z']+", prompt.lower()))
    return next((category for category, (flags, _) in TARGETED_PREPROMPTS.items() if said & set(flags)), None)


def distillation_prompts(config: DistillationConfig, exclude: set[str]) -> list[str]:
    """The prompts answered with a preprompt: unsafe and borderline requests (the SFT data's templates) and
    tasks, none in `exclude` (the held-out and the scaling experiment's training prompts), in a fixed order."""
    rng = random.Random(DISTILL_SEED)
    unsafe = [p for p, _, _ in unsafe_requests(config.unsafe, rng, exclude)] if config.unsafe else []
    borderline: dict[str, None] = {}
    for _ in range(100 * config.borderline):
        if len(borderline) == config.borderline:
            break
        prompt = sample_safety_prompt(rng, "borderline").prompt
        if prompt not in exclude:
            borderline[prompt] = None
    else:
        if len(borderline) < config.borderline:
            raise ValueError(f"only {len(borderline)} distinct borderline requests found for "
                             f"borderline={config.borderline}: lower the count")
    tasks = [p for p in generate_tasks(2 * config.tasks + 10, seed=DISTILL_SEED)["prompt"] if p not in exclude]
    if len(tasks) < config.tasks:
        raise ValueError(f"only {len(tasks)} held-in tasks for tasks={config.tasks}: lower the count")
    return unsafe + list(borderline) + tasks[: config.tasks]


def answer_with_preprompts(model: Llama, tokenizer: Tokenizer, prompts: Sequence[str],
                           preprompts: Sequence[str | None], max_new_tokens: int = 48) -> list[str]:
    """The model's greedy answer to each prompt, asked with its preprompt as the system message (None: none)."""
    if len(prompts) != len(preprompts):
        raise ValueError(f"{len(prompts)} prompts but {len(preprompts)} preprompts: give one per prompt")
    answers: list[str] = [""] * len(prompts)
    for preprompt in dict.fromkeys(preprompts):
        where = [i for i, p in enumerate(preprompts) if p == preprompt]
        for i, answer in zip(where, answer_prompts(model, tokenizer, [prompts[i] for i in where], system=preprompt,
                                                   max_new_tokens=max_new_tokens), strict=True):
            answers[i] = answer
    return answers


def keep_safer_answers(original: Sequence[str], distilled: Sequence[str], original_scores: Sequence[float],
                       distilled_scores: Sequence[float]) -> list[str]:
    """Figure 16b's filter: each distilled answer where the Safety RM scores it strictly above the original
    answer, else the original."""
    lengths = {len(original), len(distilled), len(original_scores), len(distilled_scores)}
    if len(lengths) != 1:
        raise ValueError(f"original, distilled and their scores have lengths {len(original)}, {len(distilled)}, "
                         f"{len(original_scores)}, {len(distilled_scores)}: give one of each per prompt")
    return [d if ds > os else o
            for o, d, os, ds in zip(original, distilled, original_scores, distilled_scores, strict=True)]


def distillation_data(model: Llama, tokenizer: Tokenizer, prompts: Sequence[str], max_new_tokens: int = 48
                      ) -> dict[str, Any]:
    """Every prompt's answer without preprompt ("original"), with the plain preprompt ("plain") and with its
    risk category's targeted preprompt ("distilled", the original where no category is flagged), the Safety
    RM's scores of the last two kinds, and the targeted variant's kept answers ("targeted")."""
    prompts = list(prompts)
    categories = [risk_category(p) for p in prompts]
    targeted_preprompts = [TARGETED_PREPROMPTS[c][1] if c else None for c in categories]
    original = answer_prompts(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    plain = answer_prompts(model, tokenizer, prompts, system=PLAIN_PREPROMPT, max_new_tokens=max_new_tokens)
    flagged = [i for i, c in enumerate(categories) if c]
    distilled = list(original)
    for i, answer in zip(flagged, answer_with_preprompts(model, tokenizer, [prompts[i] for i in flagged],
                                                         [targeted_preprompts[i] for i in flagged],
                                                         max_new_tokens), strict=True):
        distilled[i] = answer
    rm, rm_tokenizer = load_reward_model("safety")
    score = reward_model_scorer(rm, rm_tokenizer)
    original_scores, distilled_scores = score(prompts, original).tolist(), score(prompts, distilled).tolist()
    return {"prompts": prompts, "categories": categories, "original": original, "plain": plain,
            "distilled": distilled, "original_safety_rm": original_scores, "distilled_safety_rm": distilled_scores,
            "targeted": keep_safer_answers(original, distilled, original_scores, distilled_scores)}


def _digest(prompts: dict[str, list[str]]) -> str:
    return hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()[:16]


def run_distillation_seed(config: DistillationConfig, seed: int, output_dir: str | Path, scaling_data: dict,
                          prompts: dict[str, list[str]], exclude: set[str]
                          ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Seed `seed`'s three measurements ({variant: measurement}) and its distillation data: the scaling
    experiment's 0% model (trained and measured under `output_dir/scaling` if it is not there yet) and its
    plain and targeted distillations (under `output_dir/distill/seed-S/`)."""
    output_dir = Path(output_dir)
    scaling = config.scaling
    measured = {"none": run_scaling_model(scaling, seed, 0.0, output_dir / "scaling", scaling_data, prompts)}
    start_dir = output_dir / "scaling" / f"seed-{seed}" / "safety-0"
    folder = output_dir / "distill" / f"seed-{seed}"
    key = config.to_dict() | {"seed": seed, "prompts": _digest(prompts)}
    model: list[tuple[Llama, Tokenizer]] = []  # loaded once, when something is not cached

    def start_model() -> tuple[Llama, Tokenizer]:
        if not model:
            model.append(load_base_model(str(start_dir)))
        return model[0]

    data = cached_json(folder / "distillation_data.json", key, lambda: distillation_data(
        *start_model(), distillation_prompts(config, exclude), scaling.max_new_tokens))
    recipe = RejectionConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size, block_size=256,
                             device="cpu", seed=seed)
    for variant in VARIANTS[1:]:
        def train_and_measure(variant: str = variant) -> dict[str, Any]:
            student, tokenizer = load_base_model(str(start_dir))
            order = random.Random(seed + 3).sample(range(len(data["prompts"])), len(data["prompts"]))
            student = finetune_on_answers(student, tokenizer, [data["prompts"][i] for i in order],
                                          [data[variant][i] for i in order], recipe, folder / variant, seed)
            return measure(student, tokenizer, prompts, scaling.max_new_tokens)

        measured[variant] = cached_json(folder / variant / MEASUREMENT_FILE, key | {"variant": variant},
                                        train_and_measure)
    return measured, data


def data_summary(data: dict[str, Any]) -> dict[str, Any]:
    """How many distilled answers differ from the original, per prompt kind, and how many the targeted filter
    kept ("flagged": prompts given a targeted preprompt)."""
    kinds = ["unsafe" if is_safety_prompt(p) else "borderline" if identify_borderline(p) else "task"
             for p in data["prompts"]]
    summary = {}
    for kind in ("unsafe", "borderline", "task"):
        rows = [i for i, k in enumerate(kinds) if k == kind]
        summary[kind] = {"prompts": len(rows),
                         "plain_changed": sum(data["plain"][i] != data["original"][i] for i in rows),
                         "flagged": sum(data["categories"][i] is not None for i in rows),
                         "targeted_changed": sum(data["distilled"][i] != data["original"][i] for i in rows),
                         "targeted_kept": sum(data["targeted"][i] != data["original"][i] for i in rows)}
    return summary


def summarize_variants(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each variant's mean of every per-prompt value with `bootstrap_mean`'s 95% interval over seeds and prompts,
    and its paired differences against each other variant (same prompt, same seed): `difference_vs_none`, ..."""
    stacked = {v: {m: np.array([run[m] for run in runs[v]]) for m in METRICS} for v in runs}
    return {v: {m: {"mean": bootstrap_mean(stacked[v][m]).as_dict()}
                | {f"difference_vs_{other}": bootstrap_mean(stacked[v][m] - stacked[other][m]).as_dict()
                   for other in runs if other != v}
                for m in METRICS} for v in runs}


def run_distillation(config: DistillationConfig, seeds: Sequence[int], output_dir: str | Path) -> dict[str, Any]:
    """Every seed's three models, resumably, then the results file's dict: config, summary, per-prompt values,
    and a summary of each seed's distillation data with a few of its examples."""
    per_seed, prompts = scaling_prompts(config.scaling, seeds)
    exclude = {p for data in per_seed.values() for pairs in data.values() for p, _ in pairs}
    exclude |= {p for ps in prompts.values() for p in ps}
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    data_summaries, examples = [], []
    for seed in tqdm(seeds, desc="context distillation", unit="seed"):
        measured, data = run_distillation_seed(config, seed, output_dir, per_seed[seed], prompts, exclude)
        for variant in VARIANTS:
            runs[variant].append(measured[variant])
        data_summaries.append(data_summary(data))
        examples.append(distillation_examples(data))
    return {"config": config.to_dict(), "seeds": list(seeds), "prompts": {k: len(v) for k, v in prompts.items()},
            "summary": summarize_variants(runs), "distillation_data": data_summaries, "examples": examples,
            "runs": runs}


def distillation_examples(data: dict[str, Any], per_kind: int = 2) -> list[dict[str, Any]]:
    """A few distillation examples whose targeted answer differs from the original, then a few it did not keep."""
    changed = [i for i, (o, d) in enumerate(zip(data["original"], data["distilled"], strict=True)) if o != d]
    kept = [i for i in changed if data["targeted"][i] != data["original"][i]][:per_kind]
    dropped = [i for i in changed if data["targeted"][i] == data["original"][i]][:per_kind]
    return [{key: data[key][i] for key in ("prompts", "categories", "original", "plain", "distilled",
                                           "original_safety_rm", "distilled_safety_rm")} | {"kept": i in kept}
            for i in kept + dropped]


def load_distillation_results(path: str | Path = SHIPPED_RESULTS) -> dict[str, Any]:
    """The measurements of a `llama-course safety distill --results FILE` run (the shipped one by default)."""
    return load_results_file(path, COMMAND)
