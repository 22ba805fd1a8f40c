"""The reference policy of a KL penalty, one part with three forms.

- **none**: no KL term (``kl_coef = 0``); no second model, no reference forward.
- **copy**: a frozen deep copy of the policy (full fine-tuning); under FSDP it is sharded the
  same way as the policy, so soft syncs stay shard-local.
- **adapter**: with LoRA, a frozen second adapter ``ref`` on the policy's own network
  (``plmods.models.lora``): no second model in memory, and syncing moves adapter weights only.

The LM module reads the reference only through ``log_probs`` and ``sync``; callbacks reach it
through the module's ``sync_reference(alpha)`` and ``ref_policy``.
"""

from __future__ import annotations

import copy

import torch
from tensordict import TensorDictBase
from torch import nn

from plmods.models.lora import adapter_tensors, add_reference_adapter, is_lora, reference_adapter
from plmods.models.scorer import ResponseScorer
from plmods.models.sharding import reshard, shard_causal_lm
from plmods.models.weights import mix_into, mix_tensors

__all__ = ["ReferencePolicy", "REFERENCE_KINDS"]

REFERENCE_KINDS = ("none", "copy", "adapter")


class ReferencePolicy:
    """Builds the reference next to ``policy`` (``enabled``: a KL term needs one).

    ``module`` is the frozen copy (None for the other forms): the owner registers it, so its
    weights are in checkpoints (an adapter's are part of the policy's own state)."""

    def __init__(self, policy: nn.Module, enabled: bool) -> None:
        self.kind = "none" if not enabled else ("adapter" if is_lora(policy) else "copy")
        self.module: nn.Module | None = None
        if self.kind == "copy":
            self.module = copy.deepcopy(policy).requires_grad_(False)
        elif self.kind == "adapter":
            add_reference_adapter(policy)  # a frozen copy of the policy's adapter
        self._scorer: ResponseScorer | None = None

    def shard(self, mesh) -> None:
        """FSDP: the copy is sharded like the policy (an adapter is sharded with the policy)."""
        if self.module is not None:
            shard_causal_lm(self.module, mesh)

    @torch.no_grad()
    def log_probs(self, policy_scorer: ResponseScorer, batch: TensorDictBase, micro_batch_size: int | None) -> torch.Tensor:
        """log pi_ref of ``batch["response_tokens"]`` ``[N, T]``, ``micro_batch_size`` rows at a time."""
        if self.kind == "copy":
            if self._scorer is None:
                self._scorer = ResponseScorer(
                    self.module, policy_scorer.temperature, policy_scorer.share_prompts, policy_scorer.logits_chunk_size
                )
                self._scorer.chunked_head = policy_scorer.chunked_head
            return self._scorer.log_probs(batch, micro_batch_size)
        if self.kind == "adapter":
            with reference_adapter(policy_scorer.model):
                return policy_scorer.log_probs(batch, micro_batch_size)
        raise RuntimeError("no reference policy (kl_coef = 0)")

    @torch.no_grad()
    def sync(self, policy: nn.Module, alpha: float) -> None:
        """``ref <- alpha * policy + (1 - alpha) * ref``: every weight of a copy (sharded: shard by
        shard, no gather), or the reference adapter's weights."""
        if self.kind == "copy":
            reshard(self.module)  # FSDP leaves a root gathered after a forward without backward
            reshard(policy)
            mix_into(self.module, policy, alpha)
        elif self.kind == "adapter":
            mix_tensors(*adapter_tensors(policy), alpha)
        else:
            raise RuntimeError("no reference policy (kl_coef = 0)")
