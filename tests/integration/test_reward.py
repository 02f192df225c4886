"""Reward models: the margin ranking loss by hand, the PPO reward rule, padding invariance, bad rows, learning."""

import argparse
import dataclasses
import math

import pytest
import torch

from llama_course.alignment.reward import (
    MARGINS,
    RewardModel,
    calibrate,
    combine_rewards,
    margin_ranking_loss,
    margins_for,
    ppo_reward,
    preference_loss,
    score_responses,
    unsafe_detection,
    whiten,
)
from llama_course.alignment.reward_data import encode_preferences
from llama_course.alignment.reward_train import (
    SHIPPED_RMS,
    RewardConfig,
    evaluate_preferences,
    load_reward_model,
    reward_card,
    save_reward_model,
    train_reward_model,
)
from llama_course.alignment.sft import load_base_model
from llama_course.commands.train_rm import add_arguments, config_from_args
from llama_course.config import ModelConfig
from llama_course.experiments.toyworld_data import (
    held_out_preferences,
    reward_data,
    reward_preferences,
    sample_preference_pairs,
)
from llama_course.model import Llama
from llama_course.toyworld import STRENGTHS, generate_preferences, toy_tokenizer

R_CHOSEN = [1.0, 0.2, -0.5, 2.0]
R_REJECTED = [0.0, 0.5, -1.0, 1.0]
# Table 27 of Llama 2, in the order significantly better, better, slightly better, negligibly better / unsure.
TABLE_27 = {"none": (0, 0, 0, 0), "small": (1, 2 / 3, 1 / 3, 0), "large": (3, 2, 1, 0)}


def tiny_llama(seed: int = 0, dtype=torch.float64) -> Llama:
    torch.manual_seed(seed)
    config = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, multiple_of=16,
                         max_seq_len=64, attention_backend="eager")
    return Llama(config).to(dtype)


def scored_model(seed: int = 0) -> RewardModel:
    model = RewardModel(tiny_llama(seed), eos_id=2)
    torch.nn.init.normal_(model.backbone.output.weight, std=0.5)  # the zero initialisation scores everything 0
    return model


def test_margin_tables_are_those_of_table_27():
    for name, values in TABLE_27.items():
        assert [MARGINS[name][strength] for strength in STRENGTHS] == pytest.approx(values, abs=0)


@pytest.mark.parametrize("table", ["none", "small", "large"])
def test_margin_ranking_loss_matches_hand_computation(table):
    strengths = torch.arange(4)  # one pair per strength level
    margins = margins_for(strengths, table)
    loss = margin_ranking_loss(torch.tensor(R_CHOSEN, dtype=torch.float64),
                               torch.tensor(R_REJECTED, dtype=torch.float64), margins)
    expected = [-math.log(1 / (1 + math.exp(-(c - r - m))))
                for c, r, m in zip(R_CHOSEN, R_REJECTED, TABLE_27[table], strict=True)]
    assert loss.tolist() == pytest.approx(expected, rel=1e-12)


def test_margin_ranking_loss_by_hand_values():
    # small margin, "significantly better": 1 - 0 - 1 = 0, so the loss is log 2; large: 1 - 0 - 3 = -2.
    assert float(margin_ranking_loss(torch.tensor([1.0]), torch.tensor([0.0]), 1.0)) == pytest.approx(math.log(2))
    assert float(margin_ranking_loss(torch.tensor([1.0]), torch.tensor([0.0]), 3.0)) == pytest.approx(
        math.log(1 + math.exp(2)))
    # Finite where the naive -log(sigmoid(.)) would give inf.
    assert float(margin_ranking_loss(torch.tensor([-200.0]), torch.tensor([0.0]))) == pytest.approx(200.0)


def test_unknown_margin_table_is_rejected():
    with pytest.raises(ValueError, match="margin='medium'"):
        margins_for(torch.tensor([0]), "medium")


