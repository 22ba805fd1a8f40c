"""REINFORCE on language models: Monte-Carlo returns over tokens minus a baseline (seed 001).

The policy is the LM; each response token is an action. With per-token rewards r_t (the sequence
reward R on the last token, optionally -beta * k1 on every token: ``rollout.kl_reward``, and with
``step_rewards`` each step's reward on the token that completes the step)::

    G_t = sum_{k >= t} gamma^(k - t) r_k              returns-to-go (gamma = 1: R + the KL still ahead)
    A_t = G_t - b                                      b: one baseline per completion, from the returns G_0

Baselines (seed 001: "b is often the moving average of R(tau)"; Ahmadian et al. 2024, RLOO):

- ``none``: b = 0.
- ``moving_average``: a running mean of the batches' sequence returns, updated *after* the
  batch's advantages are computed (it never depends on this batch's actions); checkpointed.
- ``leave_one_out``: b_i = the mean return of the other G - 1 completions of the same prompt,
  written G / (G - 1) * (G_0,i - mean_j G_0,j) (the same number). A group whose returns are all
  equal gets advantage exactly 0 (max - min == 0, exact for floats), so it is skipped exactly.

``normalize_advantage`` divides by the standard deviation of the batch's advantages over response
tokens and does **not** re-centre them: centring is the baseline's job, so ``none`` stays b = 0
and the baselines stay different (a standardisation would subtract the batch mean from all
three). TRL's RLOO sums the KL of the whole completion into every token's return; here token t
counts only the KL still ahead of it (reward-to-go), which drops terms its action cannot affect.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torchrl.objectives.value.functional import reward2go

from plmods.errors import require
from plmods.rollout.kl_reward import token_rewards

__all__ = ["TokenMonteCarloAdvantage", "LM_BASELINES", "leave_one_out"]

LM_BASELINES = ("none", "moving_average", "leave_one_out")


def leave_one_out(returns: torch.Tensor) -> torch.Tensor:
    """``returns [B, G]`` minus the mean of the other G - 1 returns of the group ``[B, G]``;
    exactly 0 for a group of equal returns."""
    G = returns.shape[-1]
    uniform = (returns.amax(-1, keepdim=True) - returns.amin(-1, keepdim=True)) == 0
    advantage = G / (G - 1) * (returns - returns.mean(-1, keepdim=True))
    return advantage.masked_fill(uniform, 0.0)


class TokenMonteCarloAdvantage(nn.Module):
    """REINFORCE advantages ``[B, G, T]`` for completions of an LM.

    Args:
        baseline: ``none``, ``moving_average`` or ``leave_one_out``.
        gamma: discount over tokens (1: every token's return includes the sequence reward).
        baseline_decay: weight of the old value in the moving-average baseline.
        normalize_advantage: divide by the batch's advantage std (no re-centring).
        step_rewards: per-step rewards (process supervision), a dotted path or callable
            ``(prompts, completions, **fields) -> per completion a list of (end_char, reward)``
            (e.g. ``plmods.rewards.countdown_steps``); each step's reward is added at the token
            that completes it, on top of the sequence reward (give that weight 0 for steps only).
    """

    def __init__(
        self, baseline: str = "leave_one_out", gamma: float = 1.0, baseline_decay: float = 0.9, normalize_advantage: bool = False,
        step_rewards: str | Callable | None = None,
    ) -> None:
        from plmods.rewards.combine import resolve_callable

        super().__init__()
        self.step_rewards = None if step_rewards is None else resolve_callable(step_rewards, "step_rewards")
        require(baseline in LM_BASELINES, f"baseline must be one of {', '.join(LM_BASELINES)}, got {baseline!r}.")
        require(0 < gamma <= 1, f"gamma must be in (0, 1], got {gamma}.")
        require(0 <= baseline_decay < 1, f"baseline_decay must be in [0, 1), got {baseline_decay}.")
        self.baseline = baseline
        self.gamma = gamma
        self.baseline_decay = baseline_decay
        self.normalize_advantage = normalize_advantage
        self.register_buffer("moving_baseline", torch.zeros(()))
        self.register_buffer("moving_baseline_initialized", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def forward(
        self, *, rewards: torch.Tensor, batch, mean_over_ranks: Callable[[torch.Tensor], torch.Tensor] | None = None, **context
    ) -> torch.Tensor:
        B, G = rewards.shape
        mask = batch["response_mask"].cpu()  # [N, T]
        kl = batch.get("kl_reward", None)
        r = token_rewards(rewards.reshape(-1), mask, None if kl is None else kl.cpu())  # [N, T]
        if self.step_rewards is not None:
            r = r + self._step_token_rewards(
                mask, batch["response_tokens"].cpu(), context["problems"], context["completions"], context["tokenizer"]
            )
        done = torch.zeros_like(mask)
        done[torch.arange(mask.shape[0]), (mask.long().sum(-1) - 1).clamp_min(0)] = True  # each row's last token
        returns = reward2go(r.unsqueeze(-1), done.unsqueeze(-1), self.gamma, time_dim=-2).squeeze(-1) * mask  # [N, T]
        sequence = returns[:, 0].view(B, G)  # G_0 of each completion
        if self.baseline == "leave_one_out":
            require(G >= 2, f"the leave-one-out baseline needs group_size >= 2, got {G}.")
            shift = sequence - leave_one_out(sequence)  # b_i = G_0,i - A_i
        elif self.baseline == "moving_average":
            shift = self.moving_baseline.expand(B, G).clone()
            batch_mean = sequence.mean()
            self._update_moving_baseline(mean_over_ranks(batch_mean) if mean_over_ranks else batch_mean)
        else:
            shift = torch.zeros(B, G)
        # a group of equal returns: leave_one_out is exactly 0, so b = G_0 exactly (no float residue)
        advantage = (returns.view(B, G, -1) - shift.unsqueeze(-1)) * mask.view(B, G, -1)  # [B, G, T]
        if self.normalize_advantage and mask.sum() > 1:
            advantage = advantage / (advantage[mask.view(B, G, -1)].std() + 1e-8)
        return advantage

    def _step_token_rewards(self, mask, response_tokens, problems, completions, tokenizer) -> torch.Tensor:
        """``[N, T]``: each step's reward on the token that completes it (``token_offsets``)."""
        from plmods.rollout.token_offsets import token_steps

        out = torch.zeros(mask.shape)
        for row, steps in enumerate(token_steps(self.step_rewards, problems, completions, response_tokens, mask, tokenizer)):
            for ind, reward in steps:
                out[row, ind] += reward
        return out

    def _update_moving_baseline(self, batch_mean: torch.Tensor) -> None:
        """b <- decay * b + (1 - decay) * mean(G_0); the first batch sets b to its mean."""
        decay = self.baseline_decay if bool(self.moving_baseline_initialized) else 0.0
        self.moving_baseline.mul_(decay).add_((1 - decay) * batch_mean)
        self.moving_baseline_initialized.fill_(True)
