"""Rejection sampling (Llama 2, section 3.2.3): best-of-N selection, exact order statistics, the KL bound, the loop."""

import itertools
import math
import statistics

import pytest
import torch

from llama_course.alignment.rejection import (
    RejectionConfig,
    best_of_n,
    best_of_n_kl,
    best_of_n_kl_bound,
    expected_order_statistic,
    log_likelihood_scorer,
    max_and_median_curves,
    rejection_sampling,
    reward_model_scorer,
    sample_responses,
    select_best,
)
from llama_course.alignment.reward import RewardModel
from llama_course.alignment.reward_data import encode_response
from llama_course.alignment.reward_train import load_reward_model
from llama_course.chat import encode_dialog
from llama_course.experiments.toyworld_judges import true_reward
from llama_course.pretrained import load_pretrained
from llama_course.toyworld import generate_tasks


@pytest.fixture(scope="module")
def sft():
    return load_pretrained("sft")


def length_reward(prompts, responses):
    """A reward whose argmax is easy to check by hand: the number of characters."""
    return torch.tensor([float(len(r)) for r in responses])


def test_select_best_takes_the_argmax_of_each_row_first_on_ties():
    scores = torch.tensor([[0.1, 0.9, 0.3], [2.0, -1.0, 2.0], [-5.0, -4.0, -6.0]])
    assert select_best(scores).tolist() == [1, 0, 1]
    with pytest.raises(ValueError, match="at least one sample"):
        select_best(torch.zeros(3, 0))


def test_best_of_n_keeps_each_prompts_own_best_answer(sft):
    model, tokenizer = sft
    prompts = list(generate_tasks(3, seed=11)["prompt"])
    result = best_of_n(model, length_reward, prompts, 5, 1.0, tokenizer=tokenizer, max_new_tokens=12, seed=3)
    assert result.scores.shape == (3, 5)
    for p, samples in enumerate(result.responses):
        lengths = [len(s) for s in samples]
        assert result.scores[p].tolist() == lengths
        assert len(result.best_responses[p]) == max(lengths)
        assert result.best_scores[p] == max(lengths)


def test_seeded_sampling_is_reproducible_and_the_seed_matters(sft):
    model, tokenizer = sft
    prompts = list(generate_tasks(2, seed=12)["prompt"])
    first = sample_responses(model, tokenizer, prompts, 4, 1.0, max_new_tokens=10, seed=5, batch_size=3)
    again = sample_responses(model, tokenizer, prompts, 4, 1.0, max_new_tokens=10, seed=5, batch_size=3)
    other = sample_responses(model, tokenizer, prompts, 4, 1.0, max_new_tokens=10, seed=6, batch_size=3)
    assert first == again
    assert first != other
    assert len(first) == 2 and all(len(samples) == 4 for samples in first)


def test_reward_model_scorer_is_the_sigmoid_of_the_raw_score_and_zero_for_empty_answers():
    from llama_course.alignment.reward import score_responses
    from llama_course.alignment.sft import load_base_model

    backbone, tokenizer = load_base_model("random-tiny")
    rm = RewardModel(backbone, tokenizer.eos_id).eval()
    torch.nn.init.normal_(rm.backbone.output.weight, std=0.5)
    prompts, responses = ["Count the words: a b c.", "Count the words: a b c."], ["3", ""]
    scores = reward_model_scorer(rm, tokenizer)(prompts, responses)
    raw = score_responses(rm, tokenizer, prompts[:1], responses[:1])
    torch.testing.assert_close(scores[0], torch.sigmoid(raw[0]))
    assert scores[1] == 0.0


def test_expected_order_statistic_equals_enumerating_every_subset():
    scores = torch.tensor([[0.3, -1.2, 2.5, 0.7, 1.1, -0.4, 0.0], [5.0, 1.0, 3.0, 3.0, 2.0, 4.0, 0.5]],
                          dtype=torch.float64)
    for n in (1, 2, 3, 4, 7):
        for rank in range(1, n + 1):
            expected = [statistics.fmean(sorted(subset)[rank - 1] for subset in itertools.combinations(row.tolist(), n))
                        for row in scores]
            torch.testing.assert_close(expected_order_statistic(scores, n, rank),
                                       torch.tensor(expected, dtype=torch.float64))
    with pytest.raises(ValueError, match="n=8 <= K=7"):
        expected_order_statistic(scores, 8, 8)


def test_max_and_median_curves_match_enumeration_for_an_even_n():
    row = [0.2, 0.9, 0.4, 0.1, 0.7]
    curves = max_and_median_curves(torch.tensor([row]), [1, 4])
    subsets = list(itertools.combinations(row, 4))
    assert curves["max"][0] == pytest.approx(statistics.fmean(row))
    assert curves["max"][1] == pytest.approx(statistics.fmean(max(s) for s in subsets))
    assert curves["median"][1] == pytest.approx(statistics.fmean(statistics.median(s) for s in subsets))


def test_best_of_n_kl_reaches_the_bound_with_distinct_scores_and_drops_with_ties():
    distinct = torch.randperm(20000, generator=torch.Generator().manual_seed(0)).double()[None]
    for n in (1, 2, 4, 16):
        assert float(best_of_n_kl(distinct, n)) == pytest.approx(best_of_n_kl_bound(n), abs=2e-3)
    assert best_of_n_kl_bound(4) == pytest.approx(math.log(4) - 0.75)
    assert float(best_of_n_kl(torch.ones(1, 50), 8)) == pytest.approx(0.0, abs=1e-12)
    half_tied = torch.tensor([[0.0] * 50 + list(range(1, 51))], dtype=torch.float64)
    assert 0 < float(best_of_n_kl(half_tied, 8)) < best_of_n_kl_bound(8)


