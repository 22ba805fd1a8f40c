"""Check that every rank holds the same model: weights, reference, KL coefficient.

Data-parallel training keeps one model on every rank only if every rank runs the same optimizer
steps on the same averaged gradients and every rank-local change (a reference sync, a KL
adaptation) happens on all of them. A rank that drifts fails silently: its gradients still
average in. This callback hashes the full state (a sharded ``DTensor`` is gathered one tensor at a
time) on every rank, compares the hashes and stops the run naming the first tensor that differs.
It works in any Lightning project under any strategy.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback
from torch.distributed.tensor import DTensor
from typing_extensions import override

from plmods.errors import require
from plmods.protocols import Evaluated, KLControlled

__all__ = ["RankConsistency", "state_digests", "first_difference"]


def _digest(tensor: torch.Tensor) -> str:
    if isinstance(tensor, DTensor):
        tensor = tensor.full_tensor()  # a collective: every rank walks the tensors in the same order
    data = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def state_digests(module: torch.nn.Module) -> dict[str, str]:
    """A hash of every parameter and buffer of ``module`` (full tensors, sharded or not) and of
    its ``kl_coef`` when it has one."""
    digests = {name: _digest(t) for name, t in module.named_parameters()}
    digests.update({f"buffer:{name}": _digest(t) for name, t in module.named_buffers()})
    kl_coef = module.kl_coef if isinstance(module, KLControlled) else None
    if kl_coef is not None:
        digests["kl_coef"] = repr(float(kl_coef))
    return digests


def first_difference(per_rank: list[dict[str, str]]) -> str | None:
    """The first key whose value is not the same on every rank (None: all agree)."""
    reference = per_rank[0]
    for rank, digests in enumerate(per_rank[1:], start=1):
        if digests.keys() != reference.keys():
            return f"the set of tensors (rank {rank} has {len(digests)}, rank 0 has {len(reference)})"
        for key, value in reference.items():
            if digests[key] != value:
                return f"{key} (rank {rank} differs from rank 0)"
    return None


class RankConsistency(Callback):
    """Compare every rank's full model state every ``check_every`` policy iterations (training
    epochs) and at the end of fit; raise ``RuntimeError`` naming the first differing tensor.

    Rank 0 writes the last check to ``<trainer.default_root_dir>/rank_consistency.json``
    (``world_size``, ``iteration``, number of tensors, a hash of all of them).

    Args:
        check_every: iterations between checks (0: only at the end of fit).
    """

    def __init__(self, check_every: int = 0) -> None:
        super().__init__()
        require(check_every >= 0, f"check_every must be >= 0, got {check_every}.")
        self.check_every = check_every
        self.num_checks = 0
        self.last: dict[str, Any] | None = None

    def check(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        digests = state_digests(pl_module)
        per_rank = [digests]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            per_rank = [None] * dist.get_world_size()
            dist.all_gather_object(per_rank, digests)
        difference = first_difference(per_rank)
        if difference is not None:
            raise RuntimeError(f"ranks hold different models at step {trainer.global_step}: {difference}")
        self.num_checks += 1
        whole = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]
        self.last = {
            "world_size": len(per_rank),
            "global_step": trainer.global_step,
            "iteration": pl_module.iteration if isinstance(pl_module, Evaluated) else trainer.current_epoch,
            "tensors": len(digests),
            "digest": whole,
        }
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / "rank_consistency.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.last, indent=2))
        return self.last

    @override
    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.check_every and (trainer.current_epoch + 1) % self.check_every == 0:
            self.check(trainer, pl_module)

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.check(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"num_checks": self.num_checks}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.num_checks = int(state_dict["num_checks"])
