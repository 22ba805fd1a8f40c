"""Reference-policy sync: move a frozen reference policy towards the trained policy.

Every ``sync_every`` (tau) optimizer steps::

    ref <- alpha * policy + (1 - alpha) * ref          (alpha = 1: a hard copy)

as in TR-DPO's soft and hard updates (Gorbatovski et al. 2024) and TRL's ``sync_ref_model``. The
check runs after each training batch: in plmods one batch is one generation round, so the
reference never changes in the middle of a round and no batch mixes two references (a module that
steps several times per batch syncs at the first batch end at or after tau steps).
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from plmods.errors import ConfigError, require
from plmods.models.weights import mix_into
from plmods.protocols import HasReference

__all__ = ["RefPolicySync", "mix_into"]


class RefPolicySync(Callback):
    """Sync ``pl_module.ref_policy`` towards ``pl_module.policy`` every ``sync_every`` optimizer steps.

    Works with any LightningModule of the ``plmods.protocols.HasReference`` protocol
    (``has_reference`` and a ``sync_reference(alpha)`` doing the mix itself: plmods' LM modules,
    where with LoRA the reference is a second adapter on the policy's network and only adapter
    weights move), or exposing ``policy`` and ``ref_policy`` (two ``nn.Module`` of the same structure). The state (steps at the last sync, number of syncs) is saved in checkpoints;
    the reference's weights are part of the module's own state dict.

    Args:
        sync_every: tau, optimizer steps (``trainer.global_step``) between syncs (>= 1).
        alpha: mixing weight of the policy in (0, 1]; 1 is a hard copy.
    """

    def __init__(self, sync_every: int = 64, alpha: float = 1.0) -> None:
        super().__init__()
        require(sync_every >= 1, f"sync_every must be >= 1, got {sync_every}.")
        require(0 < alpha <= 1, f"alpha must be in (0, 1], got {alpha}.")
        self.sync_every = sync_every
        self.alpha = float(alpha)
        self.last_sync_step = 0
        self.num_syncs = 0

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self.check_module(pl_module)

    def check_module(self, pl_module: LightningModule) -> None:
        """Refuse a module without a reference policy, before any work (``setup``; ``train.py``
        calls it for every job of a sweep before the first starts)."""
        if isinstance(pl_module, HasReference):
            ok = pl_module.has_reference
        else:
            ok = getattr(pl_module, "policy", None) is not None and getattr(pl_module, "ref_policy", None) is not None
        if not ok:
            raise ConfigError(
                "callbacks.ref_policy_sync needs a LightningModule with a reference policy (`has_reference` and "
                "`sync_reference`, or `policy` and `ref_policy` modules); "
                f"{type(pl_module).__name__} has none (the LM algorithms build one only when algo.loss.kl_coef > 0)."
            )

    def should_sync(self, global_step: int) -> bool:
        """True once ``sync_every`` optimizer steps have passed since the last sync."""
        return global_step - self.last_sync_step >= self.sync_every

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.should_sync(step):
            if isinstance(pl_module, HasReference):
                pl_module.sync_reference(self.alpha)
            else:
                mix_into(pl_module.ref_policy, pl_module.policy, self.alpha)
            self.last_sync_step = step
            self.num_syncs += 1
            pl_module.log("train/ref_syncs", float(self.num_syncs), batch_size=1)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"last_sync_step": self.last_sync_step, "num_syncs": self.num_syncs}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_sync_step = int(state_dict["last_sync_step"])
        self.num_syncs = int(state_dict["num_syncs"])
