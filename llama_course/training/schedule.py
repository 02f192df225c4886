"""The learning-rate schedule of Llama 1 and 2 (section 2.2): linear warm-up, then cosine decay to 10% of peak.

    lr(s) = peak * (s + 1) / warmup                                        for s < warmup
    lr(s) = peak * (r + (1 - r) * (1 + cos(pi * p)) / 2),  p = (s - warmup) / (total - warmup)
    lr(s) = peak * r                                                       for s >= total

with s the optimizer step (0-based) and r = 0.1 the final ratio. The paper used 2000 warm-up steps.
"""

from __future__ import annotations

import math

import torch


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, final_ratio: float = 0.1) -> float:
    """The multiplier of the peak learning rate at optimizer step `step` (the formula in the module docstring)."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps={warmup_steps} must be >= 0")
    if total_steps < warmup_steps:
        raise ValueError(f"total_steps={total_steps} must be >= warmup_steps={warmup_steps}")
    if not 0 <= final_ratio <= 1:
        raise ValueError(f"final_ratio={final_ratio} must be in [0, 1]")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if step >= total_steps:
        return final_ratio
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, final_ratio: float = 0.1, *,
    step: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` applying `warmup_cosine_factor` to every group's peak (initial) learning rate, positioned at
    optimizer step `step` (a resumed run: the schedule is a function of the step, so nothing else is stored)."""
    warmup_cosine_factor(0, warmup_steps, total_steps, final_ratio)  # validate once, with a clear message

    def factor(step: int) -> float:
        return warmup_cosine_factor(step, warmup_steps, total_steps, final_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=step - 1)
