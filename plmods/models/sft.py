"""Supervised fine-tuning on demonstrations: the loop of the SFT warm-up (``SFTWarmup`` callback).

Cross-entropy on ``(prompt, completion)`` pairs with transformers' own causal-LM loss, labels on
the completion and its eos only (``-100`` on prompt and padding). Written here rather than with
torchrl's ``SFTLoss`` because that loss masks by the chat template's assistant mask, which with
torchrl's templates excludes the end-of-turn token: the model would never learn to stop.

Each row is the formatted prompt's tokens followed by the completion's tokens and eos, encoded
separately and joined (exactly the token sequence sampling produces, whatever a BPE would merge
across the boundary), then left-padded; masks, not token ids, say which positions are real, so
pad == eos is fine.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import torch
from transformers import PreTrainedModel

__all__ = ["demonstration_batch", "train_sft"]

log = logging.getLogger(__name__)


def demonstration_batch(lm, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """``input_ids``, ``attention_mask``, ``position_ids`` and ``labels`` for ``pairs``
    (``lm``: an ``HFCausalLM``, which formats the prompts)."""
    tok = lm.tokenizer
    prompts = tok([lm.format_prompt(q) for q, _ in pairs], add_special_tokens=False)["input_ids"]
    answers = tok([a for _, a in pairs], add_special_tokens=False)["input_ids"]
    rows = [(p, a + [tok.eos_token_id]) for p, a in zip(prompts, answers, strict=True)]
    width = max(len(p) + len(a) for p, a in rows)
    input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        start = width - len(p) - len(a)
        input_ids[i, start:] = torch.tensor(p + a)
        labels[i, start + len(p) :] = torch.tensor(a)
        attention_mask[i, start:] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, "labels": labels}


def train_sft(
    model: PreTrainedModel,
    lm,
    demonstrations: Callable[[int, random.Random], list[tuple[str, str]]],
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> dict[str, Any]:
    """``steps`` AdamW steps on ``demonstrations(batch_size, rng)`` batches; the global RNG is
    left as it was. Returns the step count, seconds and first / last loss."""
    start = time.perf_counter()
    torch.set_flush_denormal(True)  # tiny-LM steps slowed 10-40x on denormals without it
    rng = random.Random(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    device = next(model.parameters()).device
    losses = []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model.train()
        for _ in range(steps):
            batch = {k: v.to(device) for k, v in demonstration_batch(lm, demonstrations(batch_size, rng)).items()}
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        model.eval()
    seconds = time.perf_counter() - start
    log.info("SFT warm-up: %d steps in %.1f s, loss %.3f -> %.3f", steps, seconds, losses[0], losses[-1])
    return {"steps": steps, "seconds": seconds, "loss_first": losses[0], "loss_last": losses[-1]}
