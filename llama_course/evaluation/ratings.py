"""The 7-point side-by-side scale of Llama 2's human evaluation, and its reduction to wins, ties and losses.

Llama 2 (section 3.4.2, appendix A.3.7) shows raters two responses to one prompt and asks which is better
on a 7-point scale: A much better, A better, A slightly better, about the same, B slightly better, B better,
B much better. Results are reported as wins / ties / losses, but the paper does not say how 7 points
become 3 outcomes, nor how the 3 raters of a pair are combined. The course's choices:

- a rating is an integer 1..7 in the order above (1 = "A much better", 4 = "about the same");
- from model A's side, ratings 1-3 are a WIN, 4 a TIE, 5-7 a LOSS (`tie_band=0`): any stated preference,
  even "slightly better", counts, because "about the same" is the scale's own tie. `tie_band=1` also counts
  the two "slightly better" points as ties, for readers who want a stricter notion of winning;
- the raters of one pair are combined by the MEDIAN of their ratings (an odd number of raters, as the paper's
  three), which is the ordinal scale's middle opinion: with three raters it is the majority outcome whenever
  two of them agree on win, tie or loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SEVEN_POINT_SCALE = (
    "A much better",
    "A better",
    "A slightly better",
    "about the same",
    "B slightly better",
    "B better",
    "B much better",
)
ABOUT_THE_SAME = 4
WIN, TIE, LOSS = 1, 0, -1
OUTCOME_NAMES = {WIN: "win", TIE: "tie", LOSS: "loss"}


def check_ratings(ratings: np.ndarray | Sequence, *, scale_points: int = 7, name: str = "ratings") -> np.ndarray:
    """`ratings` as an int64 array after checking every value is an integer in 1..scale_points."""
    array = np.asarray(ratings)
    if array.size == 0:
        raise ValueError(f"{name} is empty: give at least one rating")
    if array.dtype.kind not in "iuf" or not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
        raise ValueError(f"{name} must be whole numbers 1..{scale_points}; got dtype {array.dtype} with "
                         f"values such as {array.ravel()[:5].tolist()}")
    bad = array[(array < 1) | (array > scale_points)]
    if bad.size:
        raise ValueError(f"{name} holds {bad[0].item()!r}, outside the {scale_points}-point scale 1..{scale_points}")
    return array.astype(np.int64)


def rating_from_points(points: int, first_is_better: bool) -> int:
    """The 7-point rating of a rater who prefers one response by `points` in 0..3 (0: about the same).

    `points` 3, 2, 1 are "much better", "better", "slightly better"; `first_is_better` says which response.
    """
    if points not in (0, 1, 2, 3):
        raise ValueError(f"points={points!r} must be 0 (about the same) to 3 (much better)")
    return ABOUT_THE_SAME - points if first_is_better else ABOUT_THE_SAME + points


def swap_sides(ratings: np.ndarray | Sequence) -> np.ndarray:
    """The same judgments read with A and B exchanged: rating r becomes 8 - r ("A better" <-> "B better")."""
    return 2 * ABOUT_THE_SAME - check_ratings(ratings)


def outcome_of(ratings: np.ndarray | Sequence, tie_band: int = 0) -> np.ndarray:
    """WIN (1), TIE (0) or LOSS (-1) for model A of each rating: within `tie_band` points of 4 is a tie."""
    if tie_band not in (0, 1, 2):
        raise ValueError(f"tie_band={tie_band!r} must be 0 (only 'about the same' ties), 1 or 2")
    offset = check_ratings(ratings) - ABOUT_THE_SAME  # negative: A preferred
    return np.where(offset < -tie_band, WIN, np.where(offset > tie_band, LOSS, TIE)).astype(np.int64)


def consensus_ratings(ratings: np.ndarray | Sequence) -> np.ndarray:
    """One rating per pair from its raters, (n_pairs, n_raters) -> (n_pairs,): the median (see module doc)."""
    array = check_ratings(ratings)
    if array.ndim != 2:
        raise ValueError(f"ratings has shape {array.shape}; expected (n_pairs, n_raters)")
    if array.shape[1] % 2 == 0:
        raise ValueError(f"{array.shape[1]} raters per pair has no middle rating: use an odd number (the paper uses 3)")
    return np.median(array, axis=1).astype(np.int64)


def count_outcomes(outcomes: np.ndarray | Sequence) -> dict[str, int]:
    """How many wins, ties and losses a sequence of outcomes holds."""
    array = np.asarray(outcomes)
    unknown = np.setdiff1d(array, list(OUTCOME_NAMES))
    if unknown.size:
        raise ValueError(f"outcomes hold {unknown.tolist()}; each must be WIN (1), TIE (0) or LOSS (-1)")
    return {name: int((array == value).sum()) for value, name in OUTCOME_NAMES.items()}
