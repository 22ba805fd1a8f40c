"""Group-relative advantages of GRPO (Shao et al. 2024, DeepSeekMath, sec. 4.1; seed 003).

Outcome supervision, one reward per completion, G completions per prompt::

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)        for every token of completion i

Process supervision, rewards for the steps of each completion (step j ends at token ind(j))::

    r^_i^ind(j) = (r_i^ind(j) - mean(R_group)) / (std(R_group) + eps)   over all steps of the group
    A_i,t       = sum_{ind(j) >= t} r^_i^ind(j)

Written here because torchrl's ``MCAdvantage`` is a replay-buffer transform that waits for
complete groups of trajectories one at a time; GRPO here scores a whole generation round at once.
"""

from __future__ import annotations

import torch

__all__ = ["GroupRelativeAdvantage"]


class GroupRelativeAdvantage:
    """Outcome and process group-relative advantages.

    Args:
        eps: added to the group standard deviation (TRL's 1e-4).
        std_normalize: divide by the group standard deviation (``False``: only centre, as in
            Dr. GRPO, Liu et al. 2025).
        unbiased_std: Bessel-corrected group std (``torch.std``'s default, as TRL); ``False`` uses
            the population std.
    """

    def __init__(self, eps: float = 1e-4, std_normalize: bool = True, unbiased_std: bool = True) -> None:
        self.eps = eps
        self.std_normalize = std_normalize
        self.unbiased_std = unbiased_std

    def _normalize(self, values: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        centred = values - mean
        return centred / (std + self.eps) if self.std_normalize else centred

    def outcome(self, rewards: torch.Tensor) -> torch.Tensor:
        """``rewards [B, G]`` -> advantages ``[B, G]``, one per completion."""
        mean = rewards.mean(-1, keepdim=True)  # [B, 1]
        std = rewards.std(-1, keepdim=True, unbiased=self.unbiased_std)  # [B, 1]
        return self._normalize(rewards, mean, std)

    def process(
        self, step_rewards: list[list[list[tuple[int, float]]]], num_tokens: int
    ) -> torch.Tensor:
        """Per-token advantages ``[B, G, T]`` from step rewards.

        ``step_rewards[b][g]`` lists completion ``(b, g)``'s steps as ``(ind, reward)``, ``ind`` the
        token index of the step's last token. Tokens after a completion's last step (e.g. eos)
        get 0, as the sum over steps at or after them is empty.
        """
        B, G = len(step_rewards), len(step_rewards[0])
        advantages = torch.zeros(B, G, num_tokens)
        for b, group in enumerate(step_rewards):
            flat = torch.tensor([r for steps in group for _, r in steps], dtype=torch.float32)
            if flat.numel() == 0:
                continue
            mean = flat.mean()
            std = flat.std(unbiased=self.unbiased_std) if flat.numel() > 1 else torch.zeros(())
            for g, steps in enumerate(group):
                for ind, reward in steps:
                    normalized = self._normalize(torch.tensor(reward), mean, std)
                    # every token t <= ind receives this step's normalised reward
                    advantages[b, g, : min(ind, num_tokens - 1) + 1] += normalized
        return advantages