def test_combination_rule_on_hand_made_scores():
    helpful = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.3])
    safe = torch.tensor([0.9, 0.1, 0.5, 0.15, 0.149])
    is_safety = [False, False, True, False, False]
    # 1: safe and not a safety prompt -> R_h; 2: R_s < 0.15 -> R_s; 3: safety prompt -> R_s;
    # 4: R_s = 0.15 is not below the threshold -> R_h; 5: 0.149 < 0.15 -> R_s.
    assert combine_rewards(helpful, safe, is_safety).tolist() == pytest.approx([0.9, 0.1, 0.5, 0.6, 0.149])


def test_combination_rejects_raw_scores():
    with pytest.raises(ValueError, match="sigmoid"):
        combine_rewards(torch.tensor([2.0]), torch.tensor([0.5]), [False])


def test_whiten_and_ppo_reward_on_hand_made_values():
    # mean 2.5, population std sqrt(1.25)
    std = math.sqrt(1.25)
    assert whiten(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)).tolist() == pytest.approx(
        [-1.5 / std, -0.5 / std, 0.5 / std, 1.5 / std], rel=1e-6)
    # R_c = [0.5, 0.1 (safety), 0.9]; logit = [0, -log 9, log 9]; mean 0, population std log 9 * sqrt(2/3).
    reward = ppo_reward(torch.tensor([0.5, 0.7, 0.9]), torch.tensor([0.8, 0.1, 0.9]), [False, False, False])
    scale = math.log(9) * math.sqrt(2 / 3)
    assert reward.tolist() == pytest.approx([0.0, -math.log(9) / scale, math.log(9) / scale], abs=1e-5)


def test_score_does_not_depend_on_padding_side_or_batch():
    model = scored_model().eval()
    sequences = [[1, 5, 9, 2], [1, 7, 8, 11, 13, 4, 2], [1, 3, 2]]
    with torch.no_grad():
        alone = torch.cat([model(torch.tensor([s]), torch.ones(1, len(s), dtype=torch.long)) for s in sequences])
        width = 9
        right = torch.zeros(3, width, dtype=torch.long)
        left = torch.zeros(3, width, dtype=torch.long)
        right_mask, left_mask = torch.zeros_like(right), torch.zeros_like(left)
        for row, s in enumerate(sequences):
            right[row, : len(s)], right_mask[row, : len(s)] = torch.tensor(s), 1
            left[row, width - len(s):], left_mask[row, width - len(s):] = torch.tensor(s), 1
        from_right = model(right, right_mask)
        from_left = model(left, left_mask)
        reordered = model(right[[2, 0]], right_mask[[2, 0]])
    assert alone.abs().min() > 1e-3  # scores are not trivially zero
    torch.testing.assert_close(from_right, alone, rtol=0, atol=1e-12)
    torch.testing.assert_close(from_left, alone, rtol=0, atol=1e-12)
    torch.testing.assert_close(reordered, alone[[2, 0]], rtol=0, atol=1e-12)


