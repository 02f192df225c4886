"""Llama 2's published constants (arXiv 2307.09288), in one home below every module that uses them.

The algorithms of `alignment/` define them and the toy world's stand-in annotators and judges follow them, so
they sit in the lowest layer, where both can import them:

- `STRENGTHS`: the four levels of preference an annotator gives (section 3.2.1), strongest first;
- `MARGINS`: the margin m(r) of the ranking loss for each level, in Table 27's two variants (and none);
- `SAFETY_THRESHOLD`: the safety score below which the safety-first reward R_c uses the safety RM (section 3.2.3).

Beside them, one reading of the levels that is ours, not the paper's: `strength_of` names the level of a gap
between two [0, 1] scores (`STRENGTH_THRESHOLDS`), for the toy world's annotators and the evaluation's judges alike.
"""

STRENGTHS = ("significantly better", "better", "slightly better", "negligibly better / unsure")

# Table 27: the margin m(r) for each preference strength, in the order of `STRENGTHS`.
MARGINS: dict[str, dict[str, float]] = {
    "none": dict(zip(STRENGTHS, (0.0, 0.0, 0.0, 0.0), strict=True)),
    "small": dict(zip(STRENGTHS, (1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0), strict=True)),
    "large": dict(zip(STRENGTHS, (3.0, 2.0, 1.0, 0.0), strict=True)),
}

SAFETY_THRESHOLD = 0.15  # R_c = R_s if IS_SAFETY(p) or R_s < 0.15 else R_h (section 3.2.3)

# The course's reading of `STRENGTHS` as gaps of a [0, 1] score: a gap of at least 0.5 is "significantly better",
# at least 0.25 "better", at least 0.1 "slightly".
STRENGTH_THRESHOLDS = (0.5, 0.25, 0.1)


def strength_of(gap: float) -> str:
    """The 4-level strength of a preference whose scores differ by `gap` (absolute value used)."""
    gap = abs(gap)
    for threshold, strength in zip(STRENGTH_THRESHOLDS, STRENGTHS, strict=False):
        if gap >= threshold:
            return strength
    return STRENGTHS[-1]


__all__ = ["MARGINS", "SAFETY_THRESHOLD", "STRENGTHS", "STRENGTH_THRESHOLDS", "strength_of"]
