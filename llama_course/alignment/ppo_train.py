"""The PPO loop of Llama 2 (section 3.2.3), data-parallel under `torchrun`.

Each iteration:
1. draws `batch_size` prompts (tasks and safety prompts) and samples one response to each from the policy
   (`ppo_rollout.sample_rollout`: KV cache, temperature T, log-probabilities recorded);
2. scores them with the helpfulness and safety reward models and combines the scores safety-first,
   `R~_c = WHITEN(LOGIT(R_c))` (`reward.ppo_reward`; IS_SAFETY(p) is the toy world's label of the prompt);
3. reads the frozen reference's log-probabilities and the critic's values, builds the per-token reward
   (`ppo.per_token_rewards`, k1 KL at every token, the score at the EOS) and GAE advantages, whitened;
4. takes one AdamW step per mini-batch of `minibatch_size` responses (the paper: 512 prompts, mini-batches
   of 64, one step each), with the clipped surrogate and the clipped value loss, gradient clipping 1.0,
   constant learning rate, AdamW (0.9, 0.95, eps 1e-5, weight decay 0.1).

Responses without EOS (cut at `max_new_tokens`) are scored by the RMs with an EOS appended, and their
whitened score is lowered by `missing_eos_penalty` (our choice: the paper does not say what it does).

Data-parallel: every process samples its own share of the global batch (chunk c of the batch always uses
seed `seed + c`, whichever process holds it, when `chunk_size` divides each process's share), whitening
statistics are summed over processes, token means are divided by the global token count, and DDP averages
the gradients, so N processes compute what one process computes with the same global batch (tested in
float64 with 2 gloo processes).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from llama_course.alignment.ppo import (
    CLIP,
    GAMMA,
    LAMBDA,
    clipped_policy_loss,
    clipped_value_loss,
    generalized_advantages,
    kl_k1,
    kl_k3,
    masked_whiten,
    per_token_rewards,
)
from llama_course.alignment.ppo_rollout import (
    Rollout,
    ValueModel,
    response_logits,
    response_logprobs,
    reward_model_inputs,
    sample_rollout,
)
from llama_course.alignment.reward import RewardModel, ppo_reward
from llama_course.model import Llama
from llama_course.tokenizer import Tokenizer
from llama_course.toyworld import combined_reward, helpfulness, is_safety_prompt, safety
from llama_course.toyworld.rewards import SAFETY_THRESHOLD
from llama_course.toyworld.safety import harmful_sentences
from llama_course.toyworld.scoring import is_refusal
from llama_course.training.distributed import all_reduce_sum, init_distributed, parallelize
from llama_course.training.metrics import MetricsLog
from llama_course.training.optim import AdamWConfig, build_optimizer

REWARDS = ("safety-first", "helpfulness", "true")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
# The toy world's true scores are often exactly 0 or 1; with LOGIT clamped at 1e-6 they would map to +-13.8 and
# swamp every partial credit after whitening. The oracle reward clamps them to [0.01, 0.99] (logits +-4.6), a
# range an RM's sigmoid scores stay within.
ORACLE_LOGIT_EPS = 0.01


@dataclass
class PPOConfig:
    """PPO's knobs. Paper values where it gives them (section 3.2.3), laptop-scale choices otherwise."""

    iterations: int = 40  # paper: 200 to 400
    batch_size: int = 64  # prompts per iteration over all processes (paper: 512)
    minibatch_size: int = 16  # responses per gradient step (paper: 64)
    lr: float = 5e-5  # constant; the paper's 1e-6 is 1/20 of its SFT rate (2e-5), and so is ours (SFT: 1e-3)
    value_lr: float = 1e-4  # the critic's, constant (not stated)
    # KL coefficient. Paper: 0.01 for 7B and 13B, 0.005 for 34B and 70B, on answers of hundreds of tokens. The
    # penalty is summed over an answer's tokens while the score is one per answer, so for the same price per
    # token of drift we scale 0.01 by the answer-length ratio, about 20 (our answers: about 15 tokens).
    beta: float = 0.2
    clip: float = CLIP
    value_clip: float = CLIP
    gamma: float = GAMMA
    lam: float = LAMBDA
    temperature: float = 0.7  # sampling temperature (not stated); log-probabilities use it too
    max_new_tokens: int = 48
    reward: str = "safety-first"  # "helpfulness": the helpfulness RM alone; "true": the toy world's true scores
    safety_threshold: float = SAFETY_THRESHOLD
    missing_eos_penalty: float = 1.0  # subtracted from the whitened score of a response with no EOS
    grad_clip: float = 1.0
    chunk_size: int = 64  # responses sampled together (one KV cache, one seed); at most a process's share
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        for name in ("iterations", "batch_size", "minibatch_size", "max_new_tokens", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.batch_size % self.minibatch_size:
            raise ValueError(f"batch_size={self.batch_size} is not a multiple of minibatch_size="
                             f"{self.minibatch_size}: every gradient step takes a whole mini-batch")
        if self.reward not in REWARDS:
            raise ValueError(f"reward={self.reward!r} is unknown; choose one of {REWARDS}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} is unknown; choose one of {tuple(DTYPES)}")
        for name in ("beta", "missing_eos_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("temperature", "lr", "value_lr", "grad_clip"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")


@dataclass
class PPOModels:
    """The five models of PPO: the policy being trained, its frozen copy, the critic, and the two RMs."""

    policy: Llama
    reference: Llama
    value: ValueModel
    helpfulness: RewardModel
    safety: RewardModel

    def to(self, device: torch.device, dtype: torch.dtype) -> PPOModels:
        for model in (self.policy, self.reference, self.value, self.helpfulness, self.safety):
            model.to(device=device, dtype=dtype)
        for frozen in (self.reference, self.helpfulness, self.safety):
            frozen.eval().requires_grad_(False)
        return self


def load_ppo_models(policy: str = "sft", helpfulness_rm: str = "helpfulness", safety_rm: str = "safety"
                    ) -> tuple[PPOModels, Tokenizer]:
    """`policy` (a shipped model name or folder, see `sft.load_base_model`) and its frozen copy, the two reward
    models (shipped names or folders, see `reward_train.load_reward_model`), and a critic started from the
    helpfulness RM. The defaults are the shipped models."""
    import copy

    from llama_course.alignment.reward_train import load_reward_model
    from llama_course.alignment.sft import load_base_model

    model, tokenizer = load_base_model(policy)
    helpful, _ = load_reward_model(helpfulness_rm)
    safe, _ = load_reward_model(safety_rm)
    return PPOModels(model, copy.deepcopy(model), ValueModel.from_reward_model(helpful), helpful, safe), tokenizer


def ppo_prompts(n: int, seed: int, safety_fraction: float = 0.25) -> list[str]:
    """`n` toy-world prompts: instruction tasks, and `safety_fraction` of them unsafe or borderline requests
    (`toyworld.generate_safety_prompts`, half and half), in a seeded random order."""
    from llama_course.toyworld import generate_safety_prompts, generate_tasks

    if not 0 <= safety_fraction <= 1:
        raise ValueError(f"safety_fraction={safety_fraction} must lie in [0, 1]")
    n_safety = round(n * safety_fraction)
    prompts = list(generate_tasks(n - n_safety, seed=seed)["prompt"]) if n > n_safety else []
    prompts += list(generate_safety_prompts(n_safety, seed=seed)["prompt"]) if n_safety else []
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))
    return [prompts[int(i)] for i in order]


