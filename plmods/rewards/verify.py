"""Math-answer reward built on ``math-verify`` (Hugging Face's answer checker).

``math_answer`` parses the reference answer and the completion with ``math_verify.parse``
(``\\boxed{...}`` answers first, then free-form LaTeX or plain expressions) and compares them
symbolically with ``math_verify.verify``: ``\\frac{1}{2}`` equals ``0.5``, ``3.0`` equals ``3``.
Written as a thin wrapper because plmods' reward protocol is ``(prompts, completions, **fields)``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["math_answer"]


def math_answer(prompts: list[str], completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """1.0 when math-verify finds the completion's answer equal to ``answer``, else 0.0."""
    from math_verify import parse, verify

    out = []
    for completion, gold in zip(completions, answer, strict=True):
        predicted = parse(completion)
        out.append(float(bool(predicted) and verify(parse(str(gold)), predicted)))
    return out
