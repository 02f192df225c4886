"""Evaluation as Llama 2 ran it (section 3.4.2 and 4.4): side-by-side judgments and safety violations.

- `ratings`: the 7-point side-by-side scale and its mapping to wins, ties and losses;
- `judges`: the judge protocol, a reward model as judge, randomised order, position bias (the toy world's
  simulated raters are `experiments.toyworld_judges`'s);
- `agreement`: inter-rater reliability, Gwet's AC2 (ordinal weights) and Fleiss' kappa;
- `bootstrap`: win / tie / loss and violation rates with bootstrap confidence intervals;
- `safety`: 5-point safety ratings, violation by majority of three raters;
- `report`: the JSON report and plots of `llama-course evaluate MODEL_A MODEL_B ...`;
- `answers`: the compared models' greedy answers, and a reward model as a judge of them.
"""

from llama_course.evaluation.agreement import fleiss_kappa, gwet_ac2, ordinal_weights
from llama_course.evaluation.bootstrap import (
    RateInterval,
    bootstrap_difference,
    bootstrap_mean,
    bootstrap_rates,
    win_tie_loss,
)
from llama_course.evaluation.judges import RewardModelJudge, SideBySide, judge_side_by_side, position_bias
from llama_course.evaluation.ratings import SEVEN_POINT_SCALE, consensus_ratings, outcome_of
from llama_course.evaluation.safety import safety_ratings, violation_rate, violations

__all__ = [
    "SEVEN_POINT_SCALE",
    "RateInterval",
    "RewardModelJudge",
    "SideBySide",
    "bootstrap_difference",
    "bootstrap_mean",
    "bootstrap_rates",
    "consensus_ratings",
    "fleiss_kappa",
    "gwet_ac2",
    "judge_side_by_side",
    "ordinal_weights",
    "outcome_of",
    "position_bias",
    "safety_ratings",
    "violation_rate",
    "violations",
    "win_tie_loss",
]
