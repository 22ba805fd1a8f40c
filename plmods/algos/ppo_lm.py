"""PPO on language models with a critic: the RLHF recipe of seed 003 (Ziegler et al. 2019,
Stiennon et al. 2020, Ouyang et al. 2022).

Per response token t of completion i (the KL enters the reward, ``kl_penalty="reward"``)::

    r_t = -beta * (log pi_old(o_t) - log pi_ref(o_t)) + [t = last] * R_i      (rollout.kl_reward)
    A_t = GAE_{gamma, lambda}(r, V_old),  returns R_t = A_t + V_old(s_t)       (rollout.token_gae)
    A_t <- (A_t - mean A) / std A  over the batch's response tokens             (whitened)

    L = L_clip(theta)                                     (MaskedGRPOLoss: the clipped surrogate)
      + critic_coeff * E_t[ 0.5 * max((V_t - R_t)^2, (clip(V_t, V_old - eps_v, V_old + eps_v) - R_t)^2) ]

The critic is seed 003's value model: ``plmods.models.critic`` (a value head on the policy's trunk,
or a separate critic model). ``MaskedPPOLoss`` is the policy loss plus this clipped value loss
(PPO2's / TRL's form); the critic's values come from the same forward as the policy's log-probs
when the head sits on the policy's trunk.
"""

from __future__ import annotations

from typing import Literal

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl.objectives.llm.grpo import LLMLossOutput

from plmods.algos.grpo_loss import MaskedGRPOLoss
from plmods.errors import require
from plmods.models.scorer import ResponseScorer

__all__ = ["MaskedPPOLoss", "PPOLMLossOutput", "clipped_value_loss"]


def clipped_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip_value: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2)`` ``[N, T]``
    and, per token, whether the clipped term is the larger (it then carries the loss, and its
    gradient is 0 where the clip binds). ``clip_value=None``: ``0.5 * (V - R)^2``."""
    unclipped = (values - returns) ** 2
    if clip_value is None:
        return 0.5 * unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    clipped_values = old_values + (values - old_values).clamp(-clip_value, clip_value)
    clipped = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), clipped > unclipped


class PPOLMLossOutput(LLMLossOutput):
    """``GRPOLoss``'s outputs plus the critic's loss and how often its clip bound."""

    loss_critic: torch.Tensor | None = None
    value_clip_fraction: torch.Tensor | None = None


class MaskedPPOLoss(MaskedGRPOLoss):
    """The clipped surrogate of ``MaskedGRPOLoss`` plus the clipped value loss of a critic.

    Reads what ``MaskedGRPOLoss`` reads plus ``old_values`` (V at sampling time) and
    ``value_target`` (the GAE returns), both ``[N, T]``.

    Args:
        scorer: the policy's ``ResponseScorer``.
        critic: ``plmods.models.critic`` module (``values(batch, policy_hidden) -> [N, T]``).
        critic_coeff: weight of the value loss (TRL's ``vf_coef``).
        clip_value: eps_v, the clip of the value update around the old value (null: unclipped).
        clip_epsilon, clip_epsilon_high, kl_coef, kl_penalty, aggregation, entropy_coeff: as
            ``MaskedGRPOLoss`` (here ``kl_penalty`` defaults to ``reward``, seed 003's RLHF).
    """

    output_type = PPOLMLossOutput

    def __init__(
        self,
        scorer: ResponseScorer,
        critic: nn.Module,
        *,
        critic_coeff: float = 0.1,
        clip_value: float | None = 0.2,
        clip_epsilon: float = 0.2,
        clip_epsilon_high: float | None = None,
        kl_coef: float = 0.05,
        kl_penalty: Literal["loss", "reward"] = "reward",
        aggregation: str = "token_mean",
        entropy_coeff: float = 0.0,
    ) -> None:
        require(critic_coeff >= 0, f"critic_coeff must be >= 0, got {critic_coeff}.")
        require(clip_value is None or clip_value > 0, f"clip_value must be > 0 or null, got {clip_value}.")
        super().__init__(
            scorer, clip_epsilon=clip_epsilon, clip_epsilon_high=clip_epsilon_high, kl_coef=kl_coef, kl_penalty=kl_penalty,
            aggregation=aggregation, entropy_coeff=entropy_coeff,
        )  # fmt: skip
        self.critic_network = critic
        self.critic_coeff = critic_coeff
        self.clip_value = clip_value

    def forward(self, tensordict: TensorDictBase):
        out = super().forward(tensordict)
        mask = tensordict["response_mask"]
        values = self.critic_network.values(tensordict, policy_hidden=self._scores.hidden)  # [N, T]
        per_token, clipped = clipped_value_loss(values, tensordict["old_values"], tensordict["value_target"], self.clip_value)
        out.loss_critic = self.critic_coeff * self._aggregate_loss_value(per_token.unsqueeze(-1), mask).reshape(())
        out.value_clip_fraction = clipped[mask].float().mean() if mask.any() else per_token.new_zeros(())
        return out
