"""Tests of exercise 11: the margin ranking loss, the score at each row's EOS, PPO's safety-first reward.

Llama 2, section 3.2.2 and Eq. 2 (the binary ranking loss with a margin), Table 27 (the margins), section
3.2.3 (R_c with the 0.15 safety threshold, WHITEN(LOGIT(R_c))).
"""

import random
from itertools import pairwise

import torch

from llama_course.alignment.reward import MARGINS, RewardModel, combine_rewards
from llama_course.alignment.reward import margin_ranking_loss as reference_loss
from llama_course.alignment.reward import ppo_reward as reference_ppo_reward
from llama_course.config import ModelConfig
from llama_course.generation import positions_from_mask
from llama_course.grading.assertions import assert_equal, assert_tensor_close, raises_value_error
from llama_course.grading.registry import Exercise
from llama_course.model import Llama
from llama_course.toyworld import STRENGTHS

EXERCISE = Exercise(chapter=11, name="11_reward_models", title="Reward models with a margin")

EOS, VOCAB = 2, 40


def random_pairs(seed: int, n: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Scores (n,) of chosen and rejected responses, and a Table 27 strength for each pair."""
    generator = torch.Generator().manual_seed(seed)
    r_chosen = (3 * torch.randn(n, generator=generator, dtype=torch.float64)).to(dtype)
    r_rejected = (3 * torch.randn(n, generator=generator, dtype=torch.float64)).to(dtype)
    rng = random.Random(seed)
    return r_chosen, r_rejected, [rng.choice(STRENGTHS) for _ in range(n)]


@EXERCISE.test("margin_ranking_loss", points=2)
def loss_matches_the_reference_with_the_table_27_margins(margin_ranking_loss):
    cases = ((1, torch.float64), (7, torch.float64), (30, torch.float64), (12, torch.float32))
    for seed, (n, dtype) in enumerate(cases):
        r_chosen, r_rejected, strengths = random_pairs(seed, n, dtype)
        tolerance = 1e-12 if dtype == torch.float64 else 1e-6
        for name, table in MARGINS.items():
            margins = torch.tensor([table[strength] for strength in strengths], dtype=dtype)
            assert_tensor_close(margin_ranking_loss(r_chosen, r_rejected, margins),
                                reference_loss(r_chosen, r_rejected, margins), atol=tolerance, rtol=tolerance,
                                what=f"the loss of {n} {dtype} pairs with the {name} margins {margins.tolist()}")
        for margin in (0.0, 1.0 / 3.0, 2.0, 3.0):
            assert_tensor_close(margin_ranking_loss(r_chosen, r_rejected, margin),
                                reference_loss(r_chosen, r_rejected, margin), atol=tolerance, rtol=tolerance,
                                what=f"the loss of {n} {dtype} pairs with one margin {margin:g} for every pair")
    chapter = margin_ranking_loss(torch.tensor([2.0]), torch.tensor([0.0]), MARGINS["large"]["significantly better"])
    assert_tensor_close(chapter, torch.log1p(torch.tensor([1.0]).exp()), atol=1e-6, rtol=1e-6,
                        what="the loss of a 'significantly better' pair leading by 2 under the large margin")


@EXERCISE.test("margin_ranking_loss", points=1)
def a_larger_margin_never_lowers_the_loss(margin_ranking_loss):
    r_chosen, r_rejected, _ = random_pairs(10, 25)
    margins = sorted({value for table in MARGINS.values() for value in table.values()})
    losses = [margin_ranking_loss(r_chosen, r_rejected, torch.full_like(r_chosen, margin)) for margin in margins]
    for (smaller, low), (larger, high) in pairwise(zip(margins, losses, strict=True)):
        if not isinstance(high, torch.Tensor) or not bool((high > low).all()):
            raise AssertionError(f"raising the margin from {smaller:.3g} to {larger:.3g} should raise the loss of "
                                 f"every pair: got {low.tolist()} then {high.tolist()}")


@EXERCISE.test("margin_ranking_loss", points=1)
def loss_and_gradient_stay_finite_for_large_score_gaps(margin_ranking_loss):
    gaps = torch.tensor([-1000.0, -200.0, -100.0, -30.0, 30.0, 100.0, 200.0, 1000.0])
    for margin in (0.0, 3.0):
        r_chosen = gaps.clone().requires_grad_(True)
        loss = margin_ranking_loss(r_chosen, torch.zeros_like(gaps), margin)
        expected_chosen = gaps.clone().requires_grad_(True)
        expected = reference_loss(expected_chosen, torch.zeros_like(gaps), margin)
        assert_tensor_close(loss, expected.detach(), atol=1e-6, rtol=1e-6,
                            what=f"the float32 loss of score gaps {gaps.tolist()} with margin {margin:g}")
        loss.sum().backward()
        expected.sum().backward()
        assert_tensor_close(r_chosen.grad, expected_chosen.grad, atol=1e-6, rtol=1e-6,
                            what=f"the gradient with respect to r_chosen at score gaps {gaps.tolist()} "
                                 f"with margin {margin:g}")


def random_rows(seed: int, n_rows: int) -> list[list[int]]:
    """Token rows of 1 to 9 tokens, each ending with EOS, some with an earlier EOS inside."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n_rows):
        body = [EOS if rng.random() < 0.2 else rng.randrange(3, VOCAB) for _ in range(rng.randint(0, 8))]
        rows.append(body + [EOS])
    return rows


def pad(rows: list[list[int]], side: str, pad_id: int, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, attention_mask), each (B, width) int64, padded on `side` with `pad_id`."""
    width = width or max(len(row) for row in rows)
    tokens = torch.full((len(rows), width), pad_id)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for index, row in enumerate(rows):
        start = 0 if side == "right" else width - len(row)
        tokens[index, start : start + len(row)], mask[index, start : start + len(row)] = torch.tensor(row), 1
    return tokens, mask


@EXERCISE.test("score_at_eos", points=2)
def scores_match_the_reward_model_on_right_and_left_padded_batches(score_at_eos):
    torch.manual_seed(11)
    model = RewardModel(Llama(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=VOCAB,
                                          multiple_of=16)), eos_id=EOS).eval()
    torch.nn.init.normal_(model.backbone.output.weight)  # a trained head, not the zero one of a fresh RM
    for seed in range(3):
        rows = random_rows(seed, 5)
        for side in ("right", "left"):
            for pad_id in (0, EOS):
                tokens, mask = pad(rows, side, pad_id)
                with torch.no_grad():
                    values = model.backbone(tokens, positions=positions_from_mask(mask), attention_mask=mask)
                    expected = model(tokens, mask)
                assert_tensor_close(score_at_eos(values.logits.squeeze(-1), tokens, mask, EOS), expected,
                                    atol=1e-6, rtol=1e-6,
                                    what=f"the scores of {side}-padded rows {tokens.tolist()} (pad id {pad_id})")


@EXERCISE.test("score_at_eos", points=1)
def the_same_scores_whatever_the_padding_side(score_at_eos):
    generator = torch.Generator().manual_seed(12)
    rows = random_rows(20, 6)
    own_values = [torch.randn(len(row), generator=generator, dtype=torch.float64) for row in rows]
    alone = torch.stack([score_at_eos(values[None], *pad([row], "right", 0), EOS)[0]
                         for row, values in zip(rows, own_values, strict=True)])
    width = max(len(row) for row in rows) + 2
    for side in ("right", "left"):
        tokens, mask = pad(rows, side, EOS, width)
        values = torch.randn(len(rows), width, generator=generator, dtype=torch.float64)  # padding: noise
        values[mask.bool()] = torch.cat(own_values)
        assert_tensor_close(score_at_eos(values, tokens, mask, EOS), alone, atol=0, rtol=0,
                            what=f"the scores of {side}-padded rows {tokens.tolist()} (each row scored alone: "
                                 f"{alone.tolist()})")


@EXERCISE.test("score_at_eos", points=1)
def a_row_cut_off_before_its_eos_is_rejected(score_at_eos):
    rows = random_rows(30, 4)
    rows[2] = rows[2] + [5]  # a response that runs past its EOS: the last real token is not EOS
    for side in ("right", "left"):
        tokens, mask = pad(rows, side, EOS)
        values = torch.zeros(tokens.shape, dtype=torch.float64)
        if not raises_value_error(score_at_eos, values, tokens, mask, EOS):
            raise AssertionError(f"row 2 of the {side}-padded tokens {tokens.tolist()} (mask {mask.tolist()}) ends "
                                 f"with token 5, not EOS (id {EOS}): it should raise ValueError")


def random_rewards(seed: int, n: int, dtype: torch.dtype = torch.float64
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sigmoid scores (n,) of both reward models, many safety scores near 0.15, and IS_SAFETY flags."""
    generator = torch.Generator().manual_seed(seed)
    helpfulness = torch.sigmoid(2 * torch.randn(n, generator=generator, dtype=torch.float64))
    safety = torch.sigmoid(2 * torch.randn(n, generator=generator, dtype=torch.float64))
    near_threshold = torch.rand(n, generator=generator) < 0.3
    safety[near_threshold] = 0.15 + 0.02 * (torch.rand(int(near_threshold.sum()), generator=generator,
                                                       dtype=torch.float64) - 0.5)
    is_safety = torch.rand(n, generator=generator) < 0.3
    return helpfulness.to(dtype), safety.to(dtype), is_safety


@EXERCISE.test("ppo_reward", points=2)
def rewards_match_the_reference_on_random_batches(ppo_reward):
    for seed, (n, dtype) in enumerate(((2, torch.float64), (9, torch.float64), (40, torch.float64),
                                       (16, torch.float32))):
        helpfulness, safety, is_safety = random_rewards(seed, n, dtype)
        tolerance = 1e-7 if dtype == torch.float64 else 1e-4
        assert_tensor_close(ppo_reward(helpfulness, safety, is_safety),
                            reference_ppo_reward(helpfulness, safety, is_safety), atol=tolerance, rtol=tolerance,
                            what=f"the rewards of {n} {dtype} responses (helpfulness {helpfulness.tolist()}, "
                                 f"safety {safety.tolist()}, is_safety {is_safety.tolist()})")
    helpfulness, safety, is_safety = random_rewards(7, 12)
    assert_tensor_close(ppo_reward(helpfulness, safety, is_safety, threshold=0.4),
                        reference_ppo_reward(helpfulness, safety, is_safety, threshold=0.4), atol=1e-7, rtol=1e-7,
                        what="the rewards with threshold 0.4")
    helpfulness = torch.tensor([0.0, 1.0, 0.5, 0.9, 0.2], dtype=torch.float64)
    safety = torch.tensor([0.9, 0.5, 0.0, 1.0, 0.15], dtype=torch.float64)
    is_safety = torch.tensor([False, False, False, True, False])
    assert_tensor_close(ppo_reward(helpfulness, safety, is_safety),
                        reference_ppo_reward(helpfulness, safety, is_safety), atol=1e-7, rtol=1e-7,
                        what="the rewards of scores at exactly 0, 1 and the 0.15 threshold")


@EXERCISE.test("ppo_reward", points=1)
def whitened_rewards_have_mean_0_and_std_1(ppo_reward):
    for seed, n in enumerate((2, 5, 64)):
        rewards = ppo_reward(*random_rewards(100 + seed, n))
        if not isinstance(rewards, torch.Tensor) or rewards.shape != (n,):
            raise AssertionError(f"the rewards of {n} responses should be a tensor of shape ({n},), got {rewards!r}")
        assert_tensor_close(rewards.mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-9, rtol=0,
                            check_dtype=False, what=f"the mean of the rewards of {n} responses")
        assert_tensor_close(rewards.var(unbiased=False).sqrt(), torch.tensor(1.0, dtype=torch.float64),
                            atol=1e-6, rtol=0, check_dtype=False,
                            what=f"the population std of the rewards of {n} responses")


@EXERCISE.test("ppo_reward", points=1)
def only_the_score_that_the_rule_picks_counts(ppo_reward):
    helpfulness, safety, is_safety = random_rewards(200, 30)
    rewards = ppo_reward(helpfulness, safety, is_safety)
    safety_rules = is_safety | (safety < 0.15)
    other_helpfulness = torch.where(safety_rules, 1 - helpfulness, helpfulness)
    assert_tensor_close(ppo_reward(other_helpfulness, safety, is_safety), rewards, atol=1e-12, rtol=1e-12,
                        what="the rewards after changing the helpfulness of responses whose prompt is a safety "
                             "prompt or whose safety is below 0.15 (R_c is their safety score)")
    other_safety = torch.where(safety_rules, safety, 0.15 + 0.85 * (1 - safety))  # stays at or above 0.15
    assert_tensor_close(ppo_reward(helpfulness, other_safety, is_safety), rewards, atol=1e-12, rtol=1e-12,
                        what="the rewards after changing the safety (kept at or above 0.15) of responses to "
                             "ordinary prompts (R_c is their helpfulness score)")
    assert_equal(torch.allclose(ppo_reward(helpfulness, torch.where(safety_rules, 1 - safety, safety), is_safety),
                                rewards), False,
                 what="whether the rewards stay the same when the safety scores that R_c uses change")


EXERCISE.references("margin_ranking_loss", reference_loss)
EXERCISE.references("score_at_eos", RewardModel)
EXERCISE.references("ppo_reward", reference_ppo_reward, combine_rewards)
