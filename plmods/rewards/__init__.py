"""Reward functions: small pure callables ``(prompts, completions, **fields) -> list[float]``.

Process (step-level) rewards return, per completion, a list of ``(end_char, reward)`` steps.
``RewardFunctions`` combines weighted outcome rewards configured by dotted path.
"""

from plmods.rewards.combine import RewardFunctions, resolve_callable
from plmods.rewards.math import (
    countdown_answer,
    countdown_steps,
    exact_match,
    integer_format,
    last_number,
)
from plmods.rewards.verify import math_answer

__all__ = [
    "RewardFunctions",
    "resolve_callable",
    "exact_match",
    "last_number",
    "math_answer",
    "integer_format",
    "countdown_answer",
    "countdown_steps",
]
