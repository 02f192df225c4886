"""PPO with a KL penalty (Llama 2, section 3.2.3): the per-token reward, GAE, and the clipped losses.

Llama 2 optimises `argmax_pi E_{p~D, g~pi}[R(g | p)]` with

    R(g | p) = R~_c(g | p) - beta * D_KL(pi_theta(g | p) || pi_0(g | p)),    R~_c = WHITEN(LOGIT(R_c))

where `R_c` is the safety-first combination of the two reward models (`reward.ppo_reward`) and `pi_0` the
frozen policy PPO starts from. PPO itself (Schulman et al., 2017) is not spelled out in the paper; the
pieces here are the standard ones, with every choice the paper leaves open stated:

- The KL term is spread over the response's tokens: token t gets `-beta * k1_t` with the k1 estimator
  `k1_t = log pi_theta(g_t | .) - log pi_0(g_t | .)` of the sampled token, whose sum over the response is an
  unbiased estimate of the sequence KL; `R~_c` is added at the response's last token, its EOS
  (`per_token_rewards`). k1 can be negative on a sample; the k3 estimator `(e^l - 1) - l`, l = -k1, never
  is and is what we report beside it (`kl_k3`; Schulman, "Approximating KL divergence", 2020).
- Advantages by generalised advantage estimation (Schulman et al., 2016) with gamma = 1 (an episode is one
  response, rewarded at its end) and lambda = 0.95 (`generalized_advantages`), then whitened over the batch's
  response tokens (`masked_whiten`).
- The clipped surrogate with epsilon = 0.2, the paper's "PPO clip threshold" (`clipped_policy_loss`), and
  a value loss clipped the same way around the rollout's values (`clipped_value_loss`).

Token-level means are divided by a `normalizer` that may be the token count of the GLOBAL batch, so that
several processes that average their gradients compute exactly the gradient of one process holding it all.
"""

from __future__ import annotations

import math

import torch

from llama_course.training.distributed import all_reduce_sum

GAMMA = 1.0  # not stated in the paper: one response is one episode, rewarded at its end, so no discount
LAMBDA = 0.95  # not stated: the usual GAE trade-off between bias (small lambda) and variance (lambda = 1)
CLIP = 0.2  # Llama 2, section 3.2.3: "PPO clip threshold of 0.2"


def check_same_shape(**tensors: torch.Tensor) -> None:
    """Raise a ValueError naming the tensors when their shapes differ."""
    shapes = {name: tuple(tensor.shape) for name, tensor in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"shapes must match: {shapes}")


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """`log softmax(logits / temperature)` at `tokens`: logits (B, L, V), tokens (B, L) -> (B, L).

    The policy samples from softmax(logits / T), so its log-probabilities, the reference's and the KL
    between them must all use the same T (with T = 1 here and 0.7 at sampling, the KL goes negative).
    """
    if not 0 < temperature < math.inf:
        raise ValueError(f"temperature={temperature} must be > 0 and finite: PPO needs the log-probability of a "
                         "sampled token")
    scaled = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    return scaled.log_softmax(dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy in nats of softmax(logits / temperature) along the last dimension: (..., V) -> (...)."""
    if not 0 < temperature < math.inf:
        raise ValueError(f"temperature={temperature} must be a positive finite number (greedy decoding, T = 0, "
                         "has no distribution to measure)")
    log_probs = (logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature).log_softmax(dim=-1)
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k1 estimate of KL(pi || pi_0) at tokens sampled from pi: `log pi - log pi_0`; may be < 0."""
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi || pi_0): `(e^l - 1) - l` with `l = log pi_0 - log pi`; never negative.

    Unbiased like k1 (E_pi[e^l] = 1) and of lower variance; `expm1` keeps it exact for small l, where
    `exp(l) - 1 - l` would cancel to rounding noise.
    """
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs)
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index (B,) of each row's last 1 in a response mask (B, L), right- or left-padded; a row of zeros is an
    error."""
    mask = mask.long()
    empty = mask.sum(dim=1) == 0
    if bool(empty.any()):
        raise ValueError(f"response rows {empty.nonzero().flatten().tolist()} have no token: every "
                         "response has at least one (its EOS, or its first token when cut at max_new_tokens)")
    return (mask * torch.arange(1, mask.shape[1] + 1, device=mask.device)).argmax(dim=1)


