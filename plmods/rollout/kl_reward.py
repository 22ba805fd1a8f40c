"""Per-token rewards of a sampled response: the KL penalty on every token and the sequence reward
on the last one (seed 003's RLHF reward; Ziegler et al. 2019, eq. 2)::

    r_t = -beta * (log pi_old(o_t | q, o_<t) - log pi_ref(o_t | q, o_<t)) + [t = last] * R

The KL term is k1, the sampled log-ratio, whose sum over a completion estimates
KL(pi_old || pi_ref) of the whole sequence. ``last`` is the completion's last valid token (its eos,
or the last token of a truncated one). Padding gets 0.
"""

from __future__ import annotations

import torch

__all__ = ["kl_penalty_rewards", "terminal_rewards", "token_rewards"]


def kl_penalty_rewards(old_log_probs: torch.Tensor, ref_log_probs: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """``-kl_coef * (log pi_old - log pi_ref)`` ``[N, T]`` on valid tokens, 0 on padding."""
    return torch.where(mask, -kl_coef * (old_log_probs - ref_log_probs), 0.0)


def terminal_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``rewards [N]`` placed on each row's last valid token ``[N, T]`` (0 elsewhere)."""
    last = (mask.long().sum(-1) - 1).clamp_min(0)  # [N]
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return out.scatter(1, last.unsqueeze(-1), rewards.to(out).unsqueeze(-1)) * mask


def token_rewards(rewards: torch.Tensor, mask: torch.Tensor, kl_reward: torch.Tensor | None = None) -> torch.Tensor:
    """The sequence rewards on the last tokens plus the per-token KL rewards (when given)."""
    out = terminal_rewards(rewards, mask)
    return out if kl_reward is None else out + kl_reward.to(out)
