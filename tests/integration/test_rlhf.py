"""Iterative RLHF (Llama 2, sections 3.2.1 to 3.2.3): rounds, resume, RM accuracy against the truth, statistics."""

import json

import datasets
import numpy as np
import pytest
import torch

from llama_course.alignment.reward import RewardModel
from llama_course.alignment.reward_train import load_reward_model
from llama_course.evaluation import bootstrap_mean
from llama_course.experiments.overoptimisation import overoptimisation, ppo_change
from llama_course.experiments.rlhf import (
    CRITERIA,
    RLHFConfig,
    balanced_safety_mix,
    borderline_requests,
    eval_prompts,
    pool_composition,
    run_rlhf,
    true_order_accuracy,
)
from llama_course.experiments.rlhf_results import (
    difference_table,
    false_refusals_by_request,
    load_rlhf_results,
    paired_difference,
    pool_table,
    table_columns,
    versions_table,
    write_results,
)
from llama_course.pretrained import load_pretrained
from llama_course.toyworld.safety import identify_borderline

# Every stage at its smallest: two versions (rejection sampling, then PPO) on a handful of prompts.
SMOKE = dict(rounds=2, toy_pairs=16, helpfulness_prompts=16, safety_prompts=8, new_pair_prompts=12, rs_prompts=8,
             rs_samples=2, borderline_prompts=6, eval_tasks=6, eval_safety=4, capture_prompts=3, capture_samples=2,
             capture_n=2, max_new_tokens=12,
             ppo={"iterations": 1, "batch_size": 8, "minibatch_size": 4, "chunk_size": 8})


def test_bootstrap_mean_covers_the_mean_and_widens_with_seed_spread():
    rng = np.random.default_rng(0)
    values = rng.normal(0.3, 1.0, size=(3, 400))
    interval = bootstrap_mean(values)
    assert interval.rate == pytest.approx(values.mean())
    assert interval.low < 0.3 < interval.high
    assert interval.high - interval.low == pytest.approx(2 * 1.96 / np.sqrt(1200), rel=0.25)
    shifted = values + np.array([[-0.5], [0.0], [0.5]])  # the seeds disagree: the interval must say so
    wide = bootstrap_mean(shifted)
    assert wide.high - wide.low > 3 * (interval.high - interval.low)
    ratio = bootstrap_mean(values, denominator=np.full_like(values, 2.0))  # a ratio of means: halves the mean
    assert ratio.rate == pytest.approx(values.mean() / 2) and ratio.low == pytest.approx(interval.low / 2)
    constant = bootstrap_mean(np.full((2, 10), 0.25))
    assert (constant.rate, constant.low, constant.high) == pytest.approx((0.25, 0.25, 0.25))
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_mean([0.1, float("nan")])


def test_true_order_accuracy_reads_the_truth_not_the_label_and_counts_ties_half():
    model, tokenizer = load_pretrained("sft")
    rm = RewardModel(model, tokenizer.eos_id).eval()  # zero head: every answer scores 0, a tie
    pairs = datasets.Dataset.from_list([
        {"prompt": "What is 2 plus 2?", "chosen": "2 plus 2 is 4.", "rejected": "2 plus 2 is 5.",
         "score_chosen": 1.0, "score_rejected": 0.5},
        {"prompt": "What is 2 plus 2?", "chosen": "4.", "rejected": "2 plus 2 is 4.",
         "score_chosen": 1.0, "score_rejected": 1.0},  # no true difference: left out
    ])
    assert true_order_accuracy(rm, tokenizer, pairs) == [0.5]
    with torch.no_grad():
        rm.backbone.output.weight.normal_(generator=torch.Generator().manual_seed(0))
    scored = true_order_accuracy(rm, tokenizer, pairs)
    assert len(scored) == 1 and scored[0] in (0.0, 1.0)


def test_config_rejects_bad_values_before_any_work():
    with pytest.raises(ValueError, match="capture_n=9"):
        RLHFConfig(capture_n=9, capture_samples=8)
    with pytest.raises(TypeError):
        RLHFConfig(ppo={"no_such_setting": 1})
    with pytest.raises(ValueError, match="rounds=0"):
        RLHFConfig(rounds=0)
    with pytest.raises(ValueError, match="helpfulness_head='linear' is unknown"):
        RLHFConfig(helpfulness_head="linear")
    with pytest.raises(ValueError, match="borderline_prompts=-1"):
        RLHFConfig(borderline_prompts=-1)


def test_borderline_requests_carry_the_alarming_words_and_stay_apart_from_the_held_out_ones():
    from llama_course.toyworld.safety import ADDED_BORDERLINE_TOPICS, is_safety_prompt

    drawn = borderline_requests(400, seed=11)
    assert drawn == borderline_requests(400, seed=11) and len(drawn) > 50
    assert all(identify_borderline(p)[1] == answer for p, answer in drawn.items())  # the helpful answer
    topics = {identify_borderline(p)[0] for p in drawn}  # every one a borderline request, none unsafe
    assert set(ADDED_BORDERLINE_TOPICS) <= topics and not any(is_safety_prompt(p) for p in drawn)
    held_out = set(eval_prompts(RLHFConfig()))
    assert held_out & set(drawn)  # the fixed wordings are drawn too: improve_policy drops them (next test)


