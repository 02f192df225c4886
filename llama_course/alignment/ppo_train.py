"""The PPO loop of Llama 2 (section 3.2.3), data-parallel under `torchrun`, on the caller's prompts and judges.

Each iteration:
1. draws `batch_size` of the caller's prompts and samples one response to each from the policy
   (`ppo_rollout.sample_rollout`: KV cache, temperature T, log-probabilities recorded);
2. scores them with the helpfulness and safety reward models and combines the scores safety-first,
   `R~_c = WHITEN(LOGIT(R_c))` (`reward.ppo_reward`; IS_SAFETY(p) is the caller's `is_safety(prompt)`), or
   with the caller's own judge, `(prompts, responses) -> scores`, whitened (`reward="true"`);
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

A caller with a true reward passes `truth`, `(prompts, responses) -> {name: (B,) values}`, used for measuring
only: each iteration logs the mean of each of its measures (the course's: `experiments.ppo.ppo_truth`).
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
from llama_course.alignment.reward import RewardModel, Scorer, ppo_reward, whiten
from llama_course.model import Llama
from llama_course.paper import SAFETY_THRESHOLD
from llama_course.tokenizer import Tokenizer
from llama_course.training.distributed import all_reduce_sum, init_distributed, parallelize
from llama_course.training.metrics import MetricsLog
from llama_course.training.optim import AdamWConfig, build_optimizer

REWARDS = ("safety-first", "helpfulness", "true")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
Truth = Callable[[Sequence[str], Sequence[str]], dict[str, torch.Tensor]]  # -> {measure: (B,) values, NaN: n/a}


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
    # "helpfulness": the helpfulness RM alone; "true": the caller's judge (train_ppo's `judge`), e.g. a true reward
    reward: str = "safety-first"
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
    """The five models of PPO: the policy being trained, its frozen copy, the critic, and the two RMs (which a
    run with its own judge, `reward="true"`, may leave out)."""

    policy: Llama
    reference: Llama
    value: ValueModel
    helpfulness: RewardModel | None = None
    safety: RewardModel | None = None

    def to(self, device: torch.device, dtype: torch.dtype) -> PPOModels:
        for model in (self.policy, self.reference, self.value, self.helpfulness, self.safety):
            if model is not None:
                model.to(device=device, dtype=dtype)
        for frozen in (self.reference, self.helpfulness, self.safety):
            if frozen is not None:
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


def gather_rows(values: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's rows, in rank order (the tensor itself on a single process)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return values
    parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


@torch.no_grad()
def score_rollout(models: PPOModels, rollout: Rollout, config: PPOConfig, tokenizer: Tokenizer, *,
                  is_safety: Callable[[str], bool] | None = None, judge: Scorer | None = None
                  ) -> dict[str, torch.Tensor]:
    """The scores of each response and its whitened `score` (B,), what PPO maximises.

    With `reward="safety-first"` the score is Llama 2's `WHITEN(LOGIT(R_c))` of the two RMs' sigmoid scores
    (`reward.ppo_reward`), IS_SAFETY(p) being `is_safety(prompt)` (without it no prompt is a safety prompt, and
    only the 0.15 threshold brings in the safety RM); `reward="helpfulness"` switches the rule off (threshold 0,
    no safety prompt), so R_c is the helpfulness score. With `reward="true"` it is `judge(prompts, responses)`,
    returned as `judge` and whitened (a judge scores on the scale PPO whitens, as LOGIT(R_c) is). The RMs'
    scores (`helpfulness`, `safety`, `combined`) are returned whenever `models` has RMs. Whitening uses the
    statistics of the global batch (all processes).
    """
    if (judge is not None) != (config.reward == "true"):
        raise ValueError(f"reward={config.reward!r} with judge={judge!r}: a judge replaces the reward models, so pass "
                         "one exactly when reward='true'")
    has_rms = models.helpfulness is not None and models.safety is not None
    if config.reward != "true" and not has_rms:
        raise ValueError(f"reward={config.reward!r} reads the helpfulness and safety RMs, but PPOModels lacks them: "
                         "give both, or pass your own judge with reward='true'")
    scores: dict[str, torch.Tensor] = {}
    if has_rms:
        device = models.helpfulness.backbone.output.weight.device
        tokens, mask = (t.to(device) for t in reward_model_inputs(rollout, tokenizer.eos_id, tokenizer.pad_id))
        starts = torch.full((len(rollout),), rollout.prompt_width, device=device)  # every answer starts at column P
        helpful = torch.sigmoid(models.helpfulness(tokens, mask, starts)).double().cpu()
        safe = torch.sigmoid(models.safety(tokens, mask, starts)).double().cpu()
        safety_prompts = torch.tensor([bool(is_safety(prompt)) if is_safety is not None else False
                                       for prompt in rollout.prompts])
        threshold = 0.0 if config.reward == "helpfulness" else config.safety_threshold
        rule = torch.zeros_like(safety_prompts) if config.reward == "helpfulness" else safety_prompts
        scores = {"helpfulness": helpful, "safety": safe, "combined": torch.where(rule | (safe < threshold), safe,
                                                                                  helpful)}
    if judge is not None:
        scores["judge"] = judge(rollout.prompts, rollout.response_texts(tokenizer)).double().cpu()
        if scores["judge"].shape != (len(rollout),):
            raise ValueError(f"the judge returned scores of shape {tuple(scores['judge'].shape)} for {len(rollout)} "
                             "responses: return one score per response, (B,)")
        global_scores = whiten(gather_rows(scores["judge"]))
    else:
        global_scores = ppo_reward(gather_rows(helpful), gather_rows(safe), gather_rows(rule), threshold)
    rank = dist.get_rank() if dist.is_initialized() else 0
    score = global_scores[rank * len(rollout) : (rank + 1) * len(rollout)]
    return scores | {"score": score - config.missing_eos_penalty * (~rollout.ended).double()}


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
              on_iteration: Callable[[dict[str, Any]], None] | None = None, *,
              is_safety: Callable[[str], bool] | None = None, judge: Scorer | None = None,
              truth: Truth | None = None) -> list[dict[str, Any]]:
    """Run PPO (module docstring) on `models` in place with `prompts`; return one row of metrics per iteration.

    The reward is the RMs' (with IS_SAFETY(p) = `is_safety(prompt)`) or, with `reward="true"`, the caller's
    `judge` (`score_rollout`); `truth` is measured only (`measure`). Under `torchrun` each process samples its
    share of every batch and DDP averages the gradients. Rows are written to `output_dir/metrics.jsonl` by the
    main process when `output_dir` is given. `on_iteration` sees each row (e.g. to print progress).
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
        scores = score_rollout(models, rollout, config, tokenizer, is_safety=is_safety, judge=judge)
        targets = ppo_targets(models, rollout, scores["score"], config)
        losses = ppo_update(policy, critic, optimizers, rollout, targets, config)
        row = {"step": iteration, **measure(rollout, scores, targets.old_logprobs, targets.ref_logprobs, targets.mask,
                                            tokenizer, truth), **losses, "seconds": round(time.time() - started, 2)}
        history.append(row)
        if log is not None:
            log.log(row)
        if on_iteration is not None and context.is_main:
            on_iteration(row)
    models.policy.eval()
    return history


