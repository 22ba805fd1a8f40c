"""Group-relative advantages of GRPO (Shao et al. 2024, DeepSeekMath, sec. 4.1; seed 003).

Outcome supervision, one reward per completion, G completions per prompt::

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps)        for every token of completion i

Process supervision, rewards for the steps of each completion (step j ends at token ind(j))::

    r^_i^ind(j) = (r_i^ind(j) - mean(R_group)) / (std(R_group) + eps)   over all steps of the group
    A_i,t       = sum_{ind(j) >= t} r^_i^ind(j)

Written here because torchrl's ``MCAdvantage`` is a replay-buffer transform that waits for
complete groups of trajectories one at a time; GRPO here scores a whole generation round at once.

**The advantage is its own object**, as in torchrl: ``GRPOModule(advantage=...)`` takes any
callable with keyword arguments ``rewards`` ``[B, G]`` (the summed outcome rewards), ``problems``
(``B * G`` problem dicts, a group's rows adjacent), ``completions`` (their texts),
``response_tokens`` ``[N, T]``, ``response_mask`` and ``tokenizer``, returning ``[B, G]`` (one
advantage per completion) or ``[B, G, T]`` (per token). ``GroupRelativeAdvantage`` is the outcome
form, ``ProcessAdvantage`` the process form. A group whose values are all equal (max - min == 0,
exact for floats too) gets advantage exactly 0.
"""

from __future__ import annotations

import torch

__all__ = ["GroupRelativeAdvantage", "ProcessAdvantage"]


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

    def __call__(self, *, rewards: torch.Tensor, **context) -> torch.Tensor:
        """Outcome advantages ``[B, G]`` from the outcome rewards ``[B, G]``."""
        return self.outcome(rewards)

    def outcome(self, rewards: torch.Tensor) -> torch.Tensor:
        """``rewards [B, G]`` -> advantages ``[B, G]``, one per completion."""
        mean = rewards.mean(-1, keepdim=True)  # [B, 1]
        std = rewards.std(-1, keepdim=True, unbiased=self.unbiased_std)  # [B, 1]
        uniform = (rewards.amax(-1, keepdim=True) - rewards.amin(-1, keepdim=True)) == 0
        # all-equal rewards: exactly 0 (the float mean of [0.1] * G need not equal 0.1)
        return self._normalize(rewards, mean, std).masked_fill(uniform, 0.0)

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
            if flat.max() == flat.min():
                continue  # all steps of the group score the same: zero advantage, exactly
            mean = flat.mean()
            std = flat.std(unbiased=self.unbiased_std) if flat.numel() > 1 else torch.zeros(())
            for g, steps in enumerate(group):
                for ind, reward in steps:
                    normalized = self._normalize(torch.tensor(reward), mean, std)
                    # every token t <= ind receives this step's normalised reward
                    advantages[b, g, : min(ind, num_tokens - 1) + 1] += normalized
        return advantages


class ProcessAdvantage(GroupRelativeAdvantage):
    """Process-supervised advantages ``[B, G, T]`` from a step-reward function.

    Args:
        step_rewards: dotted path or callable ``(prompts, completions, **fields) -> per completion
            a list of (end_char, reward)`` (e.g. ``plmods.rewards.countdown_steps``). Step ends in
            characters are mapped to tokens with the tokenizer's offsets (``token_offsets``).
        eps, std_normalize, unbiased_std: as ``GroupRelativeAdvantage``.
    """

    def __init__(self, step_rewards, eps: float = 1e-4, std_normalize: bool = True, unbiased_std: bool = True) -> None:
        from plmods.rewards.combine import resolve_callable

        super().__init__(eps=eps, std_normalize=std_normalize, unbiased_std=unbiased_std)
        self.step_rewards = resolve_callable(step_rewards, "step_rewards")

    def __call__(self, *, rewards, problems, completions, response_tokens, response_mask, tokenizer, **context) -> torch.Tensor:
        from plmods.rollout.token_offsets import token_steps

        B, G = rewards.shape
        steps = token_steps(self.step_rewards, problems, completions, response_tokens, response_mask, tokenizer)
        return self.process([steps[b * G : (b + 1) * G] for b in range(B)], response_tokens.shape[-1])
