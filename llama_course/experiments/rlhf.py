"""Iterative RLHF as Llama 2 ran it (sections 3.2.1 to 3.2.3, Figure 11): on-policy preference rounds V1..Vk.

Meta collected preferences in weekly batches on samples of the latest Llama 2-Chat and retrained the reward
models before each new version, because "reward model accuracy can quickly degrade if not exposed to this new
sample distribution". Round k of `run_rlhf` does the same on the toy world:

1. **Preferences on the new policy.** V(k-1) (V0: the SFT model) answers fresh prompts twice, from two arms
   (model variant x temperature: the latest and the previous version, T 0.7 and 1.0; section 3.2.1), and the
   toy annotators label each pair with a choice and a 4-level strength (helpfulness on every prompt, safety on
   safety prompts).
2. **Degradation.** The previous round's RMs are measured on held-out pairs of these NEW samples, against the
   true order of the two answers.
3. **Retraining.** Each RM continues from the previous round's on this round's pairs plus as many pairs replayed
   from earlier rounds (the margin loss, Table 27; one epoch), and is measured again on the same new pairs.
4. **A better policy.** Rejection sampling (best of K by the safety-first RM reward, fine-tuned on the winners
   of this round and every earlier one; with `balance_safety`, each round adds no more refusals of unsafe
   prompts than helpful answers to borderline ones, so that the pool does not teach refusing on sight) in rounds
   1..k-1; PPO on top in the last round (Llama 2: rejection
   sampling up to V4, PPO from V5).
5. **Measured by the truth.** Vk answers held-out prompts (greedy) and the toy world scores them: helpfulness
   on tasks, refusals and harm on unsafe prompts, false refusals on borderline ones. Best-of-N among the
   previous policy's samples, picked by the new RM, measures how much of the oracle's gain the RM captures.

The RMs start (round 0) from their own backbones, trained on the toy world's off-policy pairs only; the
helpfulness RM may be larger than the policy (Llama 2 scored every model's samples with its best RM).
Everything a round produces is written under `output_dir/seed-S/round-K/`; `round.json` is written last, so a
run that stops resumes at the first unfinished round.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch

from llama_course.alignment.ppo_rollout import ValueModel
from llama_course.alignment.ppo_train import PPOConfig, PPOModels
from llama_course.alignment.rejection import (
    RejectionConfig,
    expected_order_statistic,
    finetune_on_answers,
    safety_first_scorer,
    sample_responses,
)
from llama_course.alignment.reward import HEADS, RewardModel, score_responses
from llama_course.alignment.reward_train import (
    RewardConfig,
    load_reward_model,
    save_reward_model,
    train_reward_model,
)
from llama_course.alignment.sft import export_model, load_base_model
from llama_course.alignment.sft_eval import answer_prompts
from llama_course.experiments.ppo import train_ppo
from llama_course.experiments.toyworld_data import sample_preference_pairs
from llama_course.experiments.toyworld_judges import ppo_prompts, true_scores
from llama_course.model import Llama
from llama_course.tokenizer import Tokenizer
from llama_course.toyworld import generate_preferences, generate_safety_prompts, generate_tasks, is_safety_prompt
from llama_course.toyworld.safety import identify_borderline, sample_borderline_prompt
from llama_course.toyworld.scoring import is_refusal

PAIR_COLUMNS = ["prompt", "chosen", "rejected", "strength", "score_chosen", "score_rejected"]
CRITERIA = ("helpfulness", "safety")


@dataclass
class RLHFConfig:
    """The rounds' knobs: Llama 2's procedure (section 3.2), sized for a laptop CPU."""

    rounds: int = 4  # versions V1..Vk
    ppo_last: bool = True  # the last round runs PPO on top of rejection sampling (Llama 2's V5)
    policy: str = "sft"  # V0: a shipped model name or a model folder
    helpfulness_backbone: str = "sft"  # what the helpfulness RM starts from (a larger model may be named)
    safety_backbone: str = "sft"
    helpfulness_head: str = "scalar"  # the helpfulness RM's head: "scalar" (the paper's) or "likelihood" (reward.py)
    toy_pairs: int = 1500  # round 0: the toy world's off-policy pairs per RM (`generate_preferences`)
    helpfulness_prompts: int = 1200  # per round: prompts answered twice for helpfulness pairs (1 in 5 safety)
    safety_prompts: int = 400  # per round: safety prompts answered twice for safety pairs
    new_pair_prompts: int = 400  # per round: held-out prompts whose pairs measure the RMs on the new policy
    temperatures: list[float] = field(default_factory=lambda: [0.7, 1.0])
    helpfulness_mix: float = 0.1  # share of helpfulness pairs in the safety RM's data (Llama 2: 10%)
    noise_scale: float = 1.0  # the annotators' noise (0: perfect annotators)
    rm_lr: float = 5e-4
    rm_batch_size: int = 16
    rs_prompts: int = 800  # per round: prompts for rejection sampling
    rs_samples: int = 8  # K answers per prompt
    rs_temperature: float = 0.8
    rs_epochs: float = 2.0  # passes over the pooled winners
    rs_lr: float = 1e-4
    balance_safety: bool = False  # cap a round's winners on unsafe prompts at its winners on borderline ones
    borderline_prompts: int = 0  # per round: extra borderline requests among the RS prompts (`borderline_requests`)
    borderline_demonstrations: bool = False  # pool the annotators' answers to them instead (no sampling)
    ppo: dict[str, Any] = field(default_factory=lambda: {"iterations": 40})  # `PPOConfig` overrides
    eval_tasks: int = 300  # held-out task prompts (the same for every seed)
    eval_safety: int = 100  # held-out safety prompts, about half unsafe and half borderline
    eval_samples: int = 4  # also sampled answers per held-out prompt at rs_temperature: the chat model as used
    capture_prompts: int = 200  # held-out task prompts for the best-of-N capture
    capture_samples: int = 16  # K samples per prompt; best-of-N for N <= K is computed exactly
    capture_n: int = 8
    max_new_tokens: int = 48
    seed: int = 0
    output_dir: str = "runs/rlhf"

    def __post_init__(self) -> None:
        for name in ("rounds", "toy_pairs", "helpfulness_prompts", "safety_prompts", "new_pair_prompts", "rs_prompts",
                     "rs_samples", "eval_tasks", "eval_safety", "eval_samples", "capture_prompts", "capture_samples",
                     "capture_n", "max_new_tokens", "rm_batch_size", "borderline_prompts"):
            value, least = getattr(self, name), 0 if name == "borderline_prompts" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                kind = "non-negative" if least == 0 else "positive"
                raise ValueError(f"{name}={value!r} must be a {kind} integer")
        if self.helpfulness_head not in HEADS:
            raise ValueError(f"helpfulness_head={self.helpfulness_head!r} is unknown; choose one of {HEADS}")
        if self.capture_n > self.capture_samples:
            raise ValueError(f"capture_n={self.capture_n} exceeds capture_samples={self.capture_samples}: best-of-N "
                             "needs at least N samples per prompt")
        if len(self.temperatures) < 1 or not all(t > 0 for t in self.temperatures):
            raise ValueError(f"temperatures={self.temperatures} must be a non-empty list of positive numbers")
        if not 0.0 <= self.helpfulness_mix < 1.0:
            raise ValueError(f"helpfulness_mix={self.helpfulness_mix} must lie in [0, 1)")
        PPOConfig(**self.ppo)  # unknown or invalid PPO settings fail here, before any work

    def seed_dir(self, seed: int | None = None) -> Path:
        return Path(self.output_dir) / f"seed-{self.seed if seed is None else seed}"


def _prompt_seed(config: RLHFConfig, round_index: int, purpose: int) -> int:
    """A distinct seed for every (experiment seed, round, purpose): no two prompt sets share a draw."""
    return 1_000_000 * (config.seed + 1) + 1000 * round_index + purpose


def eval_prompts(config: RLHFConfig) -> list[str]:
    """The held-out prompts, the same for every seed: tasks, then safety prompts (seeds no round draws)."""
    tasks = list(generate_tasks(config.eval_tasks, seed=424_242)["prompt"])
    return tasks + list(generate_safety_prompts(config.eval_safety, seed=424_243)["prompt"])


def borderline_requests(n: int, seed: int) -> dict[str, str]:
    """Up to `n` distinct borderline requests from every template (`sample_borderline_prompt`), chapter 16's
    alarming words included ("How do I smash the bread for a pie?", "Why does the dog lie on the grass?"), each
    with the helpful answer an annotator writes for it. They show the policy these words in harmless requests,
    as rejection-sampling prompts or, with `borderline_demonstrations`, as demonstrations (Llama 2's supervised
    safety data, section 4.2); the held-out borderline prompts stay out of training (`improve_policy` drops
    every held-out prompt)."""
    rng = random.Random(seed)
    drawn = (sample_borderline_prompt(rng) for _ in range(n))
    return {request.prompt: request.answer for request in drawn}


def _fresh(prompts: Sequence[str], excluded: set[str]) -> list[str]:
    return [prompt for prompt in prompts if prompt not in excluded]


# ---- measuring --------------------------------------------------------------------------------------------
def true_order_accuracy(model: RewardModel, tokenizer: Tokenizer, pairs: datasets.Dataset) -> list[float]:
    """Per pair whose answers differ in TRUE score: 1 when the RM orders them as the truth does, 0.5 on a tie
    of the RM's scores, else 0. The annotator's noisy label is not the reference here; the truth is."""
    rows = [row for row in pairs if row["score_chosen"] != row["score_rejected"]]
    if not rows:
        return []
    prompts = [row["prompt"] for row in rows]
    chosen = score_responses(model, tokenizer, prompts, [row["chosen"] for row in rows])
    rejected = score_responses(model, tokenizer, prompts, [row["rejected"] for row in rows])
    truth = torch.tensor([row["score_chosen"] > row["score_rejected"] for row in rows])
    correct = ((chosen > rejected) == truth).double()
    return torch.where(chosen == rejected, 0.5, correct).tolist()


def measure_policy(policy: Llama, tokenizer: Tokenizer, prompts: Sequence[str], config: RLHFConfig, seed: int
                   ) -> dict[str, list[float]]:
    """Answers to `prompts` scored by the toy world's truth, one value per prompt in each list: greedy
    `helpfulness`, `safety`, `refuses`, `harmful`; their means over `config.eval_samples` answers sampled at
    `config.rs_temperature` (`sampled_helpfulness`, ...; `seed`: every version samples with the same seed);
    and the prompt's kind (`is_safety`, `borderline`)."""
    answers = answer_prompts(policy, tokenizer, list(prompts), max_new_tokens=config.max_new_tokens)
    truth = true_scores(prompts, answers)
    samples = sample_responses(policy, tokenizer, prompts, config.eval_samples, config.rs_temperature,
                               max_new_tokens=config.max_new_tokens, seed=seed)
    sampled = true_scores([p for p in prompts for _ in range(config.eval_samples)], [a for row in samples for a in row])
    truth |= {f"sampled_{name}": sampled[name].view(len(prompts), -1).mean(dim=1)
              for name in ("helpfulness", "safety", "refuses", "harmful")}
    borderline = [float(identify_borderline(p) is not None) for p in prompts]
    return {name: [round(v, 4) for v in values.tolist()] for name, values in truth.items()} | {
        "borderline": borderline, "answers": answers}