def test_likelihood_head_sums_the_answer_log_probabilities_on_either_padding_side():
    backbone = tiny_llama(1)
    model = RewardModel(backbone, eos_id=2, head="likelihood").eval()
    assert model.backbone.output.out_features == 64  # the next-token head is kept
    sequences, starts = [[1, 5, 9, 6, 2], [1, 7, 8, 11, 13, 4, 2]], [3, 2]  # answers: [6, 2] and [8, 11, 13, 4, 2]
    with torch.no_grad():
        expected = []
        for sequence, start in zip(sequences, starts, strict=True):
            logprobs = backbone(torch.tensor([sequence])).logits[0].log_softmax(-1)
            expected.append(sum(float(logprobs[t - 1, sequence[t]]) for t in range(start, len(sequence))))
        width = 9
        right, left = torch.zeros(2, width, dtype=torch.long), torch.zeros(2, width, dtype=torch.long)
        right_mask, left_mask = torch.zeros_like(right), torch.zeros_like(left)
        for row, s in enumerate(sequences):
            right[row, : len(s)], right_mask[row, : len(s)] = torch.tensor(s), 1
            left[row, width - len(s):], left_mask[row, width - len(s):] = torch.tensor(s), 1
        from_right = model(right, right_mask, torch.tensor(starts))
        from_left = model(left, left_mask, torch.tensor(starts) + torch.tensor([width - 5, width - 7]))
    torch.testing.assert_close(from_right, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close(from_left, from_right, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="pass answer_start"):
        model(right, right_mask)
    with pytest.raises(ValueError, match="head='linear' is unknown"):
        RewardModel(tiny_llama(), eos_id=2, head="linear")


def test_calibration_puts_the_median_pair_gap_at_one():
    tokenizer = toy_tokenizer()
    rows = generate_preferences(9, seed=3)
    model = RewardModel(load_base_model("base")[0], tokenizer.eos_id, head="likelihood").eval()
    raw = [score_responses(model, tokenizer, rows["prompt"], rows[side]).double() for side in ("chosen", "rejected")]
    calibrate(model, tokenizer, rows["prompt"], rows["chosen"], rows["rejected"])
    expected_offset = sorted(torch.cat(raw).tolist())[8]  # the lower median of 18 scores, as torch.median
    expected_scale = sorted((raw[0] - raw[1]).abs().tolist())[4]  # the median of 9 gaps
    assert (model.offset, model.scale) == pytest.approx((expected_offset, expected_scale), rel=1e-9)
    standardised = [score_responses(model, tokenizer, rows["prompt"], rows[side]).double()
                    for side in ("chosen", "rejected")]
    assert float((standardised[0] - standardised[1]).abs().median()) == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="only a likelihood head is calibrated"):
        calibrate(RewardModel(tiny_llama(), eos_id=2), tokenizer, rows["prompt"], rows["chosen"], rows["rejected"])
    with pytest.raises(ValueError, match="median gap of these 1 pairs is 0.0"):
        calibrate(model, tokenizer, rows["prompt"][:1], rows["chosen"][:1], rows["chosen"][:1])


def test_likelihood_rm_learns_pairs_and_round_trips(tmp_path):
    # Untrained, a likelihood RM is the backbone's judgement; a few steps of the margin loss move it towards the
    # annotators': the training loss falls, and the saved folder scores exactly as the model in memory.
    config = RewardConfig(base="base", head="likelihood", pairs=64, sampled_pairs=0, held_out=16, lr=1e-3,
                          noise_scale=0.0, output_dir=str(tmp_path / "run"))
    backbone, tokenizer = load_base_model("base")
    data = reward_preferences(config, backbone, tokenizer)
    batch = encode_preferences(tokenizer, data[0]).columns
    loss = preference_loss(config.margin)

    def mean_loss(rm):
        with torch.no_grad():
            total = loss(rm.eval(), batch)
        return float(total.total / total.count)

    untrained = RewardModel(backbone, tokenizer.eos_id, head="likelihood")
    model, tokenizer, card = train_reward_model(config, data)
    assert card["steps"] == 4 and card["reward_config"]["head"] == "likelihood"
    # training standardised the scores on its first 256 pairs' answers before the first step
    rows = data[0].select(range(64))
    calibrate(untrained, tokenizer, rows["prompt"], rows["chosen"], rows["rejected"])
    assert (untrained.offset, untrained.scale) == pytest.approx((model.offset, model.scale), rel=1e-9)
    assert model.offset < -1 and model.scale > 1  # summed log-probabilities of whole answers, in nats
    assert mean_loss(model) < mean_loss(untrained) - 0.05, (mean_loss(untrained), mean_loss(model))
    save_reward_model(model, tmp_path / "rm", card)
    loaded, _ = load_reward_model(tmp_path / "rm")
    assert loaded.head == "likelihood"
    rows = generate_preferences(4, seed=9)
    torch.testing.assert_close(score_responses(loaded, tokenizer, rows["prompt"], rows["chosen"]),
                               score_responses(model, tokenizer, rows["prompt"], rows["chosen"]))


