"""PPO's pieces (Llama 2, section 3.2.3): GAE, the clipped losses, the KL estimators, the per-token reward, and
rollouts whose recorded log-probabilities are those of a fresh forward pass."""

import math

import pytest
import torch

from llama_course.alignment.ppo import (
    clipped_policy_loss,
    clipped_value_loss,
    generalized_advantages,
    kl_k1,
    kl_k3,
    masked_whiten,
    per_token_rewards,
)
from llama_course.alignment.ppo_rollout import (
    ValueModel,
    prompt_token_ids,
    response_logits,
    response_logprobs,
    reward_model_inputs,
    sample_rollout,
    sample_with_logprobs,
)
from llama_course.alignment.reward import RewardModel, whiten
from llama_course.pretrained import load_pretrained
from llama_course.toyworld import generate_safety_prompts, generate_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sft64():
    """The shipped SFT model in float64, and its tokenizer."""
    model, tokenizer = load_pretrained("sft")
    return model.double().eval(), tokenizer


def random_responses(seed: int, rows: int = 5, width: int = 7):
    """(rewards, values, mask) float64 of right-padded responses of 1..width tokens."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, width + 1, (rows,), generator=generator)
    lengths[0] = width
    mask = (torch.arange(width)[None] < lengths[:, None]).double()
    rewards = torch.randn(rows, width, generator=generator, dtype=torch.float64) * mask
    values = torch.randn(rows, width, generator=generator, dtype=torch.float64)
    return rewards, values, mask


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.9, 0.5), (1.0, 1.0), (0.99, 0.0)])
def test_gae_equals_a_plain_python_loop(gamma, lam):
    rewards, values, mask = random_responses(seed=int(gamma * 100 + lam * 10))
    advantages, returns = generalized_advantages(rewards, values, mask, gamma, lam)
    for row in range(rewards.shape[0]):
        n = int(mask[row].sum())
        r, v = rewards[row, :n].tolist(), values[row, :n].tolist() + [0.0]  # V = 0 after the episode ends
        expected, running = [0.0] * n, 0.0
        for t in reversed(range(n)):
            running = r[t] + gamma * v[t + 1] - v[t] + gamma * lam * running
            expected[t] = running
        assert advantages[row, :n].tolist() == pytest.approx(expected, abs=1e-12)
        assert returns[row, :n].tolist() == pytest.approx([a + b for a, b in zip(expected, v, strict=False)], abs=1e-12)
        assert advantages[row, n:].abs().sum() == 0 and returns[row, n:].abs().sum() == 0


def test_gae_with_lambda_one_and_gamma_one_is_the_reward_to_go_minus_the_value():
    rewards, values, mask = random_responses(seed=7)
    advantages, returns = generalized_advantages(rewards, values, mask, 1.0, 1.0)
    to_go = rewards.flip(1).cumsum(1).flip(1) * mask
    torch.testing.assert_close(returns, to_go, rtol=0, atol=1e-12)
    torch.testing.assert_close(advantages, (to_go - values) * mask, rtol=0, atol=1e-12)


def test_clipped_surrogate_by_hand():
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.7, 3.0]], dtype=torch.float64)
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0, 5.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0]])  # the last token is padding: ignored
    old = torch.zeros_like(ratio)
    logprobs = ratio.log().requires_grad_(True)
    loss, clip_fraction = clipped_policy_loss(logprobs, old, advantages, mask, clip=0.2)
    # per token max(-A r, -A clip(r, 0.8, 1.2)): -1.2 (clipped), -0.5, 1.1, 0.8 (clipped)
    assert float(loss.detach()) == pytest.approx((-1.2 - 0.5 + 1.1 + 0.8) / 4, abs=1e-12)
    assert float(clip_fraction) == pytest.approx(2 / 4)
    loss.backward()
    # d/dlogp (-A r) = -A r where the unclipped term counts, 0 where clipping cuts the gradient
    assert logprobs.grad.tolist()[0] == pytest.approx([0.0, -0.5 / 4, 1.1 / 4, 0.0, 0.0], abs=1e-12)
    halved, _ = clipped_policy_loss(logprobs.detach(), old, advantages, mask, clip=0.2, normalizer=8.0)
    assert float(halved) == pytest.approx(float(loss.detach()) / 2, abs=1e-12)


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 0.0, 0.6, 9.0]], dtype=torch.float64)
    old = torch.tensor([[0.5, 0.5, 0.5, 0.0]], dtype=torch.float64)
    returns = torch.tensor([[2.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    loss = clipped_value_loss(values, old, returns, mask, clip=0.2)
    # V_clip = 0.7, 0.3, 0.6; 0.5 * max((V - R)^2, (V_clip - R)^2) = 0.5 * 1.69, 0.5 * 0.09, 0.5 * 0.16
    assert float(loss) == pytest.approx(0.5 * (1.69 + 0.09 + 0.16) / 3, abs=1e-12)


def test_k3_is_never_negative_while_k1_can_be():
    generator = torch.Generator().manual_seed(0)
    for dtype, scale in ((torch.float64, 1e-9), (torch.float32, 1e-4), (torch.float32, 3.0), (torch.float64, 30.0)):
        logprobs = torch.randn(4000, generator=generator).to(dtype) * scale - 2
        ref = torch.randn(4000, generator=generator).to(dtype) * scale - 2
        assert bool((kl_k3(logprobs, ref) >= 0).all()), f"k3 < 0 at scale {scale} in {dtype}"
        assert bool((kl_k1(logprobs, ref) < 0).any())


def test_k1_and_k3_are_unbiased_estimates_of_the_kl():
    p = torch.tensor([0.5, 0.2, 0.2, 0.1], dtype=torch.float64)
    q = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=torch.float64)
    exact = float((p * (p / q).log()).sum())
    tokens = torch.multinomial(p, 200_000, replacement=True, generator=torch.Generator().manual_seed(1))
    logp, logq = p.log()[tokens], q.log()[tokens]
    assert float(kl_k1(logp, logq).mean()) == pytest.approx(exact, abs=5e-3)
    assert float(kl_k3(logp, logq).mean()) == pytest.approx(exact, abs=5e-3)
    torch.testing.assert_close(kl_k3(logp, logq), (logq - logp).exp() - 1 - (logq - logp), rtol=1e-9, atol=1e-12)


def test_per_token_reward_is_minus_beta_k1_everywhere_plus_the_score_at_the_last_token():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -9.0, -9.0]], dtype=torch.float64)
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-0.1, 0.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    rewards = per_token_rewards(torch.tensor([2.0, -1.0], dtype=torch.float64), logprobs, ref, mask, beta=0.1)
    expected = [[-0.1 * 0.5, -0.1 * -1.0, 2.0], [-0.1 * -0.2 - 1.0, 0.0, 0.0]]
    assert rewards.tolist()[0] == pytest.approx(expected[0], abs=1e-12)
    assert rewards.tolist()[1] == pytest.approx(expected[1], abs=1e-12)
    with pytest.raises(ValueError, match="no token"):
        per_token_rewards(torch.zeros(2, dtype=torch.float64), logprobs, ref, mask * 0, beta=0.1)


def test_masked_whiten_equals_whitening_the_kept_tokens():
    rewards, _, mask = random_responses(seed=3, rows=6, width=9)
    whitened = masked_whiten(rewards, mask)
    kept = mask.bool()
    torch.testing.assert_close(whitened[kept], whiten(rewards[kept]), rtol=0, atol=1e-10)
    assert whitened[~kept].abs().sum() == 0


def mixed_prompts() -> list[str]:
    """Prompts of very different lengths (short questions, stories), so the batch is left-padded."""
    return list(generate_tasks(5, seed=31, families=["arithmetic", "story_qa", "counting"])["prompt"]) + list(
        generate_safety_prompts(2, seed=31)["prompt"])


def test_rollout_logprobs_equal_a_fresh_forward_pass_at_the_sampling_temperature(sft64):
    model, tokenizer = sft64
    rollout = sample_rollout(model, tokenizer, mixed_prompts(), temperature=0.7, max_new_tokens=20, seed=4)
    mask = rollout.response_mask.bool()
    assert rollout.attention_mask[:, : rollout.prompt_width].eq(0).any(), "the batch should need left padding"
    assert rollout.ended.any() and mask.eq(0).any(), "some responses should end early and be right-padded"
    with torch.no_grad():
        fresh, fresh_entropy = response_logprobs(model, rollout, 0.7)
        at_one, _ = response_logprobs(model, rollout, 1.0)
    torch.testing.assert_close(fresh[mask], rollout.logprobs[mask], rtol=0, atol=1e-10)
    torch.testing.assert_close(fresh_entropy[mask], rollout.entropy[mask], rtol=0, atol=1e-10)
    assert (at_one[mask] - rollout.logprobs[mask]).abs().max() > 1e-2, "the temperature must change the logprobs"


def test_each_row_samples_as_if_alone_apart_from_the_random_draws(sft64):
    model, tokenizer = sft64
    prompts = prompt_token_ids(tokenizer, mixed_prompts())
    tokens, logprobs, _ = sample_with_logprobs(model, prompts, 12, 0.7, eos_id=tokenizer.eos_id,
                                               pad_id=tokenizer.pad_id, seed=2)
    for row, prompt in enumerate(prompts):  # re-read each row without any padding
        ids = torch.tensor([prompt + tokens[row]])
        with torch.no_grad():
            logits = model(ids).logits[0, len(prompt) - 1 : -1]
        alone = (logits / 0.7).log_softmax(-1).gather(-1, ids[0, len(prompt):, None]).squeeze(-1)
        torch.testing.assert_close(alone, logprobs[row], rtol=0, atol=1e-10)
    assert all(t[-1] == tokenizer.eos_id or len(t) == 12 for t in tokens)
    assert all(tokenizer.eos_id not in t[:-1] for t in tokens), "nothing is kept after a row's EOS"


def test_responses_without_eos_get_one_for_the_reward_model_and_select_trims_padding(sft64):
    model, tokenizer = sft64
    rollout = sample_rollout(model, tokenizer, mixed_prompts(), temperature=1.0, max_new_tokens=3, seed=0)
    assert not bool(rollout.ended.all()), "a 3-token limit should cut some responses"
    tokens, mask = reward_model_inputs(rollout, tokenizer.eos_id, tokenizer.pad_id)
    last = (mask * torch.arange(1, mask.shape[1] + 1)).argmax(dim=1)
    assert tokens.gather(1, last[:, None]).squeeze(1).eq(tokenizer.eos_id).all()
    assert mask.sum(dim=1).tolist() == (rollout.attention_mask.sum(dim=1) + (~rollout.ended).long()).tolist()
    rm = RewardModel(load_pretrained("sft")[0].double(), tokenizer.eos_id).eval()
    torch.nn.init.normal_(rm.backbone.output.weight, std=0.1, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores = rm(tokens, mask)
        for row in range(len(rollout)):  # each scored alone, with no padding, equals its score in the batch
            alone = tokens[row, mask[row].bool()][None]
            torch.testing.assert_close(rm(alone, torch.ones_like(alone)), scores[row : row + 1], rtol=0, atol=1e-10)
    part = rollout.select([1, 3])
    assert part.prompts == [rollout.prompts[1], rollout.prompts[3]]
    assert part.attention_mask[:, 0].any() and part.response_mask[:, -1].any(), "no all-padding column is kept"
    torch.testing.assert_close(part.logprobs, rollout.logprobs[[1, 3], : part.logprobs.shape[1]])


def test_value_model_starts_at_zero_and_reads_every_position(sft64):
    model, tokenizer = sft64
    critic = ValueModel.from_reward_model(RewardModel(load_pretrained("sft")[0].double(), tokenizer.eos_id))
    rollout = sample_rollout(model, tokenizer, mixed_prompts()[:3], temperature=0.7, max_new_tokens=6, seed=1)
    values = response_logits(critic, rollout)
    assert values.shape == rollout.logprobs.shape and values.abs().max() == 0
    torch.nn.init.normal_(critic.backbone.output.weight, std=0.1)
    assert response_logits(critic, rollout).abs().min() > 0


def test_bad_inputs_are_refused_with_the_offending_value(sft64):
    model, tokenizer = sft64
    with pytest.raises(ValueError, match="equals eos_id"):
        sample_with_logprobs(model, [[1, 2]], 4, 0.7, eos_id=2, pad_id=2, seed=0)
    with pytest.raises(ValueError, match="temperature=0"):
        sample_rollout(model, tokenizer, ["What is 1 plus 1?"], temperature=0.0, max_new_tokens=4, seed=0)
    with pytest.raises(ValueError, match="beta=-1"):
        per_token_rewards(torch.zeros(1), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), beta=-1)
    assert math.isclose(float(kl_k3(torch.tensor([0.0]), torch.tensor([0.0]))), 0.0)
