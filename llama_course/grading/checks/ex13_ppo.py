"""Tests of exercise 13: GAE, the clipped surrogate, the k3 KL estimator, the per-token reward with the score at EOS.

Llama 2, section 3.2.3 (R(g|p) = R~_c - beta KL, PPO clip threshold 0.2); GAE (Schulman et al., 2016); the clipped
surrogate (Schulman et al., 2017, Eq. 7); the k3 estimator (Schulman, "Approximating KL divergence", 2020).
"""

import torch

from llama_course.alignment.ppo import clipped_policy_loss as reference_policy_loss
from llama_course.alignment.ppo import generalized_advantages as reference_advantages
from llama_course.alignment.ppo import kl_k3 as reference_k3
from llama_course.alignment.ppo import per_token_rewards as reference_rewards
from llama_course.grading.assertions import assert_equal, assert_tensor_close, raises_value_error
from llama_course.grading.registry import Exercise

EXERCISE = Exercise(chapter=13, name="13_ppo", title="PPO with a KL penalty")


def random_batch(seed: int, rows: int, width: int) -> dict[str, torch.Tensor]:
    """Right-padded responses of 1..width tokens with float64 rewards, values, log-probabilities, advantages."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=generator)
    lengths[0] = width
    mask = (torch.arange(width)[None] < lengths[:, None]).long()

    def normal(scale: float = 1.0) -> torch.Tensor:
        return scale * torch.randn(rows, width, generator=generator, dtype=torch.float64)

    logprobs = -normal().abs() - 0.1
    return {"mask": mask, "rewards": normal() * mask, "values": normal(), "advantages": normal(),
            "logprobs": logprobs, "old_logprobs": logprobs + normal(0.3), "ref_logprobs": logprobs + normal(0.5),
            "scores": torch.randn(rows, generator=generator, dtype=torch.float64)}


@EXERCISE.test("generalized_advantages", points=2)
def advantages_and_returns_match_the_reference(generalized_advantages):
    for seed, (rows, width, gamma, lam) in enumerate(((1, 1, 1.0, 0.95), (4, 6, 1.0, 0.95), (7, 9, 0.9, 0.5),
                                                      (3, 5, 1.0, 1.0), (5, 4, 0.99, 0.0))):
        batch = random_batch(seed, rows, width)
        got = generalized_advantages(batch["rewards"], batch["values"], batch["mask"], gamma, lam)
        expected = reference_advantages(batch["rewards"], batch["values"], batch["mask"], gamma, lam)
        for name, actual, reference in zip(("advantages", "returns"), got, expected, strict=True):
            assert_tensor_close(actual, reference, atol=1e-10, rtol=1e-10,
                                what=f"the {name} (gamma={gamma}, lambda={lam}) of rewards {batch['rewards'].tolist()}"
                                     f", values {batch['values'].tolist()}, mask {batch['mask'].tolist()}")


@EXERCISE.test("generalized_advantages", points=1)
def the_episode_ends_at_each_responses_last_token(generalized_advantages):
    # gamma * lambda < 1: a GAE that runs over the padding and masks only its output gets row 2 wrong, since the
    # values on padding (7.0) no longer cancel out as they would with gamma = lambda = 1.
    rewards = torch.tensor([[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[0.5, 0.5, 0.5], [0.5, 7.0, 7.0]], dtype=torch.float64)  # 7.0 sits on padding
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    advantages, returns = generalized_advantages(rewards, values, mask, 0.9, 0.8)
    # Row 1 by hand: deltas (-0.05, -0.05, 0.5); A_2 = 0.5, A_1 = -0.05 + 0.72 * 0.5, A_0 = -0.05 + 0.72 * A_1.
    # Row 2: its only token is its last one, so A_0 = r_0 - V_0 = 1.5 and nothing follows it.
    expected_advantages = torch.tensor([[0.1732, 0.31, 0.5], [1.5, 0.0, 0.0]], dtype=torch.float64)
    assert_tensor_close(advantages, expected_advantages, atol=1e-12, rtol=0,
                        what="the advantages with gamma = 0.9, lambda = 0.8 (V and A are 0 after each response's "
                             "last token; 0 on padding)")
    assert_tensor_close(returns, expected_advantages + values * mask, atol=1e-12, rtol=0,
                        what="the returns (advantages + values; 0 on padding) with gamma = 0.9, lambda = 0.8")


@EXERCISE.test("clipped_policy_loss", points=2)
def loss_and_clip_fraction_match_the_reference(clipped_policy_loss):
    for seed, (rows, width, clip) in enumerate(((1, 1, 0.2), (4, 6, 0.2), (8, 5, 0.1), (3, 7, 0.5))):
        batch = random_batch(10 + seed, rows, width)
        args = (batch["logprobs"], batch["old_logprobs"], batch["advantages"], batch["mask"], clip)
        got, expected = clipped_policy_loss(*args), reference_policy_loss(*args)
        for name, actual, reference in zip(("loss", "clip fraction"), got, expected, strict=True):
            assert_tensor_close(actual, reference, atol=1e-10, rtol=1e-10, check_dtype=False,
                                what=f"the {name} with clip {clip} (ratios {(args[0] - args[1]).exp().tolist()}, "
                                     f"advantages {args[2].tolist()}, mask {args[3].tolist()})")


@EXERCISE.test("clipped_policy_loss", points=1)
def clipping_cuts_the_gradient_where_the_ratio_left_the_trust_region(clipped_policy_loss):
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.7, 3.0]], dtype=torch.float64)
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    logprobs = ratio.log().requires_grad_(True)
    loss, _ = clipped_policy_loss(logprobs, torch.zeros_like(ratio), advantages, mask, 0.2)
    loss.backward()
    assert_tensor_close(logprobs.grad, torch.tensor([[0.0, -0.125, 0.275, 0.0, 0.0]], dtype=torch.float64),
                        atol=1e-12, rtol=0, what=f"the gradient of the loss for ratios {ratio.tolist()} and "
                                                 f"advantages {advantages.tolist()} (last token padding)")


@EXERCISE.test("kl_k3", points=1)
def k3_matches_the_reference_and_is_never_negative(kl_k3):
    generator = torch.Generator().manual_seed(30)
    for dtype, scale in ((torch.float64, 1.0), (torch.float64, 1e-9), (torch.float32, 5.0)):
        logprobs = (torch.randn(3, 50, generator=generator, dtype=torch.float64) * scale - 2).to(dtype)
        ref = (torch.randn(3, 50, generator=generator, dtype=torch.float64) * scale - 2).to(dtype)
        got = kl_k3(logprobs, ref)
        assert_tensor_close(got, reference_k3(logprobs, ref), atol=1e-12 if dtype == torch.float64 else 1e-6,
                            rtol=1e-6, what=f"k3 of {dtype} log-probabilities {scale:g} apart")
        assert_equal(bool((got >= 0).all()), True, what=f"whether k3 of {dtype} log-probabilities {scale:g} "
                                                         "apart is never negative")


@EXERCISE.test("kl_k3", points=1)
def k3_keeps_its_precision_in_float32_when_the_policies_are_close(kl_k3):
    # |l| ~ 1e-3: k3 ~ l^2 / 2 ~ 5e-7. exp(l) - 1 in float32 is off by ~6e-8 (10% of k3); expm1(l) by ~1e-10.
    generator = torch.Generator().manual_seed(31)
    logprobs = (torch.rand(4, 64, generator=generator) * -3 - 0.5).float()
    log_ratio = (torch.rand(4, 64, generator=generator) * 2e-3 + 5e-4) * torch.where(
        torch.rand(4, 64, generator=generator) < 0.5, -1.0, 1.0)
    ref = (logprobs + log_ratio).float()
    exact = reference_k3(logprobs.double(), ref.double())  # the float32 inputs, in float64
    assert_tensor_close(kl_k3(logprobs, ref), exact.float(), atol=0, rtol=1e-2,
                        what="k3 of float32 log-probabilities 0.0005 to 0.0025 apart (use torch.expm1)")


@EXERCISE.test("per_token_rewards", points=2)
def rewards_match_the_reference(per_token_rewards):
    for seed, (rows, width, beta) in enumerate(((1, 1, 0.01), (4, 6, 0.05), (6, 8, 0.0), (3, 4, 0.5))):
        batch = random_batch(20 + seed, rows, width)
        args = (batch["scores"], batch["logprobs"], batch["ref_logprobs"], batch["mask"], beta)
        assert_tensor_close(per_token_rewards(*args), reference_rewards(*args), atol=1e-12, rtol=1e-12,
                            what=f"the per-token rewards with beta {beta} (scores {args[0].tolist()}, mask "
                                 f"{args[3].tolist()})")


@EXERCISE.test("per_token_rewards", points=1)
def the_score_sits_at_the_last_token_and_the_sum_is_score_minus_beta_kl(per_token_rewards):
    batch = random_batch(40, 6, 7)
    rewards = per_token_rewards(batch["scores"], batch["logprobs"], batch["ref_logprobs"], batch["mask"], 0.1)
    k1 = ((batch["logprobs"] - batch["ref_logprobs"]) * batch["mask"]).sum(dim=1)
    assert_tensor_close(rewards.sum(dim=1), batch["scores"] - 0.1 * k1, atol=1e-12, rtol=0,
                        what="each response's summed reward (its score minus beta times its k1 KL)")
    assert_tensor_close(rewards * (1 - batch["mask"]), torch.zeros_like(rewards), atol=0, rtol=0,
                        what="the rewards on padding")
    assert_equal(raises_value_error(per_token_rewards, batch["scores"], batch["logprobs"], batch["ref_logprobs"],
                                    batch["mask"] * 0, 0.1), True,
                 what="whether responses without any token raise a ValueError")


EXERCISE.references("generalized_advantages", reference_advantages)
EXERCISE.references("clipped_policy_loss", reference_policy_loss)
EXERCISE.references("kl_k3", reference_k3)
EXERCISE.references("per_token_rewards", reference_rewards)