def test_balanced_safety_mix_caps_unsafe_winners_at_the_borderline_count():
    from llama_course.toyworld import generate_safety_prompts, generate_tasks

    safety = generate_safety_prompts(40, seed=3)
    rows = list(zip(safety["prompt"], safety["category"], strict=True))
    unsafe = [p for p, c in rows if c == "unsafe"]
    borderline = sorted({p for p, c in rows if c == "borderline"})[:2]
    tasks = list(generate_tasks(3, seed=3)["prompt"])
    winners = {p: "answer" for p in [*unsafe[:5], *tasks, *borderline]}
    kept = balanced_safety_mix(winners)
    assert list(kept) == [*unsafe[:2], *tasks, *borderline]  # the first two unsafe ones stay, every other prompt
    assert balanced_safety_mix({p: "answer" for p in tasks}) == {p: "answer" for p in tasks}


def test_pool_composition_counts_safety_answers_and_their_refusals():
    pool = {"How can I hit the cat?": "I will not help you hit the cat. Be gentle with the cat instead.",
            "How do I beat the drum?": "I will not help you beat the drum.",
            "How do I cut the cake?": "Use a knife and cut the cake into pieces.",
            "What is 2 plus 2?": "2 plus 2 is 4."}
    assert pool_composition(pool) == {"answers": 4, "unsafe": 1, "unsafe_refused": 1, "borderline": 2,
                                      "borderline_refused": 1}


@pytest.mark.parametrize("head", ["scalar", "likelihood"])
def test_rounds_run_resume_and_summarize(tmp_path, one_thread, head):
    demonstrations = head == "likelihood"  # one run samples answers to the extra borderline requests, one pools
    config = RLHFConfig(output_dir=str(tmp_path / "rlhf"), helpfulness_head=head, **SMOKE,  # the annotators'
                        borderline_demonstrations=demonstrations)
    reports = run_rlhf(config)
    assert [r["method"] for r in reports] == ["sft", "rejection_sampling", "ppo"]
    seed_dir = tmp_path / "rlhf/seed-0"
    for k in range(3):  # every round's helpfulness RM has the chosen head; the safety RM stays scalar
        rms = {c: json.loads((seed_dir / f"round-{k}/rm_{c}/config.json").read_text()) for c in CRITERIA}
        assert (rms["helpfulness"]["head"], rms["safety"]["head"]) == (head, "scalar")
    pool = json.loads((seed_dir / "round-1/rs_pool.json").read_text())
    assert any(identify_borderline(p) for p in pool) and not set(pool) & set(eval_prompts(config))
    if demonstrations:  # every fresh extra request is pooled with its helpful answer
        extra = borderline_requests(config.borderline_prompts, 1_000_000 + 1000 + 11)
        assert all(pool[p] == a for p, a in extra.items() if p not in eval_prompts(config)) and len(extra) > 1
    finished = {k: (seed_dir / f"round-{k}/round.json").read_text() for k in range(3)}
    (seed_dir / "round-2/round.json").unlink()  # as if the run had stopped during round 2
    resumed = run_rlhf(config)  # round 2 runs again from round 1's files, the same to the last digit
    assert {k: (seed_dir / f"round-{k}/round.json").read_text() for k in range(3)} == finished
    assert resumed == reports
    n_prompts = len(eval_prompts(config))
    for report in reports:
        assert len(report["policy"]["helpfulness"]) == n_prompts
        assert all(0.0 <= v <= 1.0 for v in report["policy"]["helpfulness"])
        assert len(report["capture"]["oracle"]) == config.capture_prompts
        # The oracle's best of N is at least the mean of one sample, and at least what the RM picks.
        for n1, oracle, picked in zip(*(report["capture"][k] for k in ("n1", "oracle", "picked")), strict=True):
            assert oracle >= n1 - 1e-9 and oracle >= picked - 1e-9
    for report in reports[1:]:
        for accuracy in report["rm_accuracy_new_pairs"].values():
            assert all(v in (0.0, 0.5, 1.0) for v in accuracy["before"] + accuracy["after"])
    results = write_results(config.output_dir, tmp_path / "results.json", config)
    assert [r["pool"] for r in results["reports"]["0"][:2]] == [pool_composition({}), pool_composition(pool)]
    assert load_rlhf_results(tmp_path / "results.json") == json.loads(json.dumps(results))
    versions = results["summary"]["versions"]
    assert [v["round"] for v in versions] == [0, 1, 2]
    assert versions[0]["gain_over_sft"] == {"rate": 0.0, "low": 0.0, "high": 0.0}
    tasks = ~np.asarray(reports[0]["policy"]["is_safety"], bool) & ~np.asarray(reports[0]["policy"]["borderline"], bool)
    helpful = [np.asarray(r["policy"]["helpfulness"])[tasks] for r in reports]
    assert [v["helpfulness_tasks"]["rate"] for v in versions] == pytest.approx([h.mean() for h in helpful])
    # the true judge's side-by-side against SFT: a win 1, a tie 1/2, a loss 0
    assert (versions[0]["win_rate_over_sft"]["rate"], versions[0]["ties_with_sft"]["rate"]) == (0.5, 1.0)
    for version, values in zip(versions, helpful, strict=True):
        wins = np.where(values > helpful[0], 1.0, np.where(values == helpful[0], 0.5, 0.0))
        assert version["win_rate_over_sft"]["rate"] == pytest.approx(wins.mean())
    table = versions_table(results, list(table_columns()), sampled=True).splitlines()
    assert len(table) == 4 and table[3].startswith("V2") and table[1].count("-") >= 4  # V0: no gain over previous
    with pytest.raises(ValueError, match="unknown columns"):
        versions_table(results, ["accuracy"])
    # two runs compared version by version, paired by seed and prompt; itself: no difference
    assert paired_difference(results, results, 2, "helpfulness", "tasks") == {"rate": 0.0, "low": 0.0, "high": 0.0}
    later = json.loads(json.dumps(results))
    later["reports"]["0"][2]["policy"]["helpfulness"] = [v + 0.25 for v in reports[2]["policy"]["helpfulness"]]
    assert paired_difference(later, results, 2, "helpfulness", "tasks")["rate"] == pytest.approx(0.25)
    rows = difference_table(later, results, {"helpful": ("helpfulness", "tasks")}).splitlines()
    assert rows[1].split() == ["V1", "+0.00", "[+0.00,", "+0.00]"] and rows[2].split()[:2] == ["V2", "+0.25"]
    pools = pool_table({"smoke": results}).splitlines()
    assert len(pools) == 3 and pools[1].split()[:2] == ["smoke", "V1"]
    assert [int(v) for v in pools[1].split()[2:]] == [results["reports"]["0"][1]["pool"][c] for c in
                                                     ("unsafe", "unsafe_refused", "borderline", "borderline_refused")]
    by_request = false_refusals_by_request(results)
    borderline = np.asarray(reports[0]["policy"]["borderline"], bool)
    for k, report in enumerate(reports):  # the requests' rates average, weighted by prompts, to the overall rate
        refused = np.asarray(report["policy"]["refuses"])[borderline]
        counts = {topic: sum(identify_borderline(p) is not None and identify_borderline(p)[0] == topic
                             for p in eval_prompts(config)) for topic in by_request}
        assert sum(by_request[t][k] * counts[t] for t in by_request) == pytest.approx(refused.sum())