def gather_rows(values: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's rows, in rank order (the tensor itself on a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return values
    parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def score_rollout(models: PPOModels, rollout: Rollout, config: PPOConfig, tokenizer: Tokenizer
                  ) -> dict[str, torch.Tensor]:
    """Sigmoid RM scores of each response (`helpfulness`, `safety`, `combined`) and its whitened `score` (B,).

    Whitening uses the statistics of the global batch (all processes). With `reward="helpfulness"` the
    safety-first rule is switched off (threshold 0, no safety prompt), so R_c is the helpfulness score; with
    `reward="true"` the toy world's true helpfulness and safety stand in for the two RMs (an oracle control).
    The `*_rm` scores returned are the RMs' in every case.
    """
    device = models.helpfulness.backbone.output.weight.device
    tokens, mask = (t.to(device) for t in reward_model_inputs(rollout, tokenizer.eos_id, tokenizer.pad_id))
    starts = torch.full((len(rollout),), rollout.prompt_width, device=device)  # every answer starts at column P
    helpful = torch.sigmoid(models.helpfulness(tokens, mask, starts)).double().cpu()
    safe = torch.sigmoid(models.safety(tokens, mask, starts)).double().cpu()
    is_safety = torch.tensor([is_safety_prompt(prompt) for prompt in rollout.prompts])
    threshold = 0.0 if config.reward == "helpfulness" else config.safety_threshold
    rule = torch.zeros_like(is_safety) if config.reward == "helpfulness" else is_safety
    judged = (helpful, safe)
    if config.reward == "true":
        truth = true_scores(rollout.prompts, rollout.response_texts(tokenizer))
        judged = (truth["helpfulness"], truth["safety"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    eps = ORACLE_LOGIT_EPS if config.reward == "true" else 1e-6
    global_scores = ppo_reward(gather_rows(judged[0]), gather_rows(judged[1]), gather_rows(rule), threshold, eps)
    score = global_scores[rank * len(rollout) : (rank + 1) * len(rollout)]
    score = score - config.missing_eos_penalty * (~rollout.ended).double()
    combined = torch.where(rule | (safe < threshold), safe, helpful)
    return {"helpfulness": helpful, "safety": safe, "combined": combined, "score": score}


def true_scores(prompts: Sequence[str], responses: Sequence[str]) -> dict[str, torch.Tensor]:
    """The toy world's truth for each response: helpfulness, safety, their safety-first combination, whether
    the prompt is a safety prompt (IS_SAFETY(p)), whether the response refuses, and whether it describes
    harm (complies with an unsafe request); all (B,) float64."""
    rows = [(helpfulness(p, r), safety(p, r), combined_reward(p, r), is_safety_prompt(p), is_refusal(r),
             bool(harmful_sentences(r))) for p, r in zip(prompts, responses, strict=True)]
    return dict(zip(("helpfulness", "safety", "combined", "is_safety", "refuses", "harmful"),
                    torch.tensor(rows, dtype=torch.float64).T, strict=True))


def iteration_prompts(pool: Sequence[str], config: PPOConfig, iteration: int) -> list[str]:
    """The global batch of iteration `iteration`: `batch_size` distinct prompts of `pool`, seeded."""
    if len(pool) < config.batch_size:
        raise ValueError(f"the prompt pool holds {len(pool)} prompts, fewer than batch_size={config.batch_size}")
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + iteration)
    return [pool[int(i)] for i in torch.randperm(len(pool), generator=generator)[: config.batch_size]]


def global_means(sums: dict[str, tuple[torch.Tensor | float, torch.Tensor | float]]) -> dict[str, float]:
    """`{name: (sum, count)}` summed over processes, as `{name: sum / count}` (NaN when the count is 0)."""
    packed = all_reduce_sum(torch.tensor([[float(s), float(c)] for s, c in sums.values()], dtype=torch.float64))
    return {name: float(s / c) if c > 0 else math.nan for name, (s, c) in zip(sums, packed.tolist(), strict=True)}


@dataclass
class PPOTargets:
    """What one rollout's update needs, each (B, L) on the training device: the sampling-time log-probabilities
    and values, the reference's log-probabilities, the whitened advantages and the returns."""

    mask: torch.Tensor
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor


@torch.no_grad()
def ppo_targets(models: PPOModels, rollout: Rollout, scores: torch.Tensor, config: PPOConfig) -> PPOTargets:
    """Per-token rewards (k1 KL everywhere, the whitened score at the EOS), GAE advantages (whitened over the
    global batch) and returns of a scored rollout."""
    dtype = DTYPES[config.dtype]
    device = models.policy.output.weight.device
    mask = rollout.response_mask.to(device)
    old_logprobs = rollout.logprobs.to(device, dtype)
    ref_logprobs, _ = response_logprobs(models.reference, rollout, config.temperature)
    old_values = response_logits(models.value, rollout) * mask
    rewards = per_token_rewards(scores.to(old_logprobs), old_logprobs, ref_logprobs, mask, config.beta)
    advantages, returns = generalized_advantages(rewards, old_values, mask, config.gamma, config.lam)
    return PPOTargets(mask, old_logprobs, ref_logprobs, old_values, masked_whiten(advantages, mask), returns)


def ppo_update(policy: torch.nn.Module, critic: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer],
               rollout: Rollout, targets: PPOTargets, config: PPOConfig) -> dict[str, float]:
    """One AdamW step of policy and critic per mini-batch of the rollout (Llama 2: one step per mini-batch);
    returns the mean losses and clip fraction over the global batch.

    Mini-batch k holds rows k, k + K, k + 2K, ... of each process's share (K mini-batches), so one process and
    N processes put the same responses in each global mini-batch.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    local_batch = len(rollout)
    n_minibatches = config.batch_size // config.minibatch_size
    totals = {"policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0}
    for k in range(n_minibatches):
        rows = torch.arange(k, local_batch, n_minibatches)
        part = rollout.select(rows)
        width = part.responses.shape[1]
        mask = targets.mask[rows, :width]
        # Token means over the GLOBAL mini-batch: DDP then averages over `world` processes.
        normalizer = all_reduce_sum(mask.sum().to(targets.old_logprobs.dtype)) / world
        logprobs, _ = response_logprobs(policy, part, config.temperature)
        policy_loss, clip_fraction = clipped_policy_loss(logprobs, targets.old_logprobs[rows, :width],
                                                         targets.advantages[rows, :width], mask, config.clip,
                                                         normalizer)
        value_loss = clipped_value_loss(response_logits(critic, part), targets.old_values[rows, :width],
                                        targets.returns[rows, :width], mask, config.value_clip, normalizer)
        (policy_loss + value_loss).backward()
        for model, optimizer in zip((policy, critic), optimizers, strict=True):
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        for name, value in (("policy_loss", policy_loss), ("value_loss", value_loss),
                            ("clip_fraction", clip_fraction)):
            totals[name] += float(value.detach()) / n_minibatches
    return {name: float(all_reduce_sum(torch.tensor(value, dtype=torch.float64))) / world
            for name, value in totals.items()}


def train_ppo(models: PPOModels, tokenizer: Tokenizer, prompts: Sequence[str], config: PPOConfig,
              output_dir: str | Path | None = None,
              on_iteration: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Run PPO (module docstring) on `models` in place; return one row of metrics per iteration.

    Under `torchrun` each process samples its share of every batch and DDP averages the gradients. Rows are
    written to `output_dir/metrics.jsonl` by the main process when `output_dir` is given. `on_iteration`
    sees each row (e.g. to print progress).
    """
    context = init_distributed(config.device)
    world = context.world_size
    local_batch = config.batch_size // world
    chunk = min(config.chunk_size, local_batch)
    if config.batch_size % world or config.minibatch_size % world or local_batch % chunk:
        raise ValueError(f"batch_size={config.batch_size} and minibatch_size={config.minibatch_size} must split "
                         f"evenly over {world} processes, and each process's {local_batch} prompts into chunks of "
                         f"chunk_size={config.chunk_size}; change them")
    models.to(context.device, DTYPES[config.dtype])
    policy = parallelize(models.policy, context, "ddp")
    critic = parallelize(models.value, context, "ddp")
    optimizers = [build_optimizer(models.policy, AdamWConfig(lr=config.lr)),
                  build_optimizer(models.value, AdamWConfig(lr=config.value_lr))]
    log = MetricsLog(output_dir, enabled=context.is_main) if output_dir is not None else None
    if log is not None:
        log.truncate_after(0)
    history = []
    for iteration in range(1, config.iterations + 1):
        started = time.time()
        batch = iteration_prompts(prompts, config, iteration)[context.rank * local_batch : (context.rank + 1)
                                                                                          * local_batch]
        rollout = sample_rollout(models.policy, tokenizer, batch, temperature=config.temperature,
                                 max_new_tokens=config.max_new_tokens, chunk_size=chunk,
                                 seed=config.seed * 1_000_003 + 10_000 * iteration,
                                 first_chunk=context.rank * local_batch // chunk)
        scores = score_rollout(models, rollout, config, tokenizer)
        targets = ppo_targets(models, rollout, scores["score"], config)
        losses = ppo_update(policy, critic, optimizers, rollout, targets, config)
        row = {"step": iteration, **measure(rollout, scores, targets.old_logprobs, targets.ref_logprobs, targets.mask,
                                            tokenizer), **losses, "seconds": round(time.time() - started, 2)}
        history.append(row)
        if log is not None:
            log.log(row)
        if on_iteration is not None and context.is_main:
            on_iteration(row)
    models.policy.eval()
    return history


@torch.no_grad()
def evaluate_policy(models: PPOModels, tokenizer: Tokenizer, prompts: Sequence[str], config: PPOConfig, *,
                    samples: int = 1, seed: int = 12345) -> dict[str, float]:
    """`measure`'s metrics on held-out `prompts`, `samples` responses each sampled at the training temperature
    (a fixed seed, so two policies answer the same prompts with the same random draws)."""
    rollout = sample_rollout(models.policy, tokenizer, [p for p in prompts for _ in range(samples)],
                             temperature=config.temperature, max_new_tokens=config.max_new_tokens, seed=seed,
                             chunk_size=config.chunk_size)
    scores = score_rollout(models, rollout, config, tokenizer)
    ref_logprobs, _ = response_logprobs(models.reference, rollout, config.temperature)
    return measure(rollout, scores, rollout.logprobs.to(ref_logprobs), ref_logprobs,
                   rollout.response_mask.to(ref_logprobs.device), tokenizer)


def measure(rollout: Rollout, scores: dict[str, torch.Tensor], logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
            mask: torch.Tensor, tokenizer: Tokenizer) -> dict[str, float]:
    """An iteration's metrics over the global batch: RM and true rewards, KL (k1 and k3, nats per response),
    entropy (nats per token), response length (tokens) and the share of responses without EOS."""
    truth = true_scores(rollout.prompts, rollout.response_texts(tokenizer))
    safety_rows, task_rows = truth["is_safety"], 1 - truth["is_safety"]
    mask = mask.to(logprobs.dtype)
    lengths = mask.sum(dim=1)
    n = len(rollout)
    sums = {f"rm_{name}": (scores[name].sum(), n) for name in ("helpfulness", "safety", "combined")}
    sums |= {"true_combined": (truth["combined"].sum(), n),
             "true_helpfulness_tasks": ((truth["helpfulness"] * task_rows).sum(), task_rows.sum()),
             "true_safety_unsafe": ((truth["safety"] * safety_rows).sum(), safety_rows.sum()),
             "refusal_unsafe": ((truth["refuses"] * safety_rows).sum(), safety_rows.sum()),
             "harmful_unsafe": ((truth["harmful"] * safety_rows).sum(), safety_rows.sum()),
             "kl_k1": ((kl_k1(logprobs, ref_logprobs) * mask).sum(), n),
             "kl_k3": ((kl_k3(logprobs, ref_logprobs) * mask).sum(), n),
             "entropy": ((rollout.entropy.to(mask) * mask).sum(), lengths.sum()),
             "response_length": (lengths.sum(), n),
             "no_eos": ((~rollout.ended).sum(), n)}
    return global_means(sums)


__all__ = [
    "REWARDS",
    "PPOConfig",
    "PPOModels",
    "PPOTargets",
    "evaluate_policy",
    "gather_rows",
    "iteration_prompts",
    "load_ppo_models",
    "measure",
    "ppo_prompts",
    "ppo_targets",
    "ppo_update",
    "score_rollout",
    "train_ppo",
    "true_scores",
]
