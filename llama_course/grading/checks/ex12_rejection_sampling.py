"""Tests of exercise 12: best-of-N selection, its KL bound, and the exact expected max and median among N of K.

Llama 2, section 3.2.3 (rejection sampling: keep the best of K samples) and Figure 7 (max and median reward
among N samples); the KL of best-of-N, log N - (N-1)/N, is from Stiennon et al. (2020).
"""

import itertools
import math

import torch

from llama_course.alignment.rejection import best_of_n_kl_bound as reference_kl_bound
from llama_course.alignment.rejection import expected_order_statistic as reference_order_statistic
from llama_course.alignment.rejection import select_best as reference_select_best
from llama_course.grading.assertions import assert_equal, assert_tensor_close, raises_value_error
from llama_course.grading.registry import Exercise

EXERCISE = Exercise(chapter=12, name="12_rejection_sampling", title="Rejection sampling fine-tuning")


def random_scores(seed: int, prompts: int, samples: int, levels: int | None = None) -> torch.Tensor:
    """(prompts, samples) float64 scores; with `levels`, rounded onto that many values so that ties occur."""
    generator = torch.Generator().manual_seed(seed)
    scores = torch.randn(prompts, samples, generator=generator, dtype=torch.float64)
    return scores if levels is None else (scores * levels / 4).round()


@EXERCISE.test("select_best", points=2)
def best_indices_match_the_reference_with_and_without_ties(select_best):
    for seed, (prompts, samples, levels) in enumerate(((1, 1, None), (4, 8, None), (16, 3, 2), (9, 20, 3))):
        scores = random_scores(seed, prompts, samples, levels)
        assert_tensor_close(select_best(scores), reference_select_best(scores), atol=0, rtol=0,
                            what=f"the best index of each row of scores {scores.tolist()}")
    for shape in ((5,), (3, 0)):
        if not raises_value_error(select_best, torch.zeros(shape)):
            raise AssertionError(f"scores of shape {shape} are not (prompts, samples) with a sample: raise ValueError")


@EXERCISE.test("select_best", points=1)
def the_best_score_is_the_row_maximum_and_comes_first(select_best):
    scores = random_scores(40, 12, 10, levels=2)
    best = select_best(scores)
    kept = scores.gather(1, best[:, None]).squeeze(1)
    assert_tensor_close(kept, scores.max(dim=1).values, atol=0, rtol=0,
                        what=f"the scores of the kept answers {best.tolist()} among {scores.tolist()}")
    for row, index in enumerate(best.tolist()):
        if bool((scores[row, :index] == kept[row]).any()):
            raise AssertionError(f"row {row} {scores[row].tolist()} ties for its best score earlier than index "
                                 f"{index}: keep the first one")


@EXERCISE.test("best_of_n_kl_bound", points=2)
def kl_bound_matches_the_reference(best_of_n_kl_bound):
    for n in (1, 2, 3, 4, 10, 64, 1000):
        assert_tensor_close(torch.tensor(float(best_of_n_kl_bound(n)), dtype=torch.float64),
                            torch.tensor(reference_kl_bound(n), dtype=torch.float64), atol=1e-12, rtol=1e-12,
                            what=f"the KL bound of best-of-{n}")
    for n in (0, -3):
        try:
            best_of_n_kl_bound(n)
        except ValueError:
            continue
        raise AssertionError(f"n={n} samples is not a best-of-n: raise ValueError")


@EXERCISE.test("best_of_n_kl_bound", points=1)
def kl_bound_is_zero_for_one_sample_and_grows_like_log_n(best_of_n_kl_bound):
    assert_equal(abs(best_of_n_kl_bound(1)) < 1e-15, True, what="whether best-of-1 (the policy itself) has KL 0")
    bounds = [best_of_n_kl_bound(n) for n in range(1, 50)]
    for n, (low, high) in enumerate(itertools.pairwise(bounds), start=1):
        if not high > low:
            raise AssertionError(f"the KL bound should grow with N: best-of-{n} gives {low}, best-of-{n + 1} {high}")
    for n in (10, 1000):
        gap = math.log(n) - best_of_n_kl_bound(n)
        if not 0 < gap < 1:
            raise AssertionError(f"log N - KL should be (N-1)/N, between 0 and 1, for N={n}: got {gap}")


@EXERCISE.test("expected_order_statistic", points=2)
def expectations_match_the_reference(expected_order_statistic):
    for seed, (prompts, k, levels) in enumerate(((1, 1, None), (3, 6, None), (5, 12, 2), (2, 300, None))):
        scores = random_scores(seed, prompts, k, levels)
        values = random_scores(100 + seed, prompts, k)
        for n in sorted({1, min(2, k), (k + 1) // 2, k}):
            for rank in sorted({1, (n + 1) // 2, n}):
                assert_tensor_close(expected_order_statistic(scores, n, rank),
                                    reference_order_statistic(scores, n, rank), atol=1e-9, rtol=1e-9,
                                    what=f"the expected rank-{rank} score among n={n} of K={k} (scores "
                                         f"{scores.tolist() if k < 20 else 'random'})")
                assert_tensor_close(expected_order_statistic(scores, n, rank, values),
                                    reference_order_statistic(scores, n, rank, values), atol=1e-9, rtol=1e-9,
                                    what=f"the expected value of the rank-{rank} sample among n={n} of K={k}")
    scores = random_scores(9, 2, 5)
    for n, rank in ((6, 1), (3, 0), (3, 4), (0, 0)):
        if not raises_value_error(expected_order_statistic, scores, n, rank):
            raise AssertionError(f"n={n}, rank={rank} with K=5 samples breaks 1 <= rank <= n <= K: raise ValueError")


@EXERCISE.test("expected_order_statistic", points=1)
def expectations_equal_the_average_over_every_subset(expected_order_statistic):
    scores = random_scores(50, 3, 7, levels=3)
    values = random_scores(51, 3, 7)
    for n in (1, 3, 4, 7):
        subsets = list(itertools.combinations(range(7), n))
        for rank in (1, (n + 1) // 2, n):
            by_score, by_value = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
            for subset in subsets:
                chosen = torch.tensor(subset)
                order = scores[:, chosen].argsort(dim=1, stable=True)[:, rank - 1]  # (P,) ties by position
                by_score += scores[:, chosen].gather(1, order[:, None]).squeeze(1)
                by_value += values[:, chosen].gather(1, order[:, None]).squeeze(1)
            assert_tensor_close(expected_order_statistic(scores, n, rank), by_score / len(subsets),
                                atol=1e-12, rtol=1e-12, check_dtype=False,
                                what=f"the rank-{rank} score among n={n} of scores {scores.tolist()}, against "
                                     f"the average over all {len(subsets)} subsets")
            assert_tensor_close(expected_order_statistic(scores, n, rank, values), by_value / len(subsets),
                                atol=1e-12, rtol=1e-12, check_dtype=False,
                                what=f"the value of the rank-{rank} sample among n={n}, against the average "
                                     f"over all {len(subsets)} subsets")


EXERCISE.references("select_best", reference_select_best)
EXERCISE.references("best_of_n_kl_bound", reference_kl_bound)
EXERCISE.references("expected_order_statistic", reference_order_statistic)