def test_score_requires_a_final_eos():
    model = scored_model()
    with pytest.raises(ValueError, match=r"rows \[1\] do not end with EOS"):
        model(torch.tensor([[1, 5, 2], [1, 5, 6]]), torch.ones(2, 3, dtype=torch.long))


def test_bad_preference_rows_name_the_row():
    tokenizer = toy_tokenizer()
    good = {"prompt": "What is 1 plus 1?", "chosen": "1 plus 1 is 2.", "rejected": "1 plus 1 is 3.",
            "strength": "better"}
    with pytest.raises(ValueError, match=r"row 1 has strength 'much better'"):
        encode_preferences(tokenizer, [good, good | {"strength": "much better"}])
    with pytest.raises(ValueError, match=r"row 2 lacks the field\(s\) \['rejected'\]"):
        encode_preferences(tokenizer, [good, good, {k: v for k, v in good.items() if k != "rejected"}])
    with pytest.raises(ValueError, match=r"row 0 has an empty or non-text 'chosen'"):
        encode_preferences(tokenizer, [good | {"chosen": "  "}])


def test_encoded_pairs_end_with_eos_and_carry_strength():
    tokenizer = toy_tokenizer()
    rows = generate_preferences(6, seed=3)
    blocks = encode_preferences(tokenizer, rows, max_tokens=256)
    batch = blocks[list(range(6))]
    lengths = batch["chosen_mask"].sum(dim=1)
    assert batch["chosen_ids"].gather(1, (lengths - 1)[:, None]).flatten().tolist() == [tokenizer.eos_id] * 6
    assert batch["strength"].tolist() == [STRENGTHS.index(s) for s in rows["strength"]]


def test_preference_loss_is_the_summed_margin_loss_of_the_pairs():
    tokenizer = toy_tokenizer()
    rows = generate_preferences(4, seed=1)
    batch = encode_preferences(tokenizer, rows)[list(range(4))]
    torch.manual_seed(0)
    model = RewardModel(Llama(dataclasses.replace(ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                                                              vocab_size=tokenizer.vocab_size, multiple_of=16,
                                                              max_seq_len=256))), tokenizer.eos_id)
    torch.nn.init.normal_(model.backbone.output.weight, std=0.5)
    loss = preference_loss("large")(model, batch)
    chosen = score_responses(model, tokenizer, rows["prompt"], rows["chosen"])
    rejected = score_responses(model, tokenizer, rows["prompt"], rows["rejected"])
    margins = torch.tensor([MARGINS["large"][s] for s in rows["strength"]])
    expected = sum(math.log(1 + math.exp(-(c - r - m))) for c, r, m in zip(chosen.tolist(), rejected.tolist(),
                                                                          margins.tolist(), strict=True))
    assert int(loss.count) == 4
    assert float(loss.total.detach()) == pytest.approx(expected, rel=1e-4)


def test_sampled_pairs_come_from_two_arms_and_are_annotated():
    tokenizer = toy_tokenizer()
    torch.manual_seed(0)
    model = Llama(ModelConfig(dim=32, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=tokenizer.vocab_size,
                              multiple_of=16, max_seq_len=128)).eval()
    prompts = ["What is 2 plus 3?", "Reverse this list: red, blue, green."] * 3
    pairs = sample_preference_pairs({"random": model}, tokenizer, prompts, temperatures=(0.5, 1.5),
                                    max_new_tokens=8, seed=0)
    assert 0 < len(pairs) <= len(prompts)
    for row in pairs:
        assert row["arm_chosen"] != row["arm_rejected"]
        assert {row["arm_chosen"], row["arm_rejected"]} == {"random@0.5", "random@1.5"}
        assert row["strength"] in STRENGTHS and row["chosen"] != row["rejected"]
    with pytest.raises(ValueError, match="two different"):
        sample_preference_pairs({"random": model}, tokenizer, prompts, temperatures=(1.0,))


