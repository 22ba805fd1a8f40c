"""Micro-batches of a language round: rows grouped by prompt, padding trimmed.

A minibatch of completions is split into micro-batches of ``size`` rows whose losses accumulate
one gradient. Rows of a prompt group are put next to each other first (a stable sort by
``prompt_group``), so a micro-batch runs each of its prompts once (``ResponseScorer``'s shared
prompts), and each micro-batch is trimmed to the columns its own rows use: the left padding no
prompt of it needs and the response columns after its longest completion.
"""

from __future__ import annotations

import torch
from tensordict import TensorDict

__all__ = ["micro_batches", "trim"]

# per-token tensors [N, T] trimmed with the response
_RESPONSE_KEYS = ("response_tokens", "response_mask", "old_log_probs", "ref_log_probs", "advantage", "kl_reward", "old_values",
                  "value_target")  # fmt: skip


def trim(batch: TensorDict) -> TensorDict:
    """``batch`` without the prompt columns none of its rows attends to and without the response
    columns after its longest response."""
    prompt_len = batch["input_ids"].shape[-1] - batch["response_tokens"].shape[-1]
    used = batch["attention_mask"][:, :prompt_len].any(0)
    first = int(used.nonzero()[0]) if used.any() else 0
    last = int(batch["response_mask"].any(0).nonzero().max()) + 1 if batch["response_mask"].any() else 1
    trimmed = batch.clone(False)
    for key in ("input_ids", "attention_mask"):
        trimmed[key] = batch[key][:, first : prompt_len + last]
    for key in _RESPONSE_KEYS:
        if key in batch.keys():  # noqa: SIM118 (TensorDict has no __contains__ for keys)
            trimmed[key] = batch[key][:, :last]
    return trimmed


def micro_batches(batch: TensorDict, size: int, group: bool = True) -> list[TensorDict]:
    """``batch`` in trimmed micro-batches of ``size`` rows; ``group``: prompt groups adjacent
    first (the rows' order changes; pass False to keep it)."""
    if group and "prompt_group" in batch.keys():  # noqa: SIM118
        batch = batch[torch.argsort(batch["prompt_group"], stable=True)]
    return [trim(batch[i : i + size]) for i in range(0, batch.shape[0], size)]
