"""A GRPO reward of this project's own, in the form plmods calls reward functions.

plmods' ``LMModule.grpo(rewards={name: fn or {"fn": fn, "weight": w}})`` calls every term as
``fn(prompts, completions, **fields)`` with one list entry per completion (the task's problem
fields other than ``prompt`` arrive as keyword lists: ``answer`` for ``AdditionTask``) and needs
one finite float per completion back. Each term is logged as ``train/reward/<name>`` (iteration
mean) and ``val/reward/<name>`` (held-out mean); their weighted sum is ``train/reward``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_CHARS", "shorter_is_better"]

MAX_CHARS = 8  # a completion this long or longer scores 0


def shorter_is_better(prompts: list[str], completions: list[str], **fields: Any) -> list[float]:
    """``1 - min(len, 8) / 8`` per completion, surrounding whitespace stripped: 1.0 for an empty
    answer, 0.75 for ``"12"``, 0.0 from 8 characters on (multiples of 1/8: exact in float32)."""
    return [1.0 - min(len(c.strip()), MAX_CHARS) / MAX_CHARS for c in completions]