def test_rejection_config_rejects_greedy_sampling():
    with pytest.raises(ValueError, match="temperature=0"):
        RejectionConfig(temperature=0)


def test_one_seeded_iteration_with_the_true_reward_raises_held_out_true_reward(sft, tmp_path):
    """The loop with an oracle reward model (the toy world's true helpfulness) on counting tasks.

    The shipped 1M-parameter RM does not rank the SFT model's own samples by their true quality (chapter 12
    measures this), so the true-reward gain is pinned down with the oracle, and the RM gain below.
    """
    model, tokenizer = sft
    prompts = list(generate_tasks(256, seed=2000, families=["counting"])["prompt"])
    held_out = list(generate_tasks(64, seed=3000, families=["counting"])["prompt"])
    config = RejectionConfig(iterations=1, samples=4, temperature=0.7, steps=16, batch_size=8, block_size=128)
    before = [p.detach().clone() for p in model.parameters()]
    _, history = rejection_sampling(model, true_reward, tokenizer, prompts, held_out, config, tmp_path,
                                    truth=true_reward)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    start, after = history
    assert after["kept_rm"] > after["sampled_rm"]
    assert after["true"] > start["true"]


def test_one_seeded_iteration_with_the_shipped_rm_raises_held_out_rm_score(sft, tmp_path):
    model, tokenizer = sft
    reward_model, _ = load_reward_model("helpfulness")
    prompts = list(generate_tasks(64, seed=2000)["prompt"])  # every task family: the RM's scores spread widest
    held_out = list(generate_tasks(32, seed=3000)["prompt"])
    config = RejectionConfig(iterations=1, samples=8, temperature=0.7, steps=20, batch_size=8, block_size=128, lr=1e-3)
    start, after = rejection_sampling(model, reward_model, tokenizer, prompts, held_out, config, tmp_path)[1]
    assert after["kept_rm"] > after["sampled_rm"]
    assert after["rm"] > start["rm"] + 0.02


def test_expected_order_statistic_reads_values_at_the_scores_rank():
    scores = torch.tensor([[0.5, 0.1, 0.9, 0.3]], dtype=torch.float64)
    values = torch.tensor([[10.0, 20.0, 30.0, 40.0]], dtype=torch.float64)
    expected = statistics.fmean(values[0, max(subset, key=lambda i: scores[0, i])].item()
                                for subset in itertools.combinations(range(4), 2))
    assert float(expected_order_statistic(scores, 2, 2, values)) == pytest.approx(expected)


def test_log_likelihood_scorer_sums_the_answer_tokens_log_probabilities_one_sequence_at_a_time(sft):
    model, tokenizer = sft
    prompts = ["What is 2 plus 3?", "What is 2 plus 3?", "Reverse this list: red, blue, green.", "What is 1 plus 1?"]
    responses = ["2 plus 3 is 5.", "2 plus 3 is 7. I hope this helps you.", "green, blue, red.", ""]
    scores = log_likelihood_scorer(model, tokenizer)(prompts, responses)
    for prompt, response, score in zip(prompts[:3], responses[:3], scores[:3], strict=True):
        ids = torch.tensor(encode_response(tokenizer, prompt, response))
        start = len(encode_dialog(tokenizer, [{"role": "user", "content": prompt}]).ids)
        with torch.no_grad():
            logits = model(ids[None, :-1]).logits.double()[0]
        expected = logits.log_softmax(-1).gather(1, ids[1:, None]).squeeze(1)[start - 1:].sum()
        assert float(score) == pytest.approx(float(expected), abs=1e-3)
    assert scores[3] == -math.inf  # an empty answer is never picked
    assert scores[0] > scores[1]  # the SFT model finds the right, unpadded sum far likelier


MADE_UP_PROMPTS = ["Tell me about the sea.", "Write a line about green trees.", "What do bees eat?",
                   "Describe a red apple."]


def letter_e_judge(prompts, responses):
    return torch.tensor([float(response.count("e")) for response in responses])


def test_the_loop_runs_on_the_callers_prompts_and_keeps_the_argmax_of_its_judge(sft, tmp_path):
    model, tokenizer = sft
    config = RejectionConfig(iterations=1, samples=4, temperature=1.0, max_new_tokens=16, steps=1, batch_size=1,
                             block_size=16, seed=3)
    _, history = rejection_sampling(model, letter_e_judge, tokenizer, MADE_UP_PROMPTS, MADE_UP_PROMPTS[:2], config,
                                    tmp_path)
    # The loop's own draws (seed + 1000 per iteration), scored again by the judge: the kept answer is each prompt's
    # argmax, so the kept mean is the mean of the per-prompt maxima of "e".
    samples = sample_responses(model, tokenizer, MADE_UP_PROMPTS, 4, 1.0, max_new_tokens=16, seed=3 + 1000)
    counts = torch.tensor([[float(s.count("e")) for s in row] for row in samples])
    assert history[1]["kept_rm"] == pytest.approx(float(counts.max(dim=1).values.mean()), abs=1e-6)
    assert history[1]["sampled_rm"] == pytest.approx(float(counts.mean()), abs=1e-6)
    assert history[1]["kept_rm"] > history[1]["sampled_rm"], "the samples differ, so the argmax beats the mean"
    assert "true" not in history[0], "no truth given: nothing measured but the judge"
