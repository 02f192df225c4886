"""Chapter 16's measurements: safety data scaling and false refusal (Llama 2, section 4.2.3, Figures 15 and 33).

The toy base model never read a harmful sentence (the story corpus holds none), so on its own it has no harm
to do. Llama 2's helpfulness data are what make a model comply with an unsafe request: an annotator who
judges only helpfulness prefers the answer that does what was asked (the toy world's
`safety_prompt_helpfulness` scores compliance 1.0). `scaling_data` therefore builds, for one seed:

- the helpfulness data, fixed: single-turn tasks, plus unsafe requests answered as a helpfulness-only
  annotator would, with compliance (`SafetyPrompt.bad_answer`), one in `compliance_every` samples;
- the safety data, a pool of other unsafe requests with their safe answers (a refusal with a kind
  alternative), of which each run takes the first 0%, 10%, 25%, 50% or 100% (nested subsets, as the paper
  adds safety data to a fixed helpfulness set).

No borderline prompt is in these data. `run_scaling` fine-tunes the shipped SFT model on each mix (the SFT
recipe of `alignment.sft`: peak lr 1e-3, cosine, 2 epochs, 16 blocks of 256 tokens per step, on a few hundred
samples instead of 15,000: a round of tuning after SFT, sized for a 2-core CPU). That model already saw the SFT
mix's 1,500 safety samples, so "0%" means no safety data in this round. Each model is measured on held-out
prompts: the violation rate on unsafe requests (a true safety score rated 1 or 2 on Llama 2's 5-point scale,
section 4.4), the false-refusal rate on borderline requests (harmless requests that share words with unsafe
ones, Figure 33; 6 of their 12 templates are in no course data set), and the helpfulness on normal tasks.
Every model's measurement is written under `output_dir` as it finishes, so an interrupted run resumes where
it stopped.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from llama_course.alignment.rejection import RejectionConfig, finetune_on_answers
from llama_course.alignment.sft import load_base_model
from llama_course.alignment.sft_eval import answer_prompts
from llama_course.evaluation import bootstrap_mean
from llama_course.evaluation.safety import VIOLATION_RATINGS, likert_from_score
from llama_course.experiments import cached_json, load_results_file
from llama_course.model import Llama
from llama_course.pretrained import ASSETS_DIR
from llama_course.tokenizer import Tokenizer
from llama_course.toyworld import generate_tasks, helpfulness, safety
from llama_course.toyworld.safety import (
    ADDED_BORDERLINE_TOPICS,
    identify_borderline,
    sample_borderline_prompt,
    sample_safety_prompt,
)
from llama_course.toyworld.scoring import is_refusal

SHIPPED_RESULTS = ASSETS_DIR / "safety_results.json"
COMMAND = "llama-course safety --results llama_course/assets/safety_results.json"
MEASUREMENT_FILE = "measurement.json"
EVAL_SEED = 16_000  # held-out prompts: another seed, every training prompt removed
SAMPLE_ANSWERS = 3  # answers per set kept in the results for the chapter to show
METRICS = ("violation", "unsafe_refusal", "false_refusal", "task_helpfulness")  # `measure`'s per-prompt values


@dataclass(frozen=True)
class ScalingConfig:
    """The safety data scaling experiment (the defaults are the shipped run's)."""

    base: str = "sft"  # the model every mix fine-tunes (see alignment.sft.load_base_model)
    tasks: int = 300  # single-turn tasks of the helpfulness data
    compliance_every: int = 8  # one helpfulness sample in this many is an unsafe request answered with compliance
    safety_pool: int = 150  # unsafe requests with safe answers: the 100% safety data
    fractions: tuple[float, ...] = (0.0, 1.0, 0.25, 0.1, 0.5)  # the extremes first: an interrupted run shows the span
    epochs: float = 2.0  # the SFT recipe's
    lr: float = 1e-3  # the SFT recipe's peak (cosine to 10%)
    batch_size: int = 16
    eval_unsafe: int = 200
    eval_borderline: int = 200
    eval_tasks: int = 200
    max_new_tokens: int = 48

    def __post_init__(self) -> None:
        for name in ("tasks", "safety_pool", "eval_unsafe", "eval_borderline", "eval_tasks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.compliance_every < 2:
            raise ValueError(f"compliance_every={self.compliance_every} must be at least 2 (1 in 2 samples or fewer)")
        bad = [f for f in self.fractions if not 0.0 <= f <= 1.0]
        if bad or not self.fractions:
            raise ValueError(f"fractions={self.fractions}: give shares of the safety pool in [0, 1], e.g. 0 0.5 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def unsafe_requests(n: int, rng: random.Random, exclude: set[str]) -> list[tuple[str, str, str]]:
    """`n` distinct unsafe requests not in `exclude`: (prompt, safe answer, compliance)."""
    found: dict[str, tuple[str, str, str]] = {}
    for _ in range(100 * n):
        request = sample_safety_prompt(rng, "unsafe")
        if request.prompt not in exclude and request.prompt not in found:
            found[request.prompt] = (request.prompt, request.answer, request.bad_answer)
            if len(found) == n:
                return list(found.values())
    raise ValueError(f"only {len(found)} distinct unsafe requests found for n={n}: lower the count")


def scaling_data(config: ScalingConfig, seed: int) -> dict[str, list[list[str]]]:
    """Seed `seed`'s training pairs: {"helpfulness": [[prompt, answer], ...], "safety": [...]} (see the
    module docstring); no unsafe prompt appears in both, so each is answered one way only."""
    tasks = generate_tasks(config.tasks, seed=seed)
    n_compliance = config.tasks // (config.compliance_every - 1)
    rng = random.Random(seed)
    compliance = unsafe_requests(n_compliance, rng, set())
    pool = unsafe_requests(config.safety_pool, rng, {prompt for prompt, _, _ in compliance})
    helpful = [[p, a] for p, a in zip(tasks["prompt"], tasks["answer"], strict=True)]
    helpful += [[prompt, complied] for prompt, _, complied in compliance]
    return {"helpfulness": random.Random(seed + 1).sample(helpful, len(helpful)),
            "safety": [[prompt, answer] for prompt, answer, _ in pool]}


def evaluation_prompts(config: ScalingConfig, exclude: set[str]) -> dict[str, list[str]]:
    """Held-out prompts of each measured set: "unsafe", "borderline" and "tasks", none of them in `exclude`."""
    rng = random.Random(EVAL_SEED)
    borderline: dict[str, None] = {}  # distinct prompts, in the order drawn
    for _ in range(100 * config.eval_borderline):
        borderline[sample_borderline_prompt(rng).prompt] = None
        if len(borderline) == config.eval_borderline:
            break
    else:
        raise ValueError(f"eval_borderline={config.eval_borderline} exceeds the distinct borderline requests found")
    tasks = [p for p in generate_tasks(3 * config.eval_tasks, seed=EVAL_SEED)["prompt"] if p not in exclude]
    return {"unsafe": [p for p, _, _ in unsafe_requests(config.eval_unsafe, rng, exclude)],
            "borderline": list(borderline), "tasks": tasks[: config.eval_tasks]}


def is_violation(prompt: str, response: str) -> bool:
    """Whether the true safety of `response` rates 1 or 2 on Llama 2's 5-point scale (section 4.4)."""
    return likert_from_score(safety(prompt, response)) in VIOLATION_RATINGS


def measure(model: Llama, tokenizer: Tokenizer, prompts: dict[str, list[str]], max_new_tokens: int = 48
            ) -> dict[str, Any]:
    """One model's per-prompt values on each set: violations and refusals on unsafe requests, false refusals
    on borderline ones, helpfulness on tasks; and a few sample answers of each set."""
    answers = {name: answer_prompts(model, tokenizer, list(ps), max_new_tokens=max_new_tokens)
               for name, ps in prompts.items()}
    unsafe = zip(prompts["unsafe"], answers["unsafe"], strict=True)
    return {
        "violation": [float(is_violation(p, r)) for p, r in unsafe],
        "unsafe_refusal": [float(is_refusal(r)) for r in answers["unsafe"]],
        "false_refusal": [float(is_refusal(r)) for r in answers["borderline"]],  # borderline: harmless (Figure 33)
        "task_helpfulness": [helpfulness(p, r) for p, r in zip(prompts["tasks"], answers["tasks"], strict=True)],
        "samples": {name: [[p, r] for p, r in zip(prompts[name], answers[name], strict=True)][:SAMPLE_ANSWERS]
                    for name in prompts},
    }


def run_scaling_model(config: ScalingConfig, seed: int, fraction: float, output_dir: str | Path,
                      data: dict[str, list[list[str]]], prompts: dict[str, list[str]]) -> dict[str, Any]:
    """Fine-tune `config.base` on the helpfulness data plus the first `fraction` of the safety pool, measure
    it; cached under `output_dir/seed-S/safety-F/`."""
    folder = Path(output_dir) / f"seed-{seed}" / f"safety-{fraction:g}"
    pairs = data["helpfulness"] + data["safety"][: round(fraction * len(data["safety"]))]

    def train_and_measure() -> dict[str, Any]:
        model, tokenizer = load_base_model(config.base)
        recipe = RejectionConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                                 block_size=256, device="cpu", seed=seed)
        order = random.Random(seed + 2).sample(pairs, len(pairs))
        model = finetune_on_answers(model, tokenizer, [p for p, _ in order], [a for _, a in order], recipe,
                                    folder, seed)
        return {"training_pairs": len(pairs), **measure(model, tokenizer, prompts, config.max_new_tokens)}

    key = {name: value for name, value in config.to_dict().items() if name != "fractions"}  # the others' shares
    return cached_json(folder / MEASUREMENT_FILE, key | {"seed": seed, "fraction": fraction}, train_and_measure)


def summarize(config: ScalingConfig, runs: dict[float, list[dict[str, Any]]], added: Sequence[bool]
              ) -> dict[str, Any]:
    """Each share's mean of every per-prompt value with `bootstrap_mean`'s 95% interval over seeds and prompts,
    and the paired difference of every share against the first share (0% safety data). `added` marks the
    borderline prompts of templates no course data set uses: false refusals are also given apart for them
    (`false_refusal_added`) and for the templates of the SFT data (`false_refusal_sft`)."""
    stacked = {f: {m: np.array([run[m] for run in runs[f]]) for m in METRICS} for f in config.fractions}
    mask = np.array(added, dtype=bool)
    if mask.shape != stacked[config.fractions[0]]["false_refusal"].shape[1:] or mask.all() or not mask.any():
        raise ValueError(f"added marks {mask.sum()} of {mask.size} borderline prompts: it needs one flag per "
                         "prompt, and prompts of both kinds")
    for values in stacked.values():
        values["false_refusal_added"] = values["false_refusal"][:, mask]
        values["false_refusal_sft"] = values["false_refusal"][:, ~mask]
    metrics = METRICS + ("false_refusal_added", "false_refusal_sft")
    first = config.fractions[0]
    return {f"{f:g}": {m: {"mean": bootstrap_mean(stacked[f][m]).as_dict(),
                           f"difference_vs_{first:g}": bootstrap_mean(stacked[f][m] - stacked[first][m]).as_dict()}
                       for m in metrics} for f in config.fractions}


def scaling_prompts(config: ScalingConfig, seeds: Sequence[int]
                    ) -> tuple[dict[int, dict[str, list[list[str]]]], dict[str, list[str]]]:
    """Each seed's training pairs (`scaling_data`) and the held-out prompts none of them uses."""
    per_seed = {seed: scaling_data(config, seed) for seed in seeds}
    seen = {p for data in per_seed.values() for pairs in data.values() for p, _ in pairs}
    return per_seed, evaluation_prompts(config, seen)


def run_scaling(config: ScalingConfig, seeds: Sequence[int], output_dir: str | Path) -> dict[str, Any]:
    """Every (seed, share) model, resumably, then the results file's dict: config, summary, per-prompt values."""
    per_seed, prompts = scaling_prompts(config, seeds)
    runs: dict[float, list[dict[str, Any]]] = {f: [] for f in config.fractions}
    jobs = [(seed, f) for seed in seeds for f in config.fractions]
    for seed, fraction in tqdm(jobs, desc="safety data scaling", unit="model"):
        runs[fraction].append(run_scaling_model(config, seed, fraction, output_dir, per_seed[seed], prompts))
    added = [identify_borderline(p)[0] in ADDED_BORDERLINE_TOPICS for p in prompts["borderline"]]
    return {"config": config.to_dict(), "seeds": list(seeds),
            "prompts": {name: len(ps) for name, ps in prompts.items()}, "prompt_texts": prompts,
            "borderline_added": added, "summary": summarize(config, runs, added),
            "runs": {f"{f:g}": values for f, values in runs.items()}}


def load_safety_results(path: str | Path = SHIPPED_RESULTS) -> dict[str, Any]:
    """The measurements of a `llama-course safety --results FILE` run (the shipped one by default)."""
    return load_results_file(path, COMMAND)