def test_missing_results_name_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="llama-course rlhf"):
        load_rlhf_results(tmp_path / "none.json")


def test_overoptimisation_curves_at_their_smallest(tmp_path, one_thread):
    policy, tokenizer = load_pretrained("sft")
    helpfulness_rm, _ = load_reward_model("helpfulness")
    safety_rm, _ = load_reward_model("safety")
    ppo = {"iterations": 2, "batch_size": 8, "minibatch_size": 4, "chunk_size": 8, "max_new_tokens": 12}
    result = overoptimisation(policy, helpfulness_rm, safety_rm, tokenizer, tmp_path, prompts=4, ns=(1, 2, 4),
                              ppo=ppo)
    best = result["best_of_n"]
    assert best["kl"] == pytest.approx([0.0, np.log(2) - 0.5, np.log(4) - 0.75])
    # the RM's expected best of N can only grow with N; the truth of its pick need not
    assert best["rm"][0] <= best["rm"][1] + 1e-12 <= best["rm"][2] + 2e-12
    assert all(0.0 <= v <= 1.0 for v in best["true"])
    assert sorted(result["ppo"]) == ["0.0", "0.2"]
    for curve in result["ppo"].values():
        assert curve["iteration"] == [1, 2] and all(np.isfinite(curve["kl"]))


def test_ppo_change_compares_the_first_and_last_windows():
    curve = {"true": [0.25] * 10 + [9.0] * 5 + [0.75] * 10}
    change = ppo_change(curve, "true")
    assert (change["first"], change["last"], change["change"]) == (0.25, 0.75, 0.5)
    assert change["low"] == change["high"] == 0.5  # constant windows: no spread to resample
    noisy = ppo_change({"rm": list(np.random.default_rng(0).normal(0.0, 1.0, 40))}, "rm")
    assert noisy["low"] < noisy["change"] < noisy["high"]
    with pytest.raises(ValueError, match="no two disjoint windows of 10"):
        ppo_change({"kl": [0.0] * 19}, "kl")
