"""Argument types shared by the command lines, wherever a command lives: a bad flag is refused before any work."""

import argparse
import math
from collections.abc import Callable


def bounded_number(kind: type, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                   high_open: bool = False) -> Callable[[str], float]:
    """An argparse `type` for a finite int or float within [low, high] (open ends with `low_open` / `high_open`),
    so that a bad flag (`--top-p 2`, `--temperature nan`) is refused before any work starts."""
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if not math.isfinite(value) or too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is not in {interval}")
        return value

    return parse

