"""A short supervised warm-up (SFT) so a freshly built model starts GRPO with partial reward.

Cross-entropy on the task's demonstrations, response tokens only (the answer and its eos), with
transformers' own causal-LM loss (``labels`` = -100 on prompt and padding). Written here rather
than with torchrl's ``SFTLoss`` because that loss masks by the chat template's assistant mask,
which with torchrl's templates excludes the end-of-turn token: the model would never learn to stop.

The result is cached as a transformers checkpoint (``save_pretrained``: model and tokenizer) under
``cache_dir/<key>``, ``key`` a hash of everything that determines the weights, so a second run
loads it in a second, and ``model.path=<that dir>`` can load it directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from plmods.envs.text import TextTask
from plmods.errors import require

__all__ = ["SFTWarmup", "tokenize_prompts"]

log = logging.getLogger(__name__)


def tokenize_prompts(tokenizer: PreTrainedTokenizerBase, prompts: list[str], answers: list[str] | None = None):
    """Chat-formatted, left-padded token ids: the user turns plus the assistant header, or with
    ``answers`` the whole conversation (answer and eos). Returns ``(input_ids, attention_mask)``."""
    if answers is None:
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
            for p in prompts
        ]
    else:
        texts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": a}], tokenize=False
            )
            for p, a in zip(prompts, answers, strict=True)
        ]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return enc["input_ids"], enc["attention_mask"]


class SFTWarmup:
    """Supervised warm-up on the task's demonstrations before RL.

    Args:
        steps: optimizer steps (0 disables the warm-up).
        batch_size: demonstrations per step.
        lr: AdamW learning rate.
        seed: seed of the problem draws and of the order of updates.
        cache_dir: directory of cached warm-ups (null: never cache).
    """

    def __init__(
        self, steps: int = 600, batch_size: int = 64, lr: float = 1e-3, seed: int = 0, cache_dir: str | None = None
    ) -> None:
        require(steps >= 0, f"algo.sft.steps must be >= 0, got {steps}.")
        require(batch_size >= 1, f"algo.sft.batch_size must be >= 1, got {batch_size}.")
        require(lr > 0, f"algo.sft.lr must be > 0, got {lr}.")
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.cache_dir = None if cache_dir is None else Path(os.path.expanduser(str(cache_dir)))

    def key(self, model_key: dict[str, Any], task: TextTask) -> str:
        spec = {
            "model": model_key,
            "task": {type(task).__name__: {k: v for k, v in vars(task).items() if not k.startswith("_")}},
            "sft": {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, "seed": self.seed},
            "excluded": sorted(getattr(task, "_excluded", ())),
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def apply(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: TextTask, model_key: dict[str, Any]
    ) -> dict[str, Any]:
        """Warm ``model`` up in place (or load the cached result); returns what happened."""
        if self.steps == 0:
            return {"steps": 0}
        cached = self.cache_dir / self.key(model_key, task) if self.cache_dir is not None else None
        if cached is not None and (cached / "config.json").is_file():
            loaded = AutoModelForCausalLM.from_pretrained(cached, local_files_only=True, dtype=model.dtype)
            model.load_state_dict(loaded.state_dict())
            log.info("SFT warm-up loaded from %s", cached)
            return {"steps": self.steps, "cached": str(cached)}
        stats = self._train(model, tokenizer, task)
        if cached is not None:
            # write to a temporary sibling, then rename: a crash never leaves a half-written cache
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=cached.parent, prefix=".tmp-"))
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            try:
                os.replace(tmp, cached)
            except OSError:  # another process cached it first
                shutil.rmtree(tmp, ignore_errors=True)
            stats["cached"] = str(cached)
        return stats

    def _train(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, task: TextTask) -> dict[str, Any]:
        start = time.perf_counter()
        torch.set_flush_denormal(True)  # tiny-LM steps slowed 10-40x on denormals without it
        rng = random.Random(self.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr)
        losses = []
        with torch.random.fork_rng():  # leave the global RNG as a run without warm-up would
            torch.manual_seed(self.seed)
            model.train()
            for _ in range(self.steps):
                # a demonstration can cost a search (Countdown): one per problem, empty ones skipped
                pairs = [(p["prompt"], task.demonstration(p)) for p in task.sample(self.batch_size, rng)]
                prompts, answers = zip(*[(q, a) for q, a in pairs if a], strict=True)
                prompt_ids, _ = tokenize_prompts(tokenizer, list(prompts))
                input_ids, attention_mask = tokenize_prompts(tokenizer, list(prompts), list(answers))
                # left padding: the prompt of row i ends at the same column in both encodings
                # only after aligning on the right, so count prompt tokens per row
                prompt_len = (prompt_ids != tokenizer.pad_token_id).sum(-1)  # [B]
                total_len = attention_mask.sum(-1)  # [B]
                columns = torch.arange(input_ids.shape[1])
                first_answer = input_ids.shape[1] - total_len + prompt_len  # [B]
                labels = input_ids.masked_fill(columns < first_answer[:, None], -100)
                position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
                loss = model(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, labels=labels
                ).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
            model.eval()
        seconds = time.perf_counter() - start
        log.info("SFT warm-up: %d steps in %.1f s, loss %.3f -> %.3f", self.steps, seconds, losses[0], losses[-1])
        return {"steps": self.steps, "seconds": seconds, "loss_first": losses[0], "loss_last": losses[-1]}
