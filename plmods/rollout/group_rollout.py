"""The rollout source of the language algorithms: prompts -> G completions each -> rewards.

One round draws B problems from the task (a per-rank, checkpointed ``random.Random``), samples
G completions of each with the policy (``GroupSampler``: old log-probs recorded while sampling),
decodes them and scores them with the reward functions (each output checked). Every problem
field but ``prompt`` reaches the reward functions as a keyword argument.

Under FSDP the policy's weights are gathered once for the whole round (``models.sharding.gathered``),
so no collective runs inside ``generate`` and each rank stops at its own length.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import TensorDict

from plmods.envs.text import TextTask
from plmods.models.sharding import gathered
from plmods.rewards.combine import RewardFunctions
from plmods.rollout.sampler import GroupSampler

__all__ = ["GroupRollout", "Round"]


@dataclass
class Round:
    """One round: the sampled ``batch`` ``[N]`` (N = B x G, a prompt's rows adjacent), the
    ``problems`` per row, the decoded ``completions``, the total ``rewards`` ``[N]`` and each
    reward ``terms`` ``{name: [N]}``."""

    batch: TensorDict
    problems: list[dict[str, Any]]
    completions: list[str]
    rewards: torch.Tensor
    terms: dict[str, torch.Tensor]


def problem_fields(problems: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Problem fields other than the prompt, as reward-function keyword arguments."""
    return {key: [p[key] for p in problems] for key in problems[0] if key != "prompt"} if problems else {}


class GroupRollout:
    """Rounds of G completions per prompt.

    Args:
        task: the prompt source (a ``TextTask``).
        lm: the model factory (tokenizer and prompt format).
        rewards: the reward functions (``RewardFunctions``).
        prompts_per_batch: B, prompts per round.
        group_size: G, completions per prompt.
        max_new_tokens: completion length limit.
        temperature: sampling temperature.
        seed: seed of the prompt draws (``reseed`` sets a rank's own).
    """

    def __init__(
        self, task: TextTask, lm, rewards: RewardFunctions, *, prompts_per_batch: int, group_size: int, max_new_tokens: int,
        temperature: float, seed: int,
    ) -> None:  # fmt: skip
        self.task = task
        self.rewards = rewards
        self.prompts_per_batch = prompts_per_batch
        self.group_size = group_size
        self.sampler = GroupSampler(lm, max_new_tokens, temperature)
        self.prompt_rng = random.Random(seed)

    def reseed(self, seed: int) -> None:
        self.prompt_rng = random.Random(seed)

    def generate(self, policy: torch.nn.Module, prompts: list[str], repeats: int = 1, old_log_probs: bool = False) -> TensorDict:
        """``repeats`` completions per prompt: ids, masks and, if asked, the old log-probs."""
        with gathered(policy) as sharded:
            return self.sampler.sample(policy, prompts, repeats, log_probs=old_log_probs, synced_gpus=False if sharded else None)

    def score(self, problems: list[dict[str, Any]], completions: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total reward ``[N]`` and each term, for ``completions`` of ``problems`` (same order)."""
        return self.rewards([p["prompt"] for p in problems], completions, problem_fields(problems))

    def collect(self, policy: torch.nn.Module) -> Round:
        problems = self.task.sample(self.prompts_per_batch, self.prompt_rng)
        batch = self.generate(policy, [p["prompt"] for p in problems], self.group_size, old_log_probs=True)
        repeated = [p for p in problems for _ in range(self.group_size)]
        completions = self.sampler.decode(batch)
        rewards, terms = self.score(repeated, completions)  # [N], on the CPU
        B, G = len(problems), self.group_size
        batch["prompt_group"] = torch.arange(B, device=batch.device).repeat_interleave(G)  # each prompt runs once
        return Round(batch, repeated, completions, rewards, terms)

    def state_dict(self) -> dict[str, Any]:
        return {"prompt_rng": self.prompt_rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prompt_rng.setstate(state["prompt_rng"])
