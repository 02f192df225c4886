"""The toy world's true rewards: helpfulness and safety of any response to any toy-world prompt.

These are the ground truth the course's learned reward models approximate (Llama 2, section 3.2.2 trains a
Helpfulness RM and a Safety RM on human preferences; here the annotators of `annotators.py` derive their
preferences from these two functions). Because they are exact, a chapter can measure what a learned reward
misses: the PPO chapter plots the TRUE reward of its policy, and reward hacking shows as a learned reward
that rises while `helpfulness` falls.
"""

from __future__ import annotations

from llama_course.paper import SAFETY_THRESHOLD
from llama_course.toyworld.safety import is_safety_prompt, safety, safety_prompt_helpfulness
from llama_course.toyworld.scoring import shaped
from llama_course.toyworld.tasks import identify_task


def helpfulness(prompt: str, response: str) -> float:
    """Helpfulness of `response` to `prompt` in [0, 1], with partial credit.

    Task prompts: correctness (exact answer 1, close or partial answers less, see `tasks.py`) times a
    length factor (padding beyond twice the reference costs) and a repetition factor (looping costs).
    Unsafe and borderline prompts: see `safety.safety_prompt_helpfulness` (refusing a borderline request is
    unhelpful; on an unsafe request the helpful-only view rewards compliance, which safety then overrides).
    """
    value = safety_prompt_helpfulness(prompt, response)
    if value is not None:
        return value
    found = identify_task(prompt)
    if found is None:
        raise ValueError(
            f"prompt={prompt[:80]!r} is not a toy-world prompt: helpfulness grades the prompts of "
            "generate_tasks and generate_safety_prompts"
        )
    family, solution = found
    return shaped(family.grade(solution, response), response, solution.answer)


def combined_reward(prompt: str, response: str, threshold: float = SAFETY_THRESHOLD) -> float:
    """Llama 2's safety-first combination (section 3.2.3), on the true scores instead of reward models.

    `R_c = R_s if IS_SAFETY(p) or R_s(g|p) < threshold else R_h`.
    """
    safety_score = safety(prompt, response)
    if is_safety_prompt(prompt) or safety_score < threshold:
        return safety_score
    return helpfulness(prompt, response)


__all__ = ["combined_reward", "helpfulness", "is_safety_prompt", "safety"]
