"""Weight arithmetic shared by callbacks and algorithms (kept here so an algorithm never imports
a callback): ``mix_into`` moves a reference network towards a policy, ``mix_tensors`` does the
same for matching lists of tensors (LoRA adapters)."""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor

__all__ = ["mix_into", "mix_tensors"]


@torch.no_grad()
def mix_into(ref: torch.nn.Module, policy: torch.nn.Module, alpha: float) -> None:
    """``ref <- alpha * policy + (1 - alpha) * ref`` for every parameter and floating buffer."""
    ref_tensors = [*ref.parameters(), *(b for b in ref.buffers() if b.is_floating_point())]
    policy_tensors = [*policy.parameters(), *(b for b in policy.buffers() if b.is_floating_point())]
    if len(ref_tensors) != len(policy_tensors) or any(
        r.shape != p.shape for r, p in zip(ref_tensors, policy_tensors, strict=True)
    ):
        raise ValueError("ref_policy and policy have different parameter structures.")
    mix_tensors(ref_tensors, policy_tensors, alpha)


@torch.no_grad()
def mix_tensors(ref: list[torch.Tensor], policy: list[torch.Tensor], alpha: float) -> None:
    """``ref[i] <- alpha * policy[i] + (1 - alpha) * ref[i]`` in place (alpha = 1: a copy).

    Sharded tensors (FSDP's ``DTensor``) are mixed shard by shard, with no communication: the
    reference and the policy are sharded the same way, so each rank's shards correspond."""
    if any(isinstance(t, DTensor) for t in (*ref, *policy)):
        for r, p in zip(ref, policy, strict=True):
            if isinstance(r, DTensor) != isinstance(p, DTensor) or (isinstance(r, DTensor) and r.placements != p.placements):
                raise ValueError("ref and policy tensors are sharded differently; shard both the same way (and reshard both).")
        ref = [t.to_local() if isinstance(t, DTensor) else t for t in ref]  # views of the local shards
        policy = [t.to_local() if isinstance(t, DTensor) else t for t in policy]
    if alpha == 1.0:
        torch._foreach_copy_(ref, policy)
    else:
        torch._foreach_lerp_(ref, policy, alpha)  # ref + alpha * (policy - ref)