def prompt_kind(values: dict[str, list[float]], kind: str) -> np.ndarray:
    """The mask of the held-out prompts of one kind in `measure_policy`'s values: "tasks", "unsafe" or
    "borderline"."""
    unsafe, borderline = np.asarray(values["is_safety"]) > 0, np.asarray(values["borderline"]) > 0
    return {"tasks": ~unsafe & ~borderline, "unsafe": unsafe, "borderline": borderline}[kind]


def summarize_policy(values: dict[str, list[float]]) -> dict[str, float]:
    """Means over the held-out prompts, greedy and sampled: task helpfulness, and on unsafe / borderline prompts
    the refusal, harm and false-refusal rates."""
    measures = {"helpfulness_tasks": ("helpfulness", "tasks"), "refusal_unsafe": ("refuses", "unsafe"),
                "harmful_unsafe": ("harmful", "unsafe"), "false_refusal_borderline": ("refuses", "borderline"),
                "helpfulness_borderline": ("helpfulness", "borderline")}
    summary = {}
    for prefix in ("", "sampled_"):
        for label, (name, kind) in measures.items():
            summary[prefix + label] = float(np.asarray(values[prefix + name])[prompt_kind(values, kind)].mean())
    return summary


def best_of_n_capture(policy: Llama, rm: RewardModel, tokenizer: Tokenizer, prompts: Sequence[str], config: RLHFConfig,
                      seed: int) -> dict[str, list[float]]:
    """Per task prompt, the expected true helpfulness of one sample (`n1`), of the best of N by the truth
    (`oracle`) and of the best of N by the RM (`picked`), exact over K samples (`expected_order_statistic`)."""
    from llama_course.toyworld import helpfulness

    samples = sample_responses(policy, tokenizer, prompts, config.capture_samples, config.rs_temperature,
                               max_new_tokens=config.max_new_tokens, seed=seed)
    flat_prompts = [p for p in prompts for _ in range(config.capture_samples)]
    flat = [s for row in samples for s in row]
    truth = torch.tensor([helpfulness(p, r) for p, r in zip(flat_prompts, flat, strict=True)]).view(len(prompts), -1)
    kept = [i for i, response in enumerate(flat) if response.strip()]
    scores = torch.full((len(flat),), -1e9)  # an empty answer is never the RM's pick
    scores[kept] = score_responses(rm, tokenizer, [flat_prompts[i] for i in kept], [flat[i] for i in kept])
    scores = scores.view(len(prompts), -1)
    n = config.capture_n
    return {"n1": truth.double().mean(dim=1).tolist(), "oracle": expected_order_statistic(truth, n, n).tolist(),
            "picked": expected_order_statistic(scores, n, n, values=truth).tolist()}


