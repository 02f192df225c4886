"""Inter-rater reliability: Gwet's AC2 (what Llama 2 reports) and Fleiss' kappa.

Llama 2 (section 3.4.2) measures how much its three raters per comparison agree with Gwet's AC2, "the most
stable metric across different measurement scenarios", and finds 0.37 to 0.55 on the 7-point helpfulness
scale, lower for models with similar win rates. AC2 is Gwet's AC1 with agreement WEIGHTS between
categories; the paper does not print them. The course uses Gwet's ordinal weights for an ordered scale
(Gwet, Handbook of Inter-Rater Reliability, 4th ed. 2014, ch. 3; the `ordinal.weights` of his irrCAC
package): with q categories and d = |k - l| steps between two ratings,

    M(d) = (d + 1) d / 2   (pairs of categories spanned, C(d + 1, 2)),    w(d) = 1 - M(d) / M(q - 1),

so on the 7-point scale w = 1, 20/21, 18/21, 15/21, 11/21, 6/21, 0 for d = 0..6: neighbours nearly agree,
the two ends disagree fully. Both statistics take a (n_items, n_raters) array of categories 1..q.

    percent agreement  p_a = mean over items i of  sum_k r_ik (r*_ik - 1) / (r_i (r_i - 1)),
                       r_ik raters of item i in category k, r*_ik = sum_l w_kl r_il, r_i = sum_k r_ik;
    AC2 chance         p_e = T_w / (q (q - 1)) * sum_k pi_k (1 - pi_k),  pi_k = mean_i r_ik / r_i,
                       T_w = sum of all q^2 weights;
    AC2 = (p_a - p_e) / (1 - p_e).

Fleiss' kappa is the unweighted (identity-weight) p_a against chance p_e = sum_k p_k^2, p_k the share of all
ratings in category k. Kappa collapses when one category dominates (the "kappa paradox"), which is why Gwet
built AC1/AC2 and why a comparison with a clear winner can show high AC2 next to low kappa.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llama_course.evaluation.ratings import check_ratings


def ordinal_weights(categories: int) -> np.ndarray:
    """Gwet's ordinal weights (categories, categories): w(d) = 1 - C(d + 1, 2) / C(q, 2), d = |k - l|."""
    if categories < 2:
        raise ValueError(f"categories={categories!r}: agreement needs at least 2 categories")
    distance = np.abs(np.arange(categories)[:, None] - np.arange(categories)[None, :])
    spanned = (distance + 1) * distance / 2
    return 1.0 - spanned / spanned.max()


def category_counts(ratings: np.ndarray | Sequence, categories: int) -> np.ndarray:
    """r_ik: how many raters put item i in category k, (n_items, categories), from (n_items, n_raters)."""
    array = check_ratings(ratings, scale_points=categories)
    if array.ndim != 2 or array.shape[1] < 2:
        raise ValueError(f"ratings has shape {array.shape}; agreement needs (n_items, n_raters) with n_raters >= 2")
    return (array[:, :, None] == np.arange(1, categories + 1)).sum(axis=1)


def percent_agreement(counts: np.ndarray, weights: np.ndarray) -> float:
    """Weighted p_a: the mean, over items, of the weighted agreement of all ordered pairs of its raters."""
    raters = counts.sum(axis=1)
    weighted = counts @ weights.T  # r*_ik
    return float(((counts * (weighted - 1)).sum(axis=1) / (raters * (raters - 1))).mean())


def gwet_ac2(ratings: np.ndarray | Sequence, categories: int = 7, weights: np.ndarray | None = None) -> float:
    """Gwet's AC2 of (n_items, n_raters) ratings in 1..categories; ordinal weights unless `weights` is given.

    Passing `weights=np.eye(categories)` gives Gwet's AC1.
    """
    counts = category_counts(ratings, categories)
    weights = ordinal_weights(categories) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (categories, categories):
        raise ValueError(f"weights has shape {weights.shape}; expected ({categories}, {categories})")
    agreement = percent_agreement(counts, weights)
    shares = (counts / counts.sum(axis=1, keepdims=True)).mean(axis=0)  # pi_k
    chance = weights.sum() / (categories * (categories - 1)) * float((shares * (1 - shares)).sum())
    return (agreement - chance) / (1 - chance)


def fleiss_kappa(ratings: np.ndarray | Sequence, categories: int = 7) -> float:
    """Fleiss' kappa of (n_items, n_raters) ratings in 1..categories (every item has the same raters count).

    Undefined (ValueError) when every rating falls in one category: chance agreement is then 1.
    """
    counts = category_counts(ratings, categories)
    agreement = percent_agreement(counts, np.eye(categories))
    shares = counts.sum(axis=0) / counts.sum()  # p_k
    chance = float((shares**2).sum())
    if np.isclose(chance, 1.0):
        raise ValueError("every rating is in one category, so Fleiss' kappa is 0/0; report percent agreement")
    return (agreement - chance) / (1 - chance)
