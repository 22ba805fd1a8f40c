"""Verifiable rewards for the arithmetic tasks (``plmods.envs.text``).

Outcome rewards: ``(prompts, completions, **fields) -> list[float]``, one score per completion.
Process rewards: ``(prompts, completions, **fields) -> list[list[tuple[int, float]]]``, per
completion its steps as ``(end_char, reward)``, ``end_char`` the index one past the step's last
character in the completion (seed 003's ``ind(j)``, in characters; the module maps it to tokens).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

__all__ = ["exact_match", "integer_format", "countdown_answer", "countdown_steps", "countdown_trace"]

_INTEGER = re.compile(r"-?\d+")
_STEP = re.compile(r"^(\d+)([+\-*])(\d+)=(-?\d+)$")


def exact_match(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """1.0 when the completion, stripped of surrounding whitespace, is exactly the answer."""
    return [float(c.strip() == a.strip()) for c, a in zip(completions, answer, strict=True)]


def integer_format(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """1.0 when the completion is a single integer (a shaping reward for the format)."""
    return [float(_INTEGER.fullmatch(c.strip()) is not None) for c in completions]


def countdown_trace(completion: str, numbers: list[int]) -> list[tuple[int, bool, int | None]]:
    """Each line of a Countdown completion as ``(end_char, valid, value)``.

    A line is ``a op b=c`` with both operands available (a given number or an earlier result, each
    used once) and ``c`` correct, or a bare available number. After the first invalid line no later
    line is valid (its operands can no longer be trusted)."""
    pool = Counter(numbers)
    steps, position, ok = [], 0, True
    for line in completion.split("\n"):
        position += len(line)
        text, value, valid = line.strip(), None, False
        match = _STEP.fullmatch(text)
        if ok and match:
            a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
            result = {"+": a + b, "-": a - b, "*": a * b}[op]
            need = Counter([a, b])
            if result == c and all(pool[k] >= v for k, v in need.items()):
                pool -= need
                pool[c] += 1
                value, valid = c, True
        elif ok and text.isdigit() and pool[int(text)] > 0:
            value, valid = int(text), True
        ok = ok and valid
        steps.append((position, valid, value))
        position += 1  # the newline
    return steps


def countdown_answer(
    prompts: list[str], completions: list[str], numbers: list[list[int]], target: list[int], **_: Any
) -> list[float]:
    """1.0 when every step is valid and the last one reaches the target, 0.1 when every step is
    valid but the target is missed (torchrl ``CountdownRewardParser``'s correct/format split), else 0."""
    rewards = []
    for completion, nums, goal in zip(completions, numbers, target, strict=True):
        trace = countdown_trace(completion, nums)
        if trace and all(valid for _, valid, _ in trace):
            rewards.append(1.0 if trace[-1][2] == goal else 0.1)
        else:
            rewards.append(0.0)
    return rewards


def countdown_steps(
    prompts: list[str], completions: list[str], numbers: list[list[int]], target: list[int], **_: Any
) -> list[list[tuple[int, float]]]:
    """Process reward: each line scores 1 if valid, 0 if not; the last line scores 1 more when it
    reaches the target."""
    out = []
    for completion, nums, goal in zip(completions, numbers, target, strict=True):
        trace = countdown_trace(completion, nums)
        steps = [(end, float(valid)) for end, valid, _ in trace]
        if trace and trace[-1][1] and trace[-1][2] == goal:
            steps[-1] = (steps[-1][0], steps[-1][1] + 1.0)
        out.append(steps)
    return out
