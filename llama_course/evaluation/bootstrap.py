"""Rates with bootstrap confidence intervals: win / tie / loss, and safety violations.

Llama 2 reports its human evaluation as win / tie / loss rates with 95% confidence intervals (Fig. 1, Fig. 12;
section 3.4.2) without saying how the intervals were made. The course uses the percentile bootstrap over
PROMPTS: resample the n judged prompts with replacement, recompute each rate, and take the
(1 - confidence) / 2 and (1 + confidence) / 2 quantiles of the resampled rates. Prompts, not single ratings,
are resampled because the three ratings of one prompt are not independent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from llama_course.evaluation.ratings import OUTCOME_NAMES


@dataclass(frozen=True)
class RateInterval:
    rate: float  # the observed rate
    low: float  # bounds of the percentile bootstrap interval
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"rate": self.rate, "low": self.low, "high": self.high}


def bootstrap_rates(
    labels: np.ndarray | Sequence,
    values: Sequence,
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[object, RateInterval]:
    """For each of `values`, the share of `labels` equal to it, with a percentile bootstrap interval.

    `labels` holds one label per prompt (n,); every label must be one of `values`.
    """
    array = np.asarray(labels)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"labels has shape {array.shape}; expected a non-empty 1-d array, one label per prompt")
    unknown = set(np.unique(array).tolist()) - set(values)
    if unknown:
        raise ValueError(f"labels hold {sorted(unknown, key=str)}, not among the values {list(values)}")
    if resamples < 100:
        raise ValueError(f"resamples={resamples!r} is too few for a percentile interval; use at least 100")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be in (0, 1), e.g. 0.95")
    rng = np.random.default_rng(seed)
    resampled = array[rng.integers(0, array.size, size=(resamples, array.size))]  # (resamples, n)
    tail = (1 - confidence) / 2
    intervals = {}
    for value in values:
        rates = (resampled == value).mean(axis=1)
        low, high = np.quantile(rates, [tail, 1 - tail])
        intervals[value] = RateInterval(float((array == value).mean()), float(low), float(high))
    return intervals


def win_tie_loss(
    outcomes: np.ndarray | Sequence, *, resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict[str, RateInterval]:
    """Win, tie and loss rates of model A, with bootstrap intervals, from one outcome (1, 0, -1) per prompt."""
    intervals = bootstrap_rates(outcomes, list(OUTCOME_NAMES), resamples=resamples, confidence=confidence, seed=seed)
    return {OUTCOME_NAMES[value]: interval for value, interval in intervals.items()}


def bootstrap_mean(values: np.ndarray | Sequence, *, denominator: np.ndarray | Sequence | None = None,
                   resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> RateInterval:
    """The mean of `values` with a percentile bootstrap interval, resampling seeds and then prompts.

    `values` is (prompts,) or (seeds, prompts): one number per held-out prompt (e.g. a paired difference
    between two models on the same prompt) for each seed of an experiment. Each resample draws the seeds
    with replacement, then for each drawn seed the prompts with replacement, so the interval covers both the
    run-to-run spread and the choice of prompts (a two-level bootstrap). With `denominator` (the same shape),
    the statistic is the ratio of the two means, both resampled with the same draws.
    """
    arrays = [np.asarray(a, dtype=np.float64) for a in ([values] if denominator is None else [values, denominator])]
    arrays = [a[None] if a.ndim == 1 else a for a in arrays]
    if arrays[0].ndim != 2 or arrays[0].size == 0 or any(a.shape != arrays[0].shape for a in arrays):
        raise ValueError(f"values has shape {arrays[0].shape}; expected (prompts,) or (seeds, prompts), non-empty, "
                         "and a denominator of the same shape")
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError("values hold NaN or infinity; drop the prompts that have no value before bootstrapping")
    if resamples < 100:
        raise ValueError(f"resamples={resamples!r} is too few for a percentile interval; use at least 100")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence={confidence!r} must be in (0, 1), e.g. 0.95")
    rng = np.random.default_rng(seed)
    n_seeds, n_prompts = arrays[0].shape
    seeds = rng.integers(0, n_seeds, size=(resamples, n_seeds))[:, :, None]  # (R, S, 1)
    prompts = rng.integers(0, n_prompts, size=(resamples, n_seeds, n_prompts))  # (R, S, P)
    means = [a[seeds, prompts].mean(axis=(1, 2)) for a in arrays]
    if denominator is not None and not arrays[1].mean():
        raise ValueError("the denominator's mean is 0: the ratio of means is undefined")
    with np.errstate(divide="ignore", invalid="ignore"):  # a resample may draw only zeros below: it is left out
        statistic = means[0] if denominator is None else means[0] / means[1]
    statistic = statistic[np.isfinite(statistic)]
    observed = arrays[0].mean() if denominator is None else arrays[0].mean() / arrays[1].mean()
    tail = (1 - confidence) / 2
    low, high = np.quantile(statistic, [tail, 1 - tail])
    return RateInterval(float(observed), float(low), float(high))


def bootstrap_difference(before: np.ndarray | Sequence, after: np.ndarray | Sequence, *, resamples: int = 2000,
                         confidence: float = 0.95, seed: int = 0) -> RateInterval:
    """mean(after) - mean(before) of two INDEPENDENT samples (unpaired: e.g. the first and the last iterations of a
    run, each on its own fresh prompts), with a percentile bootstrap interval that resamples each sample on its
    own. Paired values (two models on the same prompts) take `bootstrap_mean` of their differences instead."""
    before, after = (np.asarray(a, dtype=np.float64) for a in (before, after))
    if before.ndim != 1 or after.ndim != 1 or not before.size or not after.size:
        raise ValueError(f"before {before.shape} and after {after.shape} must be non-empty 1-D samples")
    if not (np.isfinite(before).all() and np.isfinite(after).all()):
        raise ValueError("the samples hold NaN or infinity; drop the values that are missing before bootstrapping")
    rng = np.random.default_rng(seed)
    draws = (rng.choice(after, (resamples, after.size)).mean(axis=1)
             - rng.choice(before, (resamples, before.size)).mean(axis=1))
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return RateInterval(float(after.mean() - before.mean()), float(low), float(high))
