"""Rejection sampling fine-tuning (Llama 2, section 3.2.3): best-of-N by a reward model, then SFT on the winners.

"We sample K outputs from the model and select the best candidate with our reward" and fine-tune on it as
in SFT; "in each iterative stage, we sample K answers for each prompt from the most recent model", and
later stages pool "top-performing samples from all prior iterations". Only the largest model samples; the
smaller ones are fine-tuned on its samples (distillation). Here:

- `sample_responses` draws N answers per prompt in left-padded batches through the KV cache, seeded;
- `best_of_n` scores them with a judge (a `RewardModel` or any `(prompts, responses) -> scores` callable, a
  `Scorer`: e.g. the toy world's `experiments.toyworld_judges.true_reward`) and keeps the argmax per prompt,
  returning every score (`BestOfN`);
- `expected_order_statistic` turns K scored samples into the exact expected max and median among N <= K
  (Figure 7), and `best_of_n_kl` measures the KL of best-of-N sampling against the analytic bound
  `log N - (N-1)/N`;
- `rejection_sampling` runs the iterative loop (or its distillation variant) on the caller's prompts and judge,
  and measures each iteration (also by a true reward, when the caller has one).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch

from llama_course.alignment.reward import RewardModel, Scorer, combine_rewards, score_responses
from llama_course.alignment.sft_data import encode_conversations, pack_sft
from llama_course.alignment.sft_eval import answer_prompts
from llama_course.chat import encode_dialog
from llama_course.generation import generate
from llama_course.model import Llama
from llama_course.tokenizer import Tokenizer
from llama_course.training.trainer import Trainer, TrainerConfig


def raw_scorer(reward_model: RewardModel, tokenizer: Tokenizer) -> Scorer:
    """A scorer reading `reward_model`'s raw scores (`reward.score_responses`).

    An empty response cannot be written as a chat turn (the format forbids empty content), so it scores -inf,
    the worst possible value: a model that stops at once is never the best of its samples.
    """

    def score(prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        scores = torch.full((len(responses),), -math.inf)
        kept = [i for i, response in enumerate(responses) if response.strip()]
        if kept:
            scores[kept] = score_responses(reward_model, tokenizer, [prompts[i] for i in kept],
                                           [responses[i] for i in kept])
        return scores

    return score


def reward_model_scorer(reward_model: RewardModel, tokenizer: Tokenizer) -> Scorer:
    """A scorer reading `reward_model` on the paper's [0, 1] scale (sigmoid of the raw score; 0 for an empty
    response)."""
    raw = raw_scorer(reward_model, tokenizer)
    return lambda prompts, responses: torch.sigmoid(raw(prompts, responses))


def log_likelihood_scorer(model: Llama, tokenizer: Tokenizer) -> Scorer:
    """A scorer with no training: the log-probability `model` gives the response's tokens (its EOS included)
    after the prompt, summed (an untrained, uncalibrated likelihood RM's raw score). A judge that reads a language
    model's own knowledge of the task; it also favours short answers, as every token costs."""
    return raw_scorer(RewardModel(model, tokenizer.eos_id, head="likelihood").eval(), tokenizer)


def safety_first_scorer(helpfulness_rm: RewardModel, safety_rm: RewardModel, tokenizer: Tokenizer,
                        is_safety: Callable[[str], bool]) -> Scorer:
    """A scorer of Llama 2's safety-first reward R_c (section 3.2.3, `reward.combine_rewards`) from the two RMs'
    sigmoid scores; `is_safety(prompt)` is IS_SAFETY(p), e.g. `toyworld.is_safety_prompt`."""
    helpful, safe = reward_model_scorer(helpfulness_rm, tokenizer), reward_model_scorer(safety_rm, tokenizer)

    def score(prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
        return combine_rewards(helpful(prompts, responses), safe(prompts, responses), [is_safety(p) for p in prompts])

    return score


def as_scorer(reward: RewardModel | Scorer, tokenizer: Tokenizer) -> Scorer:
    return reward_model_scorer(reward, tokenizer) if isinstance(reward, RewardModel) else reward


@torch.no_grad()
def sample_responses(policy: Llama, tokenizer: Tokenizer, prompts: Sequence[str], n: int, temperature: float, *,
                     max_new_tokens: int = 48, seed: int = 0, batch_size: int = 256) -> list[list[str]]:
    """`n` sampled answers to each single-turn prompt (Llama 2-Chat format), as `[prompt][sample]` strings.

    The prompt's n copies sit side by side in left-padded batches of `batch_size` rows that share one KV
    cache; batch b samples with seed `seed + b`, so the same arguments give the same answers.
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1 (samples per prompt)")
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt to sample for")
    encoded = [encode_dialog(tokenizer, [{"role": "user", "content": prompt}]).ids for prompt in prompts]
    rows = [ids for ids in encoded for _ in range(n)]
    budget = min(max_new_tokens, policy.config.max_seq_len - max(len(ids) for ids in encoded))
    if budget < 1:
        raise ValueError(f"the longest prompt leaves no room to answer in the context of {policy.config.max_seq_len}")
    policy.eval()
    texts: list[str] = []
    for batch, start in enumerate(range(0, len(rows), batch_size)):
        outputs = generate(policy, rows[start : start + batch_size], budget, temperature=temperature,
                           eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, seed=seed + batch)
        texts += [tokenizer.decode([t for t in ids if t != tokenizer.eos_id]).strip() for ids in outputs]
    return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


@dataclass(frozen=True)
class BestOfN:
    """Best-of-N for each prompt: all `responses[p][i]`, their `scores` (P, N), and the argmax `best` (P,)."""

    prompts: list[str]
    responses: list[list[str]]
    scores: torch.Tensor
    best: torch.Tensor

    @property
    def best_responses(self) -> list[str]:
        return [samples[int(i)] for samples, i in zip(self.responses, self.best, strict=True)]

    @property
    def best_scores(self) -> torch.Tensor:
        return self.scores.gather(1, self.best[:, None]).squeeze(1)


def select_best(scores: torch.Tensor) -> torch.Tensor:
    """The index of the highest score in each row of `scores` (P, N), the first one on ties: (P,)."""
    if scores.dim() != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be (prompts, samples) with at least one sample, got {tuple(scores.shape)}")
    return scores.argmax(dim=1)


def best_of_n(policy: Llama, reward_model: RewardModel | Scorer, prompts: Sequence[str], n: int,
              temperature: float, *, tokenizer: Tokenizer, max_new_tokens: int = 48, seed: int = 0,
              batch_size: int = 256) -> BestOfN:
    """Sample `n` answers per prompt from `policy`, score them all, keep the best (Llama 2, section 3.2.3).

    `reward_model` is a `RewardModel` (scored on the sigmoid scale, `reward_model_scorer`) or any scorer
    `(prompts, responses) -> (N,) scores`.
    """
    responses = sample_responses(policy, tokenizer, prompts, n, temperature, max_new_tokens=max_new_tokens,
                                 seed=seed, batch_size=batch_size)
    flat_prompts = [prompt for prompt in prompts for _ in range(n)]
    flat_responses = [response for samples in responses for response in samples]
    scores = as_scorer(reward_model, tokenizer)(flat_prompts, flat_responses).float().reshape(len(prompts), n)
    return BestOfN(list(prompts), responses, scores, select_best(scores))


def expected_order_statistic(scores: torch.Tensor, n: int, rank: int, values: torch.Tensor | None = None
                             ) -> torch.Tensor:
    """E[the `rank`-th smallest of n samples drawn without replacement from each row's K scores], (P,) float64.

    Exact, with no resampling noise: sorted ascending, score s_(i) is the rank-th smallest of a random
    n-subset with probability C(i-1, rank-1) C(K-i, n-rank) / C(K, n). rank = n is the max of best-of-n.
    With `values` (P, K), the expectation is of the value of the sample that ranks there by `scores`: e.g.
    the true reward of the answer the reward model picks among n.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (prompts, K samples), got shape {tuple(scores.shape)}")
    k = scores.shape[1]
    if not 1 <= n <= k or not 1 <= rank <= n:
        raise ValueError(f"need 1 <= rank={rank} <= n={n} <= K={k}: draw at least n samples per prompt")
    i = torch.arange(1, k + 1, dtype=torch.float64)

    def log_comb(a: torch.Tensor | float, b: float) -> torch.Tensor:
        a = torch.as_tensor(a, dtype=torch.float64)
        return torch.lgamma(a + 1) - torch.lgamma(torch.tensor(b + 1.0, dtype=torch.float64)) - torch.lgamma(a - b + 1)

    valid = (i >= rank) & (k - i >= n - rank)
    log_weight = log_comb(i - 1, rank - 1) + log_comb(k - i, n - rank) - log_comb(float(k), n)
    weights = torch.where(valid, log_weight.exp(), torch.zeros_like(i))
    order = scores.argsort(dim=1, stable=True)
    return (scores if values is None else values).double().gather(1, order) @ weights


def max_and_median_curves(scores: torch.Tensor, ns: Sequence[int]) -> dict[str, list[float]]:
    """Figure 7 of Llama 2: the expected max and median reward among N samples, averaged over prompts.

    `scores` (P, K) holds K >= max(ns) samples per prompt; the median of an even N is the mean of its two
    middle samples.
    """
    maxima, medians = [], []
    for n in ns:
        maxima.append(float(expected_order_statistic(scores, n, n).mean()))
        middle = (expected_order_statistic(scores, n, (n + 1) // 2) + expected_order_statistic(scores, n, n // 2 + 1))
        medians.append(float((middle / 2).mean()))
    return {"n": list(ns), "max": maxima, "median": medians}


def best_of_n_kl_bound(n: int) -> float:
    """`log N - (N-1)/N`: KL(best-of-N || policy) when no two samples tie in reward (Stiennon et al., 2020)."""
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    return math.log(n) - (n - 1) / n


def best_of_n_kl(scores: torch.Tensor, n: int, decimals: int = 6) -> torch.Tensor:
    """KL(best-of-n || sampling) of each row, (P,) float64, measured on its K samples' empirical distribution.

    Samples with equal scores (to `decimals`) form one group g of mass Q_g and cumulative mass F_g in score
    order; best-of-n picks group g with probability p_g = F_g^n - F_{g-1}^n, so KL = sum_g p_g log(p_g / Q_g).
    Ties (e.g. a model repeating one answer) push it below the bound; with K distinct scores it tends to the
    bound as K grows.
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    kls = []
    for row in scores.double():
        _, counts = torch.unique(torch.round(row, decimals=decimals), sorted=True, return_counts=True)
        mass = counts.double() / row.numel()
        cumulative = mass.cumsum(0).clamp(max=1.0)
        picked = cumulative**n - torch.cat([cumulative.new_zeros(1), cumulative[:-1]]) ** n
        kl = torch.where(picked > 0, picked * (picked / mass).log(), torch.zeros_like(picked)).sum()
        kls.append(kl.clamp(min=0.0))  # a KL is >= 0; only float rounding makes the N = 1 sum dip below
    return torch.stack(kls)


@dataclass
class RejectionConfig:
    """The loop's knobs; our laptop-scale choices where the paper (section 3.2.3) gives none."""

    iterations: int = 2
    samples: int = 8  # K answers per prompt (the paper's K; Figure 7 goes to 100)
    temperature: float = 0.7
    max_new_tokens: int = 48
    steps: int = 10  # fine-tuning steps per iteration: about 2 epochs over 128 kept answers
    epochs: float | None = None  # when set, passes over the kept answers' packed blocks (replaces `steps`)
    batch_size: int = 8  # packed blocks per step
    block_size: int = 128
    lr: float = 1e-4  # the SFT run's final rate; its 1e-3 peak undoes SFT here (held-out counting 0.55 -> 0.50)
    seed: int = 0
    device: str = "cpu"
    pool: bool = True  # later iterations also train on the best answers of earlier ones (Llama 2's RLHF V4)

    def __post_init__(self) -> None:
        for name in ("iterations", "samples", "max_new_tokens", "steps", "batch_size", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0: rejection sampling needs varied samples")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs} must be positive (or None to train `steps` steps)")


def finetune_on_answers(model: Llama, tokenizer: Tokenizer, prompts: Sequence[str], answers: Sequence[str],
                        config: RejectionConfig, output_dir: str | Path, seed: int) -> Llama:
    """SFT (answer-only loss, packed blocks; Llama 2, section 3.1) of `model` on one answer per prompt.

    Empty answers are dropped. Returns the trained model in eval mode on the CPU (the input is trained in place).
    """
    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
            for p, a in zip(prompts, answers, strict=True) if a.strip()]
    if not rows:
        raise ValueError("every kept answer is empty: nothing to fine-tune on; sample more answers or longer ones")
    blocks = pack_sft(encode_conversations(tokenizer, datasets.Dataset.from_list(rows),
                                           max_tokens=model.config.max_seq_len), config.block_size)
    if len(blocks) == 0:
        raise ValueError(f"{len(rows)} kept answers do not fill one block of {config.block_size} tokens: "
                         "lower block_size or use more prompts")
    steps = config.steps if config.epochs is None else math.ceil(config.epochs * len(blocks) / config.batch_size)
    trainer_config = TrainerConfig(steps=steps, micro_batch_size=config.batch_size, lr=config.lr,
                                   warmup_steps=0, eval_every=0, eval_batches=0, checkpoint_every=steps,
                                   keep_checkpoints=1, log_every=max(1, steps // 4), seed=seed,
                                   device=config.device, autocast="off", progress=False, resume=False)
    trainer = Trainer(model, blocks, trainer_config, output_dir, columns=["input_ids", "labels", "document_ids"],
                      metadata={"model_config": model.config.to_dict()})
    trainer.fit()
    return trainer.raw_model.cpu().eval()


def held_out_reward(model: Llama, tokenizer: Tokenizer, prompts: Sequence[str], scorers: dict[str, Scorer],
                    max_new_tokens: int = 48) -> dict[str, float]:
    """Mean reward of the model's greedy answers to held-out prompts, under each named scorer."""
    answers = answer_prompts(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens)
    return {name: float(score(list(prompts), answers).mean()) for name, score in scorers.items()}


def rejection_sampling(policy: Llama, reward_model: RewardModel | Scorer, tokenizer: Tokenizer,
                       prompts: Sequence[str], held_out: Sequence[str], config: RejectionConfig,
                       output_dir: str | Path, *, student: Llama | None = None,
                       on_round: Callable[[int, Llama], None] | None = None, truth: Scorer | None = None,
                       ) -> tuple[Llama, list[dict[str, Any]]]:
    """Iterative rejection sampling fine-tuning (Llama 2, section 3.2.3); returns the tuned model and history.

    Each iteration samples `config.samples` answers per prompt from the latest model, keeps the best by the
    reward model, and fine-tunes the latest model on the kept answers (with `pool`, on the best answer each
    prompt ever had). With `student`, `policy` is the teacher: it alone samples, and never changes, while
    `student` is fine-tuned on its best answers (the paper's distillation into smaller models).
    `on_round(iteration, model)` sees the model after each round. The inputs are not modified. History row
    0 is the starting model; each row holds the held-out greedy reward under the reward model (`rm`) and, when
    the caller gives a `truth` scorer (used for measuring only), under it (`true`), and the mean RM score of
    the sampled and of the kept answers.
    """
    if not prompts or not held_out:
        raise ValueError(f"need training prompts and held-out prompts, got {len(prompts)} and {len(held_out)}")
    scorer = as_scorer(reward_model, tokenizer)
    scorers = {"rm": scorer} | ({"true": truth} if truth is not None else {})
    model = copy.deepcopy(student if student is not None else policy)
    history = [{"iteration": 0, **held_out_reward(model, tokenizer, held_out, scorers, config.max_new_tokens)}]
    pooled: dict[str, tuple[float, str]] = {}
    for iteration in range(1, config.iterations + 1):
        sampler = policy if student is not None else model
        result = best_of_n(sampler, scorer, prompts, config.samples, config.temperature, tokenizer=tokenizer,
                           max_new_tokens=config.max_new_tokens, seed=config.seed + 1000 * iteration)
        if not config.pool:
            pooled = {}
        for prompt, answer, score in zip(prompts, result.best_responses, result.best_scores.tolist(), strict=True):
            if prompt not in pooled or score > pooled[prompt][0]:
                pooled[prompt] = (score, answer)
        model = finetune_on_answers(model, tokenizer, list(pooled), [answer for _, answer in pooled.values()],
                                    config, Path(output_dir) / f"iteration-{iteration}", config.seed + iteration)
        if on_round is not None:
            on_round(iteration, model)
        history.append({"iteration": iteration, "kept_rm": float(result.best_scores.mean()),
                        "sampled_rm": float(result.scores.mean()), "training_answers": len(pooled),
                        **held_out_reward(model, tokenizer, held_out, scorers, config.max_new_tokens)})
    return model, history


__all__ = [
    "BestOfN",
    "RejectionConfig",
    "Scorer",
    "best_of_n",
    "best_of_n_kl",
    "best_of_n_kl_bound",
    "expected_order_statistic",
    "finetune_on_answers",
    "held_out_reward",
    "log_likelihood_scorer",
    "max_and_median_curves",
    "raw_scorer",
    "reward_model_scorer",
    "rejection_sampling",
    "safety_first_scorer",
    "sample_responses",
    "select_best",
]
