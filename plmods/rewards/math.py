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

__all__ = ["exact_match", "last_number", "integer_format", "countdown_answer", "countdown_steps", "countdown_trace"]

_INTEGER = re.compile(r"-?\d+")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_STEP = re.compile(r"^(\d+)([+\-*])(\d+)=(-?\d+)$")


def exact_match(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """1.0 when the completion, stripped of surrounding whitespace, is exactly the answer."""
    return [float(c.strip() == a.strip()) for c, a in zip(completions, answer, strict=True)]


def last_number(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """1.0 when the last number in the completion equals the answer numerically (``"so 3+4 = 7."``
    scores 1 for answer 7; thousands separators are ignored: ``1,234`` is 1234)."""
    out = []
    for completion, gold in zip(completions, answer, strict=True):
        numbers = _NUMBER.findall(completion)
        try:
            out.append(float(bool(numbers) and float(numbers[-1].replace(",", "")) == float(str(gold).replace(",", ""))))
        except ValueError:  # e.g. a lone "," match
            out.append(0.0)
    return out


def integer_format(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """1.0 when the completion is a single integer (a shaping reward for the format)."""
    return [float(_INTEGER.fullmatch(c.strip()) is not None) for c in completions]


def countdown_trace(completion: str, numbers: list[int]) -> list[tuple[int, bool, int | None, Counter]]:
    """Each line of a Countdown completion as ``(end_char, valid, value, pool)``, ``pool`` the
    numbers still available after the line.

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
        steps.append((position, valid, value, Counter(pool)))
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
        if trace and all(step[1] for step in trace):
            rewards.append(1.0 if trace[-1][2] == goal else 0.1)
        else:
            rewards.append(0.0)
    return rewards


def countdown_steps(
    prompts: list[str], completions: list[str], numbers: list[list[int]], target: list[int], **_: Any
) -> list[list[tuple[int, float]]]:
    """Process reward: a step scores 1 when it is valid and the target is still reachable from the
    numbers left (it stays on a path to a solution), else 0; the step that reaches the target
    scores 1 more, and a completion that stops short of the target gets 0 for its last step (a
    dead end: otherwise stopping after one safe step beats attempting the next)."""
    from plmods.envs.text import solve_countdown

    out = []
    for completion, nums, goal in zip(completions, numbers, target, strict=True):
        steps = []
        for end, valid, value, pool in countdown_trace(completion, nums):
            on_path = valid and (goal in pool or solve_countdown(list(pool.elements()), goal) is not None)
            steps.append((end, float(on_path) + float(valid and value == goal)))
        if steps and steps[-1][1] < 2.0:
            steps[-1] = (steps[-1][0], 0.0)
        out.append(steps)
    return out