def per_token_rewards(scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
                      beta: float) -> torch.Tensor:
    """The reward of every response token (B, L): `-beta * k1_t`, plus the sequence's score at its last token.

    scores: (B,) the whitened `R~_c` of each response; logprobs, ref_logprobs: (B, L) of the sampled tokens
    under the policy and the reference; mask: (B, L) 1 on response tokens (either padding). The last token is
    the EOS when the response has one; a response cut at the length limit is rewarded at its last token
    (the caller decides how to score it, see `ppo_train.score_rollout`). Summed over the response, the
    rewards are `R~_c - beta * k1`, the paper's R(g | p).
    """
    check_same_shape(logprobs=logprobs, ref_logprobs=ref_logprobs, mask=mask)
    if scores.shape != mask.shape[:1]:
        raise ValueError(f"scores {tuple(scores.shape)} must hold one score per response row {mask.shape[0]}")
    if beta < 0:
        raise ValueError(f"beta={beta} must be >= 0 (0 turns the KL penalty off)")
    mask = mask.to(logprobs.dtype)
    rewards = -beta * kl_k1(logprobs, ref_logprobs) * mask
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_token_index(mask)] += scores.to(rewards.dtype)
    return rewards


def generalized_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = GAMMA,
                           lam: float = LAMBDA) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al., 2016) over right-padded responses: (advantages, returns), each (B, L).

    `delta_t = r_t + gamma V_{t+1} - V_t` and `A_t = delta_t + gamma lambda A_{t+1}`, with V and A zero after
    a response's last token (the episode ends there); returns `A_t + V_t` are the value model's targets.
    values (B, L): V_t estimates the return from the state before response token t. Padding gets 0.
    """
    check_same_shape(rewards=rewards, values=values, mask=mask)
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ValueError(f"gamma={gamma} and lam={lam} must lie in [0, 1]")
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    following = torch.zeros_like(values[:, 0])  # A_{t+1}, zero past the end
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(following)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        following = (delta + gamma * lam * following) * mask[:, t]
        advantages[:, t] = following
    return advantages, (advantages + values) * mask


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """`(v - mean) / std` over the tokens where mask is 1, across every process (population std); 0 elsewhere.

    Not stated in the paper; the usual PPO practice for advantages. The statistics are summed over all ranks,
    so a batch split across processes is whitened exactly as the whole batch on one.
    """
    check_same_shape(values=values, mask=mask)
    mask = mask.to(values.dtype)
    sums = all_reduce_sum(torch.stack([mask.sum(), (values * mask).sum(), (values**2 * mask).sum()]))
    count, total, squares = sums.unbind()
    if float(count) < 2:
        raise ValueError(f"whitening needs at least 2 tokens to estimate a spread, got {int(count)}")
    mean = total / count
    variance = (squares / count - mean**2).clamp(min=0)
    return (values - mean) / (variance + eps).sqrt() * mask


def masked_token_mean(values: torch.Tensor, mask: torch.Tensor, normalizer: torch.Tensor | float | None = None
                      ) -> torch.Tensor:
    """`sum(values * mask) / normalizer`, normalizer defaulting to `mask.sum()` (the token-level mean)."""
    check_same_shape(values=values, mask=mask)
    mask = mask.to(values.dtype)
    return (values * mask).sum() / (mask.sum() if normalizer is None else normalizer)


def clipped_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip: float = CLIP, normalizer: torch.Tensor | float | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al., 2017, Eq. 7) as a loss to minimise, and the clip fraction.

    `ratio = exp(logprobs - old_logprobs)`; per token `max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))`,
    averaged over response tokens (see `masked_token_mean`). The clip fraction is the share of tokens whose
    clipped term is the larger one, i.e. whose gradient is cut off (over the same `normalizer`).
    """
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages, mask=mask)
    if not clip > 0:
        raise ValueError(f"clip={clip} must be > 0 (Llama 2 uses 0.2)")
    ratio = (logprobs - old_logprobs).exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1 - clip, 1 + clip)
    losses = torch.maximum(unclipped, clipped)
    clipped_share = masked_token_mean((clipped > unclipped).to(losses.dtype).detach(), mask, normalizer)
    return masked_token_mean(losses, mask, normalizer), clipped_share


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float = CLIP, normalizer: torch.Tensor | float | None = None) -> torch.Tensor:
    """`0.5 max((V - R)^2, (V_clip - R)^2)`, `V_clip = V_old + clip(V - V_old, -eps, eps)`, averaged over tokens.

    Not stated in the paper: the value model may move at most `clip` from its rollout-time estimate per
    update, as the policy may move its ratio (the usual PPO implementation detail).
    """
    check_same_shape(values=values, old_values=old_values, returns=returns, mask=mask)
    if not clip > 0:
        raise ValueError(f"clip={clip} must be > 0 (the largest move of a value per update; PPO uses 0.2)")
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    losses = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return masked_token_mean(losses, mask, normalizer)


__all__ = [
    "CLIP",
    "GAMMA",
    "LAMBDA",
    "clipped_policy_loss",
    "clipped_value_loss",
    "entropy",
    "generalized_advantages",
    "kl_k1",
    "kl_k3",
    "last_token_index",
    "masked_token_mean",
    "masked_whiten",
    "per_token_rewards",
    "token_logprobs",
]