# ---- one round --------------------------------------------------------------------------------------------
def collect_pairs(variants: dict[str, Llama], tokenizer: Tokenizer, config: RLHFConfig, round_index: int,
                  excluded: set[str], held_out: bool) -> dict[str, datasets.Dataset]:
    """On-policy pairs of round `round_index` for both criteria (section 3.2.1), from fresh prompts."""
    offset = 500 if held_out else 0
    n_help = config.new_pair_prompts if held_out else config.helpfulness_prompts
    n_safe = max(1, config.new_pair_prompts // 2) if held_out else config.safety_prompts
    prompts = {"helpfulness": _fresh(ppo_prompts(n_help, _prompt_seed(config, round_index, 1 + offset), 0.2), excluded),
               "safety": _fresh(generate_safety_prompts(n_safe, seed=_prompt_seed(config, round_index, 2 + offset))
                                ["prompt"], excluded)}
    return {criterion: sample_preference_pairs(
        variants, tokenizer, prompts[criterion], temperatures=config.temperatures, criterion=criterion,
        max_new_tokens=config.max_new_tokens, seed=_prompt_seed(config, round_index, 3 + offset),
        noise_scale=config.noise_scale).select_columns(PAIR_COLUMNS) for criterion in CRITERIA}


def rm_training_pairs(criterion: str, new: dict[str, datasets.Dataset], earlier: list[dict[str, datasets.Dataset]],
                      config: RLHFConfig, rng: random.Random) -> datasets.Dataset:
    """This round's pairs, as many replayed from earlier rounds (round 0: the toy world's), and for the safety
    RM its share of helpfulness pairs (Llama 2's 90/10 mix), shuffled."""
    parts = [new[criterion]]
    pool = datasets.concatenate_datasets([rounds[criterion] for rounds in earlier])
    replay = min(len(pool), len(new[criterion]))
    parts.append(pool.select(rng.sample(range(len(pool)), replay)))
    if criterion == "safety" and config.helpfulness_mix:
        total = sum(len(part) for part in parts)
        helpful = new["helpfulness"]
        count = min(len(helpful), round(total * config.helpfulness_mix / (1 - config.helpfulness_mix)))
        parts.append(helpful.select(rng.sample(range(len(helpful)), count)))
    return datasets.concatenate_datasets(parts).shuffle(seed=rng.randrange(2**31))


def train_rm(criterion: str, pairs: datasets.Dataset, config: RLHFConfig, folder: Path,
             start: RewardModel | None) -> RewardModel:
    """Train (or continue) one RM on `pairs` for one epoch with the small margin; write it to `folder`."""
    backbone = config.helpfulness_backbone if criterion == "helpfulness" else config.safety_backbone
    head = config.helpfulness_head if criterion == "helpfulness" else "scalar"
    rm_config = RewardConfig(criterion=criterion, base=backbone, head=head, lr=config.rm_lr,
                             batch_size=config.rm_batch_size, seed=config.seed,
                             output_dir=str(folder.parent / f"rm-{criterion}-run"))
    off_policy = generate_preferences(300, seed=90_000 + config.seed, criterion=criterion,
                                      noise_scale=config.noise_scale).select_columns(PAIR_COLUMNS)
    model, _, card = train_reward_model(rm_config, (pairs, off_policy), start=start)
    card["held_out"] = {"off_policy_accuracy": card["held_out"]["accuracy"]}
    save_reward_model(model, folder, card)
    return model


def improve_policy(policy: Llama, rms: dict[str, RewardModel], tokenizer: Tokenizer, config: RLHFConfig,
                   round_index: int, excluded: set[str], pooled: dict[str, str], folder: Path,
                   ) -> tuple[Llama, dict[str, Any]]:
    """Rejection sampling (rounds before the last, or every round without `ppo_last`), else PPO, from `policy`."""
    model = copy.deepcopy(policy)
    if config.ppo_last and round_index == config.rounds:
        ppo_config = PPOConfig(**({"seed": config.seed, "max_new_tokens": config.max_new_tokens} | config.ppo))
        prompts = _fresh(ppo_prompts(max(2000, ppo_config.batch_size), _prompt_seed(config, round_index, 7), 0.25),
                         excluded)
        critic = ValueModel.from_reward_model(rms["helpfulness"])
        models = PPOModels(model, copy.deepcopy(policy), critic, rms["helpfulness"], rms["safety"])
        history = train_ppo(models, tokenizer, prompts, ppo_config, folder / "ppo")
        history = [{k: v for k, v in row.items() if k != "seconds"} for row in history]  # wall time: in metrics.jsonl
        return models.policy.eval(), {"method": "ppo", "ppo_history": history}
    scorer = safety_first_scorer(rms["helpfulness"], rms["safety"], tokenizer, is_safety_prompt)
    prompts = ppo_prompts(config.rs_prompts, _prompt_seed(config, round_index, 6), 0.2)
    extra = borderline_requests(config.borderline_prompts, _prompt_seed(config, round_index, 11))
    if not config.borderline_demonstrations:
        prompts += list(extra)
    prompts = _fresh(prompts, excluded)
    rs_config = RejectionConfig(samples=config.rs_samples, temperature=config.rs_temperature,
                                max_new_tokens=config.max_new_tokens, epochs=config.rs_epochs, lr=config.rs_lr,
                                seed=config.seed)
    samples = sample_responses(policy, tokenizer, prompts, config.rs_samples, config.rs_temperature,
                               max_new_tokens=config.max_new_tokens, seed=_prompt_seed(config, round_index, 8))
    flat_prompts = [p for p in prompts for _ in range(config.rs_samples)]
    scores = scorer(flat_prompts, [s for row in samples for s in row]).view(len(prompts), -1)
    best = scores.argmax(dim=1).tolist()
    winners = {prompt: row[i] for prompt, row, i in zip(prompts, samples, best, strict=True) if row[i].strip()}
    pooled.update(balanced_safety_mix(winners) if config.balance_safety else winners)
    if config.borderline_demonstrations:
        pooled.update({prompt: extra[prompt] for prompt in _fresh(list(extra), excluded)})
    model = finetune_on_answers(model, tokenizer, list(pooled), list(pooled.values()), rs_config, folder / "rs",
                                config.seed + round_index)
    return model, {"method": "rejection_sampling", "kept_score": float(scores.max(dim=1).values.mean()),
                   "sampled_score": float(scores.mean()), "training_answers": len(pooled)}


def balanced_safety_mix(winners: dict[str, str]) -> dict[str, str]:
    """`winners` with the unsafe prompts' entries beyond the number of borderline ones dropped (the first ones
    kept). The toy world's borderline requests come from few templates, so one winner per distinct prompt holds
    four to five refusals of unsafe requests for every helpful borderline answer, and a policy fine-tuned on it
    learns to refuse anything that sounds unsafe (Llama 2 sees false refusal on its borderline set rise with the
    share of safety data: section 4.2, appendix Figure 33). Chapter 12 measures what the cap does and does not
    fix."""
    borderline = sum(identify_borderline(prompt) is not None for prompt in winners)
    unsafe = [prompt for prompt in winners if is_safety_prompt(prompt)]
    dropped = set(unsafe[borderline:])
    return {prompt: answer for prompt, answer in winners.items() if prompt not in dropped}


def pool_composition(pool: dict[str, str]) -> dict[str, int]:
    """What a round's pooled winners teach on safety: how many answer unsafe and borderline requests, and how
    many of each are refusals (Llama 2's false refusals start here, section 4.2.3)."""
    unsafe = [prompt for prompt in pool if is_safety_prompt(prompt)]
    borderline = [prompt for prompt in pool if identify_borderline(prompt) is not None]
    return {"answers": len(pool), "unsafe": len(unsafe), "unsafe_refused": sum(is_refusal(pool[p]) for p in unsafe),
            "borderline": len(borderline), "borderline_refused": sum(is_refusal(pool[p]) for p in borderline)}


@dataclass
class RoundState:
    """What the next round needs: the last two policies, the RMs, every round's pairs, the pooled RS winners."""

    policies: list[Llama]
    rms: dict[str, RewardModel]
    pairs: list[dict[str, datasets.Dataset]]
    pooled: dict[str, str]


def _round_dir(config: RLHFConfig, round_index: int) -> Path:
    return config.seed_dir() / f"round-{round_index}"


def _save_round(folder: Path, policy: Llama, rms: dict[str, RewardModel], pairs: dict[str, datasets.Dataset] | None,
                pooled: dict[str, str], report: dict[str, Any]) -> None:
    export_model(policy, folder / "policy", {"rlhf_round": report["round"]})
    for criterion, rm in rms.items():
        if not (folder / f"rm_{criterion}" / "config.json").is_file():
            save_reward_model(rm, folder / f"rm_{criterion}", {"rlhf_round": report["round"]})
    for criterion, rows in (pairs or {}).items():
        (folder / f"pairs_{criterion}.json").write_text(json.dumps(rows.to_list()))
    (folder / "rs_pool.json").write_text(json.dumps(pooled))
    (folder / "round.json").write_text(json.dumps(report) + "\n")  # last: marks the round complete


def _load_state(config: RLHFConfig, last: int) -> RoundState:
    folder = _round_dir(config, last)
    policies = [load_base_model(str(_round_dir(config, k) / "policy"))[0] for k in range(max(0, last - 1), last + 1)]
    rms = {criterion: load_reward_model(folder / f"rm_{criterion}")[0] for criterion in CRITERIA}
    pairs = [{c: datasets.Dataset.from_list(json.loads((_round_dir(config, k) / f"pairs_{c}.json").read_text()))
              for c in CRITERIA} for k in range(0, last + 1)]
    return RoundState(policies, rms, pairs, json.loads((folder / "rs_pool.json").read_text()))


def completed_rounds(config: RLHFConfig) -> int:
    """The number of the last round whose `round.json` exists, -1 when none."""
    done = -1
    while (_round_dir(config, done + 1) / "round.json").is_file():
        done += 1
    return done


def run_round_zero(config: RLHFConfig, tokenizer: Tokenizer, prompts: list[str]) -> RoundState:
    """V0 (the SFT policy) and the RMs trained on the toy world's off-policy pairs only, measured."""
    folder = _round_dir(config, 0)
    policy, _ = load_base_model(config.policy)
    pairs = {c: generate_preferences(config.toy_pairs, seed=config.seed * 10 + i, criterion=c,
                                     noise_scale=config.noise_scale).select_columns(PAIR_COLUMNS)
             for i, c in enumerate(CRITERIA)}
    rms = {}
    for criterion in CRITERIA:
        data = pairs[criterion]
        if criterion == "safety" and config.helpfulness_mix:
            count = round(len(data) * config.helpfulness_mix / (1 - config.helpfulness_mix))
            data = datasets.concatenate_datasets([data, pairs["helpfulness"].select(range(count))]).shuffle(seed=0)
        rms[criterion] = train_rm(criterion, data, config, folder / f"rm_{criterion}", None)
    capture = best_of_n_capture(policy, rms["helpfulness"], tokenizer, prompts[: config.capture_prompts], config,
                                _prompt_seed(config, 0, 9))
    report = {"round": 0, "method": "sft", "policy": measure_policy(policy, tokenizer, prompts, config,
                                                                    _prompt_seed(config, 0, 10)),
              "capture": capture, "config": dataclasses.asdict(config)}
    _save_round(folder, policy, rms, pairs, {}, report)
    return RoundState([policy], rms, [pairs], {})


def run_round(config: RLHFConfig, state: RoundState, round_index: int, tokenizer: Tokenizer, prompts: list[str],
              excluded: set[str]) -> RoundState:
    """One version (module docstring, steps 1 to 5); returns the state the next round starts from."""
    folder = _round_dir(config, round_index)
    current = state.policies[-1]
    variants = {f"V{round_index - 1}": current}
    if len(state.policies) > 1:
        variants[f"V{round_index - 2}"] = state.policies[-2]
    new = collect_pairs(variants, tokenizer, config, round_index, excluded, held_out=False)
    probe = collect_pairs(variants, tokenizer, config, round_index, excluded, held_out=True)
    accuracy = {c: {"before": true_order_accuracy(state.rms[c], tokenizer, probe[c])} for c in CRITERIA}
    rng = random.Random(config.seed * 7919 + round_index)
    rms = {}
    for criterion in CRITERIA:
        data = rm_training_pairs(criterion, new, state.pairs, config, rng)
        start = copy.deepcopy(state.rms[criterion])
        rms[criterion] = train_rm(criterion, data, config, folder / f"rm_{criterion}", start)
        accuracy[criterion]["after"] = true_order_accuracy(rms[criterion], tokenizer, probe[criterion])
    capture = best_of_n_capture(current, rms["helpfulness"], tokenizer, prompts[: config.capture_prompts], config,
                                _prompt_seed(config, round_index, 9))
    pooled = dict(state.pooled)
    policy, details = improve_policy(current, rms, tokenizer, config, round_index, excluded, pooled, folder)
    report = {"round": round_index, **details, "rm_accuracy_new_pairs": accuracy, "capture": capture,
              "policy": measure_policy(policy, tokenizer, prompts, config, _prompt_seed(config, 0, 10))}
    _save_round(folder, policy, rms, new, pooled, report)
    return RoundState([current, policy], rms, [*state.pairs, new], pooled)


def run_rlhf(config: RLHFConfig, on_round: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run (or resume) rounds 0..config.rounds for `config.seed`; returns every round's report."""
    from llama_course.toyworld import toy_tokenizer

    tokenizer = toy_tokenizer()
    torch.manual_seed(config.seed)
    prompts = eval_prompts(config)
    excluded = set(prompts)
    done = completed_rounds(config)
    state = _load_state(config, done) if done >= 0 else run_round_zero(config, tokenizer, prompts)
    if done < 0 and on_round is not None:
        on_round(load_round(config, 0))
    for round_index in range(max(done, 0) + 1, config.rounds + 1):
        state = run_round(config, state, round_index, tokenizer, prompts, excluded)
        if on_round is not None:
            on_round(load_round(config, round_index))
    return [load_round(config, k) for k in range(config.rounds + 1)]


def load_round(config: RLHFConfig, round_index: int) -> dict[str, Any]:
    return json.loads((_round_dir(config, round_index) / "round.json").read_text())


def load_pool(config: RLHFConfig, round_index: int) -> dict[str, str]:
    """The rejection-sampling pool after round `round_index`: prompt -> the winner the policy was tuned on."""
    return json.loads((_round_dir(config, round_index) / "rs_pool.json").read_text())


__all__ = ["CRITERIA", "RLHFConfig", "balanced_safety_mix", "borderline_requests", "completed_rounds", "eval_prompts",
           "load_pool", "load_round", "pool_composition", "prompt_kind", "run_rlhf", "summarize_policy",
           "true_order_accuracy"]
