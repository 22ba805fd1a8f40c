"""Where each generated token ends in the decoded completion text, in characters.

Process rewards score steps of the completion *text* (``(end_char, reward)``); advantages live on
tokens. The tokenizer's offset mapping gives each token's character span for any tokenizer
family (byte-level BPE, SentencePiece, WordPiece): the decoded completion is re-encoded with
``return_offsets_mapping``, and when that reproduces the sampled tokens, its offsets are the
answer. A sampled sequence need not be the tokenizer's canonical encoding of its own text (a
model can spell "12" as "1" "2"); for such rows each token's end is the length of the decoded
prefix, which is exact for every tokenizer but costs one decode per token.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

__all__ = ["token_char_ends", "steps_to_tokens", "token_steps"]


def token_char_ends(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[int]) -> list[int]:
    """For each of ``tokens`` (a completion without padding), the character offset in
    ``tokenizer.decode(tokens, skip_special_tokens=True)`` at which it ends."""
    tokens = list(tokens)
    special = set(tokenizer.all_special_ids)
    text = tokenizer.decode(tokens, skip_special_tokens=True)
    plain = [t for t in tokens if t not in special]
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if enc["input_ids"] == plain:
        ends_plain = iter([end for _, end in enc["offset_mapping"]])
        ends, last = [], 0
        for token in tokens:
            if token not in special:
                last = max(last, next(ends_plain))
            ends.append(last)  # a special token (eos) adds no text
        return ends
    ends, last = [], 0
    for i in range(len(tokens)):
        # a partial UTF-8 character decodes to one replacement character: keep the ends monotone
        last = max(last, len(tokenizer.decode(tokens[: i + 1], skip_special_tokens=True)))
        ends.append(last)
    return ends


def steps_to_tokens(steps: Sequence[tuple[int, float]], char_ends: Sequence[int]) -> list[tuple[int, float]]:
    """Step ends in characters -> the index of the token that completes each step (the first
    token ending at or after the step's last character)."""
    last = max(len(char_ends) - 1, 0)
    return [(min(bisect.bisect_left(char_ends, end), last), reward) for end, reward in steps]


def token_steps(
    step_rewards: Callable[..., Any], problems: Sequence[dict], completions: Sequence[str], response_tokens, response_mask,
    tokenizer: PreTrainedTokenizerBase,
) -> list[list[tuple[int, float]]]:
    """Per completion, its steps as ``(token index of the step's last token, reward)``:
    ``step_rewards(prompts, completions, **fields)`` gives ``(end_char, reward)`` per step, and
    the token offsets map each step end to a token (``problems``: one per completion)."""
    fields = {key: [p[key] for p in problems] for key in problems[0] if key != "prompt"}
    steps = step_rewards([p["prompt"] for p in problems], list(completions), **fields)
    return [
        steps_to_tokens(s, token_char_ends(tokenizer, row[mask].tolist()))
        for s, row, mask in zip(steps, response_tokens, response_mask, strict=True)
    ]
