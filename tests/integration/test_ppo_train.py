"""A short seeded PPO run from the shipped SFT model raises the reward model's score of held-out answers."""

import pytest

from llama_course.alignment.ppo_train import PPOConfig, evaluate_policy, load_ppo_models, ppo_prompts, train_ppo

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
    from llama_course.experiments.ppo import add_arguments, run
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
