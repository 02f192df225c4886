"""A short seeded PPO run from the shipped SFT model raises the reward model's score of held-out answers."""

import copy
import dataclasses

import pytest
import torch

from llama_course.alignment import ppo_train
from llama_course.alignment.ppo_rollout import ValueModel, sample_rollout
from llama_course.alignment.ppo_train import PPOConfig, PPOModels, load_ppo_models
from llama_course.alignment.reward import whiten
from llama_course.experiments.ppo import evaluate_policy, train_ppo
from llama_course.experiments.toyworld_judges import ppo_prompts
from llama_course.pretrained import load_pretrained

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_short_run_raises_the_reward_models_score_of_held_out_answers(tmp_path):
    models, tokenizer = load_ppo_models()
    # Task prompts under Llama 2's safety-first reward (the helpfulness RM, unless the safety RM objects), with no
    # KL penalty so that the reward alone decides, and a learning rate twice chapter 13's so that 16 iterations
    # suffice: the held-out score must rise clearly (measured: 0.731 -> 0.760).
    config = PPOConfig(iterations=16, batch_size=32, minibatch_size=16, max_new_tokens=24, lr=1e-4, beta=0.0,
                       seed=0)
    held_out = ppo_prompts(32, seed=9, safety_fraction=0.0)
    before = evaluate_policy(models, tokenizer, held_out, config, samples=2)
    history = train_ppo(models, tokenizer, ppo_prompts(400, seed=8, safety_fraction=0.0), config, tmp_path)
    after = evaluate_policy(models, tokenizer, held_out, config, samples=2)
    assert after["rm_combined"] > before["rm_combined"] + 0.02, (before, after)
    assert history[-1]["kl_k1"] > 0.1 and after["kl_k1"] > 0.1, "the policy moved away from the reference"
    assert before["kl_k1"] == pytest.approx(0.0, abs=1e-5), "before training the policy is the reference"


def test_the_command_writes_metrics_a_plot_and_a_policy_that_loads_back(tmp_path):
    import argparse

    from llama_course.alignment.sft import load_base_model
    from llama_course.commands.ppo import add_arguments, run
    from llama_course.training.metrics import read_metrics

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--iterations", "2", "--batch-size", "8", "--minibatch-size", "4", "--max-new-tokens",
                              "8", "--prompts", "40", "--output-dir", str(tmp_path / "run"), "--save",
                              str(tmp_path / "policy")])
    run(args)
    assert [row["step"] for row in read_metrics(tmp_path / "run")] == [1, 2]
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 0
    policy, _ = load_base_model(str(tmp_path / "policy"))
    reference, _ = load_base_model("sft")
    trained = policy.state_dict()
    moved = max(float((trained[name] - value).abs().max()) for name, value in reference.state_dict().items())
    assert moved > 0, "the saved policy is the trained one, not the SFT model"
    with pytest.raises(SystemExit):
        parser.parse_args(["--reward", "length"])


MADE_UP_PROMPTS = ["Tell me about the sea.", "Write a line about green trees.", "What do bees eat?",
                   "Describe a red apple."]


def test_ppo_runs_on_made_up_prompts_with_a_custom_judge_and_no_reward_models(tmp_path):
    policy, tokenizer = load_pretrained("sft")
    models = PPOModels(policy, copy.deepcopy(policy), ValueModel(copy.deepcopy(policy)))
    judged = []

    def letter_e_judge(prompts, responses):  # the reward: how many letters "e" the answer holds
        judged.append(torch.tensor([float(response.count("e")) for response in responses]))
        return judged[-1]

    config = PPOConfig(iterations=2, batch_size=4, minibatch_size=2, max_new_tokens=12, reward="true", seed=0)
    history = ppo_train.train_ppo(models, tokenizer, MADE_UP_PROMPTS, config, tmp_path, judge=letter_e_judge)
    assert len(judged) == 2 and all(len(scores) == 4 for scores in judged)
    assert [row["judge"] for row in history] == pytest.approx([float(scores.mean()) for scores in judged], abs=1e-12)
    assert "rm_combined" not in history[0] and "true_combined" not in history[0]
    # What PPO maximises is the judge's score whitened over the batch, less the penalty of a missing EOS.
    rollout = sample_rollout(models.policy, tokenizer, MADE_UP_PROMPTS, temperature=1.0, max_new_tokens=12, seed=4)
    scores = ppo_train.score_rollout(models, rollout, config, tokenizer, judge=letter_e_judge)
    raw = judged[-1].double()
    assert float(raw.std()) > 0, "the answers differ in their count of e"
    torch.testing.assert_close(scores["score"], whiten(raw) - config.missing_eos_penalty * (~rollout.ended).double())
    with pytest.raises(ValueError, match="pass one exactly when reward='true'"):
        ppo_train.score_rollout(models, rollout, dataclasses.replace(config, reward="helpfulness"), tokenizer,
                                judge=letter_e_judge)
    with pytest.raises(ValueError, match="PPOModels lacks them"):
        ppo_train.score_rollout(models, rollout, dataclasses.replace(config, reward="safety-first"), tokenizer)