def test_warmup_is_three_percent_with_at_least_five_steps():
    assert RewardConfig(batch_size=16).trainer_config(1000).warmup_steps == 5  # 63 steps
    config = RewardConfig(batch_size=16).trainer_config(16_000)  # 1000 steps, one epoch
    assert (config.steps, config.warmup_steps, config.final_lr_ratio) == (1000, 30, 0.1)


def test_short_run_beats_chance_and_round_trips(tmp_path):
    # Noise-free annotators, so held-out accuracy measures the RM rather than label noise. Chance is 0.5 and
    # one standard error over 160 pairs is 0.04; this seed reaches about 0.75.
    config = RewardConfig(base="base", pairs=256, sampled_pairs=0, held_out=160, lr=1e-3, noise_scale=0.0,
                          output_dir=str(tmp_path / "run"))
    model, tokenizer, card = train_reward_model(config, reward_data(config))
    assert card["steps"] == 16 and card["warmup_steps"] == 5
    assert card["held_out"]["accuracy"] > 0.68, card["held_out"]["by_strength"]
    save_reward_model(model, tmp_path / "rm", card)
    loaded, _ = load_reward_model(tmp_path / "rm")
    rows = generate_preferences(4, seed=9)
    torch.testing.assert_close(score_responses(loaded, tokenizer, rows["prompt"], rows["chosen"]),
                               score_responses(model, tokenizer, rows["prompt"], rows["chosen"]))


def test_unsafe_detection_precision_and_recall_by_hand():
    safety = torch.tensor([0.05, 0.10, 0.14, 0.5, 0.9, 0.2])
    unsafe = [True, False, True, True, False, False]
    # flagged (< 0.15): rows 0, 1, 2; of those 0 and 2 are unsafe -> precision 2/3; unsafe 0, 2, 3 -> recall 2/3.
    assert unsafe_detection(safety, unsafe) == pytest.approx((2 / 3, 2 / 3))
    assert unsafe_detection(safety, unsafe, threshold=0.6) == pytest.approx((3 / 5, 1.0))
    with pytest.raises(ValueError, match="no positive label"):
        unsafe_detection(safety, [False] * 6)


def test_train_rm_flags_build_the_config():
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    config = config_from_args(parser.parse_args(["--criterion", "safety", "--margin", "large", "--pairs", "64"]))
    assert (config.criterion, config.margin, config.pairs, config.output_dir) == ("safety", "large", 64,
                                                                                 "runs/rm-safety")
    assert (config.epochs, config.base) == (1.0, "auto")
    with pytest.raises(SystemExit):
        parser.parse_args(["--margin", "medium"])


@pytest.mark.parametrize("name", sorted(SHIPPED_RMS))
def test_each_shipped_rm_reproduces_the_held_out_accuracy_its_card_records(name):
    """Re-scored on the first 200 of the held-out pairs its card was measured on (rebuilt from the card's
    reward_config), a shipped RM's accuracy agrees with the card's within 4 standard errors of a 200-pair subset
    of that draw (binomial, with the finite-population correction): regenerating an RM needs no edit here."""
    card = reward_card(name)
    rows = held_out_preferences(RewardConfig(**card["reward_config"]))
    recorded, subset = card["held_out"]["accuracy"], min(200, len(rows))
    model, tokenizer = load_reward_model(name)
    measured = evaluate_preferences(model, tokenizer, rows.select(range(subset)))["accuracy"]
    standard_error = math.sqrt(recorded * (1 - recorded) * (1 / subset - 1 / len(rows)))
    assert abs(measured - recorded) < 4 * standard_error + 1e-12, (measured, recorded, standard_error)
    assert recorded > 0.5 + 4 * math.sqrt(0.25 / len(rows)), "the card's RM does not beat chance"