@torch.no_grad()
def evaluate_policy(models: PPOModels, tokenizer: Tokenizer, prompts: Sequence[str], config: PPOConfig, *,
                    samples: int = 1, seed: int = 12345, is_safety: Callable[[str], bool] | None = None,
                    judge: Scorer | None = None, truth: Truth | None = None) -> dict[str, float]:
    """`measure`'s metrics on held-out `prompts`, `samples` responses each sampled at the training temperature
    (a fixed seed, so two policies answer the same prompts with the same random draws); the judges as for
    `train_ppo`."""
    rollout = sample_rollout(models.policy, tokenizer, [p for p in prompts for _ in range(samples)],
                             temperature=config.temperature, max_new_tokens=config.max_new_tokens, seed=seed,
                             chunk_size=config.chunk_size)
    scores = score_rollout(models, rollout, config, tokenizer, is_safety=is_safety, judge=judge)
    ref_logprobs, _ = response_logprobs(models.reference, rollout, config.temperature)
    return measure(rollout, scores, rollout.logprobs.to(ref_logprobs), ref_logprobs,
                   rollout.response_mask.to(ref_logprobs.device), tokenizer, truth)


def measure(rollout: Rollout, scores: dict[str, torch.Tensor], logprobs: torch.Tensor, ref_logprobs: torch.Tensor,
            mask: torch.Tensor, tokenizer: Tokenizer, truth: Truth | None = None) -> dict[str, float]:
    """An iteration's metrics over the global batch: the mean RM scores (`rm_helpfulness`, `rm_safety`,
    `rm_combined`) and the judge's (`judge`) of `score_rollout`, the mean of each of `truth`'s measures over the
    responses where it is not NaN, KL (k1 and k3, nats per response), entropy (nats per token), response length
    (tokens) and the share of responses without EOS."""
    mask = mask.to(logprobs.dtype)
    lengths = mask.sum(dim=1)
    n = len(rollout)
    sums = {f"rm_{name}": (scores[name].sum(), n) for name in ("helpfulness", "safety", "combined") if name in scores}
    if "judge" in scores:
        sums["judge"] = (scores["judge"].sum(), n)
    for name, values in (truth(rollout.prompts, rollout.response_texts(tokenizer)) if truth else {}).items():
        counted = ~values.isnan()
        sums[name] = (torch.where(counted, values, 0.0).sum(), counted.sum())
    sums |= {"kl_k1": ((kl_k1(logprobs, ref_logprobs) * mask).sum(), n),
             "kl_k3": ((kl_k3(logprobs, ref_logprobs) * mask).sum(), n),
             "entropy": ((rollout.entropy.to(mask) * mask).sum(), lengths.sum()),
             "response_length": (lengths.sum(), n),
             "no_eos": ((~rollout.ended).sum(), n)}
    return global_means(sums)


__all__ = [
    "REWARDS",
    "PPOConfig",
    "Truth",
    "PPOModels",
    "PPOTargets",
    "evaluate_policy",
    "gather_rows",
    "iteration_prompts",
    "load_ppo_models",
    "measure",
    "ppo_targets",
    "ppo_update",
    "score_rollout",
    "train_ppo",
]
