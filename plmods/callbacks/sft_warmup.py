"""``SFTWarmup``: a supervised warm-up that runs before RL and hands the RL module a policy directory.

A Lightning callback, so it is a stage of its own (not part of the algorithm's constructor) and
works with any module of the ``plmods.protocols.WarmUpTarget`` protocol:

- ``model_factory``: an ``HFCausalLM`` (``build_base``, ``tokenizer``, ``config_key``,
  ``with_path``): the callback replaces it with ``model_factory.with_path(<warmed-up dir>)``;
- ``task``: a ``TextTask`` (``demonstrations``, ``settings``, ``excluded``);
- ``seed``, ``policy_built`` and ``sft_stats`` (set to what happened).

It runs in ``setup("fit")``, before ``configure_model`` builds the policy. The result is saved with
``save_pretrained`` under ``cache_dir/<key>`` (a temporary directory renamed into place, so a crash
never leaves half a cache); the key hashes the model settings, the task's settings, the warm-up's
settings, the held-out prompts and the first demonstrations themselves, so editing a task's
``demonstration()`` retrains instead of reusing a stale cache. Under DDP rank 0 trains and the
others wait at a barrier and load the directory. Resuming from a checkpoint skips the training
(the checkpoint holds the weights) but still points the factory at the cache when it exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from plmods.errors import ConfigError, require
from plmods.protocols import WarmUpTarget
from plmods.utils import atomic_directory

__all__ = ["SFTWarmup"]

KEY_DEMONSTRATIONS = 64  # demonstrations hashed into the cache key


class SFTWarmup(Callback):
    """Supervised warm-up on the task's demonstrations before RL.

    Args:
        steps: optimizer steps (0 disables the warm-up).
        batch_size: demonstrations per step.
        lr: AdamW learning rate.
        seed: seed of the problem draws and of the order of updates (null: the module's seed).
        cache_dir: directory of warmed-up policies (null: ``<trainer.default_root_dir>/sft``,
            never reused across runs).
    """

    def __init__(
        self, steps: int = 600, batch_size: int = 64, lr: float = 1e-3, seed: int | None = None, cache_dir: str | None = None
    ) -> None:
        super().__init__()
        require(steps >= 0, f"steps must be >= 0, got {steps}.")
        require(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}.")
        require(lr > 0, f"lr must be > 0, got {lr}.")
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.cache_dir = None if cache_dir is None else Path(os.path.expanduser(str(cache_dir)))
        self.stats: dict[str, Any] | None = None

    def key(self, lm, task, seed: int) -> str:
        """Hash of everything that decides the warmed-up weights."""
        probe = task.demonstrations(KEY_DEMONSTRATIONS, random.Random(seed))
        spec = {
            "model": lm.config_key(),
            "task": {type(task).__name__: task.settings()},
            "sft": {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr, "seed": seed},
            "excluded": sorted(task.excluded),
            "demonstrations": probe,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or self.steps == 0:
            return
        if not isinstance(pl_module, WarmUpTarget):
            missing = [a for a in ("model_factory", "task", "seed", "policy_built", "sft_stats") if not hasattr(pl_module, a)]
            raise ConfigError(
                f"callbacks.sft_warmup needs a language module (model_factory, task, seed, policy_built, sft_stats: "
                f"plmods' LMModule); {type(pl_module).__name__} has no {', '.join(missing)}."
            )
        if pl_module.policy_built:
            raise ConfigError("callbacks.sft_warmup must run before the policy is built (configure_model).")
        lm, task = pl_module.model_factory, pl_module.task
        seed = pl_module.seed if self.seed is None else self.seed
        root = self.cache_dir or Path(trainer.default_root_dir) / "sft"
        target = root / self.key(lm, task, seed)
        if not (target / "config.json").is_file() and trainer.ckpt_path is None:
            if trainer.is_global_zero:
                self.stats = self._train_and_save(lm, task, seed, target)
            trainer.strategy.barrier("sft_warmup")
        if (target / "config.json").is_file():
            pl_module.model_factory = lm.with_path(str(target))
            self.stats = self.stats or {"steps": self.steps, "cached": str(target)}
        pl_module.sft_stats = self.stats

    def warm_up(self, lm, task, seed: int = 0, root: str | Path | None = None):
        """The same stage without a Trainer (one process): returns ``lm`` pointed at the
        warmed-up directory (trained, or found in the cache); ``self.stats`` says which."""
        if self.steps == 0:
            return lm
        target = Path(root or self.cache_dir or tempfile.mkdtemp(prefix="plmods-sft-")) / self.key(lm, task, seed)
        if (target / "config.json").is_file():
            self.stats = {"steps": self.steps, "cached": str(target)}
        else:
            self.stats = self._train_and_save(lm, task, seed, target)
        return lm.with_path(str(target))

    def _train_and_save(self, lm, task, seed: int, target: Path) -> dict[str, Any]:
        from plmods.models.sft import train_sft

        model = lm.build_base(seed=seed)
        stats = train_sft(model, lm, task.demonstrations, self.steps, self.batch_size, self.lr, seed)
        with atomic_directory(target) as tmp:
            model.save_pretrained(tmp)
            lm.tokenizer.save_pretrained(tmp)
        return {**stats, "cached": str(target)}

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"stats": self.stats}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stats = state_dict.get("stats")

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if isinstance(pl_module, WarmUpTarget) and self.stats is not None:
            pl_module.sft_stats = self.stats  # restored from a checkpoint
