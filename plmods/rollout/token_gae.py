"""PPO-LM's advantage: GAE over the tokens of each completion (seed 003; Schulman et al. 2016).

With per-token rewards r_t (``rollout.kl_reward``: -beta * k1 on every token, the sequence reward
on the last one) and the critic's values V_t = V(s_t) recorded at sampling time::

    delta_t = r_t + gamma * V_{t+1} - V_t          (V after the last token is 0: the episode ends)
    A_t     = sum_l (gamma * lambda)^l delta_{t+l}
    R_t     = A_t + V_t                            the critic's regression target (value_target)

then, with ``whiten``, A_t <- (A_t - mean) / std over the batch's response tokens (the returns keep
the raw advantages). GAE itself is torchrl's (``generalized_advantage_estimate``): each row is one
episode that terminates at its last valid token; padding is masked out.
"""

from __future__ import annotations

import torch
from torchrl.objectives.value.functional import generalized_advantage_estimate

from plmods.errors import require
from plmods.rollout.kl_reward import token_rewards

__all__ = ["TokenGAE", "whiten", "explained_variance"]


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``(values - mean) / (std + eps)`` over the ``mask``-ed entries (others 0)."""
    picked = values[mask]
    if picked.numel() < 2:
        return torch.where(mask, values - picked.mean() if picked.numel() else values, 0.0)
    return torch.where(mask, (values - picked.mean()) / (picked.std() + eps), 0.0)


class TokenGAE:
    """Token-level GAE advantages ``[B, G, T]``; writes the returns to ``batch["value_target"]``.

    Reads ``batch["old_values"]`` ``[N, T]`` (the critic at sampling time), ``response_mask`` and,
    when the KL is in the reward, ``kl_reward``.

    Args:
        gamma: discount over tokens (1: RLHF's usual choice).
        lmbda: GAE lambda.
        whiten: standardise the advantages over the batch's response tokens.
    """

    needs_values = True  # the module records the critic's values while collecting

    def __init__(self, gamma: float = 1.0, lmbda: float = 0.95, whiten: bool = True) -> None:
        require(0 < gamma <= 1, f"gamma must be in (0, 1], got {gamma}.")
        require(0 <= lmbda <= 1, f"lmbda must be in [0, 1], got {lmbda}.")
        self.gamma = gamma
        self.lmbda = lmbda
        self.whiten = whiten

    @torch.no_grad()
    def __call__(self, *, rewards: torch.Tensor, batch, **context) -> torch.Tensor:
        B, G = rewards.shape
        mask = batch["response_mask"].cpu()  # [N, T]
        values = batch["old_values"].detach().float().cpu() * mask
        kl = batch.get("kl_reward", None)
        r = token_rewards(rewards.reshape(-1), mask, None if kl is None else kl.cpu())  # [N, T]
        next_mask = torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], 1)  # is there a token t + 1?
        next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], 1) * next_mask
        done = ~next_mask  # the last valid token ends the episode (and padding stays ended)
        advantage, returns = generalized_advantage_estimate(
            self.gamma, self.lmbda, values.unsqueeze(-1), next_values.unsqueeze(-1), r.unsqueeze(-1),
            done.unsqueeze(-1), done.unsqueeze(-1), time_dim=-2,
        )  # fmt: skip
        advantage, returns = advantage.squeeze(-1) * mask, returns.squeeze(-1) * mask  # [N, T]
        batch["value_target"] = returns.to(batch.device)
        if self.whiten:
            advantage = whiten(advantage, mask)
        return advantage.view(B, G, -1)


def explained_variance(batch) -> dict[str, torch.Tensor]:
    """The critic's explained variance ``1 - Var(R - V_old) / Var(R)`` over response tokens (1:
    perfect values; 0: no better than a constant; NaN when the returns are constant), and the
    mean value; ``{}`` for a batch without ``value_target`` and ``old_values``."""
    if "value_target" not in batch.keys() or "old_values" not in batch.keys():  # noqa: SIM118
        return {}
    mask = batch["response_mask"]
    returns, values = batch["value_target"][mask].float(), batch["old_values"][mask].float()
    variance = returns.var() if returns.numel() > 1 else returns.new_zeros(())
    explained = 1 - (returns - values).var() / variance if variance > 0 else returns.new_tensor(float("nan"))
    return {"explained_variance": explained.cpu(), "value_mean": values.mean().cpu()}
