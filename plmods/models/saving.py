"""Saving a trained causal LM (and its critic) as directories that load again.

``save_causal_lm`` writes the policy with its factory's ``save`` (a transformers directory, or
with LoRA a PEFT adapter directory) and the critic beside it: ``value_head.safetensors`` in the
policy's directory for a value head, ``<path>/critic`` for a separate critic model. Under FSDP
the weights are gathered onto rank 0 first (``full_state_dict``) and loaded into an unsharded
twin of the policy, which is what rank 0 saves; every rank must call it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from plmods.errors import require
from plmods.models.sharding import full_state_dict, is_sharded

__all__ = ["save_causal_lm"]


def save_causal_lm(
    lm: Any,
    policy: torch.nn.Module,
    critic: torch.nn.Module | None,
    path: str,
    *,
    seed: int,
    rank_zero: bool = True,
    barrier: Callable[[], None] | None = None,
) -> None:
    """Save ``policy`` (built by the factory ``lm``) and ``critic`` under ``path``.

    Args:
        lm: the model factory (``HFCausalLM``): ``build(seed=)`` and ``save(model, path)``.
        policy: the trained policy, sharded or not.
        critic: its critic (``SharedTrunkCritic`` / ``SeparateCritic``) or None.
        path: the output directory.
        seed: the seed the factory builds the unsharded twin with.
        rank_zero: whether this process writes.
        barrier: called by every rank after a sharded save (the strategy's barrier).
    """
    critic_path = None if critic is None else (path if critic.shares_trunk else f"{path}/critic")
    if not is_sharded(policy):
        if rank_zero:
            lm.save(policy, path)
            if critic is not None:
                critic.save(critic_path)
        return
    state = full_state_dict(policy)  # a collective: every rank takes part
    critic_state = full_state_dict(critic) if critic is not None else None
    if rank_zero:
        twin = lm.build(seed=seed)
        missing, _ = twin.load_state_dict(state, strict=False)  # the reference adapter's keys are dropped
        require(not missing, f"gathered policy state lacks {missing[:3]}")
        lm.save(twin, path)
        if critic is not None:
            critic.save(critic_path, state=critic_state)
    if barrier is not None:
        barrier()
